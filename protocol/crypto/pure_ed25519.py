"""Ed25519 (RFC 8032) in plain Python, for MicroPython; CPython uses libsodium instead.

Field elements are Python ints modulo P = 2**255 - 19. Sums and differences are left
unreduced (possibly negative) and only products are reduced, because on a microcontroller
every big-int operation is an allocation. Points use extended twisted-Edwards coordinates
(X:Y:Z:T), x = X/Z, y = Y/Z, x*y = T/Z, with the complete a = -1 formulas of
Hisil-Wong-Carter-Dawson 2008, so adding a point to itself or to its negation needs no
special case.

Signing multiplies the fixed base point with a signed Lim-Lee comb (5 teeth, 3 tables of
16 affine points, 17 columns: 51 mixed additions and 16 doublings). The table is built on
first use (about two verifications' worth of work) and then kept: 48 points.
Verification multiplies the public key with a width-5 wNAF in variable time, which is fine
because every input to verification is public.

Acceptance rules of `verify` are libsodium's crypto_sign_verify_detached as PyNaCl 1.5-1.6
bundles it (1.0.18-1.0.20), checked in the same order: S < L; neither R nor A is an
encoding of a small-order point (the y values in _SMALL_ORDER_Y, sign bit ignored, y taken
mod P); A is canonical (y < P) and on the curve; and the canonical encoding of S*B - h*A
equals R byte for byte (the cofactorless equation, so R must be canonical too).

Not constant-time: Python big-int arithmetic and the comb's table lookups take time that
depends on the secret scalar. See docs/crypto.md for what that means for the firmware.
"""

from array import array

try:  # CPython and any port whose hashlib has SHA-512
    from hashlib import sha512 as _hashlib_sha512

    def _sha512(data):
        return _hashlib_sha512(data).digest()

except ImportError:  # MicroPython: hashlib has SHA-256 only
    from protocol.crypto.pure_sha512 import sha512 as _sha512

P = (1 << 255) - 19
L = (1 << 252) + 27742317777372353535851937790883648493  # order of the base point
D = 37095705934669439343138083508754565189542113879843219016388785533085940283555  # -121665/121666
D2 = 2 * D % P
SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
BASE_X = 15112221349535400772501151409588531511454012693041857206046113283949847762202
BASE_Y = 46316835694926478169428394003475163141307993866256225615783033603165251855960

_MASK255 = (1 << 255) - 1
_SQRT_EXPONENT = (P - 5) // 8

# y of the 8 points of order 1, 2, 4 and 8: identity (1), order 2 (P-1), order 4 (0) and
# order 8 (a pair of y values summing to P). libsodium refuses R and A with these y.
_Y_ORDER_8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022
_SMALL_ORDER_Y = (0, 1, P - 1, _Y_ORDER_8, P - _Y_ORDER_8)

IDENTITY = (0, 1, 1, 0)
BASE = (BASE_X, BASE_Y, 1, BASE_X * BASE_Y % P)

# Comb geometry: TEETH * TABLES * COLUMNS >= 254 bits (an odd scalar below 2L).
_TEETH = 5
_TABLES = 3
_COLUMNS = 17
_COMB_BITS = _TEETH * _TABLES * _COLUMNS
_ENTRIES = 1 << (_TEETH - 1)
_WNAF_WIDTH = 5


# ---------------------------------------------------------------- point arithmetic


def double(point):
    """2*point, extended coordinates in and out (4 squarings, 4 multiplications)."""
    x, y, z = point[0], point[1], point[2]
    a = x * x % P
    b = y * y % P
    c = z * z % P
    c += c
    h = a + b
    s = x + y
    e = h - s * s % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _double_xyz(point):
    """2*point without T, for a doubling that is followed by another doubling."""
    x, y, z = point[0], point[1], point[2]
    a = x * x % P
    b = y * y % P
    c = z * z % P
    c += c
    h = a + b
    s = x + y
    e = h - s * s % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P)


def to_cached(point):
    """(Y+X, Y-X, 2Z, 2d*T): the form of the second operand of `add_cached`."""
    x, y, z, t = point
    return ((y + x) % P, (y - x) % P, (z + z) % P, t * D2 % P)


def add_cached(point, cached, negate=False):
    """point + q (or point - q when negate), q given by `to_cached(q)`."""
    x, y, z, t = point
    if negate:
        ym, yp, z2, t2d = cached
    else:
        yp, ym, z2, t2d = cached
    a = (y - x) * ym % P
    b = (y + x) * yp % P
    c = t * t2d % P
    d = z * z2 % P
    if negate:
        c = -c
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _add_affine(point, entry, negate):
    """point +- q where q is affine, given as (y+x, y-x, 2d*x*y): 7 multiplications."""
    x, y, z, t = point
    if negate:
        ym, yp, t2d = entry
    else:
        yp, ym, t2d = entry
    a = (y - x) * ym % P
    b = (y + x) * yp % P
    c = t * t2d % P
    if negate:
        c = -c
    d = z + z
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def has_small_order_encoding(encoded):
    """True if 32 bytes encode a point of order dividing 8, valid or not in other ways."""
    y = (int.from_bytes(encoded, "little") & _MASK255) % P
    return y in _SMALL_ORDER_Y


