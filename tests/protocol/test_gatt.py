"""IEEE 11073 floats, special values, Date Time, RACP, hostile input and round trips.

Flag-combination golden vectors live in test_gatt_vectors.py.
"""

import math
import struct
from datetime import datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import GattError
from protocol.gatt import characteristics as ch
from protocol.gatt import fields
from protocol.gatt import glucose as gl
from protocol.gatt import ieee11073 as ieee


def date_bytes(year, month, day, hour, minute, second) -> bytes:
    return struct.pack("<HBBBBB", year, month, day, hour, minute, second)


def same(actual, expected) -> bool:
    """Equality that treats nan as equal to nan and keeps float/int/bool apart."""
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(actual, float) and math.isnan(actual)
    return type(actual) is type(expected) and actual == expected


def exact(mantissa: int, exponent: int) -> float:
    return float(Fraction(mantissa) * Fraction(10) ** exponent)


# --- SFLOAT / FLOAT ---------------------------------------------------------------

SFLOAT_SPECIALS = {
    0x07FF: "nan",
    0x0800: "nres",
    0x07FE: "+inf",
    0x0802: "-inf",
    0x0801: "reserved",
}
FLOAT_SPECIALS = {
    0x007FFFFF: "nan",
    0x00800000: "nres",
    0x007FFFFE: "+inf",
    0x00800002: "-inf",
    0x00800001: "reserved",
}
SPECIAL_FLOATS = {
    "nan": math.nan,
    "nres": math.nan,
    "reserved": math.nan,
    "+inf": math.inf,
    "-inf": -math.inf,
}


def test_sfloat_every_word_decodes_exactly_and_reencodes():
    for raw in range(0x10000):
        mantissa = raw & 0xFFF
        mantissa -= 0x1000 if mantissa & 0x800 else 0
        exponent = raw >> 12
        exponent -= 16 if exponent & 8 else 0
        assert ieee.split_sfloat(raw) == (mantissa, exponent)
        value = ieee.decode_sfloat(raw)
        if raw in SFLOAT_SPECIALS:
            assert ieee.sfloat_special(raw) == SFLOAT_SPECIALS[raw]
            assert same(value, SPECIAL_FLOATS[SFLOAT_SPECIALS[raw]])
            assert ieee.encode_sfloat(SFLOAT_SPECIALS[raw]) == raw
            continue
        assert ieee.sfloat_special(raw) is None
        assert value == exact(mantissa, exponent)
        if abs(mantissa) <= ieee.SFLOAT_MAX_MANTISSA:
            assert ieee.encode_sfloat(value, -exponent) == raw


@pytest.mark.parametrize(
    "raw, value",
    [  # HL7 PHD IG "Mder FLOATs and SFLOATs" examples
        (0x0002, 2.0),
        (0xF014, 2.0),
        (0xE0C8, 2.0),
        (0x1002, 20.0),
        (0x2002, 200.0),
        (0x00C8, 200.0),
        (0x04D2, 1234.0),
        (0x0B2E, -1234.0),
        (0xF16E, 36.6),
    ],
)
def test_sfloat_published_examples(raw, value):
    assert ieee.decode_sfloat(raw) == value


@pytest.mark.parametrize(
    "raw, value",
    [
        (0x00000002, 2.0),
        (0xFF000014, 2.0),
        (0xFE0000C8, 2.0),
        (0x01000002, 20.0),
        (0x02000002, 200.0),
        (0x000004D2, 1234.0),
        (0x00FFFB2E, -1234.0),
        (0xFF00016E, 36.6),
    ],
)
def test_float_published_examples(raw, value):
    assert ieee.decode_float(raw) == value


@pytest.mark.parametrize("raw, name", sorted(FLOAT_SPECIALS.items()))
def test_float_specials(raw, name):
    assert ieee.float_special(raw) == name
    assert same(ieee.decode_float(raw), SPECIAL_FLOATS[name])
    assert ieee.encode_float(name) == raw


def test_specials_only_with_exponent_zero():
    assert ieee.decode_sfloat(0x17FF) == 20470.0
    assert ieee.sfloat_special(0x17FF) is None
    assert ieee.decode_float(0x017FFFFF) == 83886070.0


def test_non_finite_floats_encode_as_specials():
    assert ieee.encode_sfloat(math.nan) == 0x07FF
    assert ieee.encode_sfloat(math.inf) == 0x07FE
    assert ieee.encode_sfloat(-math.inf) == 0x0802
    assert ieee.encode_float(math.nan) == 0x007FFFFF
    assert ieee.encode_float(-math.inf) == 0x00800002


