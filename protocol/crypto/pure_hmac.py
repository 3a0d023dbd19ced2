"""HMAC-SHA256 (RFC 2104), HKDF-SHA256 (RFC 5869) and a constant-time compare in plain Python.

Built only on hashlib.sha256, which MicroPython has (in hardware on the ESP32). MicroPython's
hash objects cannot be copied, so each HMAC hashes its padded key afresh: two extra 64-byte
blocks, negligible next to a signature.
"""

import hashlib

_BLOCK_SIZE = 64
_DIGEST_SIZE = 32


def _xor_pad(key, pad):
    return bytes(key[i] ^ pad for i in range(_BLOCK_SIZE))


def hmac_sha256(key, data) -> bytes:
    """Return HMAC-SHA256(key, data); key and data are bytes-like of any length."""
    if len(key) > _BLOCK_SIZE:
        key = hashlib.sha256(key).digest()
    key = bytes(key) + bytes(_BLOCK_SIZE - len(key))
    inner = hashlib.sha256(_xor_pad(key, 0x36))
    inner.update(data)
    outer = hashlib.sha256(_xor_pad(key, 0x5C))
    outer.update(inner.digest())
    return outer.digest()


def hkdf_sha256(ikm, salt, info, length, hmac_function=hmac_sha256) -> bytes:
    """RFC 5869 extract-then-expand. An empty salt means HashLen zero bytes, as the RFC says.

    hmac_function lets CPython pass its C implementation; the algorithm stays in one place.
    """
    if length < 0 or length > 255 * _DIGEST_SIZE:
        raise ValueError("HKDF-SHA256 length must be 0..8160")
    if not salt:
        salt = bytes(_DIGEST_SIZE)
    prk = hmac_function(salt, ikm)
    info = bytes(info)
    output = b""
    block = b""
    counter = 1
    while len(output) < length:
        block = hmac_function(prk, block + info + bytes((counter,)))
        output += block
        counter += 1
    return output[:length]


def constant_time_equal(a, b) -> bool:
    """Compare two byte strings in time that depends only on their lengths, not their contents."""
    if len(a) != len(b):
        return False
    difference = 0
    for i in range(len(a)):
        difference |= a[i] ^ b[i]
    return difference == 0