def encode(point) -> bytes:
    """Compress a point to 32 bytes: y little-endian, bit 255 = parity of x."""
    z_inverse = pow(point[2], P - 2, P)
    x = point[0] * z_inverse % P
    y = point[1] * z_inverse % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def decode(encoded):
    """Decompress 32 bytes to an extended point, or None if they encode no curve point.

    Strict RFC 8032 5.1.3: y must be below P, and x = 0 with the sign bit set is refused.
    """
    n = int.from_bytes(encoded, "little")
    y = n & _MASK255
    if y >= P:
        return None
    yy = y * y % P
    u = (yy - 1) % P
    v = (D * yy + 1) % P
    # x = u v^3 (u v^7)^((P-5)/8) is a square root of u/v, or of -u/v when u/v has none.
    v3 = v * v % P * v % P
    x = u * v3 % P * pow(u * v3 % P * v3 % P * v % P, _SQRT_EXPONENT, P) % P
    vxx = v * x % P * x % P
    if vxx != u:
        if vxx != P - u:
            return None
        x = x * SQRT_M1 % P
    if (x & 1) != (n >> 255):
        if x == 0:
            return None
        x = P - x
    return (x, y, 1, x * y % P)


# ---------------------------------------------------------------- fixed-base comb

_comb_tables = None


def _batch_to_affine(points):
    """Affine (y+x, y-x, 2d*x*y) for every point, sharing one field inversion."""
    prefix = []
    acc = 1
    for point in points:
        prefix.append(acc)
        acc = acc * point[2] % P
    inverse = pow(acc, P - 2, P)
    entries = [None] * len(points)
    for i in range(len(points) - 1, -1, -1):
        x, y, z, _ = points[i]
        z_inverse = inverse * prefix[i] % P
        inverse = inverse * z % P
        ax = x * z_inverse % P
        ay = y * z_inverse % P
        entries[i] = ((ay + ax) % P, (ay - ax) % P, ax * ay % P * D2 % P)
    return entries


def _build_comb_tables():
    """tables[u][m] = 2^(d(t-1+tu)) B + sum over s < t-1 of (+-1) 2^(d(s+tu)) B, the sign of
    tooth s being + when bit s of m is set (t teeth, d columns).

    Built one table at a time, so a small heap only holds 16 projective points at once.
    """
    tables = []
    point = BASE
    for u in range(_TABLES):
        teeth = []  # 2^(d*i) * B for i = t*u .. t*u + t-1
        for s in range(_TEETH):
            if u or s:
                for _ in range(_COLUMNS - 1):
                    point = _double_xyz(point)
                point = double(point)
            teeth.append(point)
        first = teeth[_TEETH - 1]
        for s in range(_TEETH - 1):
            first = add_cached(first, to_cached(teeth[s]), True)
        doubled = [to_cached(double(teeth[s])) for s in range(_TEETH - 1)]
        row = [first]
        for m in range(1, _ENTRIES):
            top = 0
            while (m >> (top + 1)) != 0:
                top += 1
            # Flipping tooth `top` from -1 to +1 adds twice its point.
            row.append(add_cached(row[m - (1 << top)], doubled[top]))
        del teeth, doubled
        tables.append(_batch_to_affine(row))
    return tables


def base_multiply(scalar):
    """scalar * B for 0 <= scalar < L (the result only depends on scalar mod L)."""
    global _comb_tables
    if _comb_tables is None:
        _comb_tables = _build_comb_tables()
    tables = _comb_tables
    if not scalar & 1:
        scalar += L  # same point (L*B is the identity); an odd scalar has a +-1 digit form
    # scalar = sum over bits i of (2 b_i - 1) 2^i, b_i the bits of `recoded` (Hamburg 2012).
    recoded = (scalar + (1 << _COMB_BITS) - 1) >> 1
    column_mask = (1 << _COLUMNS) - 1
    blocks = []
    for _ in range(_TEETH * _TABLES):
        blocks.append(recoded & column_mask)
        recoded >>= _COLUMNS
    index_mask = _ENTRIES - 1
    top_tooth = _TEETH - 1
    point = IDENTITY
    for column in range(_COLUMNS - 1, -1, -1):
        if column != _COLUMNS - 1:
            point = double(point)
        for u in range(_TABLES):
            base = _TEETH * u
            index = 0
            for s in range(top_tooth):
                index |= ((blocks[base + s] >> column) & 1) << s
            if (blocks[base + top_tooth] >> column) & 1:
                point = _add_affine(point, tables[u][index], False)
            else:
                point = _add_affine(point, tables[u][index ^ index_mask], True)
    return point


