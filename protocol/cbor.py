"""Deterministic CBOR (RFC 8949) for the VitalBridge wire format.

The data model is deliberately small: None, bool, int in [-2**64, 2**64-1], float, byte
strings, text strings, arrays, maps and tags (`Tag`). `dumps` emits exactly one encoding
for each value: shortest arguments, definite lengths, shortest exact float, and map keys
in length-first order (RFC 8949 §4.2.3, the RFC 7049 canonical order), which is what
cbor2 6.x produces with `canonical=True`; see docs/cbor.md for why not §4.2.1 bytewise order.

`loads` treats its input as hostile: it is iterative (no recursion, whatever the nesting),
checks every declared length against the remaining input before slicing, bounds depth,
item count and input size, and raises only `DecodeError`. Indefinite lengths are refused
on purpose: a deterministic encoder never emits them, and refusing them keeps every size
known before anything is allocated.

Encoding a Python value outside the model is a programming error, not bad input: `dumps`
raises `ValueError` (never a `protocol.errors` class) naming the offending type or value.

Runs on MicroPython: no `int.bit_length`, half floats are converted by hand.
"""

import struct
import sys

from protocol.errors import DecodeError

__all__ = [
    "Tag", "dumps", "loads", "pure_dumps", "pure_loads", "plain_dumps", "encode_into",
    "encode_head_into", "float_bytes", "scalar_at", "DecodeError", "BACKEND", "MAX_SIZE",
]

UINT64_MAX = 0xFFFFFFFFFFFFFFFF
MAX_SIZE = 65536  # default input bound of `loads`
# Nesting of arrays, maps and tags that `dumps` will follow; deeper (or cyclic) values
# raise ValueError instead of exhausting the C stack, which is small on an ESP32.
MAX_ENCODE_DEPTH = 64

_NAN_BYTES = b"\xf9\x7e\x00"

# MicroPython looks a builtin up in the module's globals first, and a miss walks the
# (often nearly full) hash table: a module-level alias is a cached hit instead, measured
# 5-10x cheaper per lookup on the unix port (docs/cbor.md, "Speed"). The encoder's per-item
# type tests use aliases too, so its speed does not hinge on how full that table is.
_isinstance = isinstance
_len = len
_str = str
_type = type
_int = int
_float = float
_bytes = bytes
_list = list
_tuple = tuple
_dict = dict
# MicroPython's str(b, "utf-8") accepts overlongs, surrogates and code points > U+10FFFF.
_LOOSE_UTF8 = sys.implementation.name != "cpython"


class Tag:
    """A CBOR tag (major type 6): tag number `tag` applied to `value`."""

    __slots__ = ("tag", "value")

    def __init__(self, tag, value):
        if _isinstance(tag, bool) or not _isinstance(tag, int) or tag < 0 or tag > UINT64_MAX:
            raise ValueError("CBOR tag number must be an int in [0, 2**64-1], got %r" % (tag,))
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return _isinstance(other, Tag) and self.tag == other.tag and self.value == other.value

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        # Raises TypeError when the value is unhashable, like a tuple holding a list.
        return hash((self.tag, self.value))

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


# ---------------------------------------------------------------- floats


def _single_bits_to_half(bits):
    """Half-float bits equal in value to the binary32 `bits`, or -1 if none is exact."""
    sign = (bits >> 16) & 0x8000
    exp = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    if exp == 0xFF:
        return sign | (0x7E00 if mant else 0x7C00)
    if exp == 0:
        # Zero fits; binary32 subnormals are below 2**-126, far under half's 2**-24.
        return sign if mant == 0 else -1
    e = exp - 127
    if -14 <= e <= 15:
        if mant & 0x1FFF:
            return -1
        return sign | ((e + 15) << 10) | (mant >> 13)
    if -24 <= e < -14:
        # Half subnormal m * 2**-24: m = (1.mant as 24-bit int) >> shift, exact only if
        # the shifted-out bits are zero.
        full = mant | 0x800000
        shift = -1 - e
        if full & ((1 << shift) - 1):
            return -1
        return sign | (full >> shift)
    return -1


def _half_to_float(h):
    mant = h & 0x3FF
    exp = (h >> 10) & 0x1F
    if exp == 0:
        value = mant / 16777216.0  # mant * 2**-24, exact
    elif exp == 0x1F:
        value = float("nan") if mant else float("inf")
    else:
        # (1024 + mant) * 2**(exp - 25); both operands and the quotient are exact floats.
        value = float((1024 + mant) << exp) / 33554432.0
    return -value if h & 0x8000 else value


