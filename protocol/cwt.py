"""Device, gateway and CA certificates as CWTs (RFC 8392) with proof-of-possession keys
(RFC 8747), signed as COSE_Sign1 (EdDSA) by the issuer.

Claims (docs/seals.md has the byte-level layout and the reasons):
    1 iss (text)  2 sub (text)  4 exp  5 nbf  6 iat (integer NumericDate)  7 cti (bstr)
    8 cnf {1: COSE_Key {1: 1 (OKP), -1: 6 (Ed25519), -2: x}}    the signing key
    -65537  agreement key: COSE_Key {1: 1, -1: 4 (X25519), -2: x}   (private-use claim)
    -65538  role: "ca" | "gateway" | "device"
    -65539  model (text)     -65540  serial (text)

Emitted as a tagged COSE_Sign1 (tag 18); an outer CWT tag 61 is accepted on input.
Runs on MicroPython.
"""

from protocol import cbor, crypto
from protocol.checks import is_int
from protocol.cose import key_id, sign1_create, sign1_parse, sign1_verify
from protocol.errors import CertificateError, DecodeError, SealError, ValidationError

TAG_CWT = 61

C_ISS = 1
C_SUB = 2
C_EXP = 4
C_NBF = 5
C_IAT = 6
C_CTI = 7
C_CNF = 8
CNF_COSE_KEY = 1
# Private-use claim keys: RFC 8392 §9.1 reserves integers below -65536 for private use.
C_AGREEMENT_KEY = -65537
C_ROLE = -65538
C_MODEL = -65539
C_SERIAL = -65540

# COSE_Key (RFC 9052 §7, RFC 9053 §7.2)
K_KTY = 1
K_ALG = 3
K_CRV = -1
K_X = -2
K_D = -4
KTY_OKP = 1
CRV_X25519 = 4
CRV_ED25519 = 6

ROLES = ("ca", "gateway", "device")
MAX_TEXT = 128
MAX_CTI = 64
CTI_SIZE = 16

DAY = 86400
EXPIRING_WINDOW = 30 * DAY

NOT_YET_VALID = "not-yet-valid"
VALID = "valid"
RENEWAL_DUE = "renewal-due"
EXPIRING = "expiring"
EXPIRED = "expired"



def _text(field, value, required=True):
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise CertificateError("%s must be text of 1..%d characters" % (field, MAX_TEXT))
    return value


def _time(field, value, required=True):
    if value is None and not required:
        return None
    if not is_int(value) or value < 0 or value > 0xFFFFFFFFFFFF:
        raise CertificateError("%s must be an integer NumericDate (seconds)" % field)
    return value


def okp_key(crv, x):
    """A public COSE_Key map for an OKP key (Ed25519 or X25519)."""
    return {K_KTY: KTY_OKP, K_CRV: crv, K_X: bytes(x)}


def _plain_map(field, value):
    """A map whose keys are ints or text. Bool keys are refused: Python treats true as 1."""
    if not isinstance(value, dict):
        raise CertificateError("%s must be a map" % field)
    for key in value:
        if not is_int(key) and not isinstance(key, str):
            raise CertificateError("%s: key %r is neither int nor text" % (field, key))
    return value


def _parse_okp(field, key, crv):
    _plain_map(field, key)
    if K_D in key:
        raise CertificateError("%s carries a private key (-4)" % field)
    if key.get(K_KTY) != KTY_OKP or not is_int(key.get(K_KTY)):
        raise CertificateError("%s: kty must be 1 (OKP)" % field)
    if key.get(K_CRV) != crv or not is_int(key.get(K_CRV)):
        raise CertificateError("%s: crv must be %d" % (field, crv))
    x = key.get(K_X)
    if not isinstance(x, bytes) or len(x) != 32:
        raise CertificateError("%s: x must be 32 bytes" % field)
    if crv == CRV_ED25519 and K_ALG in key and (key[K_ALG] != -8 or not is_int(key[K_ALG])):
        raise CertificateError("%s: alg must be -8 (EdDSA)" % field)
    return x


class Certificate:
    """A parsed CWT certificate. `verified` is True only from verify_cwt/verify_issued_by."""

    def __init__(self, claims, issuer_kid, raw):
        self.claims = _plain_map("claims", claims)
        self.issuer_kid = issuer_kid
        self.raw = raw
        self.verified = False
        self.issuer = _text("iss", claims.get(C_ISS))
        self.subject = _text("sub", claims.get(C_SUB))
        self.expires = _time("exp", claims.get(C_EXP))
        self.not_before = _time("nbf", claims.get(C_NBF))
        self.issued_at = _time("iat", claims.get(C_IAT), required=False)
        if self.not_before >= self.expires:
            raise CertificateError("nbf must be before exp")
        cti = claims.get(C_CTI)
        if cti is not None and (not isinstance(cti, bytes) or len(cti) > MAX_CTI):
            raise CertificateError("cti must be at most %d bytes" % MAX_CTI)
        self.cti = cti
        cnf = claims.get(C_CNF)
        if not isinstance(cnf, dict) or len(cnf) != 1 or CNF_COSE_KEY not in _plain_map("cnf", cnf):
            raise CertificateError("cnf must hold exactly one COSE_Key (label 1)")
        self.public_key = _parse_okp("cnf key", cnf[CNF_COSE_KEY], CRV_ED25519)
        agreement = claims.get(C_AGREEMENT_KEY)
        self.agreement_key = None
        if agreement is not None:
            self.agreement_key = _parse_okp("agreement key", agreement, CRV_X25519)
        role = claims.get(C_ROLE)
        if role is not None and role not in ROLES:
            raise CertificateError("role must be one of %s" % ", ".join(ROLES))
        self.role = role
        self.model = _text("model", claims.get(C_MODEL), required=False)
        self.serial = _text("serial", claims.get(C_SERIAL), required=False)

    @property
    def key_id(self):
        """The kid of this certificate's signing key (what its own signatures carry)."""
        return key_id(self.public_key)

    def __repr__(self):
        return "<Certificate sub=%s iss=%s role=%s nbf=%d exp=%d>" % (
            self.subject, self.issuer, self.role, self.not_before, self.expires)


