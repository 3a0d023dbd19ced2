"""protocol.crypto on CPython: published vectors on both backends, and the pure-Python
implementations cross-checked against libsodium (PyNaCl), hashlib and hmac.

The vector tables and the vector/rejection tests live in tests/mpy/test_crypto.py, which the
MicroPython unix port runs as is; here every one of those tests runs again against the
"nacl" backend and against a copy of protocol.crypto loaded with PyNaCl hidden ("pure").
"""

import hashlib
import hmac
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from unittest import mock

import nacl.bindings
import nacl.exceptions
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import crypto
from protocol.crypto import pure_ed25519, pure_hmac, pure_sha512, pure_x25519
from protocol.errors import SealError

REPO = Path(__file__).resolve().parents[2]
L = pure_ed25519.L
P = pure_ed25519.P


def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The MicroPython test module doubles as the vector table.
mpy_cases = _load_module("mpy_test_crypto", REPO / "tests" / "mpy" / "test_crypto.py")

# protocol.crypto as a board without PyNaCl sees it.
with mock.patch.dict(sys.modules, {"nacl": None, "nacl.bindings": None, "nacl.exceptions": None}):
    pure_api = _load_module("protocol_crypto_pure_backend", REPO / "protocol/crypto/__init__.py")

APIS = {"nacl": crypto, "pure": pure_api}


@pytest.fixture(params=sorted(APIS))
def api(request: pytest.FixtureRequest) -> ModuleType:
    return APIS[request.param]


def test_backends_are_what_they_claim() -> None:
    assert crypto.BACKEND == "nacl"
    assert pure_api.BACKEND == "pure"
    assert pure_api._nacl is None


SHARED_CASES = sorted(
    name
    for name in dir(mpy_cases)
    if name.startswith("test_") and name != "test_backend_is_pure_on_micropython"
)


@pytest.mark.parametrize("case", SHARED_CASES)
def test_micropython_case_on_cpython_backend(
    api: ModuleType, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mpy_cases, "crypto", api)
    getattr(mpy_cases, case)()


# ---------------------------------------------------------------- vectors too slow for a board


@pytest.mark.parametrize(
    "x25519", [nacl.bindings.crypto_scalarmult, pure_x25519.x25519], ids=["nacl", "pure"]
)
def test_x25519_rfc7748_iterations(x25519) -> None:
    k = u = (9).to_bytes(32, "little")
    for iteration in range(1, 1001):
        k, u = x25519(k, u), k
        if iteration == 1:
            assert k.hex() == mpy_cases.X25519_AFTER_1_ITERATION
    assert k.hex() == mpy_cases.X25519_AFTER_1000_ITERATIONS


def test_pure_curve_constants() -> None:
    d = -121665 * pow(121666, P - 2, P) % P
    assert pure_ed25519.D == d
    assert pure_ed25519.SQRT_M1 * pure_ed25519.SQRT_M1 % P == P - 1
    assert pure_ed25519.BASE_Y == 4 * pow(5, P - 2, P) % P
    x, y = pure_ed25519.BASE_X, pure_ed25519.BASE_Y
    assert (-x * x + y * y - 1 - d * x * x * y * y) % P == 0
    assert pure_ed25519.encode(pure_ed25519.multiply_vartime(L, pure_ed25519.BASE)) == (
        pure_ed25519.encode(pure_ed25519.IDENTITY)
    )
    # Every y in the small-order list decodes to a point whose 8th multiple is the identity.
    identity = pure_ed25519.encode(pure_ed25519.IDENTITY)
    for y in mpy_cases.ED25519_SMALL_ORDER_Y:
        point = pure_ed25519.decode(y.to_bytes(32, "little"))
        assert point is not None
        assert pure_ed25519.encode(pure_ed25519.multiply_vartime(8, point)) == identity
    assert len(_TORSION_POINTS) == 7


@given(scalar=st.one_of(st.integers(0, L - 1), st.sampled_from([0, 1, 2, L - 2, L - 1])))
def test_comb_equals_wnaf_multiplication(scalar: int) -> None:
    expected = pure_ed25519.encode(pure_ed25519.multiply_vartime(scalar, pure_ed25519.BASE))
    assert pure_ed25519.encode(pure_ed25519.base_multiply(scalar)) == expected


# ---------------------------------------------------------------- pure versus libsodium

messages = st.binary(max_size=300)
keys32 = st.binary(min_size=32, max_size=32)


def _nacl_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    try:
        nacl.bindings.crypto_sign_open(signature + message, public)
    except nacl.exceptions.CryptoError:
        return False
    return True


