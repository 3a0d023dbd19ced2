"""Enrollment wire formats: challenge, signed request with proof of possession of both keys,
confirmation code, certificate delivery; tampering and hostile input."""

import hashlib
import hmac

import cbor2
import nacl.bindings
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import cbor, cose, crypto, cwt, enrollment
from protocol.errors import (
    CertificateError,
    ProtocolError,
    SealError,
    ValidationError,
    VersionError,
)

CA_SEED = b"\xca" * 32
GW_SEED = b"\x06" * 32
GW_X = b"\x07" * 32
DEV_SEED = b"\x0d" * 32
DEV_X = b"\x0e" * 32
OLD_SEED = b"\x0f" * 32
CA_PUB = crypto.ed25519_public_key(CA_SEED)
GW_PUB = crypto.ed25519_public_key(GW_SEED)
GW_XPUB = crypto.x25519_public_key(GW_X)
DEV_PUB = crypto.ed25519_public_key(DEV_SEED)
DEV_XPUB = crypto.x25519_public_key(DEV_X)
OLD_PUB = crypto.ed25519_public_key(OLD_SEED)
NONCE = bytes(range(16))
NOW = 1_700_000_000
YEAR = 365 * 86400


def challenge(**overrides) -> enrollment.Challenge:
    args = dict(gateway_id="gw-1", sign_key=GW_PUB, agree_key=GW_XPUB, time=NOW, nonce=NONCE)
    args.update(overrides)
    return enrollment.make_challenge(**args)


def signer(seed: bytes, detached: bool = False):
    def sign(payload: bytes, aad: bytes) -> bytes:
        kid = cose.key_id(crypto.ed25519_public_key(seed))
        return cose.sign1_create(seed, payload, kid=kid, external_aad=aad, detached=detached)
    return sign


def agreer(private: bytes):
    return lambda peer: crypto.x25519_shared(private, peer)


def request_body(ch=None, seed=DEV_SEED, x=DEV_X, endorse=None, **overrides) -> dict:
    args = dict(device_id="ox-1", model="VB-Ox", serial="SN-1", firmware="1.0.0",
                sign_key=crypto.ed25519_public_key(seed), agree_key=crypto.x25519_public_key(x),
                time=NOW + 5)
    args.update(overrides)
    return enrollment.build_request(ch or challenge(), sign=signer(seed), agree=agreer(x),
                                    endorse=endorse, **args)


GATEWAY_AGREE = agreer(GW_X)


def test_round_trip_and_layout() -> None:
    body = request_body()
    req = enrollment.verify_request(body, challenge(), GATEWAY_AGREE)
    assert req.verified and not req.endorsed
    assert (req.device_id, req.model, req.serial, req.firmware) == (
        "ox-1", "VB-Ox", "SN-1", "1.0.0")
    assert (req.sign_key, req.agree_key, req.nonce, req.time) == (DEV_PUB, DEV_XPUB, NONCE, NOW + 5)
    # Independent check with cbor2 + PyNaCl: the documented Sig_structure and HMAC.
    tag = cbor2.loads(body[1])
    assert tag.tag == 18
    protected, unprotected, payload, signature = tag.value
    assert unprotected == {4: cose.key_id(DEV_PUB)}
    to_sign = cbor2.dumps(["Signature1", protected, b"vitalbridge enroll v1", payload])
    nacl.signing.VerifyKey(DEV_PUB).verify(to_sign, signature)
    claims = cbor2.loads(payload)
    assert sorted(claims) == list(range(10))
    proof = claims.pop(9)
    shared = nacl.bindings.crypto_scalarmult(GW_X, DEV_XPUB)
    prk = hmac.new(NONCE, shared, hashlib.sha256).digest()
    key = hmac.new(prk, b"vitalbridge enroll pop v1" + GW_XPUB + b"\x01", hashlib.sha256).digest()
    assert proof == hmac.new(key, cbor2.dumps(claims, canonical=True), hashlib.sha256).digest()


def test_confirmation_code_matches_an_independent_derivation() -> None:
    code = enrollment.confirmation_code(DEV_PUB, DEV_XPUB, GW_PUB, GW_XPUB, NONCE)
    digest = hashlib.sha256(b"vitalbridge confirmation code v1" + DEV_PUB + DEV_XPUB + GW_PUB
                            + GW_XPUB + NONCE).digest()
    assert code == f"{int.from_bytes(digest[:8], 'big') % 1_000_000:06d}"
    assert len(code) == 6 and code.isdigit()
    req = enrollment.parse_request(request_body())
    assert enrollment.request_code(req, challenge()) == code


