"""Deterministic CBOR codec on CPython: RFC vectors, cbor2 as oracle, hostile input, limits.

The MicroPython side (tests/mpy/test_cbor.py) holds the RFC 8949 Appendix A table; it is
loaded here too so both interpreters check the same vectors.
"""

import importlib.util
import math
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import cbor, errors
from protocol.cbor import DecodeError, Tag

_MPY_TEST = Path(__file__).resolve().parent.parent / "mpy" / "test_cbor.py"
_spec = importlib.util.spec_from_file_location("mpy_cbor_vectors", _MPY_TEST)
assert _spec is not None and _spec.loader is not None
vectors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vectors)


def same(a: Any, b: Any) -> bool:
    """Equality that checks types and the sign of zero, and lets NaN equal NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(k in b and same(v, b[k]) for k, v in a.items())
    if isinstance(a, Tag):
        return a.tag == b.tag and same(a.value, b.value)
    return a == b


def to_cbor2(value: Any) -> Any:
    """Our model in cbor2's terms: Tag -> CBORTag, memoryview -> bytes (see below)."""
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, Tag):
        return cbor2.CBORTag(value.tag, to_cbor2(value.value))
    if isinstance(value, list | tuple):
        return type(value)(to_cbor2(v) for v in value)
    if isinstance(value, dict):
        return {k: to_cbor2(v) for k, v in value.items()}
    return value


def contains_tag(value: Any) -> bool:
    if isinstance(value, Tag):
        return True
    if isinstance(value, list):
        return any(contains_tag(v) for v in value)
    if isinstance(value, dict):
        return any(contains_tag(k) or contains_tag(v) for k, v in value.items())
    return False


# ------------------------------------------------------------------ strategies

uint64 = st.integers(0, cbor.UINT64_MAX)
ints = st.integers(-(2**64), cbor.UINT64_MAX) | st.integers(-30, 300)
tag_numbers = uint64.filter(lambda t: t not in (2, 3))
scalars = st.none() | st.booleans() | ints | st.floats() | st.floats(width=32) | st.floats(width=16)
scalars = scalars | st.binary(max_size=40) | st.text(max_size=30)
plain_keys = (
    st.none()
    | st.booleans()
    | ints
    | st.floats(allow_nan=False)
    | st.binary(max_size=12)
    | st.text(max_size=12)
)
# What `loads` can return: lists, dicts with hashable scalar keys, tags.
decodable = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(plain_keys, inner, max_size=6)
        | st.builds(Tag, tag_numbers, inner)
    ),
    max_leaves=25,
)
# What `dumps` also accepts: tuples (also as keys), bytearray, memoryview.
tuple_keys = st.tuples(plain_keys) | st.tuples(plain_keys, plain_keys)
encodable = st.recursive(
    scalars | st.binary(max_size=8).map(bytearray) | st.binary(max_size=8).map(memoryview),
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(plain_keys | tuple_keys, inner, max_size=6)
        | st.builds(Tag, tag_numbers, inner)
    ),
    max_leaves=25,
)


# ------------------------------------------------------------------ RFC 8949 Appendix A


@pytest.mark.parametrize(("hexed", "value"), vectors.APPENDIX_A, ids=lambda x: str(x)[:30])
def test_appendix_a_both_ways(hexed: str, value: Any) -> None:
    data = bytes.fromhex(hexed)
    assert cbor.dumps(value) == data
    assert cbor.pure_dumps(value) == data
    assert same(cbor.loads(data, require_deterministic=True), value)


@pytest.mark.parametrize(("hexed", "value"), vectors.NON_SHORTEST_FLOATS)
def test_appendix_a_long_floats_lenient_only(hexed: str, value: float) -> None:
    assert same(cbor.loads(bytes.fromhex(hexed)), value)
    with pytest.raises(DecodeError, match="shortest"):
        cbor.loads(bytes.fromhex(hexed), require_deterministic=True)


@pytest.mark.parametrize("hexed", vectors.OUTSIDE_MODEL)
def test_appendix_a_outside_model_refused(hexed: str) -> None:
    with pytest.raises(DecodeError):
        cbor.loads(bytes.fromhex(hexed))


# ------------------------------------------------------------------ cbor2 as oracle


def test_cbor2_canonical_sorts_keys_length_first() -> None:
    """Pins the cbor2 behaviour docs/cbor.md relies on (RFC 7049 order, not RFC 8949 §4.2.1)."""
    keys = {100: 0, -1: 0}  # bytewise: 0x1864 < 0x20; length-first: 0x20 first
    assert cbor2.dumps(keys, canonical=True).hex() == "a22000186400"
    assert cbor.dumps(keys).hex() == "a22000186400"


