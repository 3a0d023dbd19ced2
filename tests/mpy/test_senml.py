# SenML packs and the vitals vocabulary on MicroPython (CPython side: tests/protocol).
import binascii

from protocol import cbor, senml, vitals
from protocol.errors import DecodeError, ValidationError
from protocol.senml import BN, BT, BU, BV, SEQ, UCUM_UNIT, N, S, T, U, V

BASE = "urn:dev:vb:a1b2c3d4e5f6:"
T0 = 1767225600
# Same vector as tests/protocol/test_senml.py: both interpreters must produce these bytes.
BATCH_HEX = (
    "8aa500626872021848151a000f424021781875726e3a6465763a76623a6131623263336434653566363a"
    "221a6955b900a4006473706f320218610601151a000f4241a40062687202184a0602151a000f4242a400"
    "6473706f320218610603151a000f4243a40062687202184c0604151a000f4244a4006473706f32021861"
    "0605151a000f4245a40062687202184e0606151a000f4246a4006473706f320218610607151a000f4247"
    "a4006268720218500608151a000f4248a4006473706f320218610609151a000f4249"
)


def _batch():
    records = []
    for i in range(10):
        if i % 2 == 0:
            records.append(senml.make_record("hr", 72 + i, time=T0 + i, seq=1000000 + i))
        else:
            records.append(senml.make_record("spo2", 97, time=T0 + i, seq=1000000 + i))
    return records