@pytest.mark.parametrize(
    "value, decimals, raw",
    [
        (36.6, 1, 0xF16E),
        (2.5, 0, 0x0003),  # halves round away from zero
        (-2.5, 0, 0x0FFD),
        (12345, 0, 0x14D3),  # 1234.5 -> 1235e1: precision given up only as needed
        (2045, 0, 0x07FD),
        (2046, 0, 0x10CD),  # 2046 would be +INF, so 205e1
        (-2046, 0, 0x1F33),
        (0.001, 3, 0xD001),
        (98, 0, 0x0062),
        (98.0, 1, 0xF3D4),
    ],
)
def test_sfloat_encode_choices(value, decimals, raw):
    assert ieee.encode_sfloat(value, decimals) == raw


@pytest.mark.parametrize(
    "value, decimals",
    [(3e10, 0), (1.0, 9), (1.0, -8), ("nope", 0), (None, 0), (True, 0), (1.0, 1.5), ([1], 0)],
)
def test_sfloat_encode_rejects(value, decimals):
    with pytest.raises(GattError):
        ieee.encode_sfloat(value, decimals)


@pytest.mark.parametrize("raw", [-1, 0x10000, 1.0, "1", None, True])
def test_sfloat_rejects_bad_raw(raw):
    with pytest.raises(GattError):
        ieee.decode_sfloat(raw)


@given(st.integers(0, 0xFFFFFFFF))
def test_float_any_word(raw):
    mantissa, exponent = ieee.split_float(raw)
    value = ieee.decode_float(raw)
    if raw in FLOAT_SPECIALS:
        assert same(value, SPECIAL_FLOATS[FLOAT_SPECIALS[raw]])
        return
    assert value == exact(mantissa, exponent)
    if abs(mantissa) <= ieee.FLOAT_MAX_MANTISSA and -exponent <= 22:
        assert ieee.encode_float(value, -exponent) == raw


@given(st.floats(-1e6, 1e6), st.integers(0, 3))
def test_sfloat_encode_is_nearest_at_chosen_resolution(value, decimals):
    raw = ieee.encode_sfloat(value, decimals)
    mantissa, exponent = ieee.split_sfloat(raw)
    assert exponent >= -decimals
    assert abs(mantissa) <= ieee.SFLOAT_MAX_MANTISSA
    step = Fraction(10) ** exponent
    # The encoder rounds the double product value * 10**decimals, which can sit on the other
    # side of a tie than the exact binary value (0.15 is stored as 0.1499999...): allow the
    # product's own rounding error, at most |value| * 2**-53 (2**-52 for margin).
    tie_slack = abs(Fraction(value)) * Fraction(1, 2**52)
    assert abs(mantissa * step - Fraction(value)) <= step / 2 + tie_slack
    if abs(Fraction(value)) * 10**decimals <= 2045:
        assert exponent == -decimals


@given(st.integers(-(10**12), 10**12), st.integers(-8, 6))
def test_float_encode_ints_exactly(value, decimals):
    raw = ieee.encode_float(value, decimals)
    mantissa, exponent = ieee.split_float(raw)
    step = Fraction(10) ** exponent
    assert abs(mantissa * step - value) <= step / 2


# --- Date Time ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields_",
    [
        (1581, 1, 1, 0, 0, 0),
        (10000, 1, 1, 0, 0, 0),
        (2023, 13, 1, 0, 0, 0),
        (2023, 1, 32, 0, 0, 0),
        (2023, 2, 29, 0, 0, 0),
        (1900, 2, 29, 0, 0, 0),
        (2023, 4, 31, 0, 0, 0),
        (2023, 1, 1, 24, 0, 0),
        (2023, 1, 1, 0, 60, 0),
        (2023, 1, 1, 0, 0, 60),
    ],
)
def test_date_time_out_of_range_is_rejected(fields_):
    with pytest.raises(GattError, match="date_time.timestamp"):
        ch.decode_date_time(date_bytes(*fields_))
    with pytest.raises(GattError):
        ch.encode_date_time(fields_)