def float_bytes(x):
    """The deterministic encoding of float `x`: the shortest of half/single/double that
    holds it exactly (NaN is always f97e00)."""
    if x != x:
        return _NAN_BYTES
    double = struct.pack(">d", x)
    # Low 29 mantissa bits set: no binary32 holds x, so neither does a half. This is the
    # common case for measured values (72.3...) and costs one pack instead of four.
    if double[7] or double[6] or double[5] or double[4] & 0x1F:
        return b"\xfb" + double
    try:
        single = struct.pack(">f", x)
    except OverflowError:  # CPython refuses; MicroPython yields inf, caught by the compare
        single = None
    if single is not None and struct.unpack(">f", single)[0] == x:
        half = _single_bits_to_half(struct.unpack(">I", single)[0])
        if half >= 0:
            return bytes((0xF9, half >> 8, half & 0xFF))
        return b"\xfa" + single
    return b"\xfb" + double


# ---------------------------------------------------------------- encoder


def encode_head_into(out, major_bits, argument):
    """Append the shortest head for uint `argument` to the bytearray `out`; `major_bits` is
    the major type << 5 (0x00 uint, 0x40 bytes, 0x60 text, 0x80 array, 0xA0 map, 0xC0 tag)."""
    if argument < 24:
        out.append(major_bits | argument)
    elif argument < 0x100:
        out.append(major_bits | 24)
        out.append(argument)
    elif argument < 0x10000:
        out += struct.pack(">BH", major_bits | 25, argument)
    elif argument < 0x100000000:
        out += struct.pack(">BI", major_bits | 26, argument)
    else:
        out += struct.pack(">BQ", major_bits | 27, argument)


_put_head = encode_head_into


def _key_order(pair):
    key = pair[0]
    return (_len(key), key)


def _put_int(out, n):
    if n >= 0:
        if n > UINT64_MAX:
            raise ValueError("int %d is above 2**64-1 (bignums are not supported)" % n)
        _put_head(out, 0x00, n)
    else:
        n = -1 - n
        if n > UINT64_MAX:
            raise ValueError("int %d is below -2**64 (bignums are not supported)" % (-1 - n))
        _put_head(out, 0x20, n)


def _encode_into(obj, out, depth):
    """Append the encoding of `obj`, which sits inside `depth` containers, to `out`.

    Iterative over containers, so one call (not one per item) pays MicroPython's call and
    name-lookup overhead; items, and errors, come in the order of the recursive definition.
    """
    # Open containers, innermost last: [items, next index, extra], where extra is
    #   None: an array or tag; items are its values;
    #   a dict: a map with only keys -24..23; items are their one-byte encodings, sorted;
    #   bytes: any other map; items are (key bytes, value) in canonical order, extra the
    #   previous key's bytes.
    stack = []
    while True:
        # Exact-type tests first, most frequent first: cheaper than isinstance, and the
        # short heads are written inline.
        kind = _type(obj)
        if kind is _int:
            if 0 <= obj < 24:
                out.append(obj)
            else:
                _put_int(out, obj)
        elif kind is _str or kind is _bytes:
            if kind is _str:
                raw = obj.encode("utf-8")
                major_bits = 0x60
            else:
                raw = obj
                major_bits = 0x40
            if _len(raw) < 24:
                out.append(major_bits | _len(raw))
            else:
                _put_head(out, major_bits, _len(raw))
            out += raw
        elif kind is _float:
            out += float_bytes(obj)
        elif obj is None:
            out.append(0xF6)
        elif obj is False:
            out.append(0xF4)
        elif obj is True:
            out.append(0xF5)
        else:
            if kind is not _list and kind is not _tuple and kind is not _dict and kind is not Tag:
                kind = _encode_other(obj, out)
            if kind is not None:
                if depth >= MAX_ENCODE_DEPTH:
                    raise ValueError(
                        "value nests deeper than %d levels (or is cyclic)" % MAX_ENCODE_DEPTH
                    )
                if kind is _dict:
                    items = _small_key_codes(obj) if _type(obj) is _dict else None
                    if items is not None:
                        previous = obj
                    else:
                        items = _map_pairs(obj, depth + 1)
                        previous = b""  # no key encodes to nothing
                    _put_head(out, 0xA0, _len(items))
                elif kind is Tag:
                    if obj.tag == 2 or obj.tag == 3:
                        raise ValueError("tags 2/3 (bignums) are outside the supported model")
                    _put_head(out, 0xC0, obj.tag)
                    items = (obj.value,)
                    previous = None
                else:
                    _put_head(out, 0x80, _len(obj))
                    items = obj if _type(obj) is kind else list(obj)
                    previous = None
                if items:
                    stack.append([items, 0, previous])
                    depth += 1
        # Move to the next item of the innermost unfinished container.
        while stack:
            frame = stack[-1]
            items = frame[0]
            index = frame[1]
            if index < _len(items):
                frame[1] = index + 1
                obj = items[index]
                extra = frame[2]
                if extra is None:
                    break
                if _type(extra) is _dict:
                    out.append(obj)
                    obj = extra[obj if obj < 24 else 31 - obj]
                    break
                key_bytes, obj = obj
                if key_bytes == extra:
                    # Distinct Python keys with one encoding, e.g. two NaN objects.
                    raise ValueError("two map keys encode to the same CBOR bytes")
                frame[2] = key_bytes
                out += key_bytes
                break
            stack.pop()
            depth -= 1
        else:
            return


