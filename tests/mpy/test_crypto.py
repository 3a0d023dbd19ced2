# protocol.crypto on the MicroPython unix port (backend "pure"): the published test vectors
# and the rejection rules. Run: .venv/bin/micropython -X heapsize=8M tests/mpy/run.py test_crypto
# The vector tables below are also read by tests/protocol/test_crypto.py, which checks them
# against both CPython backends, so they stay plain data.
from binascii import hexlify, unhexlify

from protocol import crypto
from protocol.crypto import pure_ed25519, pure_hmac, pure_sha512, pure_x25519
from protocol.errors import SealError

# FIPS 180-2 appendix C / FIPS 180-4 examples: "abc", the empty string, the 896-bit message.
SHA512_VECTORS = [
    (
        b"abc",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
    ),
    (
        b"",
        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
        "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
    ),
    (
        b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmn"
        b"hijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
        "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018"
        "501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909",
    ),
]

# SHA-512 of the concatenated SHA-512 digests of b"\xa5" * n for these n, computed with
# CPython's hashlib (OpenSSL): checks the padding at every block boundary in one value.
SHA512_BOUNDARY_LENGTHS = (0, 1, 111, 112, 127, 128, 129, 239, 240, 256, 1000)
SHA512_BOUNDARY_CHAIN = (
    "1ba406f72a974dd20fdd6603b039eedbbdfbad379e7ee04dcc2cc073276085be"
    "a85c2d26fa11ff580c05f594a6ac7306180f1fdd0cecb936b3ba9d9c1f496b63"
)