@pytest.mark.parametrize(
    "fields_, expected",
    [
        ((2024, 2, 29, 23, 59, 59), (2024, 2, 29, 23, 59, 59)),
        ((2000, 2, 29, 0, 0, 0), (2000, 2, 29, 0, 0, 0)),
        ((0, 2, 29, 12, 0, 0), (None, 2, 29, 12, 0, 0)),  # unknown year: 29 Feb may exist
        ((0, 0, 0, 1, 2, 3), (None, None, None, 1, 2, 3)),
        ((1582, 10, 15, 0, 0, 0), (1582, 10, 15, 0, 0, 0)),
    ],
)
def test_date_time_known_and_unknown_parts(fields_, expected):
    keys = ("year", "month", "day", "hour", "minute", "second")
    decoded = ch.decode_date_time(date_bytes(*fields_))
    assert decoded["timestamp"] == dict(zip(keys, expected, strict=True))
    assert ch.encode_date_time(decoded["timestamp"]) == date_bytes(*fields_)
    assert ch.encode_date_time(fields_ + (3, 60)) == date_bytes(*fields_)  # time.localtime() shape


def test_date_time_wrong_length():
    with pytest.raises(GattError, match="truncated"):
        ch.decode_date_time(date_bytes(2023, 1, 1, 0, 0, 0)[:6])
    with pytest.raises(GattError, match="trailing"):
        ch.decode_date_time(date_bytes(2023, 1, 1, 0, 0, 0) + b"\x00")


@given(
    st.datetimes(min_value=datetime(1583, 1, 1), max_value=datetime(9998, 12, 31)),
    st.integers(-32768, 32767),
)
def test_add_minutes_matches_datetime(when, minutes):
    when = when.replace(microsecond=0)
    keys = ("year", "month", "day", "hour", "minute", "second")
    start = dict(zip(keys, when.timetuple()[:6], strict=True))
    later = when + timedelta(minutes=minutes)
    assert fields.add_minutes(start, minutes) == dict(zip(keys, later.timetuple()[:6], strict=True))


# --- special values inside characteristics ----------------------------------------------


def test_blood_pressure_special_values_in_mmhg_and_kpa():
    specials = struct.pack("<HHH", 0x07FF, 0x0800, 0x07FE)
    for flags, unit in ((0x04, None), (0x05, "kPa")):
        data = bytes([flags]) + specials + struct.pack("<H", 0x0802)
        values = ch.decode_blood_pressure(data)["values"]
        assert [v.get("special") for v in values] == ["nan", "nres", "+inf", "-inf"]
        assert math.isnan(values[0]["v"]) and math.isnan(values[1]["v"])
        assert values[2]["v"] == math.inf and values[3]["v"] == -math.inf
        assert all(v["u"] == "mmHg" for v in values[:3])
        if unit:
            assert values[2]["reported"] == {"v": math.inf, "u": "kPa"}
        reencoded = ch.encode_blood_pressure(
            "nan", "nres", "+inf", kpa=bool(flags & 1), pulse_rate="-inf"
        )
        assert reencoded == data


def test_reserved_special_is_reported_not_rejected():
    data = b"\x00" + struct.pack("<HH", 0x0801, 0x0062)
    decoded = ch.decode_plx_continuous(data)
    assert decoded["values"][0]["special"] == "reserved"
    assert math.isnan(decoded["values"][0]["v"])
    assert ch.encode_plx_continuous("reserved", 98) == data


def test_temperature_float_specials_in_fahrenheit():
    data = b"\x01" + struct.pack("<I", 0x00800000)
    value = ch.decode_temperature(data)["values"][0]
    assert value["special"] == "nres" and value["u"] == "Cel"
    assert math.isnan(value["v"]) and math.isnan(value["reported"]["v"])
    assert ch.encode_temperature("nres", fahrenheit=True) == data


def test_glucose_special_concentration_keeps_unit():
    data = gl.encode_glucose(1, (2024, 1, 1, 8, 0, 0), concentration="+inf", mmol=True)
    glucose = gl.decode_glucose(data)["values"][0]
    assert glucose == {
        "v": math.inf,
        "u": "mmol/L",
        "n": "glucose",
        "special": "+inf",
        "reported": {"v": math.inf, "u": "mol/L"},
    }


def test_fahrenheit_conversion_is_exact_then_rounded_once():
    for mantissa, exponent in ((986, -1), (-400, -1), (212, 0), (10040, -2), (1, 2)):
        data = b"\x01" + struct.pack("<I", ((exponent & 0xFF) << 24) | (mantissa & 0xFFFFFF))
        celsius = (Fraction(mantissa) * Fraction(10) ** exponent - 32) * Fraction(5, 9)
        assert ch.decode_temperature(data)["values"][0]["v"] == float(celsius)


# --- weight specials ------------------------------------------------------------------------