def _encode_other(obj, out):
    """Write a bytes-like value or a subclass of a model scalar and return None; for a
    subclass of a container type return the type to encode it as (dict, list or Tag)."""
    if _isinstance(obj, (bytes, bytearray, memoryview)):
        raw = bytes(obj)
        _put_head(out, 0x40, _len(raw))
        out += raw
    elif _isinstance(obj, Tag):
        return Tag
    elif _isinstance(obj, bool):  # before int: bool is an int subclass on CPython
        out.append(0xF5 if obj else 0xF4)
    elif _isinstance(obj, int):
        _put_int(out, obj)
    elif _isinstance(obj, str):
        raw = obj.encode("utf-8")
        _put_head(out, 0x60, _len(raw))
        out += raw
    elif _isinstance(obj, float):
        out += float_bytes(obj)
    elif _isinstance(obj, dict):
        return dict
    elif _isinstance(obj, (list, tuple)):
        return list
    else:
        raise ValueError(
            "cannot encode %s as CBOR: outside the supported model" % _type(obj).__name__
        )
    return None


# Encodings of the one-byte int keys -24..23 (all SenML, COSE and CWT labels we use).
_SMALL_INT_KEYS = tuple(bytes((k if k >= 0 else 0x20 | (-1 - k),)) for k in range(-24, 24))


def _encode_key(key, depth):
    kind = _type(key)
    if kind is _str:
        raw = key.encode("utf-8")
        if _len(raw) < 24:
            return bytes((0x60 | _len(raw),)) + raw
    out = bytearray()
    _encode_into(key, out, depth)
    return bytes(out)


def _small_key_codes(obj):
    """The sorted one-byte encodings of a dict's keys if all are ints in -24..23, else None.

    Such keys (SenML, COSE and CWT labels) need no per-key bytes object or sort key: the
    initial byte k (k >= 0) or 0x20 | (-1 - k) == 31 - k is an int, and ints sort alone.
    """
    codes = []
    for key in obj:
        if _type(key) is not _int or key < -24 or key >= 24:
            return None
        codes.append(key if key >= 0 else 31 - key)
    codes.sort()
    return codes


def _map_pairs(obj, depth):
    """(key bytes, value) pairs of a map in canonical order; every key encoded first."""
    pairs = []
    one_byte_keys = True
    for key, value in obj.items():
        if _type(key) is _int and -24 <= key < 24:
            pairs.append((_SMALL_INT_KEYS[key + 24], value))
        else:
            key_bytes = _encode_key(key, depth)
            one_byte_keys = one_byte_keys and _len(key_bytes) == 1
            pairs.append((key_bytes, value))
    if _len(pairs) > 1:
        # Equal-length keys sort bytewise, which is length-first order without a tuple
        # per key. Stable: keys with one encoding stay adjacent for the duplicate check.
        pairs.sort(key=_first if one_byte_keys else _key_order)
    return pairs


def _first(pair):
    return pair[0]


