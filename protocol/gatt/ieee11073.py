"""IEEE 11073-20601 SFLOAT (medfloat16) and FLOAT (medfloat32) codecs.

Both are decimal floats: value = mantissa * 10**exponent, two's complement fields.
  SFLOAT: 16 bits = 4-bit exponent (high) | 12-bit mantissa.
  FLOAT:  32 bits = 8-bit exponent (high) | 24-bit mantissa.
The special values are defined with exponent 0 only (IEEE 11073-20601, GSS "medfloat"):

  name        SFLOAT   FLOAT        decoded float
  "nan"       0x07FF   0x007FFFFF   float("nan")   not a number / invalid result
  "nres"      0x0800   0x00800000   float("nan")   not at this resolution
  "+inf"      0x07FE   0x007FFFFE   float("inf")
  "-inf"      0x0802   0x00800002   -float("inf")
  "reserved"  0x0801   0x00800001   float("nan")   reserved for future use

`decode_*` returns a float (nan/inf for the specials); `*_special` names the special
value (or None), so a caller never has to tell NaN from NRes by the float alone.
Raw words with another exponent are ordinary numbers. The encoders never emit a
mantissa in the special range (|m| > 2045 resp. 8388605) for ANY exponent, so even
receivers that test the mantissa alone cannot misread our values.

Conversions to float are exact-then-rounded-once: mantissa and power of ten are
combined as integers and divided once, so 366e-1 decodes to the double nearest 36.6.
Runs on MicroPython: no math module, no struct 'e'.
"""

from protocol.errors import GattError

NAN = "nan"
NRES = "nres"
POS_INF = "+inf"
NEG_INF = "-inf"
RESERVED = "reserved"
SPECIALS = (NAN, NRES, POS_INF, NEG_INF, RESERVED)

SFLOAT_NAN = 0x07FF
SFLOAT_NRES = 0x0800
SFLOAT_POS_INF = 0x07FE
SFLOAT_NEG_INF = 0x0802
SFLOAT_RESERVED = 0x0801

FLOAT_NAN = 0x007FFFFF
FLOAT_NRES = 0x00800000
FLOAT_POS_INF = 0x007FFFFE
FLOAT_NEG_INF = 0x00800002
FLOAT_RESERVED = 0x00800001

SFLOAT_MAX_MANTISSA = 2045  # 2**11 - 3: larger magnitudes collide with the specials
FLOAT_MAX_MANTISSA = 8388605  # 2**23 - 3

_INF = float("inf")
_NAN = float("nan")

SPECIAL_VALUES = {NAN: _NAN, NRES: _NAN, RESERVED: _NAN, POS_INF: _INF, NEG_INF: -_INF}

_SFLOAT_SPECIALS = {
    SFLOAT_NAN: NAN,
    SFLOAT_NRES: NRES,
    SFLOAT_POS_INF: POS_INF,
    SFLOAT_NEG_INF: NEG_INF,
    SFLOAT_RESERVED: RESERVED,
}
_FLOAT_SPECIALS = {
    FLOAT_NAN: NAN,
    FLOAT_NRES: NRES,
    FLOAT_POS_INF: POS_INF,
    FLOAT_NEG_INF: NEG_INF,
    FLOAT_RESERVED: RESERVED,
}
_SFLOAT_CODES = {name: raw for raw, name in _SFLOAT_SPECIALS.items()}
_FLOAT_CODES = {name: raw for raw, name in _FLOAT_SPECIALS.items()}

# (mantissa bits, exponent bits, max |mantissa|, specials name->code, label)
_SFLOAT = (12, 4, SFLOAT_MAX_MANTISSA, _SFLOAT_CODES, "sfloat")
_FLOAT = (24, 8, FLOAT_MAX_MANTISSA, _FLOAT_CODES, "float")


def _check_raw(raw, bits, label):
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0 or raw >> bits:
        raise GattError("%s: raw value %r is not a %d-bit unsigned integer" % (label, raw, bits))


def _split(raw, spec):
    mbits, ebits = spec[0], spec[1]
    _check_raw(raw, mbits + ebits, spec[4])
    mantissa = raw & ((1 << mbits) - 1)
    if mantissa >> (mbits - 1):
        mantissa -= 1 << mbits
    exponent = raw >> mbits
    if exponent >> (ebits - 1):
        exponent -= 1 << ebits
    return mantissa, exponent


def split_sfloat(raw: int):
    """(mantissa, exponent) of a 16-bit SFLOAT word, ignoring special meanings."""
    return _split(raw, _SFLOAT)


def split_float(raw: int):
    """(mantissa, exponent) of a 32-bit FLOAT word, ignoring special meanings."""
    return _split(raw, _FLOAT)


