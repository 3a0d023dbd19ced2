"""SenML packs (protocol/senml.py): wire bytes, round trips, hostile input, field names."""

import binascii
import math

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import cbor, senml, vitals
from protocol.errors import DecodeError, ValidationError
from protocol.senml import BN, BT, BU, BV, BVER, SEQ, UCUM_UNIT, UT, N, S, T, U, V

BASE = "urn:dev:vb:a1b2c3d4e5f6:"
T0 = 1767225600  # 2026-01-01T00:00:00Z

# Ten alternating hr/spo2 readings, one per second, seq from 1000000 (docs/senml.md).
BATCH_HEX = (
    "8aa500626872021848151a000f424021781875726e3a6465763a76623a6131623263336434653566363a"
    "221a6955b900a4006473706f320218610601151a000f4241a40062687202184a0602151a000f4242a400"
    "6473706f320218610603151a000f4243a40062687202184c0604151a000f4244a4006473706f32021861"
    "0605151a000f4245a40062687202184e0606151a000f4246a4006473706f320218610607151a000f4247"
    "a4006268720218500608151a000f4248a4006473706f320218610609151a000f4249"
)


def batch() -> list[dict]:
    records = []
    for i in range(10):
        if i % 2 == 0:
            records.append(senml.make_record("hr", 72 + i, time=T0 + i, seq=1_000_000 + i))
        else:
            records.append(senml.make_record("spo2", 97, time=T0 + i, seq=1_000_000 + i))
    return records


def good(**changes: object) -> dict:
    """One valid self-contained record (as the first record of a pack), then `changes`."""
    record = {BN: BASE, BT: T0, N: "hr", V: 72, SEQ: 7}
    for key, value in changes.items():
        label = int(key[1:]) if key.startswith("L") else key
        if value is _DROP:
            record.pop(label, None)
        else:
            record[label] = value
    return record


_DROP = object()


def field_of(pack: object, now: float | None = None) -> str:
    with pytest.raises(ValidationError) as err:
        senml.decode_pack(cbor.dumps(pack), now=now)
    return err.value.field


# ---------------------------------------------------------------- wire bytes


def test_batch_vector_and_size() -> None:
    data = senml.encode_pack(batch(), base_name=BASE)
    assert binascii.hexlify(data).decode() == BATCH_HEX
    # Budget: <= 48 bytes per sealed reading with ~45 bytes of seal per batch of 10.
    assert len(data) == 202
    assert (len(data) + 45) / 10 <= 48
    assert len(data) / 10 <= 25


def test_batch_vector_read_by_an_independent_decoder() -> None:
    pack = cbor2.loads(bytes.fromhex(BATCH_HEX))
    assert pack[0] == {-2: BASE, -3: T0, 0: "hr", 2: 72, 21: 1_000_000}
    assert pack[1] == {0: "spo2", 2: 97, 6: 1, 21: 1_000_001}
    # Deterministic: cbor2's canonical encoding of the same value is the same bytes.
    assert cbor2.dumps(pack, canonical=True) == bytes.fromhex(BATCH_HEX)


def test_batch_decodes_to_absolute_readings() -> None:
    readings = senml.decode_pack(bytes.fromhex(BATCH_HEX))
    assert [r.seq for r in readings] == list(range(1_000_000, 1_000_010))
    first, second = readings[0], readings[1]
    assert (first.name, first.device, first.quantity) == (BASE + "hr", BASE, "hr")
    assert (first.value, first.unit, first.time) == (72, "beat/min", T0)
    assert (second.quantity, second.value, second.unit, second.time) == ("spo2", 97, "%", T0 + 1)


