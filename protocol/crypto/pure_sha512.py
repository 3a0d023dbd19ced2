"""SHA-512 (FIPS 180-4) in plain Python, for MicroPython whose hashlib has only SHA-256.

Ed25519 needs SHA-512. Each 64-bit word is held as four 16-bit limbs (limb 0 least
significant), so every intermediate value stays below 2**30 and is a MicroPython small
int: on an ESP32 (31-bit small ints) the hash then allocates almost nothing, where 64-bit
Python ints would allocate on every shift and add (about 280 KB of garbage per block).
A right rotation by 16q + r takes limb i from limbs i+q and i+q+1; the stray high bits a
left shift leaves above bit 15 are cleared once per XOR expression. Left shifts never
exceed 14 places (the rotate-by-1 pre-masks its bit), keeping every value below 2**30.
"""

import struct
from array import array

# fmt: off
_INITIAL_STATE = (
    0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
    0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179,
)

_ROUND_CONSTANTS = (
    0x428A2F98D728AE22, 0x7137449123EF65CD, 0xB5C0FBCFEC4D3B2F, 0xE9B5DBA58189DBBC,
    0x3956C25BF348B538, 0x59F111F1B605D019, 0x923F82A4AF194F9B, 0xAB1C5ED5DA6D8118,
    0xD807AA98A3030242, 0x12835B0145706FBE, 0x243185BE4EE4B28C, 0x550C7DC3D5FFB4E2,
    0x72BE5D74F27B896F, 0x80DEB1FE3B1696B1, 0x9BDC06A725C71235, 0xC19BF174CF692694,
    0xE49B69C19EF14AD2, 0xEFBE4786384F25E3, 0x0FC19DC68B8CD5B5, 0x240CA1CC77AC9C65,
    0x2DE92C6F592B0275, 0x4A7484AA6EA6E483, 0x5CB0A9DCBD41FBD4, 0x76F988DA831153B5,
    0x983E5152EE66DFAB, 0xA831C66D2DB43210, 0xB00327C898FB213F, 0xBF597FC7BEEF0EE4,
    0xC6E00BF33DA88FC2, 0xD5A79147930AA725, 0x06CA6351E003826F, 0x142929670A0E6E70,
    0x27B70A8546D22FFC, 0x2E1B21385C26C926, 0x4D2C6DFC5AC42AED, 0x53380D139D95B3DF,
    0x650A73548BAF63DE, 0x766A0ABB3C77B2A8, 0x81C2C92E47EDAEE6, 0x92722C851482353B,
    0xA2BFE8A14CF10364, 0xA81A664BBC423001, 0xC24B8B70D0F89791, 0xC76C51A30654BE30,
    0xD192E819D6EF5218, 0xD69906245565A910, 0xF40E35855771202A, 0x106AA07032BBD1B8,
    0x19A4C116B8D2D0C8, 0x1E376C085141AB53, 0x2748774CDF8EEB99, 0x34B0BCB5E19B48A8,
    0x391C0CB3C5C95A63, 0x4ED8AA4AE3418ACB, 0x5B9CCA4F7763E373, 0x682E6FF3D6B2B8A3,
    0x748F82EE5DEFB2FC, 0x78A5636F43172F60, 0x84C87814A1F0AB72, 0x8CC702081A6439EC,
    0x90BEFFFA23631E28, 0xA4506CEBDE82BDE9, 0xBEF9A3F7B2C67915, 0xC67178F2E372532B,
    0xCA273ECEEA26619C, 0xD186B8C721C0C207, 0xEADA7DD6CDE0EB1E, 0xF57D4F7FEE6ED178,
    0x06F067AA72176FBA, 0x0A637DC5A2C898A6, 0x113F9804BEF90DAE, 0x1B710B35131C471B,
    0x28DB77F523047D84, 0x32CAAB7B40C72493, 0x3C9EBE0A15C9BEBC, 0x431D67C49C100D4C,
    0x4CC5D4BECB3E42B6, 0x597F299CFC657E2A, 0x5FCB6FAB3AD6FAEC, 0x6C44198C4A475817,
)
# fmt: on

_BLOCK_SIZE = 128


def _limbs(words):
    """Flatten 64-bit words into 16-bit limbs, least significant limb first."""
    limbs = []
    for word in words:
        for shift in (0, 16, 32, 48):
            limbs.append((word >> shift) & 0xFFFF)
    return tuple(limbs)


_K_LIMBS = _limbs(_ROUND_CONSTANTS)
_INITIAL_LIMBS = _limbs(_INITIAL_STATE)


