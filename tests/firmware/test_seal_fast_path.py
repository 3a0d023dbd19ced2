"""The seal hot path in protocol/cose.py writes COSE_Mac0 / COSE_Sign1 head by head and,
on MicroPython, MACs with pre-XORed HMAC pads. These tests hold it to the generic
construction it replaced -- cbor.dumps of the RFC 9052 arrays and the standard library's
HMAC -- byte for byte, across every CBOR length-head boundary, and show that a second
implementation (pycose) verifies what it produces.
"""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from protocol import cbor, cose, crypto, sealing, senml
from protocol.crypto import pure_hmac

KEY = bytes(range(32))
# bstr lengths where the CBOR head changes size: 1 byte up to 23, 2 up to 255, 3 above.
BOUNDARY_SIZES = (0, 1, 23, 24, 255, 256, 1000, 65535, 65536)
content_types = st.one_of(st.none(), st.integers(0, 65535), st.text(max_size=30))
kids = st.one_of(st.none(), st.binary(max_size=cose.KID_MAX))


def generic_mac0(key, payload, kid, content_type, aad, tagged, detached):
    """COSE_Mac0 the way the module built it before the hot-path pass."""
    header = {cose.H_ALG: cose.ALG_HMAC_256_256}
    if content_type is not None:
        header[cose.H_CONTENT_TYPE] = content_type
    protected = cbor.dumps(header)
    tag = hmac.new(key, cbor.dumps(["MAC0", protected, aad, payload]), hashlib.sha256).digest()
    items = [protected, {} if kid is None else {cose.H_KID: kid},
             None if detached else payload, tag]
    return cbor.dumps(cbor.Tag(cose.TAG_MAC0, items) if tagged else items)


@given(payload=st.binary(max_size=600), kid=kids, content_type=content_types,
       aad=st.binary(max_size=40), tagged=st.booleans(), detached=st.booleans())
def test_mac0_bytes_equal_the_generic_construction(payload, kid, content_type, aad, tagged,
                                                   detached):
    made = cose.mac0_create(KEY, payload, kid=kid, content_type=content_type,
                            external_aad=aad, tagged=tagged, detached=detached)
    assert made == generic_mac0(KEY, payload, kid, content_type, aad, tagged, detached)
    verified = cose.mac0_verify(KEY, made, external_aad=aad, kid=kid,
                                detached_payload=payload if detached else None)
    assert verified.payload == payload


def test_mac0_at_every_head_boundary():
    for size in BOUNDARY_SIZES:
        payload = bytes(size)
        for kid in (None, b"", b"k" * 23, b"k" * 24, b"k" * cose.KID_MAX):
            made = cose.mac0_create(KEY, payload, kid=kid, content_type=cose.CT_SENML_CBOR)
            assert made == generic_mac0(KEY, payload, kid, cose.CT_SENML_CBOR, b"", True, False)


@given(payload=st.binary(max_size=300), kid=kids, aad=st.binary(max_size=40),
       tagged=st.booleans())
def test_sign1_bytes_equal_the_generic_construction(payload, kid, aad, tagged):
    seed = b"\x07" * 32
    made = cose.sign1_create(seed, payload, kid=kid, external_aad=aad, tagged=tagged)
    protected = cbor.dumps({cose.H_ALG: cose.ALG_EDDSA})
    signature = crypto.ed25519_sign(seed, cbor.dumps(["Signature1", protected, aad, payload]))
    items = [protected, {} if kid is None else {cose.H_KID: kid}, payload, signature]
    assert made == cbor.dumps(cbor.Tag(cose.TAG_SIGN1, items) if tagged else items)


@given(key=st.binary(max_size=140), data=st.binary(max_size=300),
       split=st.integers(min_value=0, max_value=300))
def test_padded_key_hmac_equals_hmac_sha256(key, data, split):
    # The MicroPython HMAC path, run here on CPython's hashlib; keys of any length.
    expected = hmac.new(key, data, hashlib.sha256).digest()
    assert pure_hmac.PaddedKey(key).digest(data[:split], data[split:]) == expected
    assert crypto.hmac_key(key).digest(data[:split], data[split:]) == expected
    assert pure_hmac.hkdf_sha256(key, b"salt", b"info", 80) == \
        crypto.hkdf_sha256(key, b"salt", b"info", 80)


def test_padded_key_rfc4231_case_1():
    digest = pure_hmac.PaddedKey(b"\x0b" * 20).digest(b"Hi There")
    assert digest.hex() == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"


def test_protected_header_cache_does_not_confuse_content_types():
    a = cose.mac0_parse(cose.mac0_create(KEY, b"x", content_type=112))
    b = cose.mac0_parse(cose.mac0_create(KEY, b"x", content_type="112"))
    c = cose.mac0_parse(cose.mac0_create(KEY, b"x"))
    assert (a.content_type, b.content_type, c.content_type) == (112, "112", None)


def test_pycose_verifies_a_sealed_batch():
    import cbor2
    from pycose.keys.symmetric import SymmetricKey
    from pycose.messages import Mac0Message

    records = [senml.make_record("pr", 72, time=1_700_000_000, seq=7),
               senml.make_record("spo2", 97.5, time=1_700_000_000, seq=8)]
    sealed = sealing.seal_batch(KEY, b"\x22" * 8, records, "urn:dev:vb:x:")
    # pycose 1.1's decode() trips on cbor2 6's tuples (see tests/protocol/test_cose.py):
    # hand its from_cose_obj the items as a list.
    protected, unprotected, payload, tag = cbor2.loads(sealed).value
    message = Mac0Message.from_cose_obj([protected, dict(unprotected), payload, tag], True)
    message.key = SymmetricKey(k=KEY)
    assert message.verify_tag()
    message.key = SymmetricKey(k=bytes(32))
    assert not message.verify_tag()
