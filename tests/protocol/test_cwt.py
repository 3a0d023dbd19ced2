"""CWT certificates: layout, interop, chains, tampering, hostile input, validity boundaries."""

from fractions import Fraction

import cbor2
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

from protocol import cose, crypto, cwt
from protocol.errors import CertificateError, ProtocolError, SealError, ValidationError

CA_SEED = b"\x0c" * 32
GW_SEED = b"\x06" * 32
DEV_SEED = b"\x0d" * 32
CA_PUB = crypto.ed25519_public_key(CA_SEED)
GW_PUB = crypto.ed25519_public_key(GW_SEED)
DEV_PUB = crypto.ed25519_public_key(DEV_SEED)
DEV_X = crypto.x25519_public_key(b"\x0e" * 32)
NBF = 1_700_000_000
DAY = 86400
YEAR = 365 * DAY
CTI = b"\xc7" * 16


def device_cert(**overrides) -> bytes:
    args = dict(issuer="vb-gw-1", subject="vb-dev-1", public_key=DEV_PUB, not_before=NBF,
                expires=NBF + YEAR, agreement_key=DEV_X, role="device", model="VB-SpO2",
                serial="SN-0001", cti=CTI)
    args.update(overrides)
    return cwt.issue_cwt(GW_SEED, **args)


def test_round_trip_exposes_every_claim() -> None:
    cert = cwt.verify_cwt(device_cert(), GW_PUB, issuer="vb-gw-1")
    assert cert.verified
    assert (cert.issuer, cert.subject, cert.not_before, cert.expires, cert.issued_at) == (
        "vb-gw-1", "vb-dev-1", NBF, NBF + YEAR, NBF)
    assert (cert.public_key, cert.agreement_key, cert.role, cert.model, cert.serial) == (
        DEV_PUB, DEV_X, "device", "VB-SpO2", "SN-0001")
    assert cert.cti == CTI and cert.issuer_kid == cose.key_id(GW_PUB)
    assert cert.key_id == cose.key_id(DEV_PUB)
    parsed = cwt.parse_cwt(device_cert())
    assert not parsed.verified and parsed.subject == "vb-dev-1"


def test_claims_layout_is_the_documented_one() -> None:
    tag = cbor2.loads(device_cert())
    assert tag.tag == 18
    protected, unprotected, payload, _ = tag.value
    assert cbor2.loads(protected) == {1: -8} and unprotected == {4: cose.key_id(GW_PUB)}
    assert cbor2.loads(payload) == {
        1: "vb-gw-1", 2: "vb-dev-1", 4: NBF + YEAR, 5: NBF, 6: NBF, 7: CTI,
        8: {1: {1: 1, -1: 6, -2: DEV_PUB}},
        -65537: {1: 1, -1: 4, -2: DEV_X},
        -65538: "device", -65539: "VB-SpO2", -65540: "SN-0001",
    }


def test_pycose_verifies_our_cwt_and_we_verify_a_hand_built_one() -> None:
    tag = cbor2.loads(device_cert())
    protected, unprotected, payload, sig = tag.value
    msg = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, sig], True)
    msg.key = OKPKey(crv=Ed25519, x=GW_PUB)
    assert msg.verify_signature()
    claims = {1: "org-ca", 2: "vb-gw-9", 4: NBF + YEAR, 5: NBF,
              8: {1: {1: 1, -1: 6, -2: GW_PUB, 3: -8}}, -65538: "gateway"}
    prot = cbor2.dumps({1: -8})
    raw = cbor2.dumps(claims)
    sig = nacl.signing.SigningKey(CA_SEED).sign(
        cbor2.dumps(["Signature1", prot, b"", raw])).signature
    kid = {4: cose.key_id(CA_PUB)}
    hand = cbor2.dumps(cbor2.CBORTag(61, cbor2.CBORTag(18, [prot, kid, raw, sig])))
    cert = cwt.verify_cwt(hand, CA_PUB)
    assert (cert.subject, cert.role, cert.public_key, cert.issued_at, cert.cti) == (
        "vb-gw-9", "gateway", GW_PUB, None, None)


