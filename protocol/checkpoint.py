"""Signed checkpoints over the hash chain of the MAC tags a device sent.

The gateway holds the session MAC key, so a COSE_Mac0 alone cannot prove to the monitoring
centre that the *device* produced a reading. The device therefore chains every tag it sends,

    chain_0 = SHA-256("vitalbridge-chain" || session id)
    chain_i = SHA-256(chain_{i-1} || tag_i)          (tags in sequence order, seqs consecutive)

and every <= 60 s (at once after a critical value) signs a COSE_Sign1 (EdDSA, device key,
external AAD "vitalbridge checkpoint v1") over the CBOR map

    {0: 1, 1: device id, 2: session id, 3: first seq, 4: last seq, 5: count,
     6: chain head after last seq, 7: time, 8: chain value before first seq}

The centre recomputes the chain from the tags it received. One SHA-256 per reading on the
device (hardware on the ESP32) and one signature per checkpoint. Runs on MicroPython.
"""


import hashlib

from protocol import cbor, crypto
from protocol.checks import fixed_bytes, hexstr, is_int
from protocol.cose import key_id, sign1_create, sign1_parse, sign1_verify
from protocol.errors import DecodeError, SealError, ValidationError, VersionError
from protocol.topics import check_id

_type = type
_sha256 = hashlib.sha256
CHAIN_DOMAIN = b"vitalbridge-chain"
CHECKPOINT_AAD = b"vitalbridge checkpoint v1"
CHECKPOINT_VERSION = 1
HASH_SIZE = 32
TAG_SIZE = 32
SESSION_ID_SIZE = 8
# Reading seqs are below senml.SEQ_LIMIT (2**32), so a checkpoint never covers more; and both
# bounds keep every field inside the signed 64-bit integers SQLite stores (a fuzzed
# checkpoint with time 2**63 crashed the centre's store before its signature was checked).
MAX_SEQ = (1 << 32) - 1
MAX_TIME = 1 << 40  # seconds: far beyond any real clock, as in protocol/enrollment.py
# A checkpoint is due every <= 60 s; this bound keeps the centre's check O(small) even for
# a hostile checkpoint and is far above any real sealing rate.
MAX_COUNT = 65536

L_VERSION = 0
L_DEVICE_ID = 1
L_SESSION_ID = 2
L_FIRST_SEQ = 3
L_LAST_SEQ = 4
L_COUNT = 5
L_HEAD = 6
L_TIME = 7
L_PREV = 8
_LABELS = (L_VERSION, L_DEVICE_ID, L_SESSION_ID, L_FIRST_SEQ, L_LAST_SEQ, L_COUNT, L_HEAD,
           L_TIME, L_PREV)

VERIFIED = "verified"
GAP = "gap"
TAG_MISMATCH = "tag-mismatch"
CHAIN_BREAK = "chain-break"




def _seq(field, value):
    if not is_int(value) or value < 0 or value > MAX_SEQ:
        raise ValidationError(field, "must be an integer in [0, 2**64-1]")
    return value



def chain_start(session_id):
    """chain_0 for a session."""
    return crypto.sha256(CHAIN_DOMAIN + fixed_bytes("session_id", session_id, SESSION_ID_SIZE))


def chain_step(head, tag):
    """chain_i from chain_{i-1} and the i-th MAC tag."""
    return crypto.sha256(fixed_bytes("head", head, HASH_SIZE) + fixed_bytes("tag", tag, TAG_SIZE))