def _field(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ValidationError as exc:
        return exc.field
    raise AssertionError("expected ValidationError")


def _good(**changes):
    record = {BN: BASE, BT: T0, N: "hr", V: 72, SEQ: 7}
    for key in changes:
        label = int(key[1:].replace("m", "-")) if key[0] == "L" else key
        if changes[key] is None:
            record.pop(label)
        else:
            record[label] = changes[key]
    return record


def _decode_field(pack, now=None):
    return _field(senml.decode_pack, cbor.dumps(pack), 256, now)


def test_batch_vector_bytes_and_size():
    data = senml.encode_pack(_batch(), base_name=BASE)
    assert binascii.hexlify(data).decode() == BATCH_HEX
    assert len(data) == 202 and (len(data) + 45) / 10 <= 48


def test_batch_vector_decodes():
    readings = senml.decode_pack(binascii.unhexlify(BATCH_HEX))
    assert len(readings) == 10
    assert readings[0].name == BASE + "hr" and readings[0].device == BASE
    assert (readings[0].value, readings[0].unit, readings[0].time) == (72, "beat/min", T0)
    assert (readings[9].quantity, readings[9].unit, readings[9].seq) == ("spo2", "%", 1000009)
    assert readings[9].time == T0 + 9


def test_round_trip_mixed_units_and_floats():
    records = [
        senml.make_record("temp", 36.6, time=T0, seq=1),
        senml.make_record("glucose", 104, unit="mg/dL", time=T0 + 60, seq=2),
        senml.make_record("glucose", 5.8, time=T0 + 120, seq=3),
        senml.make_record("weight", 81.25, time=T0 + 121.5, seq=4, ut=86400),
        senml.make_record("sys", 128, time=T0 + 200, seq=5),
    ]
    data = senml.encode_pack(records, base_name=BASE)
    readings = senml.decode_pack(data)
    got = [(r.quantity, r.value, r.unit, r.time, r.seq) for r in readings]
    assert got == [
        ("temp", 36.6, "Cel", T0, 1),
        ("glucose", 104, "mg/dL", T0 + 60, 2),
        ("glucose", 5.8, "mmol/L", T0 + 120, 3),
        ("weight", 81.25, "kg", T0 + 121.5, 4),
        ("sys", 128, "mm[Hg]", T0 + 200, 5),
    ]
    assert readings[3].extras == {"ut": 86400}
    again = senml.encode_pack([r.to_record() for r in readings], base_name=BASE)
    assert again == data


def test_units_on_the_wire():
    pack = cbor.loads(
        senml.encode_pack(
            [
                senml.make_record("spo2", 95, time=T0, seq=1),
                senml.make_record("glucose", 5.5, time=T0, seq=2),
            ]
        )
    )
    assert U not in pack[0] and UCUM_UNIT not in pack[0]
    assert pack[1][UCUM_UNIT] == "mmol/L"


def test_base_fields_and_relative_time():
    pack = [
        {BN: BASE, BU: "kg", BV: 70, N: "weight", V: 0.5, SEQ: 1, T: -10},
        {N: "weight", V: -0.25, SEQ: 2, S: 3},
    ]
    readings = senml.decode_pack(cbor.dumps(pack), 256, T0)
    got = [(r.value, r.unit, r.time) for r in readings]
    assert got == [(70.5, "kg", T0 - 10), (69.75, "kg", T0)]
    assert _decode_field(pack) == "records[0].t"


def test_rules_name_the_field():
    nan = float("nan")
    cases = [
        ({"a": 1}, "pack"),
        ([], "pack"),
        ([_good(), 5], "records[1]"),
        ([_good(foo_=1)], "records[0].foo_"),
        ([_good(L99=1)], "records[0].99"),
        ([_good(L0=5)], "records[0].n"),
        ([_good(Lm1=11)], "records[0].bver"),
        ([_good(L2=None)], "records[0].v"),
        ([_good(L3="x")], "records[0].v"),
        ([_good(L0="heart")], "records[0].n"),
        ([_good(L1="%", L0="spo2")], "records[0].u"),
        ([_good(L0="sys", L22="Pa")], "records[0].ucum_"),
        ([_good(L0="glucose", L2=5)], "records[0].u"),
        ([_good(L2=400)], "records[0].v"),
        ([_good(L2=nan)], "records[0].v"),
        ([_good(L21=None)], "records[0].seq"),
        ([_good(L21=2 ** 32)], "records[0].seq"),
        ([_good(L21=True)], "records[0].seq"),
        ([_good(L6="soon")], "records[0].t"),
        ([_good(Lm3=None)], "records[0].t"),
        ([_good(), _good(Lm2=None, Lm3=None, L0="xx")], "records[1].n"),
    ]
    for pack, field in cases:
        got = _decode_field(pack)
        assert got == field, "%r: %r != %r" % (pack, got, field)


def test_unknown_plain_text_label_ignored():
    readings = senml.decode_pack(cbor.dumps([_good(colour="red")]))
    assert readings[0].value == 72


def test_encode_refusals():
    assert _field(senml.encode_pack, []) == "records"
    assert _field(senml.encode_pack, [senml.make_record("hr", 60, time=T0)]) == "records[0].seq"
    mixed = [senml.make_record("hr", 60, time=T0, seq=1), senml.make_record("hr", 60, seq=2)]
    assert _field(senml.encode_pack, mixed) == "records[1].t"
    assert _field(senml.make_record, "sys", 120, "Pa") == "u"


def test_vocabulary():
    assert sorted(vitals.QUANTITIES) == sorted(
        ["hr", "pr", "spo2", "temp", "sys", "dia", "map", "rr", "weight", "glucose", "pi",
         "bat", "sq"]
    )
    assert vitals.check_value("hr", 0) == "beat/min"
    assert _field(vitals.check_value, "spo2", 101) == "v"
    assert _field(vitals.quantity, "nope") == "n"


def test_hostile_fields_raise_only_validation_errors():
    # Raw-byte fuzzing belongs to cbor's tests; here every decodable shape a hostile
    # sender could put into a field must end in a Reading or a ValidationError.
    pool = [None, True, -1, 0, 2 ** 32, 2 ** 64 - 1, -(2 ** 64), 0.5, float("nan"),
            float("-inf"), b"\x00", "", "%", "mm[Hg]", "hr", "glucose", "x y", [1], {2: 3}]
    labels = [-7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 21, 22, 23,
              "seq", "ucum_", "z_", "z"]
    state = 12345
    accepted = 0
    for _ in range(600):
        pack = cbor.loads(binascii.unhexlify(BATCH_HEX))
        for _ in range(1 + state % 3):
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            record = pack[state % len(pack)]
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            label = labels[state % len(labels)]
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            record[label] = pool[state % len(pool)]
        try:
            readings = senml.decode_pack(cbor.dumps(pack), 256, T0)
        except ValidationError:
            continue
        accepted += 1
        for reading in readings:
            vitals.check_value(reading.quantity, reading.value, reading.unit)
            assert 0 <= reading.seq < 2 ** 32 and reading.time >= 2 ** 28
    assert 0 < accepted < 600  # both the accept and the refuse paths were reached


def test_cbor_errors_are_decode_errors():
    data = binascii.unhexlify(BATCH_HEX)
    for bad in (b"", data[:-1], data + b"\x00", b"\x9f\xff"):
        try:
            senml.decode_pack(bad)
        except DecodeError:
            continue
        raise AssertionError("expected DecodeError for %r" % bad)
