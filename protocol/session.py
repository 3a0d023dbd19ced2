"""Session key agreement between a device and its gateway (no key crosses the link).

Two messages, carried as the bodies of the `hello` and `accept` envelopes of
protocol.messages (docs/seals.md has the byte-level layout and the reasoning):

    device  -> gateway  hello  {0: 1, 1: device id, 2: device nonce, 3: device X25519 key D,
                                4: kid of the gateway X25519 key G the device trusts}
    gateway -> device   accept {0: 1, 2: gateway nonce, 4: kid of G, 5: ephemeral X25519 key E,
                                [6: gateway time], 7: proof}

    ikm  = X25519(d, E) || X25519(d, G)     (the gateway computes X25519(e, D) || X25519(g, D))
    th   = SHA-256(cbor(hello) || cbor(accept without 7))
    okm  = HKDF-SHA256(ikm, salt = device nonce || gateway nonce,
                       info = "vitalbridge session v1" || th || G, 104 bytes)
         = device MAC key (32) | gateway MAC key (32) | confirm key (32) | session id (8)
    proof = HMAC-SHA256(confirm key, "vitalbridge accept proof" || th)

The ephemeral E gives forward secrecy against a later gateway compromise; the static term
X25519(d, G) authenticates the gateway to the device (only the holder of g can produce the
proof), and only the holder of d can compute the key, so every COSE_Mac0 that verifies under
it authenticates the device. The device pays one X25519 per session: it caches
X25519(d, G) (see `static_secret`), computed once per gateway key.

Pure functions and small state classes, no I/O. Runs on MicroPython.
"""


from protocol import cbor, crypto
from protocol.checks import fixed_bytes, hexstr, is_int
from protocol.cose import key_id
from protocol.errors import SealError, ValidationError, VersionError
from protocol.topics import check_id

HANDSHAKE_VERSION = 1
NONCE_SIZE = 16
KEY_SIZE = 32
SESSION_ID_SIZE = 8
PROOF_SIZE = 32

# Body labels (one namespace for both messages).
L_VERSION = 0
L_DEVICE_ID = 1
L_NONCE = 2
L_DEVICE_KEY = 3
L_GATEWAY_KID = 4
L_EPHEMERAL_KEY = 5
L_TIME = 6
L_PROOF = 7

_HELLO_LABELS = (L_VERSION, L_DEVICE_ID, L_NONCE, L_DEVICE_KEY, L_GATEWAY_KID)
_ACCEPT_LABELS = (L_VERSION, L_NONCE, L_GATEWAY_KID, L_EPHEMERAL_KEY, L_TIME, L_PROOF)

KDF_INFO = b"vitalbridge session v1"
PROOF_LABEL = b"vitalbridge accept proof"
_OKM_SIZE = 3 * KEY_SIZE + SESSION_ID_SIZE




def _check_body(body, allowed, what):
    if not isinstance(body, dict):
        raise ValidationError(what, "must be a map, not %s" % type(body).__name__)
    for label in body:
        if not is_int(label) or label not in allowed:
            raise ValidationError(what, "unknown field %r" % (label,))
    if L_VERSION not in body:
        raise ValidationError("version", "missing from %s" % what)
    version = body[L_VERSION]
    if not is_int(version):
        raise ValidationError("version", "must be an integer")
    if version != HANDSHAKE_VERSION:
        raise VersionError(
            "handshake version %d is not supported (this side speaks %d)"
            % (version, HANDSHAKE_VERSION)
        )


def _required(body, label, field, what):
    if label not in body:
        raise ValidationError(field, "missing from %s" % what)
    return body[label]


class Hello:
    """A validated hello body."""

    def __init__(self, device_id, nonce, device_key, gateway_kid):
        self.device_id = device_id
        self.nonce = nonce
        self.device_key = device_key
        self.gateway_kid = gateway_kid

    def body(self):
        return {
            L_VERSION: HANDSHAKE_VERSION,
            L_DEVICE_ID: self.device_id,
            L_NONCE: self.nonce,
            L_DEVICE_KEY: self.device_key,
            L_GATEWAY_KID: self.gateway_kid,
        }


class Accept:
    """A validated accept body (proof not yet checked)."""

    def __init__(self, nonce, gateway_kid, ephemeral_key, time, proof):
        self.nonce = nonce
        self.gateway_kid = gateway_kid
        self.ephemeral_key = ephemeral_key
        self.time = time
        self.proof = proof

    def core(self):
        """The body without the proof: the part the transcript hash covers."""
        body = {
            L_VERSION: HANDSHAKE_VERSION,
            L_NONCE: self.nonce,
            L_GATEWAY_KID: self.gateway_kid,
            L_EPHEMERAL_KEY: self.ephemeral_key,
        }
        if self.time is not None:
            body[L_TIME] = self.time
        return body

    def body(self):
        body = self.core()
        body[L_PROOF] = self.proof
        return body


