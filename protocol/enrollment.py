"""Device enrollment on the wire: the gateway's challenge, the device's signed request with
proof of possession of both keys, the confirmation code both sides show, and the delivery of
the issued certificate. docs/firmware-identity.md has the flow and the reasons.

    challenge (args of the device-command "enroll" or "rotate-keys"), gateway -> device
        {0: 1, 1: gateway id, 2: gateway Ed25519 key, 3: gateway X25519 key,
         4: nonce (16 bytes), 5: gateway time}
    enroll-request body, device -> gateway:  {1: request, [2: endorsement]}
        request = COSE_Sign1 (EdDSA by the device's new signing key, kid = key_id(it),
                  external AAD "vitalbridge enroll v1") over the CBOR map
        {0: 1, 1: device id, 2: model, 3: serial, 4: firmware version, 5: Ed25519 key,
         6: X25519 key, 7: challenge nonce, 8: device time, 9: agreement proof}
        agreement proof = HMAC-SHA256(K, cbor(that map without 9)),
        K = HKDF-SHA256(X25519(device x, gateway X), salt = nonce,
                        info = "vitalbridge enroll pop v1" || gateway X25519 key, 32)
        endorsement (key rotation) = COSE_Sign1 by the device's previous signing key over
                  the request bytes (detached payload), external AAD "vitalbridge renewal v1"
    certificate body, gateway -> device: {0: 1, 1: device CWT, 2: gateway CWT,
                                          3: gateway X25519 key}
    code = "%06d" % (uint64(SHA-256("vitalbridge confirmation code v1" || device Ed25519 key
            || device X25519 key || gateway Ed25519 key || gateway X25519 key || nonce)[:8])
            mod 10**6)

The signature proves possession of the signing key, the HMAC that of the agreement key
(only its holder can compute X25519(x, G)); the nonce makes both fresh. The code binds both
parties' keys, so a technician who sees the same six digits on the device and on the CLI
knows no one in between substituted a key.

The device never hands a private key to this module: it passes `sign` and `agree`
callables. Decoders raise only ProtocolError subclasses. Runs on MicroPython.
"""

from protocol import cbor, crypto
from protocol.checks import fixed_bytes, is_int
from protocol.cose import key_id, sign1_parse, sign1_verify
from protocol.cwt import parse_cwt, verify_cwt
from protocol.errors import CertificateError, SealError, ValidationError, VersionError
from protocol.topics import check_id

ENROLL_VERSION = 1
NONCE_SIZE = 16
KEY_SIZE = 32
PROOF_SIZE = 32
MAX_TEXT = 64
MAX_TIME = 1 << 40
MAX_SIGNED = 1024      # a request is ~330 bytes
MAX_CERTIFICATE = 2048  # a CWT is ~300 bytes
CLOCK_SKEW = 600       # seconds a certificate's nbf may lie after the reference time

ENROLL_AAD = b"vitalbridge enroll v1"
RENEWAL_AAD = b"vitalbridge renewal v1"
POP_INFO = b"vitalbridge enroll pop v1"
CODE_DOMAIN = b"vitalbridge confirmation code v1"
CODE_DIGITS = 6

# challenge labels
C_VERSION = 0
C_GATEWAY_ID = 1
C_SIGN_KEY = 2
C_AGREE_KEY = 3
C_NONCE = 4
C_TIME = 5
_CHALLENGE_LABELS = (C_VERSION, C_GATEWAY_ID, C_SIGN_KEY, C_AGREE_KEY, C_NONCE, C_TIME)

# request labels
R_VERSION = 0
R_DEVICE_ID = 1
R_MODEL = 2
R_SERIAL = 3
R_FIRMWARE = 4
R_SIGN_KEY = 5
R_AGREE_KEY = 6
R_NONCE = 7
R_TIME = 8
R_PROOF = 9
_REQUEST_LABELS = (R_VERSION, R_DEVICE_ID, R_MODEL, R_SERIAL, R_FIRMWARE, R_SIGN_KEY,
                   R_AGREE_KEY, R_NONCE, R_TIME, R_PROOF)