class Checkpoint:
    """The signed claims of one checkpoint."""

    def __init__(self, device_id, session_id, first_seq, last_seq, count, head, time, prev):
        self.device_id = device_id
        self.session_id = session_id
        self.first_seq = first_seq
        self.last_seq = last_seq
        self.count = count
        self.head = head
        self.time = time
        self.prev = prev

    def to_map(self):
        return {
            L_VERSION: CHECKPOINT_VERSION,
            L_DEVICE_ID: self.device_id,
            L_SESSION_ID: self.session_id,
            L_FIRST_SEQ: self.first_seq,
            L_LAST_SEQ: self.last_seq,
            L_COUNT: self.count,
            L_HEAD: self.head,
            L_TIME: self.time,
            L_PREV: self.prev,
        }

    @classmethod
    def from_map(cls, claims):
        """Validate a decoded claims map. Raises ValidationError / VersionError."""
        if not isinstance(claims, dict):
            raise ValidationError("checkpoint", "payload must be a map")
        for label in claims:
            if not is_int(label) or label not in _LABELS:
                raise ValidationError("checkpoint", "unknown field %r" % (label,))
        for label in _LABELS:
            if label not in claims:
                raise ValidationError("checkpoint", "field %d missing" % label)
        version = claims[L_VERSION]
        if not is_int(version):
            raise ValidationError("version", "must be an integer")
        if version != CHECKPOINT_VERSION:
            raise VersionError("checkpoint version %d is not supported" % version)
        device_id = check_id("device_id", claims[L_DEVICE_ID])
        session_id = fixed_bytes("session_id", claims[L_SESSION_ID], SESSION_ID_SIZE)
        first = _seq("first_seq", claims[L_FIRST_SEQ])
        last = _seq("last_seq", claims[L_LAST_SEQ])
        count = claims[L_COUNT]
        if not is_int(count) or count < 1 or count > MAX_COUNT:
            raise ValidationError("count", "must be an integer in [1, %d]" % MAX_COUNT)
        if last < first or last - first + 1 != count:
            raise ValidationError(
                "count", "%d does not match seqs %d..%d (consecutive)" % (count, first, last)
            )
        time = claims[L_TIME]
        if not is_int(time) or time < 0 or time > MAX_TIME:
            raise ValidationError("time", "must be an integer 0..%d" % MAX_TIME)
        head = fixed_bytes("head", claims[L_HEAD], HASH_SIZE)
        prev = fixed_bytes("prev", claims[L_PREV], HASH_SIZE)
        return cls(device_id, session_id, first, last, count, head, time, prev)


class HashChain:
    """Device side: extend() after sealing each message, checkpoint() to sign the window.

    Seqs must be consecutive (the first one is free). After a checkpoint the next window
    starts where this one ended, so consecutive checkpoints link by prev == previous head.
    """

    def __init__(self, session_id):
        self.session_id = fixed_bytes("session_id", session_id, SESSION_ID_SIZE)
        self.head = chain_start(self.session_id)
        self.prev = self.head
        self.first_seq = None
        self.last_seq = None
        self.count = 0

    def extend(self, seq, tag):
        """Add the MAC tag of message `seq` (ValidationError if seq is not the next one)."""
        last = self.last_seq
        # Fast path (a device extends once per sealed reading): the next seq, a tag as
        # sealing returns it; anything else gets the full checks and their messages.
        if last is None or _type(seq) is not int or seq != last + 1 or seq > MAX_SEQ:
            _seq("seq", seq)
            if last is not None and seq != last + 1:
                raise ValidationError("seq", "expected %d, got %d" % (last + 1, seq))
        if self.count >= MAX_COUNT:
            raise ValidationError("seq", "checkpoint overdue: %d tags since the last" % MAX_COUNT)
        if _type(tag) is not bytes or len(tag) != TAG_SIZE:
            tag = fixed_bytes("tag", tag, TAG_SIZE)
        self.head = _sha256(self.head + tag).digest()  # = chain_step(head, tag)
        if self.first_seq is None:
            self.first_seq = seq
        self.last_seq = seq
        self.count += 1

    def checkpoint(self, seed, device_id, time, kid):
        """Sign the tags since the last checkpoint -> COSE_Sign1 bytes; starts a new window.

        seed: the device's Ed25519 private seed; kid: its key id, cose.key_id(public key)
        (keep it cached: deriving the public key costs a scalar multiplication).
        """
        if self.count == 0:
            raise ValidationError("checkpoint", "no tags since the last checkpoint")
        check_id("device_id", device_id)
        if not is_int(time) or time < 0 or time > MAX_TIME:
            raise ValidationError("time", "must be an integer 0..%d" % MAX_TIME)
        claims = Checkpoint(device_id, self.session_id, self.first_seq, self.last_seq,
                            self.count, self.head, time, self.prev)
        sealed = sign1_create(seed, cbor.dumps(claims.to_map()), kid=kid,
                              external_aad=CHECKPOINT_AAD)
        self.prev = self.head
        self.first_seq = None
        self.count = 0
        return sealed