def _compress(state, data, offset, w):
    """Fold the 128-byte block at data[offset:] into state (32 limbs, updated in place).

    w is a 320-entry scratch array for the message schedule, reused between blocks.
    """
    m = 0xFFFF
    for j in range(0, 64, 4):  # big-endian words; byte reads allocate nothing
        i = offset + 2 * j
        w[j] = data[i + 6] << 8 | data[i + 7]
        w[j + 1] = data[i + 4] << 8 | data[i + 5]
        w[j + 2] = data[i + 2] << 8 | data[i + 3]
        w[j + 3] = data[i] << 8 | data[i + 1]
    for j in range(64, 320, 4):
        # W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16]
        x0 = w[j - 60]
        x1 = w[j - 59]
        x2 = w[j - 58]
        x3 = w[j - 57]
        y0 = w[j - 8]
        y1 = w[j - 7]
        y2 = w[j - 6]
        y3 = w[j - 5]
        # s0 = rotr 1 ^ rotr 8 ^ shr 7;  s1 = rotr 19 ^ rotr 61 ^ shr 6
        s0_0 = ((x0 >> 1 | (x1 & 1) << 15) ^ (x0 >> 8 | x1 << 8) ^ (x0 >> 7 | x1 << 9)) & m
        s0_1 = ((x1 >> 1 | (x2 & 1) << 15) ^ (x1 >> 8 | x2 << 8) ^ (x1 >> 7 | x2 << 9)) & m
        s0_2 = ((x2 >> 1 | (x3 & 1) << 15) ^ (x2 >> 8 | x3 << 8) ^ (x2 >> 7 | x3 << 9)) & m
        s0_3 = ((x3 >> 1 | (x0 & 1) << 15) ^ (x3 >> 8 | x0 << 8) ^ x3 >> 7) & m
        s1_0 = ((y1 >> 3 | y2 << 13) ^ (y3 >> 13 | y0 << 3) ^ (y0 >> 6 | y1 << 10)) & m
        s1_1 = ((y2 >> 3 | y3 << 13) ^ (y0 >> 13 | y1 << 3) ^ (y1 >> 6 | y2 << 10)) & m
        s1_2 = ((y3 >> 3 | y0 << 13) ^ (y1 >> 13 | y2 << 3) ^ (y2 >> 6 | y3 << 10)) & m
        s1_3 = ((y0 >> 3 | y1 << 13) ^ (y2 >> 13 | y3 << 3) ^ y3 >> 6) & m
        n = w[j - 64] + w[j - 28] + s0_0 + s1_0
        w[j] = n & m
        n = (n >> 16) + w[j - 63] + w[j - 27] + s0_1 + s1_1
        w[j + 1] = n & m
        n = (n >> 16) + w[j - 62] + w[j - 26] + s0_2 + s1_2
        w[j + 2] = n & m
        w[j + 3] = ((n >> 16) + w[j - 61] + w[j - 25] + s0_3 + s1_3) & m

    a0, a1, a2, a3 = state[0], state[1], state[2], state[3]
    b0, b1, b2, b3 = state[4], state[5], state[6], state[7]
    c0, c1, c2, c3 = state[8], state[9], state[10], state[11]
    d0, d1, d2, d3 = state[12], state[13], state[14], state[15]
    e0, e1, e2, e3 = state[16], state[17], state[18], state[19]
    f0, f1, f2, f3 = state[20], state[21], state[22], state[23]
    g0, g1, g2, g3 = state[24], state[25], state[26], state[27]
    h0, h1, h2, h3 = state[28], state[29], state[30], state[31]
    k = _K_LIMBS
    for j in range(0, 320, 4):
        # T1 = h + S1(e) + Ch(e, f, g) + K[t] + W[t], S1 = rotr 14 ^ rotr 18 ^ rotr 41
        t0 = (
            h0
            + (((e0 >> 14 | e1 << 2) ^ (e1 >> 2 | e2 << 14) ^ (e2 >> 9 | e3 << 7)) & m)
            + (g0 ^ (e0 & (f0 ^ g0)))
            + k[j]
            + w[j]
        )
        t1 = (
            h1
            + (((e1 >> 14 | e2 << 2) ^ (e2 >> 2 | e3 << 14) ^ (e3 >> 9 | e0 << 7)) & m)
            + (g1 ^ (e1 & (f1 ^ g1)))
            + k[j + 1]
            + w[j + 1]
        )
        t2 = (
            h2
            + (((e2 >> 14 | e3 << 2) ^ (e3 >> 2 | e0 << 14) ^ (e0 >> 9 | e1 << 7)) & m)
            + (g2 ^ (e2 & (f2 ^ g2)))
            + k[j + 2]
            + w[j + 2]
        )
        t3 = (
            h3
            + (((e3 >> 14 | e0 << 2) ^ (e0 >> 2 | e1 << 14) ^ (e1 >> 9 | e2 << 7)) & m)
            + (g3 ^ (e3 & (f3 ^ g3)))
            + k[j + 3]
            + w[j + 3]
        )
        # T2 = S0(a) + Maj(a, b, c), S0 = rotr 28 ^ rotr 34 ^ rotr 39
        u0 = (((a1 >> 12 | a2 << 4) ^ (a2 >> 2 | a3 << 14) ^ (a2 >> 7 | a3 << 9)) & m) + (
            (a0 & b0) | (c0 & (a0 | b0))
        )
        u1 = (((a2 >> 12 | a3 << 4) ^ (a3 >> 2 | a0 << 14) ^ (a3 >> 7 | a0 << 9)) & m) + (
            (a1 & b1) | (c1 & (a1 | b1))
        )
        u2 = (((a3 >> 12 | a0 << 4) ^ (a0 >> 2 | a1 << 14) ^ (a0 >> 7 | a1 << 9)) & m) + (
            (a2 & b2) | (c2 & (a2 | b2))
        )
        u3 = (((a0 >> 12 | a1 << 4) ^ (a1 >> 2 | a2 << 14) ^ (a1 >> 7 | a2 << 9)) & m) + (
            (a3 & b3) | (c3 & (a3 | b3))
        )
        # One assignment per statement: a 4-tuple swap would allocate a tuple.
        h0 = g0
        h1 = g1
        h2 = g2
        h3 = g3
        g0 = f0
        g1 = f1
        g2 = f2
        g3 = f3
        f0 = e0
        f1 = e1
        f2 = e2
        f3 = e3
        n = d0 + t0
        e0 = n & m
        n = (n >> 16) + d1 + t1
        e1 = n & m
        n = (n >> 16) + d2 + t2
        e2 = n & m
        e3 = ((n >> 16) + d3 + t3) & m
        d0 = c0
        d1 = c1
        d2 = c2
        d3 = c3
        c0 = b0
        c1 = b1
        c2 = b2
        c3 = b3
        b0 = a0
        b1 = a1
        b2 = a2
        b3 = a3
        n = t0 + u0
        a0 = n & m
        n = (n >> 16) + t1 + u1
        a1 = n & m
        n = (n >> 16) + t2 + u2
        a2 = n & m
        a3 = ((n >> 16) + t3 + u3) & m

    _add_word(state, 0, a0, a1, a2, a3)
    _add_word(state, 4, b0, b1, b2, b3)
    _add_word(state, 8, c0, c1, c2, c3)
    _add_word(state, 12, d0, d1, d2, d3)
    _add_word(state, 16, e0, e1, e2, e3)
    _add_word(state, 20, f0, f1, f2, f3)
    _add_word(state, 24, g0, g1, g2, g3)
    _add_word(state, 28, h0, h1, h2, h3)


