"""`cbor.plain_dumps`, the fast path for plain (JSON-model) values: whenever it returns bytes
they are exactly `cbor.dumps`'s, and it returns None for precisely the values outside the
plain model (the caller's fallback is `dumps`), without ever raising.

`is_plain` below restates the model independently of the encoder, so the property
"None iff not plain" checks the declines, not only the bytes.
"""

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import cbor
from protocol.cbor import Tag

INT_MIN = -(1 << 64)
INT_MAX = (1 << 64) - 1


class Text(str):
    pass


class Count(int):
    pass


class Number(float):
    pass


class Record(dict):  # type: ignore[type-arg]
    pass


class Items(list):  # type: ignore[type-arg]
    pass


def is_plain(value: Any, depth: int = cbor.PLAIN_MAX_DEPTH) -> bool:
    """The plain model as docs/cbor.md states it, written without the encoder."""
    kind = type(value)
    if value is None or kind is bool:
        return True
    if kind is int:
        return INT_MIN <= value <= INT_MAX
    if kind is float:
        return value == value and value not in (float("inf"), float("-inf"))
    if kind is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if kind is list:
        return depth > 0 and all(is_plain(item, depth - 1) for item in value)
    if kind is dict:
        return depth > 0 and all(is_plain(k, 0) and type(k) is str for k in value) and all(
            is_plain(v, depth - 1) for v in value.values()
        )
    return False


# Keys up to 30 characters: past 23 UTF-8 bytes a text head grows to two bytes, which is
# where length-first key order and bytewise order part (docs/cbor.md).
KEYS = st.text(max_size=30)
PLAIN_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(INT_MIN, INT_MAX)
    | st.integers(-30, 300)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(width=16, allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
PLAIN = st.recursive(
    PLAIN_SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=30,
)
# Values each one step outside the model, to mix into plain ones.
NOT_PLAIN_SCALARS = (
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 1 << 64, INT_MIN - 1, b"",
                     bytearray(b"x"), Tag(1, 0), (), (1, "a"), Text("t"), Count(3),
                     Number(1.5), Record(), Items(), "\ud800", "a\udfff"])
    | st.integers(1 << 64, 1 << 70)
    | st.binary(max_size=5)
)
ANY_KEY = KEYS | st.integers(-30, 30) | st.builds(Text, st.text(max_size=5)) | st.booleans()
MIXED = st.recursive(
    PLAIN_SCALARS | NOT_PLAIN_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner)
        | st.dictionaries(ANY_KEY, inner, max_size=4)
        | st.dictionaries(KEYS, inner, max_size=4)
    ),
    max_leaves=20,
)


@given(PLAIN)
def test_plain_values_encode_exactly_as_dumps(value: Any) -> None:
    assert is_plain(value)
    assert cbor.plain_dumps(value) == cbor.dumps(value)


@given(MIXED)
def test_plain_dumps_returns_none_exactly_for_values_outside_the_model(value: Any) -> None:
    encoded = cbor.plain_dumps(value)
    assert (encoded is not None) == is_plain(value)
    if encoded is not None:
        assert encoded == cbor.dumps(value)


@given(PLAIN)
def test_plain_values_survive_a_json_round_trip(value: Any) -> None:
    """The documented promise a caller may rely on to skip a JSON round trip."""
    back = json.loads(json.dumps(value, allow_nan=False, ensure_ascii=False))
    assert cbor.plain_dumps(back) == cbor.plain_dumps(value)


@given(st.lists(st.dictionaries(KEYS, PLAIN_SCALARS, min_size=1, max_size=6), max_size=8))
def test_cached_key_order_serves_maps_that_share_a_key_set(records: list[dict[str, Any]]) -> None:
    for record in records:  # each key set is encoded twice: cache miss, then hit
        assert cbor.plain_dumps(record) == cbor.dumps(record)
        assert cbor.plain_dumps(dict(reversed(list(record.items())))) == cbor.dumps(record)


@pytest.mark.parametrize(
    "value",
    [
        float("nan"), float("inf"), float("-inf"), 1 << 64, INT_MIN - 1, b"ab", Tag(0, "x"),
        (1, 2), Text("a"), Count(1), Number(2.0), Record(a=1), Items([1]), {1: "a"},
        {True: 1}, {"a": (1,)}, {"a": [1, [2, (3,)]]}, {"a": {"b": {"c": float("nan")}}},
        ["\ud800"], {"\udc00": 1}, [1, 2, b"x"],
    ],
    ids=repr,
)
def test_values_outside_the_model_decline(value: Any) -> None:
    assert cbor.plain_dumps(value) is None


def test_the_64_bit_edges_are_plain() -> None:
    for value in (INT_MAX, INT_MIN, 0, -1, 23, 24, -24, -25, 1 << 32, -(1 << 32) - 1):
        assert cbor.plain_dumps(value) == cbor.dumps(value)


def test_a_subclass_key_declines_even_when_its_key_set_is_cached() -> None:
    assert cbor.plain_dumps({"a": 1, "b": 2}) == cbor.dumps({"a": 1, "b": 2})
    # Text("a") == "a" and hashes alike, so the key tuples are equal: the type check
    # must not be skipped on a cache hit.
    assert cbor.plain_dumps({Text("a"): 1, "b": 2}) is None


def test_depth_limit_counts_containers() -> None:
    def nested(levels: int) -> Any:
        value: Any = 1
        for i in range(levels):
            value = [value] if i % 2 else {"k": value}
        return value

    for limit in (0, 1, 2, 5):
        assert cbor.plain_dumps(nested(limit), limit) == cbor.dumps(nested(limit))
        assert cbor.plain_dumps(nested(limit + 1), limit) is None
    assert cbor.plain_dumps(nested(cbor.PLAIN_MAX_DEPTH)) is not None
    assert cbor.plain_dumps(nested(cbor.PLAIN_MAX_DEPTH + 1)) is None


def test_deep_and_cyclic_values_decline_instead_of_raising() -> None:
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    assert cbor.plain_dumps(deep, max_depth=10**6) is None  # capped at MAX_ENCODE_DEPTH
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    assert cbor.plain_dumps(cyclic, max_depth=10**6) is None
    with pytest.raises(ValueError):
        cbor.dumps(cyclic)  # ... and the fallback refuses it as before


def test_a_lone_surrogate_declines_and_dumps_refuses_it() -> None:
    assert cbor.plain_dumps({"a": "x\ud800"}) is None
    with pytest.raises(ValueError):
        cbor.dumps({"a": "x\ud800"})


def test_key_order_is_length_first_on_utf8_bytes() -> None:
    # Python orders "zzz" before "é"; CBOR puts "é" (62c3a9) before "zzz" (637a7a7a), and a
    # key of 24+ bytes, whose head is two bytes, after both.
    value = {"a" * 24: 1, "zzz": 2, "é": 3}
    encoded = cbor.plain_dumps(value)
    assert encoded == cbor.dumps(value)
    assert encoded == (b"\xa3" + b"\x62\xc3\xa9\x03" + b"\x63zzz\x02"
                       + b"\x78\x18" + b"a" * 24 + b"\x01")


def test_key_order_cache_stays_bounded() -> None:
    for i in range(cbor._KEY_ORDER_LIMIT * 2 + 3):
        record = {f"k{i}": i, "x": None}
        assert cbor.plain_dumps(record) == cbor.dumps(record)
        assert len(cbor._key_orders) <= cbor._KEY_ORDER_LIMIT