def issue_cwt(issuer_seed, issuer, subject, public_key, not_before, expires,
              agreement_key=None, role=None, model=None, serial=None, issued_at=None,
              cti=None, issuer_kid=None):
    """Sign a certificate for `subject`'s Ed25519 `public_key` -> COSE_Sign1 bytes.

    Times are integer POSIX seconds; issued_at defaults to not_before, cti to 16 random
    bytes, issuer_kid to key_id(issuer public key). Raises CertificateError for bad claims.
    """
    claims = {
        C_ISS: _text("iss", issuer),
        C_SUB: _text("sub", subject),
        C_NBF: _time("nbf", not_before),
        C_EXP: _time("exp", expires),
        C_IAT: _time("iat", not_before if issued_at is None else issued_at),
        C_CTI: crypto.random_bytes(CTI_SIZE) if cti is None else cti,
        C_CNF: {CNF_COSE_KEY: okp_key(CRV_ED25519, _key_bytes("public_key", public_key))},
    }
    if agreement_key is not None:
        claims[C_AGREEMENT_KEY] = okp_key(CRV_X25519, _key_bytes("agreement_key", agreement_key))
    if role is not None:
        claims[C_ROLE] = role
    if model is not None:
        claims[C_MODEL] = model
    if serial is not None:
        claims[C_SERIAL] = serial
    raw_claims = cbor.dumps(claims)
    Certificate(claims, issuer_kid, b"")  # the same checks parse applies, before signing
    if issuer_kid is None:
        issuer_kid = key_id(crypto.ed25519_public_key(issuer_seed))
    return sign1_create(issuer_seed, raw_claims, kid=issuer_kid)


def _key_bytes(field, value):
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise ValidationError(field, "must be 32 bytes")
    return bytes(value)


def _unwrap(data):
    """Strip an optional CWT tag 61 (RFC 8392 §6) -> COSE_Sign1 bytes."""
    if isinstance(data, (bytes, bytearray)) and len(data) > 2 and data[0] == 0xD8 and data[1] == 61:
        return bytes(data)[2:]
    return data


def _certificate(msg, raw):
    if msg.payload is None:
        raise CertificateError("CWT payload is detached")
    try:
        claims = cbor.loads(msg.payload)
    except DecodeError as exc:
        raise CertificateError("CWT claims are not valid CBOR: %s" % exc) from None
    if not isinstance(claims, dict):
        raise CertificateError("CWT claims must be a map")
    return Certificate(claims, msg.kid, raw)


def parse_cwt(data):
    """Read a certificate without verifying its signature. SealError / CertificateError."""
    return _certificate(sign1_parse(_unwrap(data)), data)


def verify_cwt(data, issuer_public, issuer=None):
    """Verify the issuer's signature -> Certificate (verified=True). issuer: expected iss.

    Validity in time is a separate question: see validity_state().
    """
    body = _unwrap(data)
    msg = sign1_parse(body)
    # The kid is required: it is the only unprotected field, so insisting on the exact
    # value makes every byte of the certificate matter.
    if msg.kid is None:
        raise CertificateError("kid missing: a certificate must name its issuer key")
    if msg.kid != key_id(issuer_public):
        raise CertificateError("signed by another key (kid mismatch)")
    msg = sign1_verify(issuer_public, body)
    cert = _certificate(msg, data)
    if issuer is not None and cert.issuer != issuer:
        raise CertificateError("issued by %r, expected %r" % (cert.issuer, issuer))
    cert.verified = True
    return cert


def verify_issued_by(data, issuer_cert):
    """Verify `data` against an already verified issuer certificate (CA -> gateway ->
    device): signature, iss == issuer's sub, and the issuer may issue (role ca/gateway)."""
    if not isinstance(issuer_cert, Certificate) or not issuer_cert.verified:
        raise CertificateError("issuer certificate is not verified")
    if issuer_cert.role not in ("ca", "gateway"):
        raise CertificateError("issuer role %r may not issue certificates" % (issuer_cert.role,))
    return verify_cwt(data, issuer_cert.public_key, issuer=issuer_cert.subject)


def renewal_due_at(cert):
    """First second at which now >= nbf + 2/3 (exp - nbf) holds (exact integer ceiling)."""
    return cert.not_before + (2 * (cert.expires - cert.not_before) + 2) // 3


def expiring_at(cert):
    """First second at which exp - now <= 30 days holds."""
    return cert.expires - EXPIRING_WINDOW


def validity_state(cert, now):
    """Lifecycle state at integer second `now`; the most urgent that holds wins:

    expired (now >= exp) > not-yet-valid (now < nbf) > expiring (exp - now <= 30 days)
    > renewal-due (now >= nbf + 2/3 (exp - nbf)) > valid.
    """
    if not is_int(now):
        raise ValidationError("now", "must be integer seconds")
    if now >= cert.expires:
        return EXPIRED
    if now < cert.not_before:
        return NOT_YET_VALID
    if now >= expiring_at(cert):
        return EXPIRING
    if now >= renewal_due_at(cert):
        return RENEWAL_DUE
    return VALID


__all__ = [
    "Certificate", "issue_cwt", "parse_cwt", "verify_cwt", "verify_issued_by",
    "validity_state", "renewal_due_at", "expiring_at", "okp_key", "SealError",
]