def pure_dumps(obj):
    """Deterministic CBOR encoding of `obj`; ValueError if it is outside the model."""
    out = bytearray()
    _encode_into(obj, out, 0)
    return _bytes(out)


def encode_into(out, obj):
    """Append the encoding `dumps(obj)` returns to the bytearray `out` (for encoders that
    write their own container heads, e.g. protocol.senml's record fast path)."""
    _encode_into(obj, out, 0)


# ---------------------------------------------------------------- plain fast path

PLAIN_MAX_DEPTH = 16  # containers `plain_dumps` follows by default; deeper values: None
# Canonical key orders of str-keyed maps, per key tuple: records of one shape repeat their
# key set, and encoding and sorting the keys is most of a small map's cost. Cleared when
# full; small on MicroPython, where RAM is scarce.
_KEY_ORDER_LIMIT = 256 if sys.implementation.name == "cpython" else 16
_key_orders = {}


def plain_dumps(obj, max_depth=PLAIN_MAX_DEPTH):
    """`dumps(obj)` for a plain value, faster; None for any other value, and then `dumps`
    (which encodes or refuses it) is the caller's fallback. Never raises.

    Plain is the JSON data model (RFC 8259) in exact built-in types: None, bool, int in
    [-2**64, 2**64-1], finite float, str, list, and dict whose keys are all str, with
    containers nested at most `max_depth` (capped at MAX_ENCODE_DEPTH) deep. Not plain:
    tuples, bytes, Tag, a subclass of any type, NaN, infinities, text UTF-8 cannot encode.
    So JSON text of a plain value reads back equal, in the same types.
    """
    out = bytearray()
    try:
        plain = _put_plain(out, obj, max_depth if max_depth < MAX_ENCODE_DEPTH
                           else MAX_ENCODE_DEPTH)
    except ValueError:  # an int past 64 bits, a lone surrogate (UnicodeError): not plain
        return None
    return _bytes(out) if plain else None


def _put_plain(out, obj, depth):
    """Append the encoding of `obj` to `out` if it is plain, else return False (`out`
    part-written) or raise ValueError. `depth`: how many more containers may open.
    Scalars are written by the general encoder; this adds the plain-model checks and a
    cached key order for str-keyed maps."""
    kind = _type(obj)
    if kind is _dict:
        if depth <= 0:
            return False
        keys = tuple(obj)
        for key in keys:
            if _type(key) is not _str:
                return False
        order = _key_orders.get(keys)
        if order is None:
            order = _str_key_order(keys)
        _put_head(out, 0xA0, _len(keys))
        for key_bytes, key in order:
            out += key_bytes
            value = obj[key]
            kind = _type(value)
            # Most values are short text or counts: those are written without a call.
            if kind is _str:
                raw = value.encode("utf-8")
                if _len(raw) < 24:
                    out.append(0x60 | _len(raw))
                else:
                    _put_head(out, 0x60, _len(raw))
                out += raw
            elif kind is _int and 0 <= value <= UINT64_MAX:
                _put_head(out, 0x00, value)
            elif not _put_plain(out, value, depth - 1):
                return False
    elif kind is _list:
        if depth <= 0:
            return False
        _put_head(out, 0x80, _len(obj))
        for item in obj:
            if not _put_plain(out, item, depth - 1):
                return False
    elif (kind is _str or kind is _int or obj is None or obj is True or obj is False
          or (kind is _float and obj - obj == 0.0)):  # inf - inf and NaN are NaN
        _encode_into(obj, out, 0)
    else:
        return False
    return True


def _str_key_order(keys):
    """((key bytes, key), ...) for the tuple of str `keys` in canonical order; cached."""
    order = [(_encode_key(key, 0), key) for key in keys]
    order.sort(key=_key_order)
    order = tuple(order)
    if _len(_key_orders) >= _KEY_ORDER_LIMIT:
        _key_orders.clear()
    _key_orders[keys] = order
    return order


# ---------------------------------------------------------------- decoder

_ARRAY = 0
_MAP = 1
_TAG = 2


def _decode_text(raw, offset):
    try:
        text = _str(raw, "utf-8")
    except UnicodeError:
        raise DecodeError("invalid UTF-8 in text string at offset %d" % offset) from None
    if _LOOSE_UTF8 and _len(text) != _len(raw):
        _check_strict_utf8(raw, offset)
    return text