# enroll-request envelope body labels
B_REQUEST = 1
B_ENDORSEMENT = 2

# certificate delivery labels
D_VERSION = 0
D_DEVICE_CERT = 1
D_GATEWAY_CERT = 2
D_AGREE_KEY = 3
_DELIVERY_LABELS = (D_VERSION, D_DEVICE_CERT, D_GATEWAY_CERT, D_AGREE_KEY)


# ------------------------------------------------ field checks (shared with device_link)


def body_map(body, allowed, what, version=None):
    """`body` must be a map whose keys are among the int labels `allowed`; when `version`
    is given, label 0 must hold exactly it (VersionError otherwise)."""
    if not isinstance(body, dict):
        raise ValidationError(what, "must be a map, not %s" % type(body).__name__)
    for label in body:
        if not is_int(label) or label not in allowed:
            raise ValidationError(what, "unknown field %r" % (label,))
    if version is not None:
        got = required(body, 0, "version", what)
        if not is_int(got):
            raise ValidationError("version", "must be an integer")
        if got != version:
            raise VersionError("%s version %d is not supported (this side speaks %d)"
                               % (what, got, version))
    return body


def required(body, label, field, what):
    if label not in body:
        raise ValidationError(field, "missing from %s" % what)
    return body[label]


def uint_field(field, value, limit):
    if not is_int(value) or value < 0 or value >= limit:
        raise ValidationError(field, "must be an integer in [0, %d)" % limit)
    return value


def bytes_field(field, value, max_size):
    """Bytes of at most max_size (fixed sizes: protocol.checks.fixed_bytes)."""
    if not isinstance(value, (bytes, bytearray)):
        raise ValidationError(field, "must be bytes, not %s" % type(value).__name__)
    if len(value) > max_size:
        raise ValidationError(field, "longer than %d bytes" % max_size)
    return bytes(value)


def text_field(field, value, max_len=MAX_TEXT):
    """Printable ASCII text (it is shown on technicians' screens: no control characters)."""
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ValidationError(field, "must be text of 1..%d characters" % max_len)
    for ch in value:
        if ch < " " or ch > "~":
            raise ValidationError(field, "only printable ASCII is allowed")
    return value


# ---------------------------------------------------------------- challenge


class Challenge:
    """The gateway's enrollment challenge: who it is, its keys, a fresh nonce, its clock."""

    def __init__(self, gateway_id, sign_key, agree_key, nonce, time):
        self.gateway_id = check_id("gateway_id", gateway_id)
        self.sign_key = fixed_bytes("sign_key", sign_key, KEY_SIZE)
        self.agree_key = fixed_bytes("agree_key", agree_key, KEY_SIZE)
        self.nonce = fixed_bytes("nonce", nonce, NONCE_SIZE)
        self.time = uint_field("time", time, MAX_TIME)

    def to_map(self):
        return {
            C_VERSION: ENROLL_VERSION,
            C_GATEWAY_ID: self.gateway_id,
            C_SIGN_KEY: self.sign_key,
            C_AGREE_KEY: self.agree_key,
            C_NONCE: self.nonce,
            C_TIME: self.time,
        }


def make_challenge(gateway_id, sign_key, agree_key, time, nonce=None):
    """A challenge with a fresh random nonce (pass `nonce` only in tests)."""
    if nonce is None:
        nonce = crypto.random_bytes(NONCE_SIZE)
    return Challenge(gateway_id, sign_key, agree_key, nonce, time)


