# The seal hot path of protocol/cose.py on the real MicroPython: head-by-head COSE bytes and
# pre-XORed HMAC pads, held to the generic construction (cbor.dumps of the RFC 9052 arrays,
# crypto.hmac_sha256) byte for byte, across the CBOR length-head boundaries.
import hashlib

from protocol import cbor, cose, crypto
from protocol.crypto import pure_hmac

KEY = bytes(range(32))
SIZES = (0, 1, 23, 24, 255, 256, 1000, 65535, 65536)


def _generic_mac0(key, payload, kid, content_type, aad, tagged, detached):
    header = {cose.H_ALG: cose.ALG_HMAC_256_256}
    if content_type is not None:
        header[cose.H_CONTENT_TYPE] = content_type
    protected = cbor.dumps(header)
    tag = crypto.hmac_sha256(key, cbor.dumps(["MAC0", protected, aad, payload]))
    items = [protected, {} if kid is None else {cose.H_KID: kid},
             None if detached else payload, tag]
    return cbor.dumps(cbor.Tag(cose.TAG_MAC0, items) if tagged else items)


def test_mac0_bytes_equal_generic_at_head_boundaries():
    for size in SIZES:
        payload = bytes([size & 0xFF]) * size
        for kid in (None, b"", b"k" * 23, b"k" * 24, b"k" * 64):
            for content_type in (None, 112, 65535, "application/senml+cbor"):
                made = cose.mac0_create(KEY, payload, kid=kid, content_type=content_type)
                assert made == _generic_mac0(KEY, payload, kid, content_type, b"", True, False)
    for tagged in (True, False):
        for detached in (True, False):
            made = cose.mac0_create(KEY, b"p" * 30, kid=b"k", external_aad=b"a" * 24,
                                    tagged=tagged, detached=detached)
            assert made == _generic_mac0(KEY, b"p" * 30, b"k", None, b"a" * 24, tagged,
                                         detached)


def _hmac_reference(key, data):
    # RFC 2104 written out, independent of protocol.crypto.
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes([b ^ 0x36 for b in key]) + data).digest()
    return hashlib.sha256(bytes([b ^ 0x5C for b in key]) + inner).digest()


def test_padded_key_hmac_equals_the_rfc_2104_construction():
    for n in (0, 1, 55, 56, 63, 64, 65, 200):
        data = bytes([i % 256 for i in range(n)])
        for key in (KEY, b"\xff" * 32, bytes(32), b"k" * 64, b"k" * 65, bytes(131)):
            expected = _hmac_reference(key, data)
            assert pure_hmac.PaddedKey(key).digest(data) == expected
            assert pure_hmac.PaddedKey(key).digest(data[:7], data[7:]) == expected
            assert crypto.hmac_key(key).digest(data) == expected
            assert crypto.hmac_sha256(key, data) == expected
    # RFC 4231 test case 1
    digest = pure_hmac.PaddedKey(b"\x0b" * 20).digest(b"Hi There")
    assert digest == bytes.fromhex(
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")


def test_keyed_hmac_cache_is_bounded_and_keyed_by_value():
    for i in range(10):
        key = bytes([i]) * 32
        sealed = cose.mac0_create(key, b"x")
        assert cose.mac0_verify(key, sealed).payload == b"x"
        assert len(crypto._keyed_cache) <= crypto._KEYED_CACHE_MAX
    # A different key never passes under a cached one.
    sealed = cose.mac0_create(bytes([9]) * 32, b"x")
    try:
        cose.mac0_verify(bytes([8]) * 32, sealed)
    except Exception as exc:
        assert type(exc).__name__ == "SealError"
    else:
        raise AssertionError("a MAC under another key verified")
    # A mutable key is copied: changing it afterwards changes nothing cached.
    key = bytearray(b"\x01" * 32)
    before = crypto.hmac_key(key).digest(b"m")
    key[0] = 2
    assert crypto.hmac_key(bytes([1]) * 32).digest(b"m") == before
    assert crypto.hmac_key(key).digest(b"m") != before


def test_sign1_bytes_equal_generic():
    seed = b"\x07" * 32
    made = cose.sign1_create(seed, b"payload", kid=b"k" * 8, external_aad=b"aad")
    protected = cbor.dumps({cose.H_ALG: cose.ALG_EDDSA})
    signature = crypto.ed25519_sign(seed, cbor.dumps(["Signature1", protected, b"aad",
                                                      b"payload"]))
    assert made == cbor.dumps(cbor.Tag(cose.TAG_SIGN1, [protected, {cose.H_KID: b"k" * 8},
                                                        b"payload", signature]))
