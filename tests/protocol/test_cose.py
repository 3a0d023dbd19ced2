"""COSE_Mac0 / COSE_Sign1: known answers, interop with pycose and a hand-built implementation,
tamper rejection, specific reasons, hostile input."""

import base64
import hashlib
import hmac

import cbor2
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycose.algorithms import HMAC256, EdDSA
from pycose.headers import KID as KidHeader
from pycose.headers import Algorithm, ContentType
from pycose.keys import OKPKey, SymmetricKey
from pycose.keys.curves import Ed25519
from pycose.messages import Mac0Message, Sign1Message

from protocol import cbor, cose, crypto
from protocol.errors import ProtocolError, SealError, ValidationError

# cose-wg/Examples mac0-tests/HMac-01.json (+ mac-fail-02/06/07): HMAC 256/256, direct key.
WG_KEY = base64.urlsafe_b64decode("hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg=")
WG_CONTENT = b"This is the content."
WG_HMAC01 = bytes.fromhex(
    "D18443A10105A054546869732069732074686520636F6E74656E742E5820"
    "A1A848D3471F9D61EE49018D244C824772F223AD4F935293F1789FC3A08D8C58"
)
WG_FAIL_CHANGE_TAG = bytes.fromhex(
    "D18443A10105A054546869732069732074686520636F6E74656E742E5820"
    "A1A848D3471F9D61EE49018D244C824772F223AD4F935293F1789FC3A08D8C59"
)
WG_FAIL_ADD_PROTECTED = bytes.fromhex(
    "D18445A201050300A054546869732069732074686520636F6E74656E742E5820"
    "A1A848D3471F9D61EE49018D244C824772F223AD4F935293F1789FC3A08D8C58"
)
WG_FAIL_REMOVE_PROTECTED = bytes.fromhex(
    "D18443A10105A054546869732069732074686520636F6E74656E742E5820"
    "BB9E11EF2BD673F766A398D4E3FAD78E0F0BE2806BF73FB647471E40B3D98734"
)
# mac-pass-02: alg only in the unprotected header, external data ff00ee11dd22cc33bb44aa559966.
WG_ALG_UNPROTECTED = bytes.fromhex(
    "D18440A1010554546869732069732074686520636F6E74656E742E5820"
    "0FECAEC59BB46CC8A488AACA4B205E322DD52696B75A45768D3C302DD4BAE2F7"
)
# eddsa-sig-02 intermediates: the Sig_structure of protected {1: -8}, no AAD, WG_CONTENT.
WG_TO_BE_SIGNED = bytes.fromhex(
    "846A5369676E61747572653143A101274054546869732069732074686520636F6E74656E742E"
)

# RFC 8032 §7.1 TEST 1 key pair.
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
KEY = bytes(range(32))
KID = b"\x01\x02\x03\x04\x05\x06\x07\x08"


def reason(exc_info) -> str:
    return str(exc_info.value)


# ---------------------------------------------------------------- known answers


def test_hmac01_known_answer_bytes_match_exactly() -> None:
    assert cose.mac0_create(WG_KEY, WG_CONTENT) == WG_HMAC01
    msg = cose.mac0_verify(WG_KEY, WG_HMAC01)
    assert msg.verified and msg.payload == WG_CONTENT and msg.kid is None and msg.tagged


@pytest.mark.parametrize(
    "data", [WG_FAIL_CHANGE_TAG, WG_FAIL_ADD_PROTECTED, WG_FAIL_REMOVE_PROTECTED]
)
def test_cose_wg_failure_vectors_are_tag_mismatches(data: bytes) -> None:
    with pytest.raises(SealError) as exc:
        cose.mac0_verify(WG_KEY, data)
    assert reason(exc) == "tag mismatch"


def test_alg_only_in_unprotected_header_is_refused() -> None:
    with pytest.raises(SealError) as exc:
        cose.mac0_verify(WG_KEY, WG_ALG_UNPROTECTED, external_aad=bytes.fromhex(
            "ff00ee11dd22cc33bb44aa559966"))
    assert reason(exc) == "alg must be in protected header"


def test_sig_structure_matches_cose_wg_intermediate() -> None:
    data = cose.sign1_create(SEED, WG_CONTENT)
    msg = cose.sign1_parse(data)
    assert msg.protected_bytes == bytes.fromhex("A10127")
    # The signature is over exactly the WG ToBeSigned bytes.
    nacl.signing.VerifyKey(PUBLIC).verify(WG_TO_BE_SIGNED, msg.signature)
    assert cose.sign1_verify(PUBLIC, data).payload == WG_CONTENT