def _check_strict_utf8(raw, offset):
    """Reject what MicroPython's str() lets through: overlongs, surrogates, > U+10FFFF.

    Runs only after str() accepted the byte structure; the bounds guard is belt and braces.
    """
    for i in range(_len(raw)):
        b = raw[i]
        if b < 0xC0:
            continue
        nxt = raw[i + 1] if i + 1 < _len(raw) else 0
        if (
            b < 0xC2
            or b > 0xF4
            or (b == 0xE0 and nxt < 0xA0)
            or (b == 0xED and nxt >= 0xA0)
            or (b == 0xF0 and nxt < 0x90)
            or (b == 0xF4 and nxt >= 0x90)
        ):
            raise DecodeError("invalid UTF-8 in text string at offset %d" % offset)


def _double_bits_fit_single(bits):
    """True if the (non-NaN) binary64 `bits` hold a value binary32 represents exactly."""
    exp = (bits >> 52) & 0x7FF
    mant = bits & 0xFFFFFFFFFFFFF
    if exp == 0x7FF or (exp == 0 and mant == 0):
        return True  # infinities and zeros
    if exp == 0:
        return False  # binary64 subnormals are far below binary32's 2**-149
    e = exp - 1023
    if -126 <= e <= 127:
        return mant & 0x1FFFFFFF == 0
    if -149 <= e < -126:
        # binary32 subnormal m * 2**-149; the shifted-out bits must be zero
        return (mant | 0x10000000000000) & ((1 << (-97 - e)) - 1) == 0
    return False


def _float_is_shortest(data, pos, size):
    """Whether the float argument of `size` bytes at `pos` is its deterministic encoding.

    Judged on the bits rather than the decoded value, so the answer is the same on a
    MicroPython build whose floats are single precision (ESP32).
    """
    if size == 2:
        half = (data[pos] << 8) | data[pos + 1]
        return half & 0x7C00 != 0x7C00 or half & 0x3FF == 0 or half == 0x7E00
    if size == 4:
        bits = struct.unpack_from(">I", data, pos)[0]
        if bits & 0x7F800000 == 0x7F800000 and bits & 0x7FFFFF:
            return False  # NaN: only f97e00 is deterministic
        return _single_bits_to_half(bits) < 0
    bits = struct.unpack_from(">Q", data, pos)[0]
    if bits & 0x7FF0000000000000 == 0x7FF0000000000000 and bits & 0xFFFFFFFFFFFFF:
        return False
    return not _double_bits_fit_single(bits)


def _decode_major7(data, start, ai, strict):
    """Decode a float or simple value whose initial byte is at `start`; -> (value, end)."""
    pos = start + 1
    if ai == 25 or ai == 26 or ai == 27:
        size = 2 if ai == 25 else (4 if ai == 26 else 8)
        if pos + size > _len(data):
            raise DecodeError("truncated float at offset %d" % start)
        if ai == 25:
            value = _half_to_float((data[pos] << 8) | data[pos + 1])
        elif ai == 26:
            value = struct.unpack_from(">f", data, pos)[0]
        else:
            value = struct.unpack_from(">d", data, pos)[0]
        if strict and not _float_is_shortest(data, pos, size):
            raise DecodeError("float not in shortest form at offset %d" % start)
        return value, pos + size
    if ai == 20:
        return False, pos
    if ai == 21:
        return True, pos
    if ai == 22:
        return None, pos
    if ai == 31:
        raise DecodeError(
            "stray break (0xff) at offset %d: indefinite lengths are not supported" % start
        )
    if 28 <= ai <= 30:
        raise DecodeError("reserved additional information %d at offset %d" % (ai, start))
    raise DecodeError("unsupported simple value at offset %d" % start)


def _read_argument(data, start, ai, strict):
    """The argument of the head at `start` (major types 0-6); -> (argument, end)."""
    pos = start + 1
    if ai < 24:
        return ai, pos
    if ai == 24:
        size = 1
    elif ai == 25:
        size = 2
    elif ai == 26:
        size = 4
    elif ai == 27:
        size = 8
    elif ai == 31:
        if (data[start] >> 5) in (2, 3, 4, 5):
            raise DecodeError(
                "indefinite-length item at offset %d: not supported (definite lengths only)" % start
            )
        raise DecodeError(
            "additional information 31 is invalid for this major type at offset %d" % start
        )
    else:
        raise DecodeError("reserved additional information %d at offset %d" % (ai, start))
    if pos + size > _len(data):
        raise DecodeError("truncated argument at offset %d" % start)
    if size == 1:
        arg = data[pos]
        floor = 24
    elif size == 2:
        arg = (data[pos] << 8) | data[pos + 1]
        floor = 0x100
    elif size == 4:
        arg = struct.unpack_from(">I", data, pos)[0]
        floor = 0x10000
    else:
        arg = struct.unpack_from(">Q", data, pos)[0]
        floor = 0x100000000
    if strict and arg < floor:
        raise DecodeError("argument not in shortest form at offset %d" % start)
    return arg, pos + size