def sfloat_special(raw: int):
    """The special-value name of an SFLOAT word ("nan", "nres", ...), or None."""
    _check_raw(raw, 16, "sfloat")
    return _SFLOAT_SPECIALS.get(raw)


def float_special(raw: int):
    """The special-value name of a FLOAT word, or None."""
    _check_raw(raw, 32, "float")
    return _FLOAT_SPECIALS.get(raw)


def decimal_to_float(mantissa: int, exponent: int, numerator: int = 1, denominator: int = 1):
    """mantissa * 10**exponent * numerator / denominator, rounded once to a float.

    All arguments are integers; the product is formed exactly and divided once, so
    unit conversions with exact decimal or rational factors lose nothing but the
    final rounding (CPython's int/int division is correctly rounded).
    """
    if exponent >= 0:
        top = mantissa * numerator * 10**exponent
        bottom = denominator
    else:
        top = mantissa * numerator
        bottom = denominator * 10 ** (-exponent)
    if bottom == 1:
        return float(top)
    return top / bottom


def decode_sfloat(raw: int) -> float:
    """Value of a 16-bit SFLOAT word; nan/inf for the special values."""
    special = sfloat_special(raw)
    if special is not None:
        return SPECIAL_VALUES[special]
    mantissa, exponent = _split(raw, _SFLOAT)
    return decimal_to_float(mantissa, exponent)


def decode_float(raw: int) -> float:
    """Value of a 32-bit FLOAT word; nan/inf for the special values."""
    special = float_special(raw)
    if special is not None:
        return SPECIAL_VALUES[special]
    mantissa, exponent = _split(raw, _FLOAT)
    return decimal_to_float(mantissa, exponent)


def round_half_away(x) -> int:
    """Nearest integer to float `x`, halves away from zero (same on every port,
    unlike round(), which is half-even)."""
    n = int(x)
    if x >= 0:
        if x - n >= 0.5:
            n += 1
    elif n - x >= 0.5:
        n -= 1
    return n


def _mantissa_for(value, exponent):
    if isinstance(value, int):
        if exponent <= 0:
            return value * 10 ** (-exponent)
        step = 10**exponent
        q, r = divmod(abs(value), step)
        if 2 * r >= step:
            q += 1
        return q if value >= 0 else -q
    if exponent <= 0:
        return round_half_away(value * 10 ** (-exponent))
    return round_half_away(value / 10**exponent)


def _special_code(value, spec):
    codes = spec[3]
    if isinstance(value, str):
        if value not in codes:
            raise GattError("%s: unknown special value %r" % (spec[4], value))
        return codes[value]
    if isinstance(value, float):
        if value != value:
            return codes[NAN]
        if value == _INF:
            return codes[POS_INF]
        if value == -_INF:
            return codes[NEG_INF]
    return None


def _encode(value, decimals, spec):
    mbits, ebits, max_mantissa, _codes, label = spec
    code = _special_code(value, spec)
    if code is not None:
        return code
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GattError("%s: value %r is not a number or special name" % (label, value))
    if isinstance(decimals, bool) or not isinstance(decimals, int):
        raise GattError("%s: decimals %r is not an integer" % (label, decimals))
    min_exponent = -(1 << (ebits - 1))
    max_exponent = (1 << (ebits - 1)) - 1
    exponent = -decimals
    if exponent < min_exponent or exponent > max_exponent:
        raise GattError("%s: %d decimals is outside the exponent range" % (label, decimals))
    # Keep the requested resolution when it fits; otherwise give up decimals one by
    # one (re-rounding from the original value) as the 11073 exponent intends.
    while exponent <= max_exponent:
        if abs(value) > max_mantissa * 10.0**exponent + 10.0**exponent:
            exponent += 1
            continue
        mantissa = _mantissa_for(value, exponent)
        if -max_mantissa <= mantissa <= max_mantissa:
            return ((exponent & ((1 << ebits) - 1)) << mbits) | (mantissa & ((1 << mbits) - 1))
        exponent += 1
    raise GattError("%s: %r is too large to encode" % (label, value))


def encode_sfloat(value, decimals: int = 0) -> int:
    """16-bit SFLOAT word for `value` with exponent -decimals (coarser only if it must).

    `value`: int, float (nan -> NaN, +/-inf -> +/-INF) or a special name from SPECIALS.
    Rounds half away from zero. Raises GattError if the value cannot be represented.
    """
    return _encode(value, decimals, _SFLOAT)


def encode_float(value, decimals: int = 0) -> int:
    """32-bit FLOAT word for `value`; same rules as encode_sfloat."""
    return _encode(value, decimals, _FLOAT)