def parse_challenge(body):
    """Validate a decoded challenge map -> Challenge. Raises ProtocolError subclasses."""
    body_map(body, _CHALLENGE_LABELS, "challenge", ENROLL_VERSION)
    return Challenge(
        required(body, C_GATEWAY_ID, "gateway_id", "challenge"),
        required(body, C_SIGN_KEY, "sign_key", "challenge"),
        required(body, C_AGREE_KEY, "agree_key", "challenge"),
        required(body, C_NONCE, "nonce", "challenge"),
        required(body, C_TIME, "time", "challenge"),
    )


# ---------------------------------------------------------------- confirmation code


def confirmation_code(device_sign_key, device_agree_key, gateway_sign_key, gateway_agree_key,
                      nonce):
    """The six decimal digits both sides show ("012345"); the 64-bit reduction keeps the
    modulo bias below 2**-44."""
    digest = crypto.sha256(
        CODE_DOMAIN
        + fixed_bytes("device_sign_key", device_sign_key, KEY_SIZE)
        + fixed_bytes("device_agree_key", device_agree_key, KEY_SIZE)
        + fixed_bytes("gateway_sign_key", gateway_sign_key, KEY_SIZE)
        + fixed_bytes("gateway_agree_key", gateway_agree_key, KEY_SIZE)
        + fixed_bytes("nonce", nonce, NONCE_SIZE)
    )
    value = int.from_bytes(digest[:8], "big") % (10 ** CODE_DIGITS)
    return "%06d" % value


def request_code(request, challenge):
    """The code for a parsed request answering `challenge` (what the technician's CLI shows)."""
    return confirmation_code(request.sign_key, request.agree_key, challenge.sign_key,
                             challenge.agree_key, challenge.nonce)


# ---------------------------------------------------------------- request


def agreement_proof(shared_secret, nonce, gateway_agree_key, core_bytes):
    """HMAC proving the holder of the device X25519 key computed X25519(x, G)."""
    key = crypto.hkdf_sha256(shared_secret, nonce, POP_INFO + gateway_agree_key, 32)
    return crypto.hmac_sha256(key, core_bytes)


class EnrollRequest:
    """A structurally valid enrollment request. `verified` is True only from verify_request;
    `endorsed` only when the previous key's endorsement verified too."""

    def __init__(self, claims, raw_request, endorsement, endorsement_kid):
        self.raw_request = raw_request
        self.endorsement = endorsement
        self.endorsement_kid = endorsement_kid
        self.device_id = check_id("device_id", required(claims, R_DEVICE_ID, "device_id",
                                                        "request"))
        self.model = text_field("model", required(claims, R_MODEL, "model", "request"))
        self.serial = text_field("serial", required(claims, R_SERIAL, "serial", "request"))
        self.firmware = text_field("firmware", required(claims, R_FIRMWARE, "firmware",
                                                        "request"))
        self.sign_key = fixed_bytes("sign_key", required(claims, R_SIGN_KEY, "sign_key",
                                                         "request"), KEY_SIZE)
        self.agree_key = fixed_bytes("agree_key", required(claims, R_AGREE_KEY, "agree_key",
                                                           "request"), KEY_SIZE)
        self.nonce = fixed_bytes("nonce", required(claims, R_NONCE, "nonce", "request"),
                                 NONCE_SIZE)
        self.time = uint_field("time", required(claims, R_TIME, "time", "request"), MAX_TIME)
        self.proof = fixed_bytes("proof", required(claims, R_PROOF, "proof", "request"),
                                 PROOF_SIZE)
        core = dict(claims)
        del core[R_PROOF]
        self.core_bytes = cbor.dumps(core)
        self.verified = False
        self.endorsed = False

    @property
    def sign_kid(self):
        return key_id(self.sign_key)

    @property
    def agree_kid(self):
        return key_id(self.agree_key)

    def __repr__(self):
        return "<EnrollRequest %s model=%s serial=%s verified=%s>" % (
            self.device_id, self.model, self.serial, self.verified)