@pytest.mark.parametrize("which", range(5))
def test_confirmation_code_depends_on_every_key_and_the_nonce(which: int) -> None:
    args = [DEV_PUB, DEV_XPUB, GW_PUB, GW_XPUB, NONCE]
    base = enrollment.confirmation_code(*args)
    args[which] = bytes([args[which][0] ^ 1]) + args[which][1:]
    assert enrollment.confirmation_code(*args) != base


def test_wrong_nonce_refused() -> None:
    body = request_body(ch=challenge(nonce=b"\x99" * 16))
    with pytest.raises(SealError, match="nonce mismatch"):
        enrollment.verify_request(body, challenge(), GATEWAY_AGREE)


def test_agreement_key_not_held_is_refused() -> None:
    # The request claims DEV_XPUB but the proof is made with another private key.
    def bad_agree(peer: bytes) -> bytes:
        return crypto.x25519_shared(b"\x44" * 32, peer)
    body = enrollment.build_request(challenge(), "ox-1", "VB-Ox", "SN-1", "1.0.0", DEV_PUB,
                                    DEV_XPUB, NOW, signer(DEV_SEED), bad_agree)
    with pytest.raises(SealError, match="agreement key proof invalid"):
        enrollment.verify_request(body, challenge(), GATEWAY_AGREE)


def test_proof_is_bound_to_the_gateway_key() -> None:
    # A man in the middle that presents its own X25519 key cannot reuse the proof.
    body = request_body(ch=challenge(agree_key=crypto.x25519_public_key(b"\x55" * 32)))
    with pytest.raises(SealError, match="agreement key proof invalid"):
        enrollment.verify_request(body, challenge(), GATEWAY_AGREE)


def test_signing_key_not_held_is_refused() -> None:
    body = enrollment.build_request(challenge(), "ox-1", "VB-Ox", "SN-1", "1.0.0", DEV_PUB,
                                    DEV_XPUB, NOW, signer(b"\x45" * 32), agreer(DEV_X))
    with pytest.raises(SealError):
        enrollment.verify_request(body, challenge(), GATEWAY_AGREE)


def test_every_flipped_byte_is_refused() -> None:
    raw = request_body()[1]
    for i in range(len(raw)):
        mutated = bytearray(raw)
        mutated[i] ^= 0x20
        with pytest.raises(ProtocolError):
            enrollment.verify_request({1: bytes(mutated)}, challenge(), GATEWAY_AGREE)


def test_rotation_endorsement() -> None:
    body = request_body(endorse=signer(OLD_SEED, detached=True))
    req = enrollment.parse_request(body)
    assert req.endorsement_kid == cose.key_id(OLD_PUB)
    req = enrollment.verify_request(body, challenge(), GATEWAY_AGREE, previous_public=OLD_PUB)
    assert req.endorsed and req.verified
    with pytest.raises(SealError, match="kid mismatch"):
        enrollment.verify_request(body, challenge(), GATEWAY_AGREE, previous_public=GW_PUB)
    with pytest.raises(SealError, match="lacks the previous key"):
        enrollment.verify_request(request_body(), challenge(), GATEWAY_AGREE,
                                  previous_public=OLD_PUB)
    # An endorsement made for another request does not transfer.
    other = request_body(endorse=signer(OLD_SEED, detached=True), serial="SN-2")
    with pytest.raises(SealError):
        enrollment.verify_request({1: body[1], 2: other[2]}, challenge(), GATEWAY_AGREE,
                                  previous_public=OLD_PUB)


