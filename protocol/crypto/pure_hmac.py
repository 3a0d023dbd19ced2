"""HMAC-SHA256 (RFC 2104), HKDF-SHA256 (RFC 5869) and a constant-time compare in plain Python.

Built only on hashlib.sha256, which MicroPython has (in hardware on the ESP32). MicroPython's
hash objects cannot be copied, so each HMAC hashes its padded key afresh: two extra 64-byte
blocks (native). What is worth keeping is the XOR of the two pads, done in interpreted code:
PaddedKey does it once per key, for callers that MAC many messages under one key (a
session's batches and acks, HKDF's expand blocks).
"""

import hashlib

_BLOCK_SIZE = 64
_DIGEST_SIZE = 32


class PaddedKey:
    """HMAC-SHA256 under one key (any length) whose inner and outer pads are XORed once."""

    def __init__(self, key):
        if len(key) > _BLOCK_SIZE:
            key = hashlib.sha256(key).digest()
        fill = _BLOCK_SIZE - len(key)
        self._inner = bytes([byte ^ 0x36 for byte in key]) + b"\x36" * fill
        self._outer = bytes([byte ^ 0x5C for byte in key]) + b"\x5c" * fill

    def digest(self, data, more=b"") -> bytes:
        """HMAC of data + more (hashed in two pieces: no concatenated copy)."""
        inner = hashlib.sha256(self._inner)
        inner.update(data)
        inner.update(more)
        outer = hashlib.sha256(self._outer)
        outer.update(inner.digest())
        return outer.digest()


def hmac_sha256(key, data) -> bytes:
    """Return HMAC-SHA256(key, data); key and data are bytes-like of any length."""
    return PaddedKey(key).digest(data)


def hkdf_sha256(ikm, salt, info, length, keyed=PaddedKey) -> bytes:
    """RFC 5869 extract-then-expand. An empty salt means HashLen zero bytes, as the RFC says.

    keyed(key) -> an object whose digest(data) is HMAC-SHA256 under key (CPython passes
    one over its C hmac); the PRK is padded once for all expand blocks.
    """
    if length < 0 or length > 255 * _DIGEST_SIZE:
        raise ValueError("HKDF-SHA256 length must be 0..8160")
    if not salt:
        salt = bytes(_DIGEST_SIZE)
    prk = keyed(salt).digest(ikm)
    expand = keyed(prk)
    info = bytes(info)
    output = b""
    block = b""
    counter = 1
    while len(output) < length:
        block = expand.digest(block + info + bytes((counter,)))
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