def test_rfc8428_section6_example_resolves() -> None:
    # The CBOR example of RFC 8428 section 6 (names outside our vocabulary: resolve only).
    hexdump = (
        "87a721781b75726e3a6465763a6f773a3130653230373361303130383030363a22fb41d303a15b00"
        "106223614120050067766f6c7461676501615602fb405e066666666666a3006763757272656e74"
        "062402fb3ff3333333333333a3006763757272656e74062302fb3ff4cccccccccccda300676375"
        "7272656e74062202fb3ff6666666666666a3006763757272656e74062102f93e00a30067637572"
        "72656e74062002fb3ff999999999999aa3006763757272656e74060002fb3ffb333333333333"
    )
    records = senml.resolve(cbor.loads(bytes.fromhex(hexdump)))
    assert records[0] == {
        N: "urn:dev:ow:10e2073a0108006:voltage",
        U: "V",
        V: 120.1,
        T: 1276020076.001,
    }
    assert records[4][N] == "urn:dev:ow:10e2073a0108006:current"
    assert records[4][U] == "A"  # base unit applied
    assert records[4][V] == 1.5  # a half float on the wire
    assert records[4][T] == 1276020076.001 - 2
    assert records[6][T] == 1276020076.001  # t 0


def test_encoding_omits_implied_units_and_keeps_needed_ones() -> None:
    data = senml.encode_pack(
        [
            senml.make_record("temp", 36.5, time=T0, seq=1),
            senml.make_record("glucose", 104, unit="mg/dL", time=T0, seq=2),
            senml.make_record("glucose", 5.5, time=T0, seq=3),
        ],
        base_name=BASE,
    )
    pack = cbor.loads(data)
    assert U not in pack[0] and UCUM_UNIT not in pack[0]
    assert pack[1][UCUM_UNIT] == "mg/dL" and pack[2][UCUM_UNIT] == "mmol/L"
    assert T not in pack[1]  # same time as bt
    assert [r.unit for r in senml.decode_pack(data)] == ["Cel", "mg/dL", "mmol/L"]


def test_integral_floats_travel_as_ints() -> None:
    data = senml.encode_pack([senml.make_record("hr", 72.0, time=float(T0), seq=0)])
    assert cbor.loads(data) == [{BT: T0, N: "hr", V: 72, SEQ: 0}]


def test_encode_without_times_or_base_name() -> None:
    data = senml.encode_pack([senml.make_record("bat", 80, seq=1)])
    assert cbor.loads(data) == [{N: "bat", V: 80, SEQ: 1}]
    # No time at all means "now" (RFC 8428): the receiver supplies its reception time.
    with pytest.raises(ValidationError) as err:
        senml.decode_pack(data)
    assert err.value.field == "records[0].t"
    (reading,) = senml.decode_pack(data, now=T0)
    assert (reading.name, reading.device, reading.time) == ("bat", "", T0)


def test_explicit_base_time() -> None:
    records = [senml.make_record("rr", 14, time=T0 + 60, seq=1)]
    data = senml.encode_pack(records, base_name=BASE, base_time=T0)
    assert cbor.loads(data)[0][T] == 60
    assert senml.decode_pack(data)[0].time == T0 + 60


def test_float_times_far_apart_stay_exact() -> None:
    times = [2.0**32 + 0.3, 2.0**28 + 0.1]  # bt + (t - bt) loses t's low bits
    records = [senml.make_record("hr", 60, time=t, seq=i) for i, t in enumerate(times)]
    readings = senml.decode_pack(senml.encode_pack(records, base_name=BASE))
    assert [r.time for r in readings] == times
    with pytest.raises(ValidationError) as err:
        senml.encode_pack(records, base_name=BASE, base_time=times[0])
    assert err.value.field == "bt"


