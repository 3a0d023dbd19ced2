"""The device's long-term keys: made here from the injected hardware RNG, kept in one
private flash file per key, used only through sign and agree operations, rotated and
destroyed on command. No method returns a private key.

A key pair is an Ed25519 signing key (checkpoints, enrollment requests) and an X25519
agreement key (session handshakes), generated together. Life of a pair:

    pending   generated (provisioning or rotation); signs only its own enrollment request
    active    its certificate is installed (activate); the previous pair becomes retired
    retired   kept, unusable, until the gateway says destroy (key by key)
    (gone)    destroy: file overwritten with random bytes, then zeros, synced, deleted

Every step returns event dicts ({"event": "key-generated", "time": t, "kid": ..., ...})
for device-event messages: key-generated, key-activated, key-retired, key-destroyed,
key-absent, tamper. A key file that fails its CRC, does not match its name or is missing
from an active pair is reported as tamper (the device cannot tell bit rot from an attack).
docs/firmware-identity.md states what this protects and what it does not.

Key file <kid hex>.key: a fileio record holding the CBOR map {0: 1, 1: purpose,
2: private, 3: public, 4: state, 5: created, 6: activated, 7: retired, 8: partner kid}.
"""

import os

from firmware import fileio
from protocol import cbor, crypto
from protocol.checks import hexstr
from protocol.cose import key_id, sign1_create
from protocol.session import DeviceHandshake

SIGN = "sign"
AGREE = "agree"
PENDING = "pending"
ACTIVE = "active"
RETIRED = "retired"
KEY_SUFFIX = ".key"
KEY_SIZE = 32
FILE_VERSION = 1
_SHARED_CACHE = 4

F_VERSION = 0
F_PURPOSE = 1
F_PRIVATE = 2
F_PUBLIC = 3
F_STATE = 4
F_CREATED = 5
F_ACTIVATED = 6
F_RETIRED = 7
F_PARTNER = 8


class KeyStoreError(Exception):
    """A key operation that cannot be done (unknown or wrong-state key, broken RNG)."""


def _event(name, time, **details):
    details["event"] = name
    details["time"] = time
    return details


class _Key:
    """One key. The private bytes live in a bytearray so destroy() can zero them in RAM."""

    def __init__(self, purpose, private, public, state, created, activated=None, retired=None,
                 partner=None):
        self.purpose = purpose
        self._private = bytearray(private)
        self.public = bytes(public)
        self.kid = key_id(self.public)
        self.state = state
        self.created = created
        self.activated = activated
        self.retired = retired
        self.partner = partner

    def info(self):
        """Everything about the key except its private bytes."""
        return {"kid": self.kid, "purpose": self.purpose, "state": self.state,
                "public": self.public, "created": self.created, "activated": self.activated,
                "retired": self.retired, "partner": self.partner}

    def payload(self):
        return cbor.dumps({
            F_VERSION: FILE_VERSION, F_PURPOSE: self.purpose, F_PRIVATE: bytes(self._private),
            F_PUBLIC: self.public, F_STATE: self.state, F_CREATED: self.created,
            F_ACTIVATED: self.activated, F_RETIRED: self.retired, F_PARTNER: self.partner,
        })

    def wipe(self):
        for i in range(len(self._private)):
            self._private[i] = 0

    def __repr__(self):
        return "<Key %s %s %s>" % (self.purpose, hexstr(self.kid), self.state)


def _key_from_payload(payload):
    """Decode a key file payload -> _Key, or None if it is not a well-formed key."""
    try:
        m = cbor.loads(payload)
    except ValueError:
        return None
    if not isinstance(m, dict) or m.get(F_VERSION) != FILE_VERSION:
        return None
    purpose = m.get(F_PURPOSE)
    private = m.get(F_PRIVATE)
    public = m.get(F_PUBLIC)
    state = m.get(F_STATE)
    created = m.get(F_CREATED)
    if (purpose not in (SIGN, AGREE) or state not in (PENDING, ACTIVE, RETIRED)
            or not isinstance(private, bytes) or len(private) != KEY_SIZE
            or not isinstance(public, bytes) or len(public) != KEY_SIZE
            or not isinstance(created, int)
            or not isinstance(m.get(F_PARTNER), bytes)):
        return None
    return _Key(purpose, private, public, state, created, m.get(F_ACTIVATED), m.get(F_RETIRED),
                m.get(F_PARTNER))