def _all_verifiers_agree(public, message, signature) -> bool:
    """The verdict of every verifier, asserting they agree and none raises."""
    verdicts = {
        "pure module": pure_ed25519.verify(public, message, signature),
        "pure api": pure_api.ed25519_verify(public, message, signature),
        "nacl api": crypto.ed25519_verify(public, message, signature),
    }
    assert len(set(verdicts.values())) == 1, verdicts
    return verdicts["nacl api"]


@given(seed=keys32, message=messages)
def test_pure_sign_and_verify_equal_libsodium(seed: bytes, message: bytes) -> None:
    public, secret = nacl.bindings.crypto_sign_seed_keypair(seed)
    expected = nacl.bindings.crypto_sign(message, secret)[:64]
    assert pure_ed25519.public_key(seed) == public
    assert pure_ed25519.sign(seed, message) == expected
    assert pure_api.ed25519_sign(seed, message) == expected
    assert _all_verifiers_agree(public, message, expected) is True
    assert _all_verifiers_agree(public, message + b"!", expected) is False


_SMALL_ORDER_ENCODINGS = [
    (y | (sign << 255)).to_bytes(32, "little")
    for y in mpy_cases.ED25519_SMALL_ORDER_Y + [P, P + 1]
    for sign in (0, 1)
]
_DECODED_SMALL = [pure_ed25519.decode(encoded) for encoded in _SMALL_ORDER_ENCODINGS]
# The 7 small-order points other than the identity (affine, so (x, y) identifies them).
_TORSION_POINTS = sorted({p for p in _DECODED_SMALL if p is not None and p[:2] != (0, 1)})


