# Deterministic CBOR codec on MicroPython (CPython side with hypothesis: tests/protocol).
# Run: .venv/bin/micropython -X heapsize=8M tests/mpy/run.py test_cbor
import struct
from binascii import unhexlify

from protocol import cbor
from protocol.cbor import Tag
from protocol.errors import DecodeError

INF = float("inf")
NAN = float("nan")

# RFC 8949 Appendix A examples inside our model whose encoding is the deterministic one:
# each must encode to exactly these bytes and decode back to the value.
APPENDIX_A = [
    ("00", 0),
    ("01", 1),
    ("0a", 10),
    ("17", 23),
    ("1818", 24),
    ("1819", 25),
    ("1864", 100),
    ("1903e8", 1000),
    ("1a000f4240", 1000000),
    ("1b000000e8d4a51000", 1000000000000),
    ("1bffffffffffffffff", 18446744073709551615),
    ("3bffffffffffffffff", -18446744073709551616),
    ("20", -1),
    ("29", -10),
    ("3863", -100),
    ("3903e7", -1000),
    ("f90000", 0.0),
    ("f98000", -0.0),
    ("f93c00", 1.0),
    ("fb3ff199999999999a", 1.1),
    ("f93e00", 1.5),
    ("f97bff", 65504.0),
    ("fa47c35000", 100000.0),
    ("fa7f7fffff", 3.4028234663852886e38),
    ("fb7e37e43c8800759c", 1.0e300),
    ("f90001", 5.960464477539063e-8),
    ("f90400", 0.00006103515625),
    ("f9c400", -4.0),
    ("fbc010666666666666", -4.1),
    ("f97c00", INF),
    ("f97e00", NAN),
    ("f9fc00", -INF),
    ("f4", False),
    ("f5", True),
    ("f6", None),
    ("c074323031332d30332d32315432303a30343a30305a", Tag(0, "2013-03-21T20:04:00Z")),
    ("c11a514b67b0", Tag(1, 1363896240)),
    ("c1fb41d452d9ec200000", Tag(1, 1363896240.5)),
    ("d74401020304", Tag(23, b"\x01\x02\x03\x04")),
    ("d818456449455446", Tag(24, b"dIETF")),
    ("d82076687474703a2f2f7777772e6578616d706c652e636f6d", Tag(32, "http://www.example.com")),
    ("40", b""),
    ("4401020304", b"\x01\x02\x03\x04"),
    ("60", ""),
    ("6161", "a"),
    ("6449455446", "IETF"),
    ("62225c", '"\\'),
    ("62c3bc", "\u00fc"),
    ("63e6b0b4", "\u6c34"),
    ("64f0908591", "\U00010151"),
    ("80", []),
    ("83010203", [1, 2, 3]),
    ("8301820203820405", [1, [2, 3], [4, 5]]),
    (
        "98190102030405060708090a0b0c0d0e0f101112131415161718181819",
        list(range(1, 26)),
    ),
    ("a0", {}),
    ("a201020304", {1: 2, 3: 4}),
    ("a26161016162820203", {"a": 1, "b": [2, 3]}),
    ("826161a161626163", ["a", {"b": "c"}]),
    (
        "a56161614161626142616361436164614461656145",
        {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"},
    ),
]

# Appendix A floats in a longer form than needed: accepted by default, refused when
# require_deterministic is set.
NON_SHORTEST_FLOATS = [
    ("fa7f800000", INF),
    ("fa7fc00000", NAN),
    ("faff800000", -INF),
    ("fb7ff0000000000000", INF),
    ("fb7ff8000000000000", NAN),
    ("fbfff0000000000000", -INF),
]

# Appendix A items outside the model, and its indefinite-length examples: always refused.
OUTSIDE_MODEL = [
    "c249010000000000000000",  # bignum 2**64
    "c349010000000000000000",  # bignum -2**64-1
    "f7",  # undefined
    "f0",  # simple(16)
    "f8ff",  # simple(255)
    "5f42010243030405ff",
    "7f657374726561646d696e67ff",
    "9fff",
    "9f018202039f0405ffff",
    "83018202039f0405ff",
    "bf61610161629f0203ffff",
    "826161bf61626163ff",
    "bf6346756ef563416d7421ff",
]


# Values at the edges of each float width, with their deterministic encoding.
FLOAT_BOUNDARIES = [
    (2.0**-24, "f90001"),  # smallest half subnormal
    (3 * 2.0**-24, "f90003"),
    (2.0**-14 - 2.0**-24, "f903ff"),  # largest half subnormal
    (2.0**-25, "fa33000000"),  # below half: single
    (3 * 2.0**-25, "fa33c00000"),  # half subnormal range, one bit too fine
    (2.0**-14, "f90400"),  # smallest half normal
    (65504.0, "f97bff"),  # largest half
    (65536.0, "fa47800000"),  # just above half range
    (65520.0, "fa477ff000"),  # would round to inf in half
    (2.0**-149, "fa00000001"),  # smallest single subnormal
    (3 * 2.0**-149, "fa00000003"),
    (2.0**-126 - 2.0**-149, "fa007fffff"),  # largest single subnormal
    (2.0**-126, "fa00800000"),  # smallest single normal
    (2.0**-150, "fb3690000000000000"),  # below single: double
    (3 * 2.0**-150, "fb36a8000000000000"),  # single subnormal range, one bit too fine
    (3.4028234663852886e38, "fa7f7fffff"),  # largest single
    (2.0**128, "fb47f0000000000000"),  # just above the largest single
    (1.0 + 2.0**-10, "f93c01"),
    (1.0 + 2.0**-11, "fa3f801000"),
    (1.0 + 2.0**-23, "fa3f800001"),
    (1.0 + 2.0**-24, "fb3ff0000010000000"),
    (-(1.0 + 2.0**-24), "fbbff0000010000000"),
    (5e-324, "fb0000000000000001"),  # smallest double subnormal
]


def _raises(exc_type, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc_type as exc:
        return exc
    raise AssertionError("expected %s" % exc_type.__name__)


def _same(a, b):
    """Equality that also checks types, the sign of zero and treats NaN as equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if a != a:
            return b != b
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(a[i], b[i]) for i in range(len(a)))
    if isinstance(a, dict):
        return len(a) == len(b) and all(k in b and _same(a[k], b[k]) for k in a)
    if isinstance(a, Tag):
        return a.tag == b.tag and _same(a.value, b.value)
    return a == b


def test_appendix_a_encodes_to_rfc_bytes():
    for hexed, value in APPENDIX_A:
        got = cbor.dumps(value)
        assert got == unhexlify(hexed), hexed


def test_appendix_a_decodes_in_both_modes():
    for hexed, value in APPENDIX_A:
        data = unhexlify(hexed)
        assert _same(cbor.loads(data), value), hexed
        assert _same(cbor.loads(data, require_deterministic=True), value), hexed


def test_non_shortest_floats_only_in_lenient_mode():
    for hexed, value in NON_SHORTEST_FLOATS:
        data = unhexlify(hexed)
        assert _same(cbor.loads(data), value), hexed
        _raises(DecodeError, cbor.loads, data, require_deterministic=True)


def test_outside_model_and_indefinite_lengths_refused():
    for hexed in OUTSIDE_MODEL:
        _raises(DecodeError, cbor.loads, unhexlify(hexed))
    err = _raises(DecodeError, cbor.loads, unhexlify("9fff"))
    assert "indefinite" in str(err)


def test_every_half_float_converts_exactly():
    # Checks the hand-written half conversions both ways without struct 'e'.
    for h in range(0x10000):
        value = cbor._half_to_float(h)
        encoded = cbor.dumps(value)
        if value != value:
            assert encoded == b"\xf9\x7e\x00"
        else:
            assert encoded == bytes((0xF9, h >> 8, h & 0xFF)), h


def test_float_width_boundaries():
    for value, hexed in FLOAT_BOUNDARIES:
        assert cbor.dumps(value) == unhexlify(hexed), hexed
        assert _same(cbor.loads(unhexlify(hexed), require_deterministic=True), value), hexed


def test_senml_records_round_trip():
    records = [
        {-2: "urn:dev:x:", -3: 1700000000, 0: "hr", 1: "beat/min", 2: 72, 6: 1},
        {0: "spo2", 1: "%", 2: 97.5, 6: 2},
        {0: "temp", 1: "Cel", 2: 36.6, 6: 3, 4: True},
    ]
    data = cbor.dumps(records)
    assert _same(cbor.loads(data, require_deterministic=True), records)
    # SenML keys -2,-3 encode as 0x21,0x22: after 0..23 in deterministic order.
    assert data[1:4] == b"\xa6\x00\x62"


def test_map_keys_length_first_order():
    # RFC 8949 §4.2.1 example keys; we sort them length-first like cbor2 canonical.
    value = {10: 0, 100: 0, -1: 0, "z": 0, "aa": 0, (100,): 0, (-1,): 0, False: 0}
    expected = "a80a0020 00 f4 00 1864 00 617a 00 8120 00 626161 00 811864 00"
    assert cbor.dumps(value) == unhexlify(expected.replace(" ", ""))


def test_bytes_like_and_tuples_encode_as_model_types():
    assert cbor.dumps(bytearray(b"ab")) == b"\x42ab"
    assert cbor.dumps(memoryview(b"ab")) == b"\x42ab"
    assert cbor.dumps((1, 2)) == b"\x82\x01\x02"
    assert cbor.loads(bytearray(b"\x42ab")) == b"ab"


def test_dumps_refuses_values_outside_model():
    a_list = []
    a_list.append(a_list)
    bad = [
        2**64,
        -(2**64) - 1,
        object(),
        {1, 2},
        Tag(2, b"\x01"),
        a_list,
        {NAN: 1, float("nan"): 2},
    ]
    for value in bad:
        _raises(ValueError, cbor.dumps, value)
    deep = 0
    for _ in range(cbor.MAX_ENCODE_DEPTH + 1):
        deep = [deep]
    _raises(ValueError, cbor.dumps, deep)
    _raises(ValueError, Tag, -1, 0)
    _raises(ValueError, Tag, 2**64, 0)


def test_tag_equality_and_hash():
    assert Tag(1, 2) == Tag(1, 2)
    assert Tag(1, 2) != Tag(1, 3)
    assert Tag(1, 2) != Tag(4, 2)
    assert Tag(1, 2) != 2
    assert {Tag(1, 2): "x"}[Tag(1, 2)] == "x"
    assert repr(Tag(1, "a")) == "Tag(1, 'a')"


def test_malformed_heads_refused():
    for hexed in [
        "",
        "18",  # argument byte missing
        "1b00000000",  # argument truncated
        "1c",
        "1d",
        "1e",
        "5c",
        "9c",
        "bc",
        "dc",
        "fc",  # reserved additional info 28-30
        "1f",
        "3f",
        "df",  # ai 31 on major types without indefinite form
        "ff",  # stray break
        "f9",
        "fa0000",
        "fb00",  # truncated floats
        "0000",  # trailing byte
        "8201",  # array short of items
        "a101",  # map short of a value
    ]:
        _raises(DecodeError, cbor.loads, unhexlify(hexed))


def test_invalid_utf8_refused():
    for hexed in [
        "61ff",
        "6180",
        "62c080",
        "63e08080",
        "63eda080",
        "64f4908080",
        "62e282",
        "64f8888080",
    ]:
        _raises(DecodeError, cbor.loads, unhexlify(hexed))
    assert cbor.loads(unhexlify("64f48fbfbf")) == "\U0010ffff"
    assert cbor.loads(unhexlify("63ed9fbf")) == "\ud7ff"


def test_every_prefix_of_an_encoding_is_truncated():
    data = cbor.dumps([{-2: "urn:dev:x:", 2: 72.5, 3: b"\x00\x01"}, Tag(7, [1.1, -5000])])
    for cut in range(len(data)):
        _raises(DecodeError, cbor.loads, data[:cut])


def test_duplicate_and_unhashable_keys_refused():
    for hexed in [
        "a201000100",  # 1 twice
        "a20100f93c0000",  # 1 and 1.0: distinct CBOR, same Python key
        "a2f50001 00",  # true and 1
        "a2f97e0000f97e0000",  # NaN twice
        "a2f97e0000fa7fc0000000",  # NaN in two widths
        "a18000",  # array as key
        "a1a000",  # map as key
        "a1c18000",  # tag around an array as key
    ]:
        _raises(DecodeError, cbor.loads, unhexlify(hexed.replace(" ", "")))


def test_deterministic_mode_refusals():
    for hexed, value in [
        ("1800", 0),
        ("190017", 23),
        ("1a0000ffff", 65535),
        ("1b00000000ffffffff", 4294967295),
        ("3800", -1),
        ("5800", b""),
        ("d80101", Tag(1, 1)),
        ("fa3f800000", 1.0),
        ("fb3ff0000000000000", 1.0),
        ("f97e01", NAN),
        ("a202000100", {2: 0, 1: 0}),
        ("a2186400 2000", {100: 0, -1: 0}),  # RFC 8949 bytewise order, not length-first
    ]:
        data = unhexlify(hexed.replace(" ", ""))
        assert _same(cbor.loads(data), value), hexed
        _raises(DecodeError, cbor.loads, data, require_deterministic=True)


def test_deep_nesting_refused_without_recursion():
    data = b"\x81" * 10000 + b"\x00"
    err = _raises(DecodeError, cbor.loads, data, max_size=20000)
    assert "max_depth" in str(err)
    ok = b"\x81" * 16 + b"\x00"
    assert cbor.loads(ok) is not None
    _raises(DecodeError, cbor.loads, b"\x81" + ok)
    _raises(DecodeError, cbor.loads, b"\xc1" * 17 + b"\x00")
    assert cbor.loads(b"\x81" * 2000 + b"\x00", max_depth=3000) is not None


def test_item_and_size_limits():
    four_thousand_95 = b"\x99\x0f\xff" + b"\x00" * 4095
    assert len(cbor.loads(four_thousand_95)) == 4095
    _raises(DecodeError, cbor.loads, b"\x99\x10\x00" + b"\x00" * 4096)
    _raises(DecodeError, cbor.loads, b"\x83\x01\x02\x03", max_items=3)
    assert cbor.loads(b"\x83\x01\x02\x03", max_items=4) == [1, 2, 3]
    err = _raises(DecodeError, cbor.loads, b"\x81\xa2\x01\x02\x03\x04", max_items=5)
    assert "container at offset 1" in str(err)
    fits = b"\x59\xff\xfd" + b"x" * 65533
    assert len(cbor.loads(fits)) == 65533
    _raises(DecodeError, cbor.loads, fits + b"x")
    _raises(DecodeError, cbor.loads, b"\x00" * 10, max_size=9)


def test_huge_declared_lengths_fail_fast():
    for hexed in [
        "5b7fffffffffffffff00",  # 2**63-1 byte string
        "7bffffffffffffffff61",
        "9b7fffffffffffffff00",  # array of 2**63-1 items
        "bbffffffffffffffff00",
        "9affffffff00",
        "5a0001000000",
    ]:
        err = _raises(DecodeError, cbor.loads, unhexlify(hexed))
        assert "remain" in str(err), hexed


def test_plain_dumps_equals_dumps_or_declines():
    plain = [None, True, False, 0, 23, 24, -24, -25, 255, 256, 65535, 65536, 2 ** 32,
             2 ** 64 - 1, -2 ** 64, 0.0, -0.0, 1.5, 72.3, 1e300, "", "a", "\u00e9" * 20,
             "x" * 300, [], [1, "a", None, 2.5], {},
             {"b": 1, "a": [1, 2], "\u00e9": {"zz": "y"}, "a" * 24: 3}]
    for value in plain:
        assert cbor.plain_dumps(value) == cbor.dumps(value), value
    for value in (float("nan"), float("inf"), 2 ** 64, -2 ** 64 - 1, b"x", (1,),
                  cbor.Tag(1, 2), {1: 2}, [1, (2,)], {"a": {"b": b""}}):
        assert cbor.plain_dumps(value) is None, value
    deep = 1
    for _ in range(200):
        deep = [deep]
    assert cbor.plain_dumps(deep, 1000) is None
    for i in range(40):  # the key-order cache stays bounded and exact
        value = {"k%d" % i: i, "x": None}
        assert cbor.plain_dumps(value) == cbor.dumps(value)