def test_cbor2_encodes_memoryview_as_array_we_as_bytes() -> None:
    """The one model type where cbor2 6.x differs: it treats memoryview as a sequence."""
    assert cbor2.dumps(memoryview(b"a"), canonical=True).hex() == "811861"
    assert cbor.dumps(memoryview(b"a")).hex() == "4161"


@given(encodable)
def test_bytes_equal_cbor2_canonical(value: Any) -> None:
    assert cbor.pure_dumps(value) == cbor2.dumps(to_cbor2(value), canonical=True)
    assert cbor.dumps(value) == cbor.pure_dumps(value)


@given(st.floats() | st.floats(width=32) | st.floats(width=16))
def test_floats_equal_cbor2_canonical(value: float) -> None:
    assert cbor.dumps(value) == cbor2.dumps(value, canonical=True)


def check_every_float_width(value: float) -> None:
    """Each width that holds `value` decodes to it; strict mode takes only the shortest."""
    canonical = cbor.dumps(value)
    for head, fmt in ((b"\xf9", ">e"), (b"\xfa", ">f"), (b"\xfb", ">d")):
        try:
            packed = struct.pack(fmt, value)
        except OverflowError:
            continue
        if not same(struct.unpack(fmt, packed)[0], value):
            continue  # this width cannot hold the value
        encoding = head + packed
        assert same(cbor.loads(encoding), value)
        if encoding == canonical:
            assert same(cbor.loads(encoding, require_deterministic=True), value)
        else:
            with pytest.raises(DecodeError, match="shortest"):
                cbor.loads(encoding, require_deterministic=True)


@given(st.floats() | st.floats(width=32) | st.floats(width=16))
def test_strict_mode_accepts_only_the_shortest_float_width(value: float) -> None:
    check_every_float_width(value)


@pytest.mark.parametrize(("value", "hexed"), vectors.FLOAT_BOUNDARIES, ids=lambda x: str(x))
def test_float_width_boundaries(value: float, hexed: str) -> None:
    assert cbor.dumps(value).hex() == hexed
    assert cbor2.dumps(value, canonical=True).hex() == hexed
    check_every_float_width(value)
    check_every_float_width(-value)


def test_every_half_float_matches_struct_e() -> None:
    """The hand-made half decoder against CPython's struct 'e' for all 65536 patterns."""
    for h in range(0x10000):
        expected = struct.unpack(">e", h.to_bytes(2, "big"))[0]
        assert same(cbor._half_to_float(h), expected), hex(h)


# ------------------------------------------------------------------ round trips


@given(decodable)
def test_round_trip(value: Any) -> None:
    data = cbor.dumps(value)
    assert same(cbor.loads(data), value)
    assert same(cbor.loads(data, require_deterministic=True), value)


@given(st.binary(max_size=80))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        value = cbor.loads(data)
    except DecodeError:
        return
    # Accepted: cbor2 must read the same value (cbor2 gives tags meaning; skip those).
    if not contains_tag(value):
        assert same(cbor2.loads(data), value)


@given(st.binary(max_size=80))
def test_strictly_accepted_bytes_are_the_canonical_encoding(data: bytes) -> None:
    try:
        value = cbor.loads(data, require_deterministic=True)
    except DecodeError:
        return
    assert cbor.dumps(value) == data


@given(decodable, st.data())
def test_mutated_encodings_raise_only_decode_error(value: Any, data: st.DataObject) -> None:
    encoded = bytearray(cbor.dumps(value))
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] = data.draw(st.integers(0, 255))
    for strict in (False, True):
        try:
            cbor.loads(bytes(encoded), require_deterministic=strict)
        except DecodeError:
            pass


@given(decodable)
def test_every_prefix_is_truncated(value: Any) -> None:
    data = cbor.dumps(value)
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            cbor.loads(data[:cut])


# ------------------------------------------------------------------ limits and refusals


def test_decode_error_is_the_protocol_class() -> None:
    assert cbor.DecodeError is errors.DecodeError
    assert issubclass(DecodeError, errors.ProtocolError)


def test_ten_thousand_nested_arrays_fail_without_recursion() -> None:
    data = b"\x81" * 10_000 + b"\x00"
    with pytest.raises(DecodeError, match="max_depth"):
        cbor.loads(data, max_size=len(data))
    # Iterative: even a generous limit decodes it without RecursionError.
    value = cbor.loads(data, max_size=len(data), max_depth=10_000, max_items=10_001)
    depth = 0
    while isinstance(value, list):
        value = value[0]
        depth += 1
    assert depth == 10_000


@pytest.mark.parametrize("opener", [b"\x81", b"\xa1\x00", b"\xc1"])
def test_depth_limit_is_exact(opener: bytes) -> None:
    assert cbor.loads(opener * 16 + b"\x00") is not None
    with pytest.raises(DecodeError, match="max_depth"):
        cbor.loads(opener * 17 + b"\x00")
    with pytest.raises(DecodeError, match="max_depth"):
        cbor.loads(opener * 3 + b"\x00", max_depth=2)