@pytest.mark.parametrize(
    ("records", "kwargs", "field"),
    [
        ([], {}, "records"),
        ([senml.make_record("hr", 60, time=T0, seq=1), senml.make_record("hr", 60, seq=2)],
         {}, "records[1].t"),
        ([senml.make_record("hr", 60, seq=1)], {"base_time": T0}, "records[0].t"),
        ([senml.make_record("hr", 400, time=T0, seq=1)], {}, "records[0].v"),
        ([senml.make_record("hr", 60, time=T0)], {}, "records[0].seq"),
        ([dict(senml.make_record("hr", 60, time=T0, seq=1), extra="x")], {}, "records[0].extra"),
        ([senml.make_record("hr", 60, time=T0, seq=1)], {"base_name": 5}, "bn"),
        ([senml.make_record("hr", 60, time=T0, seq=1)], {"base_time": math.nan}, "bt"),
        ([senml.make_record("hr", 60, time=T0, seq=1)], {"base_name": "bad name:"}, "records[0].n"),
    ],
)
def test_encode_refuses_invalid_records(records: list, kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        senml.encode_pack(records, **kwargs)
    assert err.value.field == field


def test_make_record_defaults_and_refusals() -> None:
    assert senml.make_record("spo2", 97) == {N: "spo2", V: 97, UCUM_UNIT: "%"}
    assert senml.make_record("hr", 60, ut=5) == {N: "hr", V: 60, U: "beat/min", UT: 5}
    for args, kwargs, field in [
        (("heart", 60), {}, "n"),
        (("sys", 120), {"unit": "Pa"}, "u"),
        (("hr", 60), {"colour": 1}, "colour"),
    ]:
        with pytest.raises(ValidationError) as err:
            senml.make_record(*args, **kwargs)
        assert err.value.field == field


# ---------------------------------------------------------------- validation rules


@pytest.mark.parametrize(
    ("pack", "field"),
    [
        ({"not": "an array"}, "pack"),
        ([], "pack"),
        ([good(), 5], "records[1]"),
        ([good(), [1, 2]], "records[1]"),
        ([good(foo_=1)], "records[0].foo_"),  # unknown must-understand text label
        ([good(L99=1)], "records[0].99"),  # unknown integer label
        ([{**good(), 1.5: 1}], "records[0]"),  # label neither int nor text
        ([good(L0=5)], "records[0].n"),
        ([good(L2="72")], "records[0].v"),
        ([good(L2=True)], "records[0].v"),
        ([good(**{"L-2": 1})], "records[0].bn"),
        ([good(**{"L-3": "x"})], "records[0].bt"),
        ([good(**{"L-1": -1})], "records[0].bver"),
        ([good(**{"L-1": 11})], "records[0].bver"),  # version too new
        ([good(**{"L-1": 10}), good(**{"L-1": 5, "L-2": _DROP, "L-3": _DROP})], "records[1].bver"),
        ([good(L1=5)], "records[0].u"),
        ([good(L4="yes")], "records[0].vb"),
        ([good(L8="text")], "records[0].vd"),
        ([good(L21="7")], "records[0].seq"),
        ([good(L21=True)], "records[0].seq"),
        ([good(L22=3)], "records[0].ucum_"),
        ([good(L6=[1])], "records[0].t"),
        ([good(L7="soon")], "records[0].ut"),
        ([good(L2=_DROP)], "records[0].v"),  # missing value
        ([good(L3="x")], "records[0].v"),  # two value fields
        ([good(L2=_DROP, L3="x")], "records[0].vs"),  # vitals need a number
        ([good(L2=_DROP, L4=True)], "records[0].vb"),
        ([good(L0="heart")], "records[0].n"),  # unknown quantity
        ([good(L0=_DROP)], "records[0].n"),  # base name alone names no quantity
        ([good(**{"L-2": "urn dev:"})], "records[0].n"),  # space: RFC 8428 name chars
        ([good(L1="mm[Hg]")], "records[0].u"),  # not a SenML unit
        ([good(L0="spo2", L2=97, L1="%")], "records[0].u"),  # SenML % is a ratio
        ([good(L22="beat/min")], "records[0].ucum_"),  # SenML unit in the UCUM field
        ([good(L1="beat/min", L22="%")], "records[0].u"),  # two units
        ([good(L0="sys", L2=120, L22="Pa")], "records[0].ucum_"),
        ([good(L0="glucose", L2=5)], "records[0].u"),  # several units: must say which
        ([good(L2=400)], "records[0].v"),
        ([good(L2=math.nan)], "records[0].v"),
        ([good(L2=-math.inf)], "records[0].v"),
        ([good(L21=_DROP)], "records[0].seq"),
        ([good(L21=-1)], "records[0].seq"),
        ([good(L21=2**32)], "records[0].seq"),
        ([good(L6=math.inf)], "records[0].t"),
        ([good(**{"L-3": 2**40})], "records[0].t"),
        ([good(**{"L-3": _DROP})], "records[0].t"),  # relative time, no `now`
        ([good(L7=-1)], "records[0].ut"),
        ([good(L5=math.nan)], "records[0].s"),
        ([good(L21=1, seq=2)], "records[0].seq"),  # same field twice (int and text)
        ([good(), {N: "hr", SEQ: 1}], "records[1].v"),
        ([good(), *[good(**{"L-2": _DROP})] * 2, good(L0="xx")], "records[3].n"),
    ],
)
def test_each_rule_names_the_field(pack: object, field: str) -> None:
    assert field_of(pack) == field


def test_unknown_plain_text_labels_are_ignored() -> None:
    (reading,) = senml.decode_pack(cbor.dumps([good(colour="red", note=[1, 2])]))
    assert reading.value == 72 and reading.extras == {}


def test_text_spellings_of_profile_labels() -> None:
    record = good(L21=_DROP, seq=9, L0="glucose", L2=5.5, ucum_="mmol/L")
    (reading,) = senml.decode_pack(cbor.dumps([record]))
    assert (reading.seq, reading.unit) == (9, "mmol/L")


def test_base_unit_value_and_sum_apply() -> None:
    pack = [
        {BN: BASE, BT: T0, BU: "kg", BV: 70, N: "weight", V: 0.5, SEQ: 1},
        {N: "weight", V: -0.25, T: 86400, SEQ: 2, S: 3},
    ]
    readings = senml.decode_pack(cbor.dumps(pack))
    assert [(r.value, r.unit, r.time) for r in readings] == [
        (70.5, "kg", T0),
        (69.75, "kg", T0 + 86400),
    ]
    assert readings[1].extras == {"s": 3}
    resolved = senml.resolve(pack)
    assert BU not in resolved[0] and BV not in resolved[0] and BVER not in resolved[0]


def test_relative_times_use_reception_time() -> None:
    pack = [{BN: BASE, N: "hr", V: 60, SEQ: 1, T: -5}, {N: "hr", V: 61, SEQ: 2}]
    readings = senml.decode_pack(cbor.dumps(pack), now=T0)
    assert [r.time for r in readings] == [T0 - 5, T0]
    pack[0][T] = -T0  # "now" minus 56 years is not a time a reading was taken
    assert field_of(pack, now=T0) == "records[0].t"


def test_older_version_accepted_when_consistent() -> None:
    pack = [good(**{"L-1": 5}), good(**{"L-1": 5, "L-2": _DROP, "L-3": _DROP})]
    assert len(senml.decode_pack(cbor.dumps(pack))) == 2


def test_too_many_records() -> None:
    pack = [good()] + [good(**{"L-2": _DROP, "L-3": _DROP})] * 4
    assert len(senml.decode_pack(cbor.dumps(pack), max_records=5)) == 5
    with pytest.raises(ValidationError) as err:
        senml.decode_pack(cbor.dumps(pack), max_records=4)
    assert err.value.field == "pack"


def test_validate_record_standalone() -> None:
    record = senml.make_record("temp", 37.2, time=T0, seq=3)
    reading = senml.validate_record(record)
    assert (reading.name, reading.device, reading.unit) == ("temp", "", "Cel")
    with pytest.raises(ValidationError) as err:
        senml.validate_record({**record, V: 99.0}, index=3)
    assert err.value.field == "records[3].v"
    with pytest.raises(ValidationError) as err:
        senml.validate_record({BN: BASE, **record})
    assert err.value.field == "bn"


def test_cbor_problems_are_decode_errors() -> None:
    truncated_or_trailing = [b"", b"\x8a", b"\x81\xa1\x00", bytes.fromhex(BATCH_HEX) + b"\x00"]
    for data in [*truncated_or_trailing, BATCH_HEX.encode()]:
        with pytest.raises(DecodeError):
            senml.decode_pack(data)


# ---------------------------------------------------------------- properties

QUANTITY_NAMES = sorted(vitals.QUANTITIES)


@st.composite
def valid_records(draw: st.DrawFn) -> tuple[dict, tuple]:
    name = draw(st.sampled_from(QUANTITY_NAMES))
    entry = vitals.QUANTITIES[name]
    unit = draw(st.sampled_from(entry["units"]))
    low, high, _ = entry["limits"][unit]
    value = draw(
        st.one_of(
            st.integers(min_value=math.ceil(low), max_value=math.floor(high)),
            st.floats(min_value=low, max_value=high),
        )
    )
    time = draw(
        st.one_of(st.integers(2**28, 2**33 - 1), st.floats(min_value=2**28, max_value=2**33 - 1))
    )
    seq = draw(st.integers(0, 2**32 - 1))
    extras = draw(st.fixed_dictionaries({}, optional={"ut": st.integers(0, 2**32 - 1)}))
    record = senml.make_record(name, value, unit, time, seq, **extras)
    return record, (name, unit, value, time, seq, extras)


devices = st.text(alphabet="0123456789abcdef", min_size=1, max_size=16).map(
    lambda serial: f"urn:dev:vb:{serial}:"
)


@given(devices, st.lists(valid_records(), min_size=1, max_size=12), st.booleans())
def test_valid_records_round_trip(device: str, drawn: list, explicit_bt: bool) -> None:
    records = [r for r, _ in drawn]
    base_time = int(drawn[0][1][3]) if explicit_bt else None
    try:
        data = senml.encode_pack(records, base_name=device, base_time=base_time)
    except ValidationError as err:
        # Only a caller-chosen bt may fail: float times too far from it to stay exact.
        assert explicit_bt and err.field == "bt"
        return
    assert data == senml.encode_pack(records, base_name=device, base_time=base_time)
    readings = senml.decode_pack(data)
    assert len(readings) == len(drawn)
    for reading, (_, expected) in zip(readings, drawn, strict=True):
        name, unit, value, time, seq, extras = expected
        assert (reading.name, reading.device, reading.quantity) == (device + name, device, name)
        assert (reading.unit, reading.value, reading.time, reading.seq) == (unit, value, time, seq)
        assert reading.extras == extras
    # A Reading re-encodes to the same bytes.
    again = senml.encode_pack([r.to_record() for r in readings], base_name=device,
                              base_time=base_time)
    assert again == data


leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),
    st.floats(),
    st.binary(max_size=6),
    st.text(max_size=6),
    st.sampled_from(["hr", "spo2", "glucose", "%", "mm[Hg]", "beat/min", BASE]),
    st.integers(2**28, 2**33),
)
labels = st.one_of(
    st.integers(-8, 24), st.sampled_from(["seq", "ucum_", "x_", "x", "n", "v"]), st.floats()
)
record_like = st.dictionaries(labels, leaves, max_size=8)
packs = st.one_of(
    st.lists(record_like, max_size=6),
    st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.integers(-8, 24) | st.text(max_size=3), inner, max_size=4), max_leaves=12),
)