# ---------------------------------------------------------------- variable-base, variable-time


def _wnaf_digits(scalar):
    """Width-w non-adjacent form of 0 <= scalar < 2**256, least significant digit first:
    each digit is 0 or odd in -(2^(w-1)-1) .. 2^(w-1)-1. Byte arrays keep the heap small."""
    encoded = scalar.to_bytes(32, "little")
    count = 256
    digits = array("b", bytes(count + 1))
    carry = 0
    position = 0
    while position < count:
        if (encoded[position >> 3] >> (position & 7)) & 1 == carry:
            position += 1
            continue
        width = min(_WNAF_WIDTH, count - position)
        word = carry
        for i in range(width):
            bit_index = position + i
            word += ((encoded[bit_index >> 3] >> (bit_index & 7)) & 1) << i
        carry = (word >> (_WNAF_WIDTH - 1)) & 1
        digits[position] = word - (carry << _WNAF_WIDTH)
        position += width
    digits[count] = carry
    return digits


def multiply_vartime(scalar, point):
    """scalar * point for public scalar and point (time depends on both)."""
    digits = _wnaf_digits(scalar)
    two_p = to_cached(double(point))
    odd = [point]
    for _ in range((1 << (_WNAF_WIDTH - 2)) - 1):
        odd.append(add_cached(odd[-1], two_p))
    odd_cached = [to_cached(q) for q in odd]
    top = len(digits) - 1
    while top >= 0 and digits[top] == 0:
        top -= 1
    result = IDENTITY
    for i in range(top, -1, -1):
        digit = digits[i]
        if i != top:
            # T is only needed by an addition, or by the caller after the last step.
            if digit or i == 0:
                result = double(result)
            else:
                result = _double_xyz(result)
        if digit > 0:
            result = add_cached(result, odd_cached[digit >> 1])
        elif digit < 0:
            result = add_cached(result, odd_cached[(-digit) >> 1], True)
    return result


# ---------------------------------------------------------------- Ed25519

_expanded_seed = None
_expanded_key = None


def _expand(seed):
    """(clamped scalar a, nonce prefix, encoded public key A), cached for the last seed used
    because the firmware signs with one key and the public key costs a base multiplication."""
    global _expanded_seed, _expanded_key
    if _expanded_seed == seed:
        return _expanded_key
    digest = _sha512(seed)
    scalar = int.from_bytes(digest[:32], "little")
    scalar = (scalar & ((1 << 254) - 8)) | (1 << 254)
    public = encode(base_multiply(scalar % L))
    _expanded_key = (scalar, digest[32:], public)
    _expanded_seed = seed
    return _expanded_key


def _check_seed(seed):
    seed = _as_bytes(seed)
    if seed is None or len(seed) != 32:
        raise ValueError("Ed25519 seed must be 32 bytes")
    return seed


def public_key(seed) -> bytes:
    """The 32-byte public key of a 32-byte seed (RFC 8032 private key)."""
    return _expand(_check_seed(seed))[2]


def sign(seed, message) -> bytes:
    """The 64-byte signature R || S of message under seed (deterministic, RFC 8032 5.1.6)."""
    scalar, prefix, public = _expand(_check_seed(seed))
    message = _as_bytes(message)
    if message is None:
        raise TypeError("message must be bytes-like")
    nonce = int.from_bytes(_sha512(prefix + message), "little") % L
    r_encoded = encode(base_multiply(nonce))
    challenge = int.from_bytes(_sha512(r_encoded + public + message), "little") % L
    s = (nonce + challenge * scalar) % L
    return r_encoded + s.to_bytes(32, "little")


def _as_bytes(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return None


def verify(public, message, signature) -> bool:
    """True only if signature is valid for message under public; never raises on bad input."""
    public = _as_bytes(public)
    message = _as_bytes(message)
    signature = _as_bytes(signature)
    if public is None or message is None or signature is None:
        return False
    if len(public) != 32 or len(signature) != 64:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False  # non-canonical S: would make signatures malleable
    r_encoded = signature[:32]
    if has_small_order_encoding(r_encoded) or has_small_order_encoding(public):
        return False
    a_point = decode(public)
    if a_point is None:
        return False  # not canonical or not on the curve
    challenge = int.from_bytes(_sha512(r_encoded + public + message), "little") % L
    h_a = multiply_vartime(challenge, a_point)
    r_check = add_cached(base_multiply(s), to_cached(h_a), True)
    return encode(r_check) == r_encoded