def test_issuer_chain_ca_gateway_device() -> None:
    ca = cwt.verify_cwt(
        cwt.issue_cwt(CA_SEED, "org-ca", "org-ca", CA_PUB, NBF, NBF + 10 * YEAR, role="ca"),
        CA_PUB)
    gateway = cwt.verify_issued_by(
        cwt.issue_cwt(CA_SEED, "org-ca", "vb-gw-1", GW_PUB, NBF, NBF + 2 * YEAR, role="gateway"),
        ca)
    device = cwt.verify_issued_by(device_cert(), gateway)
    assert device.subject == "vb-dev-1" and device.verified
    with pytest.raises(CertificateError, match="may not issue"):
        cwt.verify_issued_by(device_cert(), device)
    with pytest.raises(CertificateError, match="kid mismatch"):
        cwt.verify_issued_by(device_cert(), ca)
    misnamed = cwt.issue_cwt(CA_SEED, "vb-gw-1", "vb-dev-1", DEV_PUB, NBF, NBF + YEAR)
    with pytest.raises(CertificateError, match="issued by 'vb-gw-1', expected 'org-ca'"):
        cwt.verify_issued_by(misnamed, ca)
    with pytest.raises(CertificateError, match="not verified"):
        cwt.verify_issued_by(device_cert(), cwt.parse_cwt(device_cert()))


def test_wrong_issuer_key_and_forged_claims_are_refused() -> None:
    with pytest.raises(CertificateError, match="kid mismatch"):
        cwt.verify_cwt(device_cert(), CA_PUB)
    # Claims the gateway's kid but is signed by another key: the signature fails.
    impostor = cwt.issue_cwt(CA_SEED, "vb-gw-1", "vb-dev-1", DEV_PUB, NBF, NBF + YEAR,
                             issuer_kid=cose.key_id(GW_PUB))
    with pytest.raises(SealError, match="signature invalid"):
        cwt.verify_cwt(impostor, GW_PUB)


def test_every_position_change_is_rejected_and_kid_is_required() -> None:
    sealed = device_cert()
    for pos in range(len(sealed)):
        for delta in (0x01, 0x80):
            changed = bytearray(sealed)
            changed[pos] ^= delta
            with pytest.raises((SealError, CertificateError)):
                cwt.verify_cwt(bytes(changed), GW_PUB)
    no_kid = cose.sign1_create(GW_SEED, cose.sign1_parse(sealed).payload)
    with pytest.raises(CertificateError, match="kid missing"):
        cwt.verify_cwt(no_kid, GW_PUB)