def _add_word(state, i, x0, x1, x2, x3):
    """state word at limb index i += (x0, x1, x2, x3), modulo 2**64."""
    n = state[i] + x0
    state[i] = n & 0xFFFF
    n = (n >> 16) + state[i + 1] + x1
    state[i + 1] = n & 0xFFFF
    n = (n >> 16) + state[i + 2] + x2
    state[i + 2] = n & 0xFFFF
    state[i + 3] = ((n >> 16) + state[i + 3] + x3) & 0xFFFF


def sha512(data) -> bytes:
    """Return the 64-byte SHA-512 digest of a bytes-like object."""
    length = len(data)
    state = list(_INITIAL_LIMBS)
    schedule = array("H", range(320))  # 640 bytes; every entry is written before it is read
    full = length - length % _BLOCK_SIZE
    offset = 0
    while offset < full:
        _compress(state, data, offset, schedule)
        offset += _BLOCK_SIZE
    # Padding: 0x80, zeros up to 112 mod 128, then the bit length as a 128-bit big-endian int.
    rest = length - full
    pad_zeros = (111 - rest) % _BLOCK_SIZE
    tail = bytes(data[full:]) + b"\x80" + bytes(pad_zeros + 8) + struct.pack(">Q", length * 8)
    offset = 0
    while offset < len(tail):
        _compress(state, tail, offset, schedule)
        offset += _BLOCK_SIZE
    out = []
    for i in range(0, 32, 4):
        out.append(state[i + 3])
        out.append(state[i + 2])
        out.append(state[i + 1])
        out.append(state[i])
    return struct.pack(">32H", *out)