def parse_hello(body):
    """Validate a hello body (the decoded map) -> Hello. Raises ProtocolError subclasses."""
    _check_body(body, _HELLO_LABELS, "hello")
    device_id = check_id("device_id", _required(body, L_DEVICE_ID, "device_id", "hello"))
    nonce = fixed_bytes("nonce", _required(body, L_NONCE, "nonce", "hello"), NONCE_SIZE)
    device_key = fixed_bytes(
        "device_key", _required(body, L_DEVICE_KEY, "device_key", "hello"), KEY_SIZE
    )
    gateway_kid = fixed_bytes(
        "gateway_kid", _required(body, L_GATEWAY_KID, "gateway_kid", "hello"), SESSION_ID_SIZE
    )
    return Hello(device_id, nonce, device_key, gateway_kid)


def parse_accept(body):
    """Validate an accept body (the decoded map) -> Accept. Raises ProtocolError subclasses."""
    _check_body(body, _ACCEPT_LABELS, "accept")
    nonce = fixed_bytes("nonce", _required(body, L_NONCE, "nonce", "accept"), NONCE_SIZE)
    gateway_kid = fixed_bytes(
        "gateway_kid", _required(body, L_GATEWAY_KID, "gateway_kid", "accept"), SESSION_ID_SIZE
    )
    ephemeral = fixed_bytes(
        "ephemeral_key", _required(body, L_EPHEMERAL_KEY, "ephemeral_key", "accept"), KEY_SIZE
    )
    time = body.get(L_TIME)
    if L_TIME in body and (not is_int(time) or time < 0):
        raise ValidationError("time", "must be a non-negative integer")
    proof = fixed_bytes("proof", _required(body, L_PROOF, "proof", "accept"), PROOF_SIZE)
    return Accept(nonce, gateway_kid, ephemeral, time, proof)


def transcript_hash(hello, accept):
    """SHA-256 over the deterministic CBOR of the hello and the accept without its proof."""
    return crypto.sha256(cbor.dumps(hello.body()) + cbor.dumps(accept.core()))


class SessionKeys:
    """The HKDF output split into its parts."""

    def __init__(self, okm):
        self.device_mac_key = okm[0:32]
        self.gateway_mac_key = okm[32:64]
        self.confirm_key = okm[64:96]
        self.session_id = okm[96:104]

    def proof(self, th):
        return crypto.hmac_sha256(self.confirm_key, PROOF_LABEL + th)


def derive_keys(dh_ephemeral, dh_static, device_nonce, gateway_nonce, th, gateway_public):
    """HKDF-SHA256 over both DH results; salt and info bind nonces, transcript and G."""
    ikm = bytes(dh_ephemeral) + bytes(dh_static)
    salt = bytes(device_nonce) + bytes(gateway_nonce)
    info = KDF_INFO + bytes(th) + bytes(gateway_public)
    return SessionKeys(crypto.hkdf_sha256(ikm, salt, info, _OKM_SIZE))


class Session:
    """An established session. `session_id` is the kid of every COSE_Mac0 sealed under it.

    device_mac_key seals device -> gateway messages, gateway_mac_key the other direction
    (separate keys, so a message can never be reflected back to its sender).
    gateway_time is the authenticated clock the gateway sent (None if it sent none).
    """

    def __init__(self, role, device_id, keys, gateway_time):
        self.role = role
        self.device_id = device_id
        self.session_id = keys.session_id
        self.device_mac_key = keys.device_mac_key
        self.gateway_mac_key = keys.gateway_mac_key
        self.gateway_time = gateway_time

    @property
    def kid(self):
        return self.session_id

    def __repr__(self):
        # Keys are deliberately left out of the repr (logs must never show them).
        return "<Session %s device=%s id=%s>" % (self.role, self.device_id, hexstr(self.session_id))



def static_secret(private_key, peer_public):
    """X25519(private, peer): the device caches this per gateway key (one X25519 saved per
    session). Raises SealError for a low-order peer key."""
    return crypto.x25519_shared(
        fixed_bytes("private_key", private_key, KEY_SIZE),
        fixed_bytes("peer_public", peer_public, KEY_SIZE),
    )