def _decode(data, max_depth, max_items, strict):
    # Names used per item bound once as locals: a local is an array slot on MicroPython,
    # a global or builtin a (possibly long) hash probe.
    length = _len
    decode_text = _decode_text
    type_of = _type
    read_argument = _read_argument
    map_frame = _MAP
    array_frame = _ARRAY
    end = length(data)
    pos = 0
    items = 0
    # Open containers, innermost last:
    #   array: [_ARRAY, list, declared_count]
    #   map:   [_MAP, dict, declared_count, key, have_key, key_start, previous_key_bytes, seen]
    #   tag:   [_TAG, tag_number]
    stack = []
    while True:
        start = pos
        if pos >= end:
            raise DecodeError("truncated: data item expected at offset %d" % pos)
        initial = data[pos]
        items += 1
        if items > max_items:
            raise DecodeError("more than max_items=%d data items at offset %d" % (max_items, pos))
        # Most items of our formats are one-byte ints and short strings: decode those
        # without the general head reader.
        if initial < 0x18:
            value = initial
            pos += 1
        elif 0x60 <= initial < 0x78:
            pos += 1 + initial - 0x60
            if pos > end:
                raise DecodeError(
                    "string at offset %d declares %d bytes, only %d remain"
                    % (start, initial - 0x60, end - start - 1)
                )
            value = decode_text(data[start + 1 : pos], start)
        elif initial >= 0xE0:
            value, pos = _decode_major7(data, start, initial & 0x1F, strict)
        else:
            major = initial >> 5
            ai = initial & 0x1F
            if ai < 24:
                arg = ai
                pos += 1
            elif ai == 24 and pos + 1 < end and (not strict or data[pos + 1] >= 24):
                arg = data[pos + 1]  # one-byte argument, the commonest long form
                pos += 2
            else:
                arg, pos = read_argument(data, start, ai, strict)
            if major == 0:
                value = arg
            elif major == 1:
                value = -1 - arg
            elif major == 2 or major == 3:
                if arg > end - pos:
                    raise DecodeError(
                        "string at offset %d declares %d bytes, only %d remain"
                        % (start, arg, end - pos)
                    )
                value = data[pos : pos + arg]
                pos += arg
                if major == 3:
                    value = decode_text(value, start)
            else:
                if length(stack) >= max_depth:
                    raise DecodeError(
                        "nesting deeper than max_depth=%d at offset %d" % (max_depth, start)
                    )
                if major == 6:
                    if arg == 2 or arg == 3:
                        raise DecodeError(
                            "bignum tag %d at offset %d is not supported" % (arg, start)
                        )
                    stack.append([_TAG, arg])
                    continue
                # Every element takes at least one byte, so a count the input cannot hold
                # fails here, before any list or dict grows.
                needed = arg if major == 4 else 2 * arg
                if needed > end - pos:
                    raise DecodeError(
                        "container at offset %d declares %d items, only %d bytes remain"
                        % (start, needed, end - pos)
                    )
                if items + needed > max_items:
                    raise DecodeError(
                        "container at offset %d exceeds max_items=%d" % (start, max_items)
                    )
                if arg == 0:
                    value = [] if major == 4 else {}
                elif major == 4:
                    stack.append([_ARRAY, [], arg])
                    continue
                else:
                    stack.append([_MAP, {}, arg, None, False, pos, None, None])
                    continue
        # `value` is complete: hand it to the enclosing containers, closing each one filled.
        while stack:
            frame = stack[-1]
            kind = frame[0]
            if kind == map_frame:
                if not frame[4]:
                    kind = type_of(value)
                    if strict or (kind is not _int and kind is not _str):
                        _accept_key(data, frame, value, pos, strict)
                    elif value in frame[1]:
                        raise DecodeError("duplicate map key at offset %d" % frame[5])
                    else:
                        frame[3] = value
                        frame[4] = True
                    break
                mapping = frame[1]
                mapping[frame[3]] = value
                frame[4] = False
                frame[5] = pos
                if length(mapping) < frame[2]:
                    break
                stack.pop()
                value = mapping
            elif kind == array_frame:
                array = frame[1]
                array.append(value)
                if length(array) < frame[2]:
                    break
                stack.pop()
                value = array
            else:
                stack.pop()
                value = Tag(frame[1], value)
        else:
            if pos != end:
                raise DecodeError("%d trailing bytes at offset %d" % (end - pos, pos))
            return value