@pytest.mark.parametrize("imperial", [False, True])
def test_weight_unsuccessful(imperial):
    data = bytes([0x06 | imperial]) + b"\xff\xff" + date_bytes(2024, 5, 6, 7, 8, 9) + b"\x01"
    decoded = ch.decode_weight(data)
    weight = decoded["values"][0]
    assert weight["special"] == "unsuccessful" and math.isnan(weight["v"])
    assert decoded["user_id"] == 1 and decoded["timestamp"]["second"] == 9
    assert ch.encode_weight("unsuccessful", imperial, (2024, 5, 6, 7, 8, 9), 1) == data
    with pytest.raises(GattError, match="unsuccessful"):
        ch.decode_weight(bytes([0x08 | imperial]) + b"\xff\xff" + b"\x00" * 4)
    with pytest.raises(GattError):
        ch.encode_weight("unsuccessful", imperial, bmi=20.0, height=1.8)


def test_weight_largest_successful_value():
    assert ch.decode_weight(b"\x00\xfe\xff")["values"][0]["v"] == 65534 * 5 / 1000
    with pytest.raises(GattError):
        ch.encode_weight(65535 / 200)


# --- heart rate edge cases ----------------------------------------------------------------


def test_heart_rate_rr_flag_without_values_or_odd_length():
    with pytest.raises(GattError, match="rr_intervals: flag set but no interval"):
        ch.decode_heart_rate(b"\x10\x48")
    with pytest.raises(GattError, match="rr_intervals: odd length"):
        ch.decode_heart_rate(b"\x10\x48\x00\x04\x00")


def test_heart_rate_uint16_flag_with_small_value_round_trips():
    data = ch.encode_heart_rate(72, hr_uint16=True)
    assert data == b"\x01\x48\x00"
    assert ch.decode_heart_rate(data)["hr_uint16"] is True
    assert ch.encode_heart_rate(256) == b"\x01\x00\x01"


def test_error_reasons_name_the_field():
    cases = [
        (0x2A37, b"\x01\x48", "heart_rate.hr"),
        (0x2A37, b"\x08\x48\x01", "heart_rate.energy_expended"),
        (0x2A1C, b"\x02\x00\x00\x00\x00\xe8\x07", "temperature.timestamp"),
        (0x2A35, b"\x10" + b"\x00" * 6 + b"\x01", "blood_pressure.measurement_status"),
        (0x2A5E, b"\x04" + b"\x00" * 4 + b"\x00\x00", "plx_spot_check.device_sensor_status"),
        (0x2A5F, b"\x02" + b"\x00" * 4 + b"\x00\x00\x00", "plx_continuous.slow.pulse_rate"),
        (0x2A9D, b"\x08\x00\x00\x01\x00", "weight.height"),
        (0x2A18, b"\x00\x01\x00" + date_bytes(2024, 1, 1, 0, 0, 0)[:5], "glucose.base_time"),
        (0x2A18, b"\x02\x01\x00" + date_bytes(2024, 1, 1, 0, 0, 0) + b"\x00\x00", "glucose.type"),
        (0x2A37, b"", "heart_rate.flags"),
    ]
    for uuid, data, field in cases:
        with pytest.raises(GattError, match=field.replace(".", r"\.")):
            ch.decode(uuid, data)


# --- glucose times ---------------------------------------------------------------------------


def test_glucose_timestamp_with_unknown_base_date():
    data = gl.encode_glucose(9, (0, 0, 0, 10, 0, 0), time_offset_min=30)
    decoded = gl.decode_glucose(data)
    assert decoded["timestamp"] is None
    assert decoded["base_time"]["year"] is None
    no_offset = gl.decode_glucose(gl.encode_glucose(9, (0, 0, 0, 10, 0, 0)))
    assert no_offset["timestamp"] == no_offset["base_time"]


def test_glucose_reserved_type_and_location_are_named_reserved():
    data = b"\x02\x01\x00" + date_bytes(2024, 1, 1, 0, 0, 0) + struct.pack("<H", 0xB05F) + b"\x5b"
    decoded = gl.decode_glucose(data)
    assert decoded["sample_type"] == {"code": 11, "name": "reserved"}
    assert decoded["sample_location"] == {"code": 5, "name": "reserved"}
    assert (
        gl.encode_glucose(1, (2024, 1, 1, 0, 0, 0), None, 95, sample_type=11, sample_location=5)
        == data
    )