def test_sign1_known_answer_layout() -> None:
    data = cose.sign1_create(SEED, b"hi", kid=KID, content_type=cose.CT_SENML_CBOR)
    sig = nacl.signing.SigningKey(SEED).sign(
        bytes.fromhex("846A5369676E61747572653146A2012703187040") + b"\x42hi"
    ).signature
    expected = bytes.fromhex("D28446A20127031870A10448") + KID + b"\x42hi\x58\x40" + sig
    assert data == expected


def test_key_id_is_truncated_sha256() -> None:
    assert cose.key_id(PUBLIC) == hashlib.sha256(PUBLIC).digest()[:8]


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("tagged", [True, False])
@pytest.mark.parametrize("content_type", [None, 112, "application/senml+cbor"])
@pytest.mark.parametrize("detached", [False, True])
def test_mac0_round_trip(tagged: bool, content_type, detached: bool) -> None:
    data = cose.mac0_create(KEY, b"payload", kid=KID, content_type=content_type,
                            external_aad=b"aad", tagged=tagged, detached=detached)
    msg = cose.mac0_verify(KEY, data, external_aad=b"aad", kid=KID,
                           detached_payload=b"payload" if detached else None)
    assert (msg.payload, msg.kid, msg.content_type, msg.tagged) == (
        b"payload", KID, content_type, tagged)
    assert msg.alg == 5 and len(msg.tag) == 32


@pytest.mark.parametrize("tagged", [True, False])
@pytest.mark.parametrize("detached", [False, True])
def test_sign1_round_trip(tagged: bool, detached: bool) -> None:
    data = cose.sign1_create(SEED, b"payload", kid=KID, content_type=112,
                             external_aad=b"aad", tagged=tagged, detached=detached)
    msg = cose.sign1_verify(PUBLIC, data, external_aad=b"aad", kid=KID,
                            detached_payload=b"payload" if detached else None)
    assert (msg.payload, msg.kid, msg.content_type, msg.alg) == (b"payload", KID, 112, -8)


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=300), st.binary(max_size=40),
       st.one_of(st.none(), st.binary(max_size=16)))
def test_mac0_round_trip_any_input(key: bytes, payload: bytes, aad: bytes, kid) -> None:
    data = cose.mac0_create(key, payload, kid=kid, external_aad=aad)
    assert cose.mac0_verify(key, data, external_aad=aad, kid=kid).payload == payload
    other = bytes([key[0] ^ 1]) + key[1:]
    with pytest.raises(SealError, match="tag mismatch"):
        cose.mac0_verify(other, data, external_aad=aad)
    with pytest.raises(SealError, match="tag mismatch"):
        cose.mac0_verify(key, data, external_aad=aad + b"x")


# ---------------------------------------------------------------- interop


def test_pycose_mac0_verifies_here() -> None:
    msg = Mac0Message(phdr={Algorithm: HMAC256, ContentType: 112}, uhdr={KidHeader: KID},
                      payload=b"from pycose", external_aad=b"aad")
    msg.key = SymmetricKey(k=KEY)
    ours = cose.mac0_verify(KEY, msg.encode(), external_aad=b"aad", kid=KID)
    assert ours.payload == b"from pycose" and ours.content_type == 112


def test_pycose_sign1_verifies_here() -> None:
    msg = Sign1Message(phdr={Algorithm: EdDSA}, uhdr={KidHeader: KID}, payload=b"from pycose",
                       external_aad=b"aad")
    msg.key = OKPKey(crv=Ed25519, d=SEED, x=PUBLIC)
    assert cose.sign1_verify(PUBLIC, msg.encode(), external_aad=b"aad").payload == b"from pycose"


def _pycose_decode(cls, data: bytes):
    """pycose 1.1's decode() expects cbor2 to return lists; cbor2 6 returns tuples inside
    tags, so decode() fails even on pycose's own output. Feed its from_cose_obj (the rest of
    decode()) the same items as a list instead."""
    tag = cbor2.loads(data)
    assert tag.tag == cls.cbor_tag
    protected, unprotected, payload, last = tag.value
    return cls.from_cose_obj([protected, dict(unprotected), payload, last], True)