class DeviceHandshake:
    """Device side: hello() to send, finish(accept body) -> Session.

    static_private/static_public: the device's long-term X25519 key pair (pass the public
    key to spare an X25519 base multiplication). gateway_public: the gateway X25519 key
    from its certificate. static_secret: cached X25519(d, G), computed here if omitted.
    nonce: only for tests; a fresh random 16 bytes otherwise.
    """

    def __init__(self, device_id, static_private, gateway_public, static_public=None,
                 static_secret=None, nonce=None):
        check_id("device_id", device_id)
        self._private = fixed_bytes("static_private", static_private, KEY_SIZE)
        self._gateway_public = fixed_bytes("gateway_public", gateway_public, KEY_SIZE)
        if static_public is None:
            static_public = crypto.x25519_public_key(self._private)
        if static_secret is not None:
            static_secret = fixed_bytes("static_secret", static_secret, KEY_SIZE)
        self._static_secret = static_secret
        if nonce is None:
            nonce = crypto.random_bytes(NONCE_SIZE)
        self._hello = Hello(
            device_id,
            fixed_bytes("nonce", nonce, NONCE_SIZE),
            fixed_bytes("static_public", static_public, KEY_SIZE),
            key_id(self._gateway_public),
        )
        self.session = None

    def hello(self):
        """The hello body (a map) to send in a `hello` envelope."""
        return self._hello.body()

    def finish(self, accept_body):
        """Check the gateway's accept -> Session. SealError if the proof does not verify;
        a failed accept leaves the handshake usable for the genuine one."""
        if self.session is not None:
            raise ValidationError("accept", "handshake already finished")
        accept = parse_accept(accept_body)
        if accept.gateway_kid != self._hello.gateway_kid:
            raise SealError(
                "accept from gateway key %s, expected %s"
                % (hexstr(accept.gateway_kid), hexstr(self._hello.gateway_kid))
            )
        dh_ephemeral = crypto.x25519_shared(self._private, accept.ephemeral_key)
        if self._static_secret is None:
            self._static_secret = crypto.x25519_shared(self._private, self._gateway_public)
        th = transcript_hash(self._hello, accept)
        keys = derive_keys(
            dh_ephemeral, self._static_secret, self._hello.nonce, accept.nonce, th,
            self._gateway_public,
        )
        if not crypto.constant_time_equal(keys.proof(th), accept.proof):
            raise SealError("accept proof invalid")
        self.session = Session("device", self._hello.device_id, keys, accept.time)
        return self.session


def gateway_accept(hello, device_public, static_private, static_public=None, now=None,
                   static_secret=None, ephemeral_private=None, nonce=None):
    """Gateway side: answer a hello -> (Session, accept body).

    hello: the hello body (map) or a parsed Hello. device_public: the device's X25519 key
    from its verified certificate. static_private/static_public: the gateway's long-term
    X25519 key pair. now: integer POSIX time to hand the device, or None.
    static_secret: cached X25519(g, D). ephemeral_private/nonce: only for tests.
    The session is usable at once: a COSE_Mac0 that verifies under its device_mac_key
    proves the device holds its key.
    """
    if not isinstance(hello, Hello):
        hello = parse_hello(hello)
    device_public = fixed_bytes("device_public", device_public, KEY_SIZE)
    static_private = fixed_bytes("static_private", static_private, KEY_SIZE)
    if static_public is None:
        static_public = crypto.x25519_public_key(static_private)
    static_public = fixed_bytes("static_public", static_public, KEY_SIZE)
    if hello.device_key != device_public:
        raise SealError("device key in hello does not match its certificate")
    own_kid = key_id(static_public)
    if hello.gateway_kid != own_kid:
        raise SealError(
            "hello addressed to gateway key %s, this gateway is %s"
            % (hexstr(hello.gateway_kid), hexstr(own_kid))
        )
    if now is not None and (not is_int(now) or now < 0):
        raise ValidationError("now", "must be a non-negative integer")
    if ephemeral_private is None:
        ephemeral_private = crypto.random_bytes(KEY_SIZE)
    ephemeral_private = fixed_bytes("ephemeral_private", ephemeral_private, KEY_SIZE)
    if nonce is None:
        nonce = crypto.random_bytes(NONCE_SIZE)
    nonce = fixed_bytes("nonce", nonce, NONCE_SIZE)
    if static_secret is None:
        static_secret = crypto.x25519_shared(static_private, device_public)
    static_secret = fixed_bytes("static_secret", static_secret, KEY_SIZE)
    dh_ephemeral = crypto.x25519_shared(ephemeral_private, device_public)
    accept = Accept(nonce, own_kid, crypto.x25519_public_key(ephemeral_private), now, None)
    th = transcript_hash(hello, accept)
    keys = derive_keys(dh_ephemeral, static_secret, hello.nonce, nonce, th, static_public)
    accept.proof = keys.proof(th)
    return Session("gateway", hello.device_id, keys, now), accept.body()