def test_glucose_concentration_decimals_limit():
    base = (2024, 1, 1, 0, 0, 0)
    finest = gl.decode_glucose(gl.encode_glucose(1, base, None, 2.045, decimals=3))
    assert finest["values"][0]["v"] == 2.045
    assert finest["values"][0]["reported"]["v"] == 2.045e-5
    assert (
        gl.decode_glucose(gl.encode_glucose(1, base, None, 0.02045, True, 5))["values"][0]["v"]
        == 0.02045
    )
    for mmol, decimals in ((False, 4), (True, 6)):
        with pytest.raises(GattError, match="glucose.concentration"):
            gl.encode_glucose(1, base, None, 95.1, mmol, decimals)


# --- RACP -----------------------------------------------------------------------------------


def test_racp_request_encoders():
    assert gl.encode_racp_report_all() == b"\x01\x01"
    assert gl.encode_racp_report_from(0x1234) == b"\x01\x03\x01\x34\x12"
    assert gl.encode_racp_number_of_records() == b"\x04\x01"
    assert gl.encode_racp_number_of_records(5) == b"\x04\x03\x01\x05\x00"
    assert gl.encode_racp_abort() == b"\x03\x00"
    assert gl.encode_racp_number_of_records_response(300) == b"\x05\x00\x2c\x01"
    assert gl.encode_racp_response_code(1, 6) == b"\x06\x00\x01\x06"
    start, end = (2024, 1, 1, 0, 0, 0), (2024, 1, 2, 0, 0, 0)
    assert gl.encode_racp_request(2, 4, 2, start, end) == b"\x02\x04\x02" + date_bytes(
        *start
    ) + date_bytes(*end)


def test_racp_responses_decode():
    count = gl.decode_racp(b"\x05\x00\x2c\x01")
    assert (count["kind"], count["number_of_records"]) == ("response", 300)
    assert gl.decode_racp(b"\x05\x00\x01\x00\x01\x00")["number_of_records"] == 0x00010001
    reply = gl.decode_racp(b"\x06\x00\x04\x06")
    assert reply["request_op_name"] == "report_number_of_stored_records"
    assert (reply["response_code"], reply["response_name"]) == (6, "no_records_found")
    assert gl.decode_racp(b"\x06\x00\x01\x0b")["response_name"] == "reserved"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x05\x01\x2c\x01",
        b"\x05\x00\x2c",
        b"\x05\x00",
        b"\x06\x00\x01",
        b"\x06\x00\x01\x01\x00",
        b"\x06",
    ],
)
def test_racp_malformed_responses_raise(data):
    with pytest.raises(GattError):
        gl.decode_racp(data)


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"\x01\x01", None),
        (b"\x01\x05", None),
        (b"\x02\x06", None),
        (b"\x03\x00", None),
        (b"\x04\x01", None),
        (b"\x01", gl.RESPONSE_INVALID_OPERATOR),
        (b"\x01\x00", gl.RESPONSE_INVALID_OPERATOR),
        (b"\x01\x07", gl.RESPONSE_OPERATOR_NOT_SUPPORTED),
        (b"\x01\x01\x00", gl.RESPONSE_INVALID_OPERAND),
        (b"\x01\x03", gl.RESPONSE_INVALID_OPERAND),
        (b"\x01\x03\x03\x00\x00", gl.RESPONSE_OPERAND_NOT_SUPPORTED),
        (b"\x01\x03\x01\x05", gl.RESPONSE_INVALID_OPERAND),
        (b"\x01\x04\x01\x05\x00\x03\x00", gl.RESPONSE_INVALID_OPERAND),
        (b"\x01\x02\x02" + date_bytes(2023, 2, 29, 0, 0, 0), gl.RESPONSE_INVALID_OPERAND),
        (b"\x03\x01", gl.RESPONSE_INVALID_OPERATOR),
        (b"\x03\x00\x00", gl.RESPONSE_INVALID_OPERAND),
        (b"\x07\x01", gl.RESPONSE_OP_CODE_NOT_SUPPORTED),
        (b"\x00", gl.RESPONSE_OP_CODE_NOT_SUPPORTED),
        (b"\xff\x01\x02\x03", gl.RESPONSE_OP_CODE_NOT_SUPPORTED),
    ],
)
def test_racp_request_problems(data, problem):
    request = gl.decode_racp(data)
    assert request["kind"] == "request"
    assert request["problem"] == problem
    assert request["op_code"] == data[0]


