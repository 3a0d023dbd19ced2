"""Re-seal statements: the current gateway key vouches for an item sealed under a retired key.

Before a retired key is destroyed (gateway signing key, device session MAC key), the gateway
verifies everything still stored that only that key can verify, and signs a statement:

    COSE_Sign1 (tag 18), protected {1: -8} (EdDSA), unprotected {4: kid of the signing key},
    external_aad = "vitalbridge/reseal/v1", payload = CBOR map
      {0: 1 (version), 1: gateway id, 2: item kind, 3: SHA-256 of the original bytes,
       4: kid of the retired key, 5: verdict, 6: time (POSIX seconds)}

kind:    "eventlog-checkpoint" (a checkpoint signed by a retired gateway key) or
         "journal-seal" (a device's COSE_Mac0 batch stored in the reading journal).
verdict: "valid"     - verified under the retired key at `time`;
         "invalid"   - the retired key says it is NOT authentic (kept as evidence, alarmed);
         "key-wiped" - the key material was already wiped, so only the verdict recorded at
                       receipt stands; the statement pins the bytes from here on.

The statement is over the original's digest, never its content: the original bytes stay
where they are and anyone holding them checks `digest` against them (`verify`).
MicroPython-compatible (no struct, typing or dataclasses).
"""

from protocol import cbor, cose, crypto
from protocol.checks import fixed_bytes, is_int
from protocol.errors import ValidationError, VersionError

RESEAL_AAD = b"vitalbridge/reseal/v1"
VERSION = 1
KINDS = ("eventlog-checkpoint", "journal-seal")
VALID = "valid"
INVALID = "invalid"
KEY_WIPED = "key-wiped"
VERDICTS = (VALID, INVALID, KEY_WIPED)
MAX_STATEMENT = 512
MAX_ID = 64
MAX_KID = 16
MAX_TIME = 1 << 40

L_VERSION, L_GATEWAY, L_KIND, L_DIGEST, L_KID, L_VERDICT, L_TIME = 0, 1, 2, 3, 4, 5, 6
_LABELS = (L_VERSION, L_GATEWAY, L_KIND, L_DIGEST, L_KID, L_VERDICT, L_TIME)


class Reseal:
    """A decoded re-seal statement. `signer_kid` is the kid of the key that signed it."""

    def __init__(self, gateway, kind, digest, original_kid, verdict, time, signer_kid=None):
        self.gateway = gateway
        self.kind = kind
        self.digest = digest
        self.original_kid = original_kid
        self.verdict = verdict
        self.time = time
        self.signer_kid = signer_kid

    def __eq__(self, other):
        return isinstance(other, Reseal) and self.as_tuple() == other.as_tuple()

    def as_tuple(self):
        return (self.gateway, self.kind, self.digest, self.original_kid, self.verdict,
                self.time, self.signer_kid)

    def __repr__(self):
        return "Reseal(%s %s %s)" % (self.kind, self.verdict, self.gateway)


def _check(gateway, kind, digest, original_kid, verdict, time):
    if not isinstance(gateway, str) or not 0 < len(gateway) <= MAX_ID:
        raise ValidationError("gateway", "must be text of 1..%d characters" % MAX_ID)
    if kind not in KINDS:
        raise ValidationError("kind", "must be one of %s" % ", ".join(KINDS))
    digest = fixed_bytes("digest", digest, 32)
    if not isinstance(original_kid, (bytes, bytearray)) or not 0 < len(original_kid) <= MAX_KID:
        raise ValidationError("original_kid", "must be 1..%d bytes" % MAX_KID)
    if verdict not in VERDICTS:
        raise ValidationError("verdict", "must be one of %s" % ", ".join(VERDICTS))
    if not is_int(time) or not 0 <= time < MAX_TIME:
        raise ValidationError("time", "must be an integer in [0, %d)" % MAX_TIME)
    return digest, bytes(original_kid)


def encode_body(gateway, kind, digest, original_kid, verdict, time):
    """The CBOR payload of a statement (deterministic)."""
    digest, original_kid = _check(gateway, kind, digest, original_kid, verdict, time)
    return cbor.dumps({L_VERSION: VERSION, L_GATEWAY: gateway, L_KIND: kind, L_DIGEST: digest,
                       L_KID: original_kid, L_VERDICT: verdict, L_TIME: time})


def decode_body(payload):
    """CBOR payload -> Reseal (signer_kid None). DecodeError / ValidationError / VersionError."""
    body = cbor.loads(payload, max_size=MAX_STATEMENT)
    if not isinstance(body, dict):
        raise ValidationError("reseal", "must be a map")
    for label in body:
        if not is_int(label) or label not in _LABELS:
            raise ValidationError("reseal", "unknown field %r" % (label,))
    for label in _LABELS:
        if label not in body:
            raise ValidationError("reseal", "field %d missing" % label)
    if not is_int(body[L_VERSION]) or body[L_VERSION] != VERSION:
        raise VersionError("reseal version %r is not supported (this side speaks %d)"
                           % (body[L_VERSION], VERSION))
    digest, kid = _check(body[L_GATEWAY], body[L_KIND], body[L_DIGEST], body[L_KID],
                         body[L_VERDICT], body[L_TIME])
    return Reseal(body[L_GATEWAY], body[L_KIND], digest, kid, body[L_VERDICT], body[L_TIME])


def create(seed, gateway, kind, original, original_kid, verdict, time):
    """Sign a statement about the `original` bytes with the current gateway seed."""
    if not isinstance(original, (bytes, bytearray)):
        raise ValidationError("original", "must be bytes")
    payload = encode_body(gateway, kind, crypto.sha256(bytes(original)), original_kid, verdict,
                          time)
    kid = cose.key_id(crypto.ed25519_public_key(seed))
    return cose.sign1_create(seed, payload, kid=kid, external_aad=RESEAL_AAD)


def signer_kid(statement):
    """The kid a statement claims to be signed with (no verification): to pick the key."""
    return cose.sign1_parse(statement, MAX_STATEMENT).kid


def verify(public_key, statement, original=None, gateway=None):
    """Verify a statement against the gateway public key -> Reseal. With `original`, its
    SHA-256 must be the statement's digest; with `gateway`, the ids must match.
    Raises SealError (signature, kid) or ValidationError (content, mismatch)."""
    kid = cose.key_id(public_key)
    msg = cose.sign1_verify(public_key, statement, external_aad=RESEAL_AAD, kid=kid,
                            max_size=MAX_STATEMENT)
    if msg.payload is None:
        raise ValidationError("reseal", "payload is detached")
    found = decode_body(msg.payload)
    found.signer_kid = kid
    if gateway is not None and found.gateway != gateway:
        raise ValidationError("gateway", "statement is for gateway %r, not %r"
                              % (found.gateway, gateway))
    if original is not None:
        if not isinstance(original, (bytes, bytearray)):
            raise ValidationError("original", "must be bytes")
        if not crypto.constant_time_equal(crypto.sha256(bytes(original)), found.digest):
            raise ValidationError("digest", "the stored item no longer matches the statement")
    return found