@pytest.mark.parametrize("field,value,error", [
    ("device_id", "bad/id", "device_id"),
    ("model", "", "model"),
    ("serial", "a\x1bb", "printable"),
    ("firmware", "x" * 65, "firmware"),
])
def test_bad_identity_fields_refused_when_building(field: str, value: str, error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        request_body(**{field: value})


def test_version_and_unknown_fields() -> None:
    ch = challenge().to_map()
    assert enrollment.parse_challenge(ch).nonce == NONCE
    with pytest.raises(VersionError):
        enrollment.parse_challenge({**ch, 0: 2})
    with pytest.raises(ValidationError, match="unknown field 9"):
        enrollment.parse_challenge({**ch, 9: 1})
    with pytest.raises(ValidationError, match="nonce: missing"):
        enrollment.parse_challenge({k: v for k, v in ch.items() if k != 4})


# ---------------------------------------------------------------- certificate delivery


def gateway_cert(seed=GW_SEED, agreement_key=GW_XPUB, **overrides) -> bytes:
    args = dict(issuer="org-ca", subject="gw-1", public_key=crypto.ed25519_public_key(seed),
                not_before=NOW - 86400, expires=NOW + 5 * YEAR, agreement_key=agreement_key,
                role="gateway")
    args.update(overrides)
    return cwt.issue_cwt(CA_SEED, **args)


def device_cert(issuer_seed=GW_SEED, **overrides) -> bytes:
    args = dict(issuer="gw-1", subject="ox-1", public_key=DEV_PUB, not_before=NOW,
                expires=NOW + YEAR, agreement_key=DEV_XPUB, role="device", model="VB-Ox",
                serial="SN-1")
    args.update(overrides)
    return cwt.issue_cwt(issuer_seed, **args)


def delivery(dev=None, gw=None, agree=GW_XPUB) -> dict:
    return enrollment.make_delivery(dev or device_cert(), gw or gateway_cert(), agree)


def verify(body, ch=None, ca=CA_PUB, time=NOW):
    return enrollment.verify_delivery(body, ch or challenge(), DEV_PUB, DEV_XPUB, "ox-1", time,
                                      ca_public=ca)


def test_delivery_round_trip() -> None:
    body = delivery()
    got = verify(body)
    assert got.device_cert.verified and got.gateway_cert.verified
    assert got.device_cert.subject == "ox-1" and got.agree_key == GW_XPUB
    assert got.to_map() == body
    assert verify(delivery(), ca=None).device_cert.verified  # no CA configured: code-bound


@pytest.mark.parametrize("body,match", [
    (lambda: delivery(dev=device_cert(subject="ox-2")), "not 'ox-1'"),
    (lambda: delivery(dev=device_cert(public_key=OLD_PUB)), "signing key"),
    (lambda: delivery(dev=device_cert(agreement_key=GW_XPUB)), "X25519 key"),
    (lambda: delivery(dev=device_cert(agreement_key=None)), "X25519 key"),
    (lambda: delivery(dev=device_cert(role="gateway")), "role"),
    (lambda: delivery(dev=device_cert(issuer_seed=OLD_SEED)), "kid mismatch"),
    (lambda: delivery(dev=device_cert(issuer="gw-2")), "issued by"),
    (lambda: delivery(gw=gateway_cert(seed=OLD_SEED)), "another key than the challenge"),
    (lambda: delivery(agree=DEV_XPUB), "differs from the challenge"),
    (lambda: delivery(gw=gateway_cert(agreement_key=DEV_XPUB)), "binds another X25519"),
    (lambda: delivery(dev=device_cert(not_before=NOW - 2 * YEAR, expires=NOW - 1)), "expired"),
    (lambda: delivery(dev=device_cert(not_before=NOW + 3600)), "not valid yet"),
    (lambda: delivery(gw=cwt.issue_cwt(OLD_SEED, "org-ca", "gw-1", GW_PUB, NOW - 1, NOW + YEAR,
                                       agreement_key=GW_XPUB)), "kid mismatch"),
])
def test_delivery_checks(body, match: str) -> None:
    with pytest.raises((CertificateError, SealError), match=match):
        verify(body())


def test_delivery_for_another_challenge_refused() -> None:
    other = challenge(sign_key=OLD_PUB)
    with pytest.raises(CertificateError, match="another key than the challenge"):
        verify(delivery(), ch=other)


# ---------------------------------------------------------------- hostile input

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.integers(-2, 12), children, max_size=8),
    max_leaves=20,
)


@given(cbor_values)
def test_decoders_raise_only_protocol_errors(value) -> None:
    for decode in (enrollment.parse_challenge, enrollment.parse_request,
                   enrollment.parse_delivery):
        try:
            decode(value)
        except ProtocolError:
            pass
    try:
        enrollment.verify_request(value, challenge(), GATEWAY_AGREE)
    except ProtocolError:
        pass
    try:
        verify(value)
    except ProtocolError:
        pass


@given(st.dictionaries(st.sampled_from(range(10)), cbor_values, max_size=10))
def test_request_claims_from_hostile_maps(claims) -> None:
    # Structurally valid Sign1 around hostile claims: still only ProtocolError.
    raw = cose.sign1_create(DEV_SEED, cbor.dumps(claims), kid=cose.key_id(DEV_PUB),
                            external_aad=enrollment.ENROLL_AAD)
    try:
        enrollment.verify_request({1: raw}, challenge(), GATEWAY_AGREE)
    except ProtocolError:
        pass


@given(st.integers(0, 500), st.integers(0, 255), st.booleans())
def test_mutated_delivery_raises_only_protocol_errors(pos: int, byte: int, cut: bool) -> None:
    body = delivery()
    for label in (1, 2):
        raw = bytearray(body[label])
        if cut:
            raw = raw[: pos % len(raw)]
        else:
            raw[pos % len(raw)] = byte
        mutated = dict(body)
        mutated[label] = bytes(raw)
        try:
            verify(mutated)
        except ProtocolError:
            continue
        assert bytes(raw) == body[label]  # only an unchanged certificate may pass