def test_our_mac0_verifies_in_pycose() -> None:
    data = cose.mac0_create(KEY, b"ours", kid=KID, content_type=112, external_aad=b"aad")
    msg = _pycose_decode(Mac0Message, data)
    msg.key = SymmetricKey(k=KEY)
    msg.external_aad = b"aad"
    assert msg.verify_tag()
    assert msg.phdr[Algorithm] is HMAC256 and msg.uhdr[KidHeader] == KID
    msg.external_aad = b"other"
    assert not msg.verify_tag()


def test_our_sign1_verifies_in_pycose() -> None:
    data = cose.sign1_create(SEED, b"ours", kid=KID, external_aad=b"aad")
    msg = _pycose_decode(Sign1Message, data)
    msg.key = OKPKey(crv=Ed25519, x=PUBLIC)
    msg.external_aad = b"aad"
    assert msg.verify_signature()
    msg.external_aad = b"other"
    assert not msg.verify_signature()


def _hand_mac0(key: bytes, payload: bytes, kid: bytes, aad: bytes) -> bytes:
    protected = cbor2.dumps({1: 5})
    tag = hmac.new(key, cbor2.dumps(["MAC0", protected, aad, payload]), hashlib.sha256).digest()
    return cbor2.dumps(cbor2.CBORTag(17, [protected, {4: kid}, payload, tag]))


def _hand_sign1(seed: bytes, payload: bytes, aad: bytes) -> bytes:
    protected = cbor2.dumps({1: -8})
    tbs = cbor2.dumps(["Signature1", protected, aad, payload])
    sig = nacl.signing.SigningKey(seed).sign(tbs).signature
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, sig]))


def test_hand_built_seals_verify_here_and_ours_verify_by_hand() -> None:
    assert cose.mac0_verify(KEY, _hand_mac0(KEY, b"x", KID, b"a"), b"a", kid=KID).payload == b"x"
    assert cose.sign1_verify(PUBLIC, _hand_sign1(SEED, b"y", b"a"), b"a").payload == b"y"
    # ... and the reverse: a by-hand verifier accepts our bytes.
    tag17 = cbor2.loads(cose.mac0_create(KEY, b"x", kid=KID, external_aad=b"a"))
    protected, unprotected, payload, tag = tag17.value
    assert tag17.tag == 17 and unprotected == {4: KID}
    expected = hmac.new(KEY, cbor2.dumps(["MAC0", protected, b"a", payload]),
                        hashlib.sha256).digest()
    assert hmac.compare_digest(tag, expected)
    tag18 = cbor2.loads(cose.sign1_create(SEED, b"y", external_aad=b"a"))
    protected, _, payload, sig = tag18.value
    nacl.signing.VerifyKey(PUBLIC).verify(cbor2.dumps(["Signature1", protected, b"a", payload]),
                                          sig)


# ---------------------------------------------------------------- tampering


def _every_single_byte_change(data: bytes):
    for pos in range(len(data)):
        for value in range(256):
            if value != data[pos]:
                yield pos, data[:pos] + bytes([value]) + data[pos + 1:]


def test_every_single_byte_change_of_a_mac0_is_rejected() -> None:
    data = cose.mac0_create(KEY, b'{"hr": 72}', kid=KID, content_type=112, external_aad=b"d1")
    reasons = set()
    for pos, changed in _every_single_byte_change(data):
        with pytest.raises(SealError) as exc:
            cose.mac0_verify(KEY, changed, external_aad=b"d1", kid=KID)
        assert str(exc.value), pos
        reasons.add(str(exc.value).split(":")[0])
    assert "tag mismatch" in reasons and "kid mismatch" in reasons


def test_every_single_byte_change_of_a_sign1_is_rejected() -> None:
    data = cose.sign1_create(SEED, b"checkpoint", kid=KID, external_aad=b"cp")
    for pos, changed in _every_single_byte_change(data):
        with pytest.raises(SealError) as exc:
            cose.sign1_verify(PUBLIC, changed, external_aad=b"cp", kid=KID)
        assert str(exc.value), pos