@given(st.data())
def test_any_byte_change_is_rejected(data) -> None:
    sealed = bytearray(device_cert())
    pos = data.draw(st.integers(0, len(sealed) - 1))
    sealed[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises((SealError, CertificateError)):
        cwt.verify_cwt(bytes(sealed), GW_PUB)


def _signed(claims) -> bytes:
    return cose.sign1_create(GW_SEED, cbor2.dumps(claims), kid=cose.key_id(GW_PUB))


GOOD = {1: "vb-gw-1", 2: "vb-dev-1", 4: NBF + YEAR, 5: NBF, 8: {1: {1: 1, -1: 6, -2: DEV_PUB}}}


@pytest.mark.parametrize(
    "change, text",
    [
        ({4: NBF}, "nbf must be before exp"),
        ({4: float(NBF + YEAR)}, "exp must be an integer"),
        ({5: None}, "nbf must be an integer"),
        ({2: ""}, "sub must be text"),
        ({1: 7}, "iss must be text"),
        ({7: "text"}, "cti must be"),
        ({8: {3: b"kid"}}, "cnf must hold exactly one COSE_Key"),
        ({8: {1: {1: 2, -1: 6, -2: DEV_PUB}}}, "kty must be 1"),
        ({8: {1: {1: 1, -1: 4, -2: DEV_PUB}}}, "crv must be 6"),
        ({8: {1: {1: 1, -1: 6, -2: DEV_PUB[:31]}}}, "x must be 32 bytes"),
        ({8: {1: {1: 1, -1: 6, -2: DEV_PUB, -4: DEV_SEED}}}, "private key"),
        ({8: {1: {1: 1, -1: 6, -2: DEV_PUB, 3: -7}}}, "alg must be -8"),
        ({8: {1: {True: 1, -1: 6, -2: DEV_PUB}}}, "neither int nor text"),
        ({-65537: {1: 1, -1: 6, -2: DEV_X}}, "agreement key: crv must be 4"),
        ({-65538: "admin"}, "role must be one of"),
        ({-65539: "m" * 200}, "model must be text"),
    ],
)
def test_claim_rejections_name_the_reason(change, text) -> None:
    claims = dict(GOOD)
    claims.update(change)
    claims = {k: v for k, v in claims.items() if v is not None}
    with pytest.raises(CertificateError, match=text):
        cwt.verify_cwt(_signed(claims), GW_PUB)


def test_claims_must_be_a_map_and_unknown_claims_are_kept() -> None:
    with pytest.raises(CertificateError, match="must be a map"):
        cwt.verify_cwt(_signed([1, 2]), GW_PUB)
    cert = cwt.verify_cwt(_signed(dict(GOOD, **{"x-note": 1})), GW_PUB)
    assert cert.claims["x-note"] == 1


def test_issue_refuses_bad_arguments() -> None:
    with pytest.raises(CertificateError):
        cwt.issue_cwt(GW_SEED, "vb-gw-1", "vb-dev-1", DEV_PUB, NBF + 1, NBF)
    with pytest.raises(ValidationError):
        cwt.issue_cwt(GW_SEED, "vb-gw-1", "vb-dev-1", DEV_PUB[:8], NBF, NBF + 1)
    with pytest.raises(CertificateError):
        cwt.issue_cwt(GW_SEED, "vb-gw-1", "vb-dev-1", DEV_PUB, NBF, NBF + 1, role="boss")


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    for call in (lambda: cwt.parse_cwt(data), lambda: cwt.verify_cwt(data, GW_PUB)):
        try:
            call()
        except ProtocolError:
            pass


# ---------------------------------------------------------------- validity boundaries


class _Times:
    def __init__(self, not_before: int, expires: int) -> None:
        self.not_before = not_before
        self.expires = expires


def state(nbf: int, exp: int, now: int) -> str:
    return cwt.validity_state(_Times(nbf, exp), now)


def test_boundaries_to_the_second_for_a_one_year_certificate() -> None:
    exp = NBF + YEAR + 1  # lifetime not divisible by 3: the 2/3 point is a ceiling
    renewal = NBF + 21_024_001  # ceil(2 * 31_536_001 / 3)
    assert 3 * (renewal - 1 - NBF) < 2 * (exp - NBF) <= 3 * (renewal - NBF)
    expiring = exp - 30 * DAY
    cert = cwt.parse_cwt(device_cert(expires=exp))
    assert cwt.renewal_due_at(cert) == renewal and cwt.expiring_at(cert) == expiring
    assert cwt.validity_state(cert, NBF - 1) == "not-yet-valid"
    assert cwt.validity_state(cert, NBF) == "valid"
    assert cwt.validity_state(cert, renewal - 1) == "valid"
    assert cwt.validity_state(cert, renewal) == "renewal-due"
    assert cwt.validity_state(cert, expiring - 1) == "renewal-due"
    assert cwt.validity_state(cert, expiring) == "expiring"
    assert cwt.validity_state(cert, exp - 1) == "expiring"
    assert cwt.validity_state(cert, exp) == "expired"
    assert cwt.validity_state(cert, exp + 10 * YEAR) == "expired"


def test_exact_two_thirds_point_is_renewal_due() -> None:
    exp = NBF + 90 * DAY  # 2/3 of 90 days = day 60 exactly; expiring from day 60 too
    assert state(NBF, exp, NBF + 60 * DAY - 1) == "valid"
    # Both renewal-due and expiring hold: expiring is the more urgent and wins.
    assert state(NBF, exp, NBF + 60 * DAY) == "expiring"
    exp = NBF + 300
    assert state(NBF, exp, NBF + 199) == "expiring"  # lifetime under 30 days


def test_short_certificates() -> None:
    assert state(NBF, NBF + 1, NBF - 1) == "not-yet-valid"
    assert state(NBF, NBF + 1, NBF) == "expiring"
    assert state(NBF, NBF + 1, NBF + 1) == "expired"
    exp = NBF + 45 * DAY  # renewal at day 30, expiring at day 15
    assert state(NBF, exp, NBF + 15 * DAY - 1) == "valid"
    assert state(NBF, exp, NBF + 15 * DAY) == "expiring"


def _reference(nbf: int, exp: int, now: int) -> str:
    if now >= exp:
        return "expired"
    if now < nbf:
        return "not-yet-valid"
    if exp - now <= 30 * DAY:
        return "expiring"
    if now >= nbf + Fraction(2, 3) * (exp - nbf):
        return "renewal-due"
    return "valid"


@given(st.integers(0, 2**40), st.integers(1, 20 * YEAR), st.integers(-2 * YEAR, 22 * YEAR))
def test_state_matches_exact_rational_reference(nbf: int, life: int, offset: int) -> None:
    assert state(nbf, nbf + life, nbf + offset) == _reference(nbf, nbf + life, nbf + offset)


def test_now_must_be_integer_seconds() -> None:
    with pytest.raises(ValidationError):
        state(NBF, NBF + YEAR, float(NBF))