@st.composite
def hostile_verifications(draw: st.DrawFn) -> tuple[bytes, bytes, bytes]:
    """(public key, message, signature) that are garbage or near misses of a valid one."""
    seed = draw(keys32)
    message = draw(messages)
    public, secret = nacl.bindings.crypto_sign_seed_keypair(seed)
    signature = nacl.bindings.crypto_sign(message, secret)[:64]
    kind = draw(st.sampled_from(["random", "random sig", "bit flip", "big S", "small", "y+p"]))
    if kind == "random":
        return draw(keys32), message, draw(st.binary(min_size=64, max_size=64))
    if kind == "random sig":
        return public, message, draw(st.binary(min_size=64, max_size=64))
    if kind == "bit flip":
        position = draw(st.integers(0, 64 * 8 + 32 * 8 - 1))
        data = bytearray(signature + public)
        data[position // 8] ^= 1 << (position % 8)
        return bytes(data[64:]), message, bytes(data[:64])
    if kind == "big S":
        s = int.from_bytes(signature[32:], "little") + L * draw(st.integers(1, 15))
        return public, message, signature[:32] + s.to_bytes(32, "little")
    if kind == "small":
        small = draw(st.sampled_from(_SMALL_ORDER_ENCODINGS))
        if draw(st.booleans()):
            return small, message, signature
        return public, message, small + signature[32:]
    # Non-canonical encodings: y + p for the few y < 19 (the only ones that fit in 255 bits).
    y = draw(st.integers(0, 18))
    encoded = ((P + y) | (draw(st.integers(0, 1)) << 255)).to_bytes(32, "little")
    if draw(st.booleans()):
        return encoded, message, signature
    return public, message, encoded + signature[32:]


@given(case=hostile_verifications())
def test_verify_agrees_with_libsodium_on_hostile_input(case) -> None:
    public, message, signature = case
    assert _all_verifiers_agree(public, message, signature) is False


@given(public=st.binary(max_size=80), message=messages, signature=st.binary(max_size=100))
def test_verify_agrees_with_libsodium_on_any_lengths(public, message, signature) -> None:
    assert _all_verifiers_agree(public, message, signature) is False


@given(
    nonce=st.integers(1, L - 1),
    message=messages,
    torsion=st.sampled_from(_TORSION_POINTS),
    seed=keys32,
)
def test_torsion_components_are_judged_like_libsodium(nonce, message, torsion, seed) -> None:
    """Signatures a malicious signer can build with small-order components added to R or A.

    libsodium checks the cofactorless equation, so it refuses torsion in R, and accepts
    torsion T in A exactly when h*T is the identity; the pure verifier must agree either way.
    """
    scalar, _, public = pure_ed25519._expand(seed)
    torsion_cached = pure_ed25519.to_cached(torsion)

    def challenge(r_bytes, public_bytes):
        digest = hashlib.sha512(r_bytes + public_bytes + message).digest()
        return int.from_bytes(digest, "little") % L

    def signature_for(r_point, public_bytes):
        r_bytes = pure_ed25519.encode(r_point)
        h = challenge(r_bytes, public_bytes)
        return r_bytes + ((nonce + h * scalar) % L).to_bytes(32, "little")

    clean_r = pure_ed25519.base_multiply(nonce)
    mixed_r = pure_ed25519.add_cached(clean_r, torsion_cached)
    assert _all_verifiers_agree(public, message, signature_for(mixed_r, public)) is False

    mixed_a_point = pure_ed25519.add_cached(pure_ed25519.base_multiply(scalar % L), torsion_cached)
    mixed_a = pure_ed25519.encode(mixed_a_point)
    signature = signature_for(clean_r, mixed_a)
    # S*B - h*A' = R - h*T: the cofactorless check passes exactly when h*T is the identity.
    h_t = pure_ed25519.multiply_vartime(challenge(signature[:32], mixed_a), torsion)
    expected = pure_ed25519.encode(h_t) == pure_ed25519.encode(pure_ed25519.IDENTITY)
    assert _all_verifiers_agree(mixed_a, message, signature) is expected


@given(private=keys32, peer=keys32)
def test_x25519_equals_libsodium(private: bytes, peer: bytes) -> None:
    assert pure_x25519.x25519_base(private) == nacl.bindings.crypto_scalarmult_base(private)
    assert pure_api.x25519_public_key(private) == crypto.x25519_public_key(private)
    outcomes = []
    for backend in (crypto, pure_api):
        try:
            outcomes.append(backend.x25519_shared(private, peer))
        except SealError:
            outcomes.append("refused")
    assert outcomes[0] == outcomes[1]
    if outcomes[0] != "refused":
        assert pure_x25519.x25519(private, peer) == outcomes[0]


@pytest.mark.parametrize("u", [P + k for k in range(2, 19)] + [(1 << 255) - 1, (1 << 256) - 1])
def test_x25519_non_canonical_u_like_libsodium(u: int) -> None:
    """u >= p (and bit 255, always ignored) is reduced mod p by libsodium and by the ladder."""
    private = bytes(range(32))
    peer = u.to_bytes(32, "little")
    expected = nacl.bindings.crypto_scalarmult(private, peer)
    assert pure_x25519.x25519(private, peer) == expected
    assert pure_api.x25519_shared(private, peer) == expected


@given(private=keys32, low_order=st.sampled_from(mpy_cases.X25519_LOW_ORDER_U))
def test_x25519_low_order_peers_refused_by_both(private: bytes, low_order: int) -> None:
    peer = low_order.to_bytes(32, "little")
    assert pure_x25519.x25519(private, peer) == bytes(32)
    for backend in (crypto, pure_api):
        with pytest.raises(SealError):
            backend.x25519_shared(private, peer)


@given(private=keys32, other=keys32)
def test_x25519_key_agreement_round_trip(private: bytes, other: bytes) -> None:
    ours = pure_api.x25519_shared(private, crypto.x25519_public_key(other))
    theirs = crypto.x25519_shared(other, pure_api.x25519_public_key(private))
    assert ours == theirs


# ---------------------------------------------------------------- hashes, HMAC, HKDF

data_lengths = st.one_of(st.integers(0, 400), st.sampled_from([111, 112, 127, 128, 129, 255, 256]))


@given(data=st.data(), length=data_lengths)
def test_pure_sha512_equals_hashlib(data: st.DataObject, length: int) -> None:
    message = data.draw(st.binary(min_size=length, max_size=length))
    assert pure_sha512.sha512(message) == hashlib.sha512(message).digest()
    assert pure_sha512.sha512(bytearray(message)) == hashlib.sha512(message).digest()


@given(key=st.binary(max_size=200), message=st.binary(max_size=300))
def test_pure_hmac_equals_python_hmac(key: bytes, message: bytes) -> None:
    expected = hmac.new(key, message, "sha256").digest()
    assert pure_hmac.hmac_sha256(key, message) == expected
    assert crypto.hmac_sha256(key, message) == expected


def _reference_hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 section 2 written out with Python's hmac module."""
    prk = hmac.new(salt if salt else bytes(32), ikm, "sha256").digest()
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), "sha256").digest()
        okm += block
    return okm[:length]


@given(
    ikm=st.binary(max_size=100),
    salt=st.binary(max_size=100),
    info=st.binary(max_size=100),
    length=st.integers(0, 255 * 32),
)
def test_hkdf_equals_reference(ikm: bytes, salt: bytes, info: bytes, length: int) -> None:
    expected = _reference_hkdf(ikm, salt, info, length)
    assert pure_hmac.hkdf_sha256(ikm, salt, info, length) == expected
    assert crypto.hkdf_sha256(ikm, salt, info, length) == expected


@given(a=st.binary(max_size=40), b=st.binary(max_size=40))
def test_constant_time_equal_matches_compare_digest(a: bytes, b: bytes) -> None:
    assert pure_hmac.constant_time_equal(a, b) == hmac.compare_digest(a, b)
    assert pure_hmac.constant_time_equal(a, a) is True