def test_racp_request_filters():
    within = gl.decode_racp(b"\x01\x04\x01\x03\x00\x05\x00")
    assert (within["filter_name"], within["minimum"], within["maximum"]) == (
        "sequence_number",
        3,
        5,
    )
    upto = gl.decode_racp(b"\x02\x02\x02" + date_bytes(2024, 6, 1, 12, 0, 0))
    assert upto["minimum"] is None and upto["maximum"]["month"] == 6
    start = gl.decode_racp(gl.encode_racp_report_from(7))
    assert (start["minimum"], start["maximum"], start["problem"]) == (7, None, None)


@pytest.mark.parametrize(
    "args",
    [
        (1, 1, 1, 5),
        (1, 3, None, 5),
        (1, 3, 9, 5),
        (1, 3, 1, None),
        (1, 4, 1, 1, None),
        (256, 1),
        (1, -1),
    ],
)
def test_racp_request_encoder_rejects(args):
    with pytest.raises(GattError):
        gl.encode_racp_request(*args)


# --- registry and hostile input ----------------------------------------------------------


def test_registry():
    assert set(ch.DECODERS) == {
        0x2A37,
        0x2A1C,
        0x2A35,
        0x2A5E,
        0x2A5F,
        0x2A18,
        0x2A52,
        0x2A9D,
        0x2A08,
    }
    for uuid in (0x2A00, "2A37", None, True):
        with pytest.raises(GattError, match="no decoder"):
            ch.decode(uuid, b"\x00\x00")


@pytest.mark.parametrize("data", ["\x00\x48", None, 5, [0, 72], b"\x00\x48".decode()])
def test_non_bytes_input_raises_gatt_error(data):
    for uuid in ch.DECODERS:
        with pytest.raises(GattError):
            ch.decode(uuid, data)


def test_bytes_like_inputs_are_accepted():
    for data in (b"\x00\x48", bytearray(b"\x00\x48"), memoryview(b"\x00\x48")):
        assert ch.decode(0x2A37, data)["values"][0]["v"] == 72.0


@given(st.sampled_from(sorted(ch.DECODERS)), st.binary(max_size=48))
def test_random_bytes_raise_only_gatt_error(uuid, data):
    try:
        result = ch.decode(uuid, data)
    except GattError:
        return
    assert isinstance(result, dict)


@given(st.sampled_from(sorted(ch.DECODERS)), st.integers(0, 255), st.binary(max_size=48))
def test_random_payload_behind_each_flags_byte(uuid, flags, body):
    # A valid flags byte steers into deep field paths that random bytes rarely reach.
    try:
        ch.decode(uuid, bytes([flags]) + body)
    except GattError:
        pass


def test_encoders_reject_bad_arguments_with_gatt_error():
    bad_calls = [
        lambda: ch.encode_heart_rate(72.5),
        lambda: ch.encode_heart_rate(-1),
        lambda: ch.encode_heart_rate(70000),
        lambda: ch.encode_heart_rate(72, sensor_contact="yes"),
        lambda: ch.encode_heart_rate(72, rr_intervals_s=0.8),
        lambda: ch.encode_heart_rate(72, rr_intervals_s=[64.0]),
        lambda: ch.encode_heart_rate(72, rr_intervals_s=[math.nan]),
        lambda: ch.encode_heart_rate(72, energy_expended_kj=65536),
        lambda: ch.encode_temperature(36.6, timestamp=(2023, 2, 29, 0, 0, 0)),
        lambda: ch.encode_temperature(36.6, timestamp={"year": 2023}),
        lambda: ch.encode_temperature(36.6, timestamp="now"),
        lambda: ch.encode_temperature(36.6, temperature_type=256),
        lambda: ch.encode_temperature(36.6, fahrenheit=1),
        lambda: ch.encode_blood_pressure(120, 80, 93, user_id=256),
        lambda: ch.encode_blood_pressure(120, 80, "high"),
        lambda: ch.encode_plx_continuous(98, 60, fast=(97,)),
        lambda: ch.encode_plx_spot_check(98, 60, device_sensor_status=1 << 24),
        lambda: ch.encode_weight(70.0, bmi=22.0),
        lambda: ch.encode_weight(-1.0),
        lambda: ch.encode_weight(math.inf),
        lambda: ch.encode_weight(70.0, bmi=22.0, height="tall"),
        lambda: gl.encode_glucose(1, (2024, 1, 1, 0, 0, 0), time_offset_min=40000),
        lambda: gl.encode_glucose(1, (2024, 1, 1, 0, 0, 0), None, 95, sample_type=16),
        lambda: gl.encode_glucose(70000, (2024, 1, 1, 0, 0, 0)),
        lambda: gl.encode_glucose(1, (2024, 1, 1, 0, 0, 0), mmol="yes"),
    ]
    for call in bad_calls:
        with pytest.raises(GattError):
            call()