@given(st.binary(max_size=64), st.data())
def test_any_multi_byte_corruption_is_rejected(payload: bytes, data) -> None:
    sealed = bytearray(cose.mac0_create(KEY, payload, kid=KID))
    positions = data.draw(st.lists(st.integers(0, len(sealed) - 1), min_size=1, max_size=4,
                                   unique=True))
    for pos in positions:
        sealed[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(SealError):
        cose.mac0_verify(KEY, bytes(sealed), kid=KID)


# ---------------------------------------------------------------- specific reasons


def _raw(protected, unprotected, payload=b"p", tag=b"\x00" * 32, cose_tag=17) -> bytes:
    protected_bytes = protected if isinstance(protected, bytes) else cbor.dumps(protected)
    body = [protected_bytes, unprotected, payload, tag]
    return cbor.dumps(cbor.Tag(cose_tag, body) if cose_tag is not None else body)


@pytest.mark.parametrize(
    "data, expected",
    [
        (cose.sign1_create(SEED, b"x"), "not a COSE_Mac0 (tag 18)"),
        (_raw({1: -7}, {}), "unsupported alg -7"),
        (_raw({1: "HS256"}, {}), "unsupported alg 'HS256'"),
        (_raw({1: 5.0}, {}), "unsupported alg 5.0"),
        (_raw({}, {1: 5}), "alg must be in protected header"),
        (_raw(b"", {}), "alg missing from protected header"),
        (_raw({1: 5}, {4: 7}), "kid not bytes"),
        (_raw({1: 5, 4: b"a"}, {4: b"a"}), "label 4 in both protected and unprotected headers"),
        (_raw({1: 5, 2: [99], 99: 1}, {}), "crit label 99 not understood"),
        (_raw({1: 5, 2: [3]}, {}), "crit label 3 not in protected header"),
        (_raw({1: 5, 2: []}, {}), "crit must be a non-empty array of labels"),
        (_raw({1: 5}, {2: [1]}), "crit must be in protected header"),
        (_raw({True: 5}, {}), "protected header label True is neither int nor text"),
        (_raw({1: 5}, {b"x": 1}), "unprotected header label b'x' is neither int nor text"),
        (_raw({1: 5, 3: -1}, {}), "content type must be a uint16 or text"),
        (_raw(cbor.dumps([1, 5]), {}), "protected header must be a bstr-wrapped map"),
        (_raw(cbor.dumps({1: 5}) + b"\x00", {}), "protected header is not valid CBOR"),
        (cbor.dumps(cbor.Tag(17, [{1: 5}, {}, b"p", b"\x00" * 32])),
         "protected header must be a bstr-wrapped map"),
        (_raw({1: 5}, []), "unprotected header must be a map"),
        (_raw({1: 5}, {}, payload=None), "payload detached (nil) but no detached payload given"),
        (_raw({1: 5}, {}, payload="text"), "payload must be bstr or nil"),
        (_raw({1: 5}, {}, tag=b"\x00" * 16), "tag must be 32 bytes, not 16"),
        (_raw({1: 5}, {}, tag=None), "tag must be a bstr"),
        (cbor.dumps(cbor.Tag(17, [b"", {}, b""])), "COSE_Mac0 must have 4 items, not 3"),
        (cbor.dumps(cbor.Tag(16, [])), "not a COSE_Mac0 (tag 16)"),
        (cbor.dumps({1: 2}), "not a COSE_Mac0 (tag 17 or a 4-item array expected)"),
        (b"\xd1\x84", "COSE_Mac0 is not valid CBOR"),
        (b"", "COSE_Mac0 is not valid CBOR"),
    ],
)
def test_mac0_rejections_name_the_reason(data: bytes, expected: str) -> None:
    with pytest.raises(SealError) as exc:
        cose.mac0_verify(KEY, data)
    assert reason(exc).startswith(expected)


def test_sign1_rejections_name_the_reason() -> None:
    good = cose.sign1_create(SEED, b"x", kid=KID)
    with pytest.raises(SealError, match=r"^not a COSE_Sign1 \(tag 17\)$"):
        cose.sign1_verify(PUBLIC, cose.mac0_create(KEY, b"x"))
    with pytest.raises(SealError, match="^signature invalid$"):
        cose.sign1_verify(bytes(nacl.signing.SigningKey(KEY).verify_key), good)
    with pytest.raises(SealError, match="^signature must be 64 bytes, not 32$"):
        cose.sign1_verify(PUBLIC, _raw({1: -8}, {}, cose_tag=18))
    with pytest.raises(SealError, match="^unsupported alg 5$"):
        cose.sign1_verify(PUBLIC, _raw({1: 5}, {}, tag=b"\x00" * 64, cose_tag=18))
    with pytest.raises(SealError, match="^kid mismatch$"):
        cose.sign1_verify(PUBLIC, good, kid=b"other")
    with pytest.raises(SealError, match="^kid missing"):
        cose.sign1_verify(PUBLIC, cose.sign1_create(SEED, b"x"), kid=KID)


def test_detached_payload_rules() -> None:
    attached = cose.mac0_create(KEY, b"x")
    with pytest.raises(SealError, match="payload is attached"):
        cose.mac0_verify(KEY, attached, detached_payload=b"x")
    detached = cose.mac0_create(KEY, b"x", detached=True)
    with pytest.raises(SealError, match="tag mismatch"):
        cose.mac0_verify(KEY, detached, detached_payload=b"y")


def test_crit_listing_understood_protected_labels_is_accepted() -> None:
    protected = cbor.dumps({1: 5, 2: [3], 3: 112})
    tag = crypto.hmac_sha256(KEY, cbor.dumps(["MAC0", protected, b"", b"p"]))
    data = cbor.dumps(cbor.Tag(17, [protected, {}, b"p", tag]))
    assert cose.mac0_verify(KEY, data).content_type == 112


def test_unknown_non_critical_headers_are_ignored() -> None:
    protected = cbor.dumps({1: 5, -70000: "x"})
    tag = crypto.hmac_sha256(KEY, cbor.dumps(["MAC0", protected, b"", b"p"]))
    data = cbor.dumps(cbor.Tag(17, [protected, {"note": 1}, b"p", tag]))
    assert cose.mac0_verify(KEY, data).protected[-70000] == "x"


def test_bad_arguments_are_validation_errors() -> None:
    with pytest.raises(ValidationError):
        cose.mac0_create(b"short", b"x")
    with pytest.raises(ValidationError):
        cose.mac0_verify(b"short", cose.mac0_create(KEY, b"x"))
    with pytest.raises(ValidationError):
        cose.mac0_create(KEY, "text")
    with pytest.raises(ValidationError):
        cose.sign1_create(SEED[:31], b"x")
    with pytest.raises(ValidationError):
        cose.mac0_create(KEY, b"x", content_type=-1)
    with pytest.raises(ValidationError):
        cose.mac0_create(KEY, b"x", kid=b"k" * 65)


# ---------------------------------------------------------------- peek


def test_peek_names_structure_and_kid() -> None:
    assert cose.peek(cose.mac0_create(KEY, b"abc", kid=KID, content_type=112)) == {
        "structure": "COSE_Mac0", "tagged": True, "alg": 5, "kid": KID,
        "content_type": 112, "payload_size": 3,
    }
    info = cose.peek(cose.sign1_create(SEED, b"abc", tagged=False, detached=True))
    assert (info["structure"], info["tagged"], info["kid"], info["payload_size"]) == (
        "COSE_Sign1", False, None, None)
    assert cose.peek(_raw({1: -7}, {}, cose_tag=None))["structure"] == "unknown"
    with pytest.raises(SealError):
        cose.peek(cbor.dumps(cbor.Tag(96, [])))


# ---------------------------------------------------------------- hostile input

cbor_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64 - 1), st.binary(max_size=40),
              st.text(max_size=10), st.floats(allow_nan=False)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.integers(-5, 5), st.text(max_size=3)), inner, max_size=5),
    ),
    max_leaves=20,
)


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    for call in (
        lambda: cose.mac0_parse(data),
        lambda: cose.sign1_parse(data),
        lambda: cose.mac0_verify(KEY, data),
        lambda: cose.sign1_verify(PUBLIC, data),
        lambda: cose.peek(data),
    ):
        try:
            call()
        except ProtocolError:
            pass


@given(st.sampled_from([17, 18, None]), cbor_values, cbor_values, cbor_values, cbor_values,
       st.booleans())
def test_random_structures_raise_only_protocol_errors(cose_tag, p, u, payload, tag, wrap) -> None:
    protected = cbor.dumps(p) if wrap else p
    body = [protected, u, payload, tag]
    data = cbor.dumps(cbor.Tag(cose_tag, body) if cose_tag else body)
    for call in (
        lambda: cose.mac0_verify(KEY, data, kid=KID),
        lambda: cose.sign1_verify(PUBLIC, data),
        lambda: cose.peek(data),
    ):
        try:
            call()
        except ProtocolError:
            pass