def test_item_limit_counts_keys_values_and_tags() -> None:
    assert cbor.loads(b"\xa1\x01\xc1\x02", max_items=4) == {1: Tag(1, 2)}
    with pytest.raises(DecodeError, match="max_items"):
        cbor.loads(b"\xa1\x01\xc1\x02", max_items=3)
    assert len(cbor.loads(b"\x99\x0f\xff" + b"\x00" * 4095)) == 4095
    with pytest.raises(DecodeError, match="max_items"):
        cbor.loads(b"\x99\x10\x00" + b"\x00" * 4096)
    # A declared count over the budget fails at the container's head, before its items.
    with pytest.raises(DecodeError, match="container at offset 1 exceeds max_items"):
        cbor.loads(b"\x81\xa2\x01\x02\x03\x04", max_items=5)
    assert cbor.loads(b"\x81\xa2\x01\x02\x03\x04", max_items=6) == [{1: 2, 3: 4}]


def test_size_limit() -> None:
    fits = b"\x59\xff\xfd" + b"x" * 65533
    assert len(cbor.loads(fits)) == 65533
    with pytest.raises(DecodeError, match="max_size"):
        cbor.loads(fits + b"x")


@pytest.mark.parametrize(
    "hexed",
    [
        "5b7fffffffffffffff00",
        "7bffffffffffffffff61",
        "9b7fffffffffffffff00",
        "bbffffffffffffffff00",
        "9affffffff00",
        "ba8000000000",
        "820159ffff",
    ],
)
def test_huge_declared_length_fails_before_allocating(hexed: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="remain"):
            cbor.loads(bytes.fromhex(hexed))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


@pytest.mark.parametrize(
    ("hexed", "reason"),
    [
        ("", "empty"),
        ("0000", "trailing"),
        ("1c", "reserved"),
        ("fe", "reserved"),
        ("5f4100ff", "indefinite"),
        ("bfff", "indefinite"),
        ("ff", "break"),
        ("61ff", "UTF-8"),
        ("a201000100", "duplicate"),
        ("a2f97e0000fb7ff800000000000000", "duplicate"),
        ("a2c1f97e0000c1fa7fc0000000", "duplicate"),
        ("a18000", "unhashable"),
        ("a1c18000", "unhashable"),
        ("f7", "simple"),
        ("f820", "simple"),
        ("c240", "bignum"),
        ("c340", "bignum"),
    ],
)
def test_refusals_name_the_problem(hexed: str, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        cbor.loads(bytes.fromhex(hexed))


@pytest.mark.parametrize(
    "hexed",
    [
        "1817",
        "3800",
        "5800",
        "7800",
        "9800",
        "b800",
        "d80100",
        "fa3fc00000",
        "a2020001 00",
        "a2186400 2000",
        "a2620000 00 617a00",
        "a201000100",
    ],
)
def test_deterministic_mode_refuses_non_canonical(hexed: str) -> None:
    data = bytes.fromhex(hexed.replace(" ", ""))
    if hexed != "a201000100":  # the duplicate is refused either way
        cbor.loads(data)
    with pytest.raises(DecodeError):
        cbor.loads(data, require_deterministic=True)


def test_loads_accepts_bytes_like_only() -> None:
    assert cbor.loads(bytearray(b"\x01")) == 1
    assert cbor.loads(memoryview(b"\x62ab")) == "ab"
    with pytest.raises(TypeError):
        cbor.loads("00")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [2**64, -(2**64) - 1, object(), {1}, 1j, Tag(3, b""), {math.nan: 1, float("nan"): 2}],
    ids=repr,
)
def test_dumps_refuses_outside_model_with_value_error(value: Any) -> None:
    with pytest.raises(ValueError):
        cbor.dumps(value)


def test_dumps_names_the_type() -> None:
    with pytest.raises(ValueError, match="complex"):
        cbor.dumps([1j])


def test_dumps_refuses_cycles_and_excess_depth() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="deeper"):
        cbor.dumps(loop)
    deep: Any = 0
    for _ in range(cbor.MAX_ENCODE_DEPTH):
        deep = [deep]
    assert cbor.loads(cbor.dumps(deep), max_depth=cbor.MAX_ENCODE_DEPTH) == deep
    with pytest.raises(ValueError, match="deeper"):
        cbor.dumps([deep])


def test_backend_is_the_pure_codec() -> None:
    """docs/cbor.md: cbor2 was measured and not adopted; it stays the test oracle."""
    assert cbor.BACKEND == "pure"
    assert cbor.dumps is cbor.pure_dumps and cbor.loads is cbor.pure_loads