def build_request(challenge, device_id, model, serial, firmware, sign_key, agree_key, time,
                  sign, agree, endorse=None):
    """Device side: the enroll-request body (a map) answering `challenge`.

    sign_key/agree_key: the new public keys. sign(payload, external_aad) -> COSE_Sign1
    bytes by the new signing key with kid = key_id(sign_key); agree(peer_public) ->
    X25519 shared secret with the new agreement key; endorse(payload, external_aad) ->
    detached COSE_Sign1 by the previous signing key (key rotation only).
    """
    claims = {
        R_VERSION: ENROLL_VERSION,
        R_DEVICE_ID: check_id("device_id", device_id),
        R_MODEL: text_field("model", model),
        R_SERIAL: text_field("serial", serial),
        R_FIRMWARE: text_field("firmware", firmware),
        R_SIGN_KEY: fixed_bytes("sign_key", sign_key, KEY_SIZE),
        R_AGREE_KEY: fixed_bytes("agree_key", agree_key, KEY_SIZE),
        R_NONCE: challenge.nonce,
        R_TIME: uint_field("time", time, MAX_TIME),
    }
    shared = agree(challenge.agree_key)
    claims[R_PROOF] = agreement_proof(shared, challenge.nonce, challenge.agree_key,
                                      cbor.dumps(claims))
    request = sign(cbor.dumps(claims), ENROLL_AAD)
    body = {B_REQUEST: request}
    if endorse is not None:
        body[B_ENDORSEMENT] = endorse(request, RENEWAL_AAD)
    return body


def parse_request(body):
    """Structure only (no signature checked) -> EnrollRequest. The gateway uses
    `endorsement_kid` to find the previous key before calling verify_request."""
    body_map(body, (B_REQUEST, B_ENDORSEMENT), "enroll-request")
    raw = bytes_field("request", required(body, B_REQUEST, "request", "enroll-request"),
                      MAX_SIGNED)
    msg = sign1_parse(raw, MAX_SIGNED)
    if msg.payload is None:
        raise SealError("request payload is detached")
    endorsement = body.get(B_ENDORSEMENT)
    endorsement_kid = None
    if endorsement is not None:
        endorsement = bytes_field("endorsement", endorsement, MAX_SIGNED)
        endorsement_kid = sign1_parse(endorsement, MAX_SIGNED).kid
    claims = body_map(cbor.loads(msg.payload, max_size=MAX_SIGNED), _REQUEST_LABELS,
                      "request", ENROLL_VERSION)
    return EnrollRequest(claims, raw, endorsement, endorsement_kid)


def verify_request(body, challenge, agree, previous_public=None):
    """Gateway side: check the request answers `challenge` and proves possession of both
    keys -> EnrollRequest (verified=True). agree(device_agree_key) -> X25519 shared secret
    with the gateway key named in the challenge. previous_public: the device's registered
    signing key when this is a key rotation; the endorsement is then required.
    Raises SealError naming the failed proof, or another ProtocolError for bad input."""
    request = parse_request(body)
    sign1_verify(request.sign_key, request.raw_request, external_aad=ENROLL_AAD,
                 kid=request.sign_kid, max_size=MAX_SIGNED)
    if not crypto.constant_time_equal(request.nonce, challenge.nonce):
        raise SealError("request answers another challenge (nonce mismatch)")
    expected = agreement_proof(agree(request.agree_key), challenge.nonce, challenge.agree_key,
                               request.core_bytes)
    if not crypto.constant_time_equal(expected, request.proof):
        raise SealError("agreement key proof invalid")
    if previous_public is not None:
        if request.endorsement is None:
            raise SealError("key rotation request lacks the previous key's endorsement")
        sign1_verify(previous_public, request.endorsement, external_aad=RENEWAL_AAD,
                     kid=key_id(previous_public), detached_payload=request.raw_request,
                     max_size=MAX_SIGNED)
        request.endorsed = True
    request.verified = True
    return request


# ---------------------------------------------------------------- certificate delivery


