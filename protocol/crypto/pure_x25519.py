"""X25519 (RFC 7748) in plain Python, for MicroPython; CPython uses libsodium instead.

`x25519` is the RFC's function: a Montgomery ladder over any u-coordinate, including points
on the twist and non-canonical encodings (u is taken mod P after clearing bit 255).
`x25519_base` gives the same result for u = 9 about four times faster: the Montgomery base
point is the image of the Ed25519 base point, so it reuses Ed25519's fixed-base comb and
maps the result with u = (1 + y) / (1 - y) = (Z + Y) / (Z - Y).

Neither function rejects an all-zero result; protocol.crypto.x25519_shared does.
Not constant-time (see pure_ed25519).
"""

from protocol.crypto.pure_ed25519 import L, P, base_multiply

_A24 = 121665  # (486662 - 2) / 4
_MASK255 = (1 << 255) - 1


def _clamp(scalar32):
    k = int.from_bytes(scalar32, "little")
    return (k & ((1 << 254) - 8)) | (1 << 254)


def x25519(scalar32, u32) -> bytes:
    """The u-coordinate of clamp(scalar32) * u32, 32 bytes little-endian."""
    k = _clamp(scalar32).to_bytes(32, "little")  # read bits from bytes: no big-int shifts
    x1 = (int.from_bytes(u32, "little") & _MASK255) % P
    x2 = 1
    z2 = 0
    x3 = x1
    z3 = 1
    swapped = 0
    for bit_index in range(254, -1, -1):
        bit = (k[bit_index >> 3] >> (bit_index & 7)) & 1
        if swapped != bit:
            x2, x3 = x3, x2
            z2, z3 = z3, z2
        swapped = bit
        a = x2 + z2
        aa = a * a % P
        b = x2 - z2
        bb = b * b % P
        e = aa - bb
        c = x3 + z3
        d = x3 - z3
        da = d * a % P
        cb = c * b % P
        x3 = da + cb
        x3 = x3 * x3 % P
        z3 = da - cb
        z3 = x1 * (z3 * z3 % P) % P
        x2 = aa * bb % P
        z2 = e * (aa + _A24 * e) % P
    # No final swap: clamping clears bit 0, so the last step leaves (x2, z2) in place.
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, "little")


def x25519_base(scalar32) -> bytes:
    """x25519(scalar32, 9), the public key of private key scalar32."""
    point = base_multiply(_clamp(scalar32) % L)
    y = point[1]
    z = point[2]
    return ((z + y) * pow((z - y) % P, P - 2, P) % P).to_bytes(32, "little")