# RFC 4231 section 4, test cases 1-7: (key, data, HMAC-SHA-256 hex). Case 5 is truncated to
# 128 bits by the RFC, so its expected value is a prefix.
HMAC_SHA256_VECTORS = [
    (
        b"\x0b" * 20,
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    ),
    (
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    (
        b"\xaa" * 20,
        b"\xdd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
    ),
    (
        bytes(range(1, 26)),
        b"\xcd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
    ),
    (b"\x0c" * 20, b"Test With Truncation", "a3b6167473100ee06e0c796c2955552b"),
    (
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    (
        b"\xaa" * 131,
        b"This is a test using a larger than block-size key and a larger than block-size"
        b" data. The key needs to be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
]

# RFC 5869 appendix A, test cases 1-3 (SHA-256): (ikm, salt, info, length, okm hex).
HKDF_SHA256_VECTORS = [
    (
        b"\x0b" * 22,
        bytes(range(13)),
        bytes(range(0xF0, 0xFA)),
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        bytes(range(0x50)),
        bytes(range(0x60, 0xB0)),
        bytes(range(0xB0, 0x100)),
        82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (
        b"\x0b" * 22,
        b"",
        b"",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]

_TEST_1024_MESSAGE = (
    "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98fa6e264bf09efe12ee50f8f54e9f77b1"
    "e355f6c50544e23fb1433ddf73be84d879de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d"
    "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc1a858efcb8550ee3a5e1998bd177e93a"
    "7363c344fe6b199ee5d02e82d522c4feba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e"
    "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbefefd75499da96bd68a8a97b928a8bbc10"
    "3b6621fcde2beca1231d206be6cd9ec7aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1"
    "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2d17ba70eb6248e594e1a2297acbbb39d"
    "502f1a8c6eb6f1ce22b3de1a1f40cc24554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270"
    "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc2732e69485bbc9c90bfbd62481d9089b"
    "eccf80cfe2df16a2cf65bd92dd597b0707e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba"
    "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51addd3b75a2b1ae0784504df543af8969b"
    "e3ea7082ff7fc9888c144da2af58429ec96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7"
    "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c42f58c30c04aafdb038dda0847dd988d"
    "cda6f3bfd15c4b4c4525004aa06eeff8ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df"
    "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08d78ff4ef5d63653a65040cf9bfd4aca7"
    "984a74d37145986780fc0b16ac451649de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4"
    "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a32ef5b52a1ecc820e308aa342721aac09"
    "43bf6686b64b2579376504ccc493d97e6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f"
    "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b50d334ba77c225bc307ba537152f3f161"
    "0e4eafe595f6d9d90d11faa933a15ef1369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d"
    "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c0618983f8741c5ef68d3a101e8a3b8ca"
    "c60c905c15fc910840b94c00a0b9d0"
)

# RFC 8032 section 7.1: (name, seed, public key, message, signature), all hex.
ED25519_VECTORS = [
    (
        "TEST 1",
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "TEST 2",
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "TEST 3",
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "TEST 1024",
        "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
        "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
        _TEST_1024_MESSAGE,
        "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350"
        "aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
    ),
    (
        "TEST SHA(abc)",
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]

# RFC 7748 section 5.2: (scalar, u, output); the second u has bit 255 set, which is ignored.
X25519_VECTORS = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]
# RFC 7748 section 5.2 iteration: k = u = 9; repeat (k, u) = (X25519(k, u), k).
X25519_AFTER_1_ITERATION = "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
X25519_AFTER_1000_ITERATIONS = "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"

# RFC 7748 section 6.1: Alice's and Bob's private and public keys and their shared secret.
X25519_DH = {
    "alice_private": "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    "alice_public": "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
    "bob_private": "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    "bob_public": "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
    "shared": "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
}

_P = (1 << 255) - 19
# u-coordinates of low order (0, 1, the two order-8 points, p-1) and the non-canonical
# p and p+1: X25519 with any of them gives all zeros, so x25519_shared must refuse them.
X25519_LOW_ORDER_U = [
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    _P - 1,
    _P,
    _P + 1,
]

# Encodings of the 8 points of order dividing 8 (y = 1, p-1, 0 and the two order-8 y values,
# with and without the sign bit where x != 0): never acceptable as R or as a public key.
_Y_ORDER_8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022
ED25519_SMALL_ORDER_Y = [1, _P - 1, 0, _Y_ORDER_8, _P - _Y_ORDER_8]


def _hex(text):
    return unhexlify(text)


def _encode_y(y, sign_bit):
    return (y | (sign_bit << 255)).to_bytes(32, "little")


def test_backend_is_pure_on_micropython():
    assert crypto.BACKEND == "pure"


def test_sha512_fips_examples():
    for message, digest in SHA512_VECTORS:
        assert hexlify(crypto.sha512(message)).decode() == digest
        assert hexlify(pure_sha512.sha512(message)).decode() == digest


def test_sha512_padding_boundaries():
    # 111/112 and 127/128/129 bytes straddle the one-or-two padding blocks decision.
    chained = b"".join(pure_sha512.sha512(b"\xa5" * n) for n in SHA512_BOUNDARY_LENGTHS)
    assert hexlify(pure_sha512.sha512(chained)).decode() == SHA512_BOUNDARY_CHAIN


def test_hmac_sha256_rfc4231():
    for key, data, mac in HMAC_SHA256_VECTORS:
        assert hexlify(crypto.hmac_sha256(key, data)).decode()[: len(mac)] == mac
        assert hexlify(pure_hmac.hmac_sha256(key, data)).decode()[: len(mac)] == mac


def test_hkdf_sha256_rfc5869():
    for ikm, salt, info, length, okm in HKDF_SHA256_VECTORS:
        assert hexlify(crypto.hkdf_sha256(ikm, salt, info, length)).decode() == okm


def test_hkdf_length_limits():
    assert crypto.hkdf_sha256(b"k", b"", b"", 0) == b""
    assert len(crypto.hkdf_sha256(b"k", b"", b"", 255 * 32)) == 255 * 32
    for bad in (-1, 255 * 32 + 1):
        try:
            crypto.hkdf_sha256(b"k", b"", b"", bad)
        except ValueError:
            continue
        raise AssertionError("length %d accepted" % bad)


def test_ed25519_rfc8032_vectors():
    for name, seed, public, message, signature in ED25519_VECTORS:
        seed = _hex(seed)
        message = _hex(message)
        assert hexlify(crypto.ed25519_public_key(seed)).decode() == public, name
        assert hexlify(crypto.ed25519_sign(seed, message)).decode() == signature, name
        assert crypto.ed25519_verify(_hex(public), message, _hex(signature)), name


def test_ed25519_rejects_tampering():
    name, seed, public, message, signature = ED25519_VECTORS[2]
    public = _hex(public)
    message = _hex(message)
    signature = _hex(signature)
    for i in (0, 31, 32, 63):
        flipped = bytearray(signature)
        flipped[i] ^= 0x01
        assert not crypto.ed25519_verify(public, message, bytes(flipped))
    assert not crypto.ed25519_verify(public, message + b"\x00", signature)
    assert not crypto.ed25519_verify(_hex(ED25519_VECTORS[0][2]), message, signature)


def test_ed25519_rejects_non_canonical_s():
    # S + L verifies the same group equation; libsodium and RFC 8032 refuse it (malleability).
    seed = _hex(ED25519_VECTORS[1][1])
    public = crypto.ed25519_public_key(seed)
    signature = crypto.ed25519_sign(seed, b"checkpoint")
    s = int.from_bytes(signature[32:], "little")
    for bigger in (s + pure_ed25519.L, s + 2 * pure_ed25519.L):
        forged = signature[:32] + bigger.to_bytes(32, "little")
        assert not crypto.ed25519_verify(public, b"checkpoint", forged)
    assert crypto.ed25519_verify(public, b"checkpoint", signature)


def test_ed25519_rejects_small_order_and_non_canonical_keys():
    seed = _hex(ED25519_VECTORS[0][1])
    message = b"m"
    signature = crypto.ed25519_sign(seed, message)
    for y in ED25519_SMALL_ORDER_Y:
        for sign_bit in (0, 1):
            small = _encode_y(y, sign_bit)
            assert not crypto.ed25519_verify(small, message, signature)
            assert not crypto.ed25519_verify(small, message, small + signature[32:])
    # y = p + 3 is a non-canonical encoding of a real curve point (y = 3).
    assert not crypto.ed25519_verify(_encode_y(_P + 3, 0), message, signature)
    assert pure_ed25519.decode(_encode_y(3, 0)) is not None
    assert pure_ed25519.decode(_encode_y(_P + 3, 0)) is None
    assert pure_ed25519.decode(_encode_y(1, 1)) is None  # x = 0 with the sign bit set


def test_ed25519_small_order_r_with_matching_s_is_refused():
    # R = identity and S = h*a satisfy the group equation S*B = R + h*A, which a verifier
    # that skipped libsodium's small-order check on R would accept.
    seed = _hex(ED25519_VECTORS[0][1])
    scalar, _, public = pure_ed25519._expand(seed)
    r_encoded = _encode_y(1, 0)
    h = int.from_bytes(crypto.sha512(r_encoded + public + b"m"), "little") % pure_ed25519.L
    forged = r_encoded + (h * scalar % pure_ed25519.L).to_bytes(32, "little")
    assert not crypto.ed25519_verify(public, b"m", forged)


def test_ed25519_verify_never_raises_on_garbage():
    public = _hex(ED25519_VECTORS[0][2])
    signature = _hex(ED25519_VECTORS[0][4])
    bad_inputs = [
        (public[:31], b"", signature),
        (public + b"\x00", b"", signature),
        (public, b"", signature[:63]),
        (public, b"", signature + b"\x00"),
        (None, b"", signature),
        (public, None, signature),
        (public, b"", None),
        ("x" * 32, b"", signature),
        (public, "text", signature),
        (public, b"", 12345),
        (b"\xff" * 32, b"", b"\xff" * 64),
        (bytes(32), b"", bytes(64)),
    ]
    for args in bad_inputs:
        assert crypto.ed25519_verify(*args) is False
    assert crypto.ed25519_verify(bytearray(public), memoryview(b""), bytearray(signature))


def test_ed25519_sign_rejects_bad_seed():
    for seed in (b"", bytes(31), bytes(33), None, "x" * 32):
        try:
            crypto.ed25519_sign(seed, b"m")
        except (ValueError, TypeError):
            continue
        raise AssertionError("seed %r accepted" % (seed,))


def test_x25519_rfc7748_vectors():
    for scalar, u, out in X25519_VECTORS:
        assert hexlify(crypto.x25519_shared(_hex(scalar), _hex(u))).decode() == out
        assert hexlify(pure_x25519.x25519(_hex(scalar), _hex(u))).decode() == out


def test_x25519_rfc7748_one_iteration():
    nine = (9).to_bytes(32, "little")
    assert hexlify(pure_x25519.x25519(nine, nine)).decode() == X25519_AFTER_1_ITERATION
    assert hexlify(crypto.x25519_public_key(nine)).decode() == X25519_AFTER_1_ITERATION


def test_x25519_rfc7748_diffie_hellman():
    alice = _hex(X25519_DH["alice_private"])
    bob = _hex(X25519_DH["bob_private"])
    assert hexlify(crypto.x25519_public_key(alice)).decode() == X25519_DH["alice_public"]
    assert hexlify(crypto.x25519_public_key(bob)).decode() == X25519_DH["bob_public"]
    shared = _hex(X25519_DH["shared"])
    assert crypto.x25519_shared(alice, _hex(X25519_DH["bob_public"])) == shared
    assert crypto.x25519_shared(bob, _hex(X25519_DH["alice_public"])) == shared


def test_x25519_refuses_low_order_points_and_bad_lengths():
    private = _hex(X25519_DH["alice_private"])
    for u in X25519_LOW_ORDER_U:
        for top_bit in (0, 1):
            peer = (u | (top_bit << 255)).to_bytes(32, "little")
            try:
                crypto.x25519_shared(private, peer)
            except SealError:
                continue
            raise AssertionError("low-order u %d accepted" % u)
    bad_pairs = ((private[:31], private), (private, private + b"\x00"), (None, private))
    for private_key, peer in bad_pairs:
        try:
            crypto.x25519_shared(private_key, peer)
        except SealError:
            continue
        raise AssertionError("bad length accepted")


def test_constant_time_equal():
    assert crypto.constant_time_equal(b"abc", b"abc")
    assert not crypto.constant_time_equal(b"abc", b"abd")
    assert not crypto.constant_time_equal(b"abc", b"abcd")
    assert crypto.constant_time_equal(b"", b"")


def test_random_bytes():
    first = crypto.random_bytes(32)
    second = crypto.random_bytes(32)
    assert len(first) == 32 and isinstance(first, bytes)
    assert first != second
    assert crypto.random_bytes(0) == b""