@settings(max_examples=300)
@given(packs, st.one_of(st.none(), st.integers(2**28, 2**33)))
def test_random_packs_raise_only_protocol_errors(pack: object, now: int | None) -> None:
    try:
        data = cbor.dumps(pack)
    except ValueError:
        return  # outside the CBOR model (e.g. duplicate NaN keys): nothing to send
    try:
        readings = senml.decode_pack(data, now=now)
    except (DecodeError, ValidationError):
        return
    for reading in readings:  # anything accepted is a valid reading
        vitals.check_value(reading.quantity, reading.value, reading.unit)
        assert 0 <= reading.seq < 2**32 and reading.time >= 2**28


@given(st.binary(max_size=64))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    try:
        senml.decode_pack(data, now=T0)
    except (DecodeError, ValidationError):
        pass


@given(st.data())
def test_mutated_batches_raise_only_protocol_errors(data: st.DataObject) -> None:
    raw = bytearray(bytes.fromhex(BATCH_HEX))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        senml.decode_pack(bytes(raw), now=T0)
    except (DecodeError, ValidationError):
        pass


@given(st.data())
def test_mutated_fields_raise_only_validation_errors(data: st.DataObject) -> None:
    pack = cbor.loads(bytes.fromhex(BATCH_HEX))
    index = data.draw(st.integers(0, len(pack) - 1))
    label = data.draw(st.sampled_from(sorted(senml.LABELS) + ["seq", "ucum_", "z_"]))
    pack[index][label] = data.draw(leaves)
    try:
        senml.decode_pack(cbor.dumps(pack), now=T0)
    except ValidationError as err:
        # A base field changed in record i can only break record i or a later one.
        assert err.field.startswith("records[")
        assert int(err.field[len("records[") : err.field.index("]")]) >= index