# --- round trips encode -> decode ------------------------------------------------------------

dates = st.datetimes(min_value=datetime(1582, 10, 15), max_value=datetime(9999, 12, 31)).map(
    lambda d: d.timetuple()[:6]
)
maybe_dates = st.none() | dates
sfloat_mantissas = st.integers(-2045, 2045)
specials = st.sampled_from(ieee.SPECIALS)


def as_date(t):
    return (
        None
        if t is None
        else dict(zip(("year", "month", "day", "hour", "minute", "second"), t, strict=True))
    )


@given(
    st.integers(0, 0xFFFF),
    st.none() | st.booleans(),
    st.none() | st.integers(0, 0xFFFF),
    st.lists(st.integers(0, 0xFFFF), max_size=9),
    st.booleans(),
)
def test_heart_rate_round_trip(hr, contact, energy, ticks, wide):
    seconds = [t / 1024 for t in ticks]
    decoded = ch.decode_heart_rate(ch.encode_heart_rate(hr, contact, energy, seconds, wide))
    assert decoded["values"] == [{"n": "hr", "v": float(hr), "u": "beat/min"}]
    assert decoded["hr_uint16"] == (wide or hr > 255)
    assert (decoded["sensor_contact"], decoded["energy_expended_kj"]) == (contact, energy)
    assert decoded["rr_intervals_s"] == seconds


@given(
    st.integers(-8388605, 8388605),
    st.integers(0, 4),
    st.booleans(),
    maybe_dates,
    st.none() | st.integers(0, 255),
)
def test_temperature_round_trip(mantissa, decimals, fahrenheit, stamp, kind):
    value = mantissa / 10**decimals
    decoded = ch.decode_temperature(ch.encode_temperature(value, decimals, fahrenheit, stamp, kind))
    reported = decoded["values"][0]["reported"]["v"] if fahrenheit else decoded["values"][0]["v"]
    assert reported == exact(mantissa, -decimals)
    if fahrenheit:
        assert decoded["values"][0]["v"] == float(
            (Fraction(mantissa, 10**decimals) - 32) * Fraction(5, 9)
        )
    assert decoded["timestamp"] == as_date(stamp)
    assert (decoded["temperature_type"] or {}).get("code") == kind


@given(
    st.lists(sfloat_mantissas | specials, min_size=4, max_size=4),
    st.integers(0, 2),
    st.booleans(),
    maybe_dates,
    st.booleans(),
    st.none() | st.integers(0, 255),
    st.none() | st.integers(0, 0xFFFF),
)
def test_blood_pressure_round_trip(numbers, decimals, kpa, stamp, with_pulse, user, status):
    args = [n if isinstance(n, str) else n / 10**decimals for n in numbers]
    pulse = args[3] if with_pulse else None
    data = ch.encode_blood_pressure(*args[:3], kpa, decimals, stamp, pulse, decimals, user, status)
    decoded = ch.decode_blood_pressure(data)
    assert len(decoded["values"]) == (4 if with_pulse else 3)
    for given_value, got in zip(numbers, decoded["values"], strict=False):
        wire = got["reported"] if kpa and got["n"] != "pr" else got
        if isinstance(given_value, str):
            assert got["special"] == given_value
            assert same(wire["v"], ieee.SPECIAL_VALUES[given_value])
        else:
            assert wire["v"] == exact(given_value, -decimals)
    assert (decoded["kpa"], decoded["timestamp"], decoded["user_id"]) == (kpa, as_date(stamp), user)
    assert (decoded["measurement_status"] or {}).get("raw") == status