class KeyStore:
    """Keys under `directory`. random_bytes(n): the hardware RNG; now(): int seconds."""

    def __init__(self, directory, random_bytes, now):
        self._dir = directory
        self._random = random_bytes
        self._now = now
        self._keys = {}
        self._shared = []  # [(kid, peer public, secret)], newest last

    def __repr__(self):
        return "<KeyStore %s: %s>" % (self._dir, ", ".join([repr(k) for k in self._keys.values()]))

    # ------------------------------------------------------------ persistence

    def _path(self, kid):
        return "%s/%s%s" % (self._dir, hexstr(kid), KEY_SUFFIX)

    def _save(self, key):
        fileio.write_record(self._path(key.kid), key.payload())

    def load(self):
        """Read every key file -> events (tamper for each unusable file). Call at boot."""
        fileio.make_dirs(self._dir)
        self._keys = {}
        self._shared = []
        events = []
        now = self._now()
        names = {}
        for name in os.listdir(self._dir):
            if name.endswith(KEY_SUFFIX + fileio.TMP_SUFFIX):
                names[name[: -len(fileio.TMP_SUFFIX)]] = True
            elif name.endswith(KEY_SUFFIX):
                names[name] = True
        for name in sorted(names):
            events.extend(self._load_file(name, now))
        events.extend(self._normalise(now))
        return events

    def _load_file(self, name, now):
        path = self._dir + "/" + name
        payload, state = fileio.read_record(path)
        if state == fileio.MISSING:
            # The first write of a new key was cut: it was never used, nothing to report.
            fileio.shred(path + fileio.TMP_SUFFIX, self._random)
            return []
        key = _key_from_payload(payload) if payload is not None else None
        cause = None
        if payload is None:
            cause = "key-file-corrupt"
        elif key is None:
            cause = "key-file-invalid"
        elif hexstr(key.kid) + KEY_SUFFIX != name:
            cause = "key-file-mismatch"
        if cause is not None:
            # The file may still hold private bytes: never leave them behind.
            fileio.shred(path, self._random)
            fileio.shred(path + fileio.TMP_SUFFIX, self._random)
            return [_event("tamper", now, cause=cause, file=name)]
        if state == fileio.FROM_TMP:
            self._save(key)  # finish the interrupted write
        else:
            fileio.shred(path + fileio.TMP_SUFFIX, self._random)  # stale copy of a key
        self._keys[key.kid] = key
        return []

    def _normalise(self, now):
        """Repair what a power cut between two key-file writes can leave behind."""
        events = []
        for purpose in (SIGN, AGREE):
            actives = self._by_state(purpose, ACTIVE)
            actives.sort(key=lambda k: (k.activated or 0, k.kid))
            for key in actives[:-1]:
                events.extend(self._retire(key, now))
            pendings = self._by_state(purpose, PENDING)
            pendings.sort(key=lambda k: (k.created, k.kid))
            for key in pendings[:-1]:
                events.extend(self._destroy_key(key, now))
        for key in list(self._keys.values()):
            if key.partner in self._keys:
                continue
            if key.state == PENDING:
                # Generation of the pair was cut: the half pair was never certified.
                events.extend(self._destroy_key(key, now))
            elif key.state == ACTIVE:
                events.append(_event("tamper", now, cause="key-missing", kid=key.partner))
        return events

    def _by_state(self, purpose, state):
        return [k for k in self._keys.values() if k.purpose == purpose and k.state == state]

    def _one(self, purpose, state):
        keys = self._by_state(purpose, state)
        return keys[0] if keys else None

    # ------------------------------------------------------------ queries (public parts only)

    def keys(self):
        """Info dicts (no private bytes) of every key, oldest first."""
        keys = list(self._keys.values())
        keys.sort(key=lambda k: (k.created, k.purpose, k.kid))
        return [k.info() for k in keys]

    def key(self, kid):
        key = self._keys.get(bytes(kid))
        return None if key is None else key.info()

    def find(self, purpose, state):
        """Info of the key with this purpose and state (active/pending), or None."""
        key = self._one(purpose, state)
        return None if key is None else key.info()

    # ------------------------------------------------------------ lifecycle

    def _fresh_secret(self):
        raw = self._random(KEY_SIZE)
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_SIZE:
            raise KeyStoreError("RNG must return %d bytes" % KEY_SIZE)
        raw = bytes(raw)
        if raw == raw[:1] * KEY_SIZE:
            raise KeyStoreError("RNG output is constant: refusing to make a key")
        for key in self._keys.values():
            if bytes(key._private) == raw:
                raise KeyStoreError("RNG repeated an earlier output: refusing to make a key")
        return raw

    def _generate_pair(self, now):
        seed = self._fresh_secret()
        sign = _Key(SIGN, seed, crypto.ed25519_public_key(seed), PENDING, now)
        self._keys[sign.kid] = sign  # so the repeat check below sees the seed
        try:
            private = self._fresh_secret()
        finally:
            del self._keys[sign.kid]
        agree = _Key(AGREE, private, crypto.x25519_public_key(private), PENDING, now)
        sign.partner = agree.kid
        agree.partner = sign.kid
        events = []
        for key in (sign, agree):
            self._save(key)
            self._keys[key.kid] = key
            events.append(_event("key-generated", now, kid=key.kid, purpose=key.purpose,
                                 state=PENDING))
        return events

    def provision(self):
        """First key pair (pending) if the device has none -> events ([] if it has keys)."""
        if self._one(SIGN, ACTIVE) or self._one(SIGN, PENDING):
            return []
        return self._generate_pair(self._now())

    def rotate(self):
        """A new pending pair; an older pending pair (never certified) is destroyed first.
        The active pair stays in use until activate() installs the new one."""
        now = self._now()
        events = []
        for purpose in (SIGN, AGREE):
            for key in self._by_state(purpose, PENDING):
                events.extend(self._destroy_key(key, now))
        return events + self._generate_pair(now)

    def activate(self, sign_kid):
        """Make the pending pair whose signing key is `sign_kid` active and retire the
        current active pair -> events. Idempotent for the already active pair."""
        now = self._now()
        sign = self._keys.get(bytes(sign_kid))
        if sign is None or sign.purpose != SIGN:
            raise KeyStoreError("no signing key %s" % hexstr(bytes(sign_kid)))
        if sign.state == ACTIVE:
            return []
        if sign.state != PENDING:
            raise KeyStoreError("key %s is %s, not pending" % (hexstr(sign.kid), sign.state))
        agree = self._keys.get(sign.partner)
        if agree is None or agree.state != PENDING:
            raise KeyStoreError("agreement key of %s is missing" % hexstr(sign.kid))
        old = [k for k in self._keys.values() if k.state == ACTIVE]
        events = []
        # New pair first: a cut after this leaves two active pairs, and load() keeps the
        # newer; the other order could leave none.
        for key in (sign, agree):
            key.state = ACTIVE
            key.activated = now
            self._save(key)
            events.append(_event("key-activated", now, kid=key.kid, purpose=key.purpose))
        for key in old:
            events.extend(self._retire(key, now))
        return events

    def _retire(self, key, now):
        key.state = RETIRED
        key.retired = now
        self._save(key)
        self._forget_shared(key.kid)
        return [_event("key-retired", now, kid=key.kid, purpose=key.purpose)]

    def destroy(self, kid):
        """Destroy a retired (or pending) key -> events. The active key is refused: rotate
        first. An unknown kid yields a key-absent event (there is no file for it)."""
        now = self._now()
        key = self._keys.get(bytes(kid))
        if key is None:
            return [_event("key-absent", now, kid=bytes(kid))]
        if key.state == ACTIVE:
            raise KeyStoreError("key %s is active: rotate before destroying it" % hexstr(key.kid))
        return self._destroy_key(key, now)

    def _destroy_key(self, key, now):
        path = self._path(key.kid)
        overwritten = fileio.shred(path, self._random)
        fileio.shred(path + fileio.TMP_SUFFIX, self._random)
        removed = not fileio.exists(path)
        key.wipe()
        self._forget_shared(key.kid)
        del self._keys[key.kid]
        return [_event("key-destroyed", now, kid=key.kid, purpose=key.purpose,
                       bytes=overwritten, passes=2, removed=removed)]

    def zeroize(self, cause):
        """Tamper response: report, then destroy every key, the active ones included."""
        now = self._now()
        events = [_event("tamper", now, cause=cause)]
        for key in list(self._keys.values()):
            events.extend(self._destroy_key(key, now))
        return events

    # ------------------------------------------------------------ operations

    def _usable(self, purpose, kid):
        if kid is None:
            key = self._one(purpose, ACTIVE)
            if key is None:
                raise KeyStoreError("no active %s key" % purpose)
            return key
        key = self._keys.get(bytes(kid))
        if key is None or key.purpose != purpose:
            raise KeyStoreError("no %s key %s" % (purpose, hexstr(bytes(kid))))
        if key.state == RETIRED:
            raise KeyStoreError("key %s is retired" % hexstr(key.kid))
        return key

    def sign1(self, payload, external_aad=b"", kid=None, detached=False, content_type=None):
        """COSE_Sign1 over payload by the active signing key (or the pending/active key
        `kid`); the message's kid names the key."""
        key = self._usable(SIGN, kid)
        return sign1_create(bytes(key._private), payload, kid=key.kid, external_aad=external_aad,
                            detached=detached, content_type=content_type)

    def sign_checkpoint(self, chain, device_id, time):
        """chain.checkpoint(...) signed by the active signing key -> COSE_Sign1 bytes."""
        key = self._usable(SIGN, None)
        return chain.checkpoint(bytes(key._private), device_id, time, key.kid)

    def agree(self, peer_public, kid=None):
        """X25519 shared secret of the active (or pending/active `kid`) agreement key with
        peer_public; cached per peer (an X25519 costs ~0.5 s on an ESP32)."""
        key = self._usable(AGREE, kid)
        peer = bytes(peer_public)
        for cached_kid, cached_peer, secret in self._shared:
            if cached_kid == key.kid and cached_peer == peer:
                return secret
        secret = crypto.x25519_shared(bytes(key._private), peer)
        self._shared.append((key.kid, peer, secret))
        if len(self._shared) > _SHARED_CACHE:
            self._shared.pop(0)
        return secret

    def _forget_shared(self, kid):
        self._shared = [entry for entry in self._shared if entry[0] != kid]

    def handshake(self, device_id, gateway_public, nonce=None):
        """A protocol.session.DeviceHandshake with the active agreement key."""
        key = self._usable(AGREE, None)
        return DeviceHandshake(device_id, bytes(key._private), gateway_public,
                               static_public=key.public,
                               static_secret=self.agree(gateway_public), nonce=nonce)
