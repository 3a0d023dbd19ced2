"""Cryptographic primitives of the protocol: one API, two backends.

On CPython with PyNaCl importable, Ed25519 and X25519 run in libsodium (BACKEND "nacl");
otherwise, and always on MicroPython, they run in the plain-Python modules beside this one
(BACKEND "pure"). Hashes and HMAC use hashlib/hmac on CPython and hashlib.sha256 plus
pure_sha512/pure_hmac on MicroPython. Both backends produce and accept the same bytes; the
pure verifier applies libsodium's acceptance rules (see pure_ed25519 and docs/crypto.md).

Input errors: ed25519_verify never raises (bad input is just an invalid signature);
x25519_shared raises SealError for wrong lengths and for an all-zero shared secret (a
low-order peer key); the key and signing functions raise ValueError/TypeError for wrong
argument types or lengths, which are programming errors, not wire input.
"""

import hashlib
import os
import sys

from protocol.crypto import pure_hmac as _pure_hmac  # HKDF for both; HMAC on MicroPython
from protocol.errors import SealError

_ON_MICROPYTHON = sys.implementation.name == "micropython"

try:
    from nacl import bindings as _nacl
    from nacl import exceptions as _nacl_exceptions

    BACKEND = "nacl"
except ImportError:
    _nacl = None
    _nacl_exceptions = None
    BACKEND = "pure"

if BACKEND == "pure":
    from protocol.crypto import pure_ed25519 as _pure_ed25519
    from protocol.crypto import pure_x25519 as _pure_x25519

if _ON_MICROPYTHON:
    from protocol.crypto import pure_sha512 as _pure_sha512
else:
    import hmac as _hmac

_ZERO32 = bytes(32)


def _bytes_of_length(value, length, what, error_class):
    """value as bytes if it is bytes-like of the given length, else raise error_class."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise error_class("%s must be bytes" % what)
    value = bytes(value)
    if len(value) != length:
        raise error_class("%s must be %d bytes, got %d" % (what, length, len(value)))
    return value


def random_bytes(n) -> bytes:
    """n bytes from the OS CSPRNG (the hardware RNG on an ESP32 with the radio on)."""
    return os.urandom(n)


def sha256(data) -> bytes:
    return hashlib.sha256(data).digest()


def sha512(data) -> bytes:
    if _ON_MICROPYTHON:
        return _pure_sha512.sha512(data)
    return hashlib.sha512(data).digest()


def hmac_sha256(key, data) -> bytes:
    if _ON_MICROPYTHON:
        return _pure_hmac.hmac_sha256(key, data)
    return _hmac.digest(key, data, "sha256")


class _CKey:
    """CPython's keyed HMAC: the C hmac, with the PaddedKey interface. The keyed state is
    built once and copied per message (half the cost of a one-shot `hmac.digest` of a
    sealed batch, whose payload it also need not concatenate)."""

    def __init__(self, key):
        self._keyed = _hmac.new(bytes(key), digestmod=hashlib.sha256)

    def digest(self, data, more=b"") -> bytes:
        mac = self._keyed.copy()
        mac.update(data)
        mac.update(more)
        return mac.digest()


_Keyed = _pure_hmac.PaddedKey if _ON_MICROPYTHON else _CKey
_KEYED_CACHE_MAX = 4
# key -> keyed HMAC. A device alternates between its session's device and gateway keys
# (seal a batch, check an ack): a few entries, cleared when full so old keys do not pile up.
_keyed_cache = {}


def hmac_key(key):
    """HMAC-SHA256 under a key used again and again -> object with digest(data, more=b"")
    = HMAC(key, data + more). On MicroPython the pad XOR (most of an HMAC's interpreted
    cost) is done once per key; the last few keys are kept."""
    key = bytes(key)
    keyed = _keyed_cache.get(key)
    if keyed is None:
        if len(_keyed_cache) >= _KEYED_CACHE_MAX:
            _keyed_cache.clear()
        keyed = _keyed_cache[key] = _Keyed(key)
    return keyed


def hkdf_sha256(ikm, salt, info, length) -> bytes:
    """RFC 5869 HKDF-SHA256; salt b"" (or None) means 32 zero bytes; length <= 8160."""
    return _pure_hmac.hkdf_sha256(ikm, salt, info, length, _Keyed)


def constant_time_equal(a, b) -> bool:
    """Equal bytes, compared without an early exit on the first difference."""
    if _ON_MICROPYTHON:
        return _pure_hmac.constant_time_equal(a, b)
    return _hmac.compare_digest(a, b)


def ed25519_public_key(seed32) -> bytes:
    """Public key of a 32-byte seed (the RFC 8032 private key)."""
    seed32 = _bytes_of_length(seed32, 32, "Ed25519 seed", ValueError)
    if _nacl is None:
        return _pure_ed25519.public_key(seed32)
    return _nacl.crypto_sign_seed_keypair(seed32)[0]


def ed25519_sign(seed32, message) -> bytes:
    """64-byte deterministic RFC 8032 signature of message."""
    seed32 = _bytes_of_length(seed32, 32, "Ed25519 seed", ValueError)
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise TypeError("message must be bytes")
    if _nacl is None:
        return _pure_ed25519.sign(seed32, message)
    secret = _nacl.crypto_sign_seed_keypair(seed32)[1]
    return _nacl.crypto_sign(bytes(message), secret)[:64]


def ed25519_verify(public32, message, signature) -> bool:
    """True if signature is valid; False for anything else, including malformed input."""
    for value in (public32, message, signature):
        if not isinstance(value, (bytes, bytearray, memoryview)):
            return False
    if len(public32) != 32 or len(signature) != 64:
        return False
    if _nacl is None:
        return _pure_ed25519.verify(public32, message, signature)
    try:
        _nacl.crypto_sign_open(bytes(signature) + bytes(message), bytes(public32))
    except (_nacl_exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


def x25519_public_key(private32) -> bytes:
    """X25519 public key (u-coordinate of the clamped scalar times the base point 9)."""
    private32 = _bytes_of_length(private32, 32, "X25519 private key", ValueError)
    if _nacl is None:
        return _pure_x25519.x25519_base(private32)
    return _nacl.crypto_scalarmult_base(private32)


def x25519_shared(private32, peer_public32) -> bytes:
    """Raw X25519 shared secret; SealError on wrong lengths or a low-order peer key.

    Feed the result to hkdf_sha256, never use it as a key directly.
    """
    private32 = _bytes_of_length(private32, 32, "X25519 private key", SealError)
    peer_public32 = _bytes_of_length(peer_public32, 32, "X25519 peer key", SealError)
    if _nacl is None:
        shared = _pure_x25519.x25519(private32, peer_public32)
    else:
        try:
            shared = _nacl.crypto_scalarmult(private32, peer_public32)
        except _nacl_exceptions.CryptoError:
            # libsodium refuses low-order points before multiplying.
            raise SealError("X25519 peer key has low order") from None
    if constant_time_equal(shared, _ZERO32):
        raise SealError("X25519 peer key has low order")
    return shared