def _accept_key(data, frame, key, pos, strict):
    key_start = frame[5]
    if strict:
        key_bytes = data[key_start:pos]
        previous = frame[6]
        if previous is not None and (_len(previous), previous) >= (_len(key_bytes), key_bytes):
            raise DecodeError(
                "map keys duplicate or not in deterministic order at offset %d" % key_start
            )
        frame[6] = key_bytes
    kind = _type(key)
    if kind is not _int and kind is not _str:
        try:
            hash(key)
        except TypeError:
            raise DecodeError(
                "unhashable map key (%s) at offset %d" % (kind.__name__, key_start)
            ) from None
    if key in frame[1]:
        raise DecodeError("duplicate map key at offset %d" % key_start)
    if kind is _float or kind is Tag:
        # NaN != NaN, so the dict alone lets repeated NaN-bearing keys through; compare
        # their canonical encodings instead (every NaN encodes as f97e00).
        try:
            identity = pure_dumps(key)
        except ValueError:  # nested deeper than the encoder follows: fall back to raw bytes
            identity = data[key_start:pos]
        seen = frame[7]
        if seen is None:
            seen = frame[7] = set()
        if identity in seen:
            raise DecodeError("duplicate map key at offset %d" % key_start)
        seen.add(identity)
    frame[3] = key
    frame[4] = True


def scalar_at(data, pos):
    """(value, end) of the int, float or text string whose head is at `data[pos]` (bytes),
    decoded exactly as `loads` (not require_deterministic) decodes that item; None for any
    other item, or one that is truncated or invalid. For a format's fast path that reads
    flat items itself: on None it hands the whole input to `loads`, which judges it."""
    initial = data[pos]
    if initial >= 0xE0:
        ai = initial & 0x1F
        if ai < 25 or ai > 27:
            return None  # simple values and reserved codes: not a number
        try:
            return _decode_major7(data, pos, ai, False)
        except DecodeError:
            return None
    major = initial >> 5
    if major == 2 or major > 3:
        return None
    try:
        arg, end = _read_argument(data, pos, initial & 0x1F, False)
    except DecodeError:
        return None
    if major == 0:
        return arg, end
    if major == 1:
        return -1 - arg, end
    stop = end + arg
    if stop > _len(data):
        return None
    try:
        return _decode_text(data[end:stop], pos), stop
    except DecodeError:
        return None


def pure_loads(data, max_depth=16, max_items=4096, max_size=MAX_SIZE, require_deterministic=False):
    """Decode exactly one CBOR item from `data` (bytes-like), raising only DecodeError.

    max_depth bounds nested arrays/maps/tags, max_items every data item (map keys and
    values each count), max_size the input length. require_deterministic also rejects
    non-shortest arguments and floats and keys out of length-first order.
    A non-bytes-like `data` is a programming error: TypeError.
    """
    if _type(data) is not bytes:
        if _isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        elif not _isinstance(data, bytes):
            raise TypeError("CBOR input must be bytes-like, not %s" % _type(data).__name__)
    if _len(data) > max_size:
        raise DecodeError("input is %d bytes, above max_size=%d" % (_len(data), max_size))
    if not data:
        raise DecodeError("empty input")
    return _decode(data, max_depth, max_items, require_deterministic)


# ---------------------------------------------------------------- backend

# Measured on CPython 3.11 (docs/cbor.md): pure_dumps is as fast as cbor2's canonical
# mode plus the model check it would need, and cbor2's decoder cannot enforce max_items or
# the bignum rule, so both directions stay on this code and cbor2 is the test oracle.
BACKEND = "pure"
dumps = pure_dumps
loads = pure_loads