def _claims(msg):
    try:
        claims = cbor.loads(msg.payload)
    except DecodeError as exc:
        raise ValidationError("checkpoint", "payload is not valid CBOR: %s" % exc) from None
    return Checkpoint.from_map(claims)


def parse_checkpoint(data):
    """Read a checkpoint without verifying the signature (routing, inspection)."""
    msg = sign1_parse(data)
    if msg.payload is None:
        raise SealError("payload detached (nil) but no detached payload given")
    return _claims(msg)


def _ranges(seqs):
    """Sorted ints -> [(first, last), ...] runs."""
    runs = []
    for seq in seqs:
        if runs and runs[-1][1] == seq - 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


class CheckpointVerdict:
    """status: "verified", "gap" (missing = [(first, last), ...] seqs not received; verify
    again when they arrive), "tag-mismatch" (some received tag is not the one the device
    chained) or "chain-break" (prev is not the expected previous head)."""

    def __init__(self, status, checkpoint, reason, missing=None):
        self.status = status
        self.checkpoint = checkpoint
        self.reason = reason
        self.missing = missing or []

    @property
    def ok(self):
        return self.status == VERIFIED

    def __repr__(self):
        return "<CheckpointVerdict %s: %s>" % (self.status, self.reason)


def verify_checkpoint(data, device_public, received_tags, expected_prev=None,
                      device_id=None, session_id=None):
    """Centre side: check a checkpoint against the tags received -> CheckpointVerdict.

    received_tags: mapping seq -> 32-byte MAC tag of every message received in the
    session. expected_prev: the head of the previous checkpoint (or chain_start(session)
    for the first); None skips the link check. Raises SealError("signature invalid", ...)
    when the checkpoint itself is not authentic, ValidationError when it is for another
    device/session or malformed.
    """
    # The kid is required and must name this key: it is the only unprotected field, so
    # insisting on it makes every byte of the checkpoint matter.
    msg = sign1_verify(device_public, data, external_aad=CHECKPOINT_AAD,
                       kid=key_id(device_public))
    cp = _claims(msg)
    if device_id is not None and cp.device_id != device_id:
        raise ValidationError("device_id", "checkpoint is for device %s" % cp.device_id)
    if session_id is not None and cp.session_id != bytes(session_id):
        raise ValidationError("session_id", "checkpoint is for session %s" % hexstr(cp.session_id))
    if expected_prev is not None and cp.prev != bytes(expected_prev):
        return CheckpointVerdict(
            CHAIN_BREAK, cp,
            "checkpoint does not continue the previous one (prev %s)" % hexstr(cp.prev),
        )
    missing = []
    tags = []
    seq = cp.first_seq
    while seq <= cp.last_seq:
        tag = received_tags.get(seq)
        if tag is None:
            missing.append(seq)
        else:
            tags.append(fixed_bytes("tag", tag, TAG_SIZE))
        seq += 1
    if missing:
        runs = _ranges(missing)
        shown = ", ".join(["%d" % a if a == b else "%d-%d" % (a, b) for a, b in runs[:8]])
        if len(runs) > 8:
            shown += ", ... (%d runs)" % len(runs)
        return CheckpointVerdict(
            GAP, cp, "%d of %d seqs not received: %s" % (len(missing), cp.count, shown), runs
        )
    head = cp.prev
    for tag in tags:
        head = chain_step(head, tag)
    if head != cp.head:
        return CheckpointVerdict(
            TAG_MISMATCH, cp,
            "tags received for seqs %d..%d do not match the chain the device signed"
            % (cp.first_seq, cp.last_seq),
        )
    return CheckpointVerdict(
        VERIFIED, cp, "seqs %d..%d match the device's chain" % (cp.first_seq, cp.last_seq)
    )