class Delivery:
    """The certificate body: device and gateway CWTs (parsed, or verified after
    verify_delivery) and the gateway's X25519 key for sessions."""

    def __init__(self, device_cert, gateway_cert, agree_key):
        self.device_cert = device_cert
        self.gateway_cert = gateway_cert
        self.agree_key = agree_key

    def to_map(self):
        return make_delivery(self.device_cert.raw, self.gateway_cert.raw, self.agree_key)


def make_delivery(device_cert, gateway_cert, gateway_agree_key):
    """Gateway side: the certificate body (a map) from the two CWTs' bytes."""
    return {
        D_VERSION: ENROLL_VERSION,
        D_DEVICE_CERT: bytes_field("device_cert", device_cert, MAX_CERTIFICATE),
        D_GATEWAY_CERT: bytes_field("gateway_cert", gateway_cert, MAX_CERTIFICATE),
        D_AGREE_KEY: fixed_bytes("agree_key", gateway_agree_key, KEY_SIZE),
    }


def parse_delivery(body):
    """Structure only: both CWTs parsed, no signature checked -> Delivery."""
    body_map(body, _DELIVERY_LABELS, "certificate", ENROLL_VERSION)
    device = bytes_field("device_cert", required(body, D_DEVICE_CERT, "device_cert",
                                                 "certificate"), MAX_CERTIFICATE)
    gateway = bytes_field("gateway_cert", required(body, D_GATEWAY_CERT, "gateway_cert",
                                                   "certificate"), MAX_CERTIFICATE)
    agree_key = fixed_bytes("agree_key", required(body, D_AGREE_KEY, "agree_key",
                                                  "certificate"), KEY_SIZE)
    return Delivery(parse_cwt(device), parse_cwt(gateway), agree_key)


def _check_time(cert, what, reference_time):
    if reference_time >= cert.expires:
        raise CertificateError("%s certificate expired" % what)
    if reference_time + CLOCK_SKEW < cert.not_before:
        raise CertificateError("%s certificate not valid yet" % what)


def verify_delivery(body, challenge, sign_key, agree_key, device_id, reference_time,
                    ca_public=None):
    """Device side: accept the certificate only if it is for our keys and identity and was
    issued by the gateway whose keys the confirmation code bound -> Delivery (verified).

    reference_time: integer seconds to judge validity by (the device uses the challenge's
    gateway time when its own clock is not set). ca_public: the organisation CA key, if
    the firmware carries one; the gateway certificate must then verify under it.
    Raises CertificateError / SealError naming the failed check.
    """
    delivery = parse_delivery(body)
    gateway = delivery.gateway_cert
    if ca_public is not None:
        gateway = verify_cwt(gateway.raw, ca_public)
    if gateway.role is not None and gateway.role != "gateway":
        raise CertificateError("gateway certificate has role %r" % gateway.role)
    if gateway.public_key != challenge.sign_key:
        raise CertificateError("gateway certificate is for another key than the challenge's")
    if delivery.agree_key != challenge.agree_key:
        raise CertificateError("gateway X25519 key differs from the challenge's")
    if gateway.agreement_key is not None and gateway.agreement_key != delivery.agree_key:
        raise CertificateError("gateway certificate binds another X25519 key")
    device = verify_cwt(delivery.device_cert.raw, gateway.public_key, issuer=gateway.subject)
    if device.subject != device_id:
        raise CertificateError("certificate is for %r, not %r" % (device.subject, device_id))
    if device.role is not None and device.role != "device":
        raise CertificateError("device certificate has role %r" % device.role)
    if device.public_key != bytes(sign_key):
        raise CertificateError("certificate does not bind our signing key")
    if device.agreement_key is None or device.agreement_key != bytes(agree_key):
        raise CertificateError("certificate does not bind our X25519 key")
    _check_time(gateway, "gateway", reference_time)
    _check_time(device, "device", reference_time)
    delivery.device_cert = device
    delivery.gateway_cert = gateway
    return delivery