@given(
    st.lists(sfloat_mantissas, min_size=7, max_size=7),
    st.booleans(),
    st.booleans(),
    st.none() | st.integers(0, 0xFFFF),
    st.none() | st.integers(0, 0xFFFFFF),
    st.booleans(),
)
def test_plx_continuous_round_trip(numbers, with_fast, with_slow, status, device, with_pai):
    fast = (numbers[2], numbers[3]) if with_fast else None
    slow = (numbers[4], numbers[5]) if with_slow else None
    pai = numbers[6] / 100 if with_pai else None
    decoded = ch.decode_plx_continuous(
        ch.encode_plx_continuous(numbers[0], numbers[1], 0, fast, slow, status, device, pai, 2)
    )
    got = [v["v"] for v in decoded["values"]]
    assert got == [float(numbers[0]), float(numbers[1])] + (
        [exact(numbers[6], -2)] if with_pai else []
    )
    for pair, key in ((fast, "fast"), (slow, "slow")):
        if pair is None:
            assert decoded[key] is None
        else:
            assert (decoded[key]["spo2"]["v"], decoded[key]["pr"]["v"]) == (
                float(pair[0]),
                float(pair[1]),
            )
    assert (decoded["measurement_status"] or {}).get("raw") == status
    assert (decoded["device_sensor_status"] or {}).get("raw") == device


@given(
    sfloat_mantissas,
    sfloat_mantissas,
    maybe_dates,
    st.none() | st.integers(0, 0xFFFF),
    st.none() | st.integers(0, 0xFFFFFF),
    st.none() | sfloat_mantissas,
    st.booleans(),
)
def test_plx_spot_check_round_trip(spo2, pr, stamp, status, device, pai, clock):
    pai_value = None if pai is None else pai / 10
    data = ch.encode_plx_spot_check(spo2, pr, 0, stamp, status, device, pai_value, 1, clock)
    decoded = ch.decode_plx_spot_check(data)
    got = [v["v"] for v in decoded["values"]]
    assert got == [float(spo2), float(pr)] + ([] if pai is None else [exact(pai, -1)])
    assert (decoded["timestamp"], decoded["device_clock_not_set"]) == (as_date(stamp), clock)
    assert (decoded["measurement_status"] or {}).get("raw") == status
    assert (decoded["device_sensor_status"] or {}).get("raw") == device


@given(
    st.integers(0, 0xFFFE),
    st.booleans(),
    maybe_dates,
    st.none() | st.integers(0, 255),
    st.none() | st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
)
def test_weight_round_trip(raw, imperial, stamp, user, bmi_height):
    steps = 100 if imperial else 200
    bmi = height = None
    if bmi_height is not None:
        bmi = bmi_height[0] / 10
        height = bmi_height[1] / (10 if imperial else 1000)
    decoded = ch.decode_weight(ch.encode_weight(raw / steps, imperial, stamp, user, bmi, height))
    weight = decoded["values"][0]
    if imperial:
        assert weight["reported"]["v"] == raw / 100
        assert weight["v"] == float(Fraction(raw, 100) * Fraction("0.45359237"))
    else:
        assert weight["v"] == float(Fraction(raw, 200))
    assert (decoded["timestamp"], decoded["user_id"]) == (as_date(stamp), user)
    if bmi_height is None:
        assert decoded["bmi"] is None and decoded["height"] is None
    else:
        assert decoded["bmi"] == bmi
        wire_height = decoded["height"]["reported"]["v"] if imperial else decoded["height"]["v"]
        assert wire_height == height


@given(
    st.integers(0, 0xFFFF),
    dates,
    st.none() | st.integers(-32768, 32767),
    st.none() | sfloat_mantissas | specials,
    st.booleans(),
    st.integers(0, 5),
    st.integers(0, 15),
    st.integers(0, 15),
    st.none() | st.integers(0, 0xFFFF),
    st.booleans(),
)
def test_glucose_round_trip(seq, base, offset, mantissa, mmol, decimals, kind, where, status, ctx):
    if not mmol:
        decimals = min(decimals, 3)
    value = mantissa if mantissa is None or isinstance(mantissa, str) else mantissa / 10**decimals
    data = gl.encode_glucose(seq, base, offset, value, mmol, decimals, kind, where, status, ctx)
    decoded = gl.decode_glucose(data)
    assert (decoded["sequence_number"], decoded["base_time"]) == (seq, as_date(base))
    assert decoded["time_offset_min"] == offset
    if mantissa is None:
        assert decoded["values"] == [] and decoded["sample_type"] is None
    else:
        got = decoded["values"][0]
        assert got["u"] == ("mmol/L" if mmol else "mg/dL")
        if isinstance(mantissa, str):
            assert got["special"] == mantissa
        else:
            assert got["v"] == exact(mantissa, -decimals)
            shift = 3 if mmol else 5
            assert got["reported"]["v"] == exact(mantissa, -decimals - shift)
        assert (decoded["sample_type"]["code"], decoded["sample_location"]["code"]) == (kind, where)
    assert (decoded["sensor_status"] or {}).get("raw") == status
    assert decoded["context_follows"] == ctx
