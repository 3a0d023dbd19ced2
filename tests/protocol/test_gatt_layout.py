"""The field-table interpreter behind the flag-driven GATT decoders (protocol/gatt/fields.py).

The golden vectors (test_gatt_vectors.py) prove the values; these tests pin what the tables
add on their own: the decoded dict's key order (the technician CLI prints it as JSON), None
for every absent field, and the interpreter's row semantics.
"""

import pytest

from protocol.errors import GattError
from protocol.gatt import characteristics as ch
from protocol.gatt import glucose as gl
from protocol.gatt.fields import ALWAYS, FLAG, FlaggedLayout, uint_field

HEAD = ["characteristic", "uuid", "flags", "rfu_flags", "values"]
KEY_ORDER = {
    ch.HEART_RATE_MEASUREMENT: [
        "hr_uint16",
        "sensor_contact",
        "energy_expended_kj",
        "rr_intervals_s",
    ],
    ch.TEMPERATURE_MEASUREMENT: ["fahrenheit", "timestamp", "temperature_type"],
    ch.BLOOD_PRESSURE_MEASUREMENT: ["kpa", "timestamp", "user_id", "measurement_status"],
    ch.PLX_SPOT_CHECK_MEASUREMENT: [
        "timestamp",
        "device_clock_not_set",
        "measurement_status",
        "device_sensor_status",
    ],
    ch.PLX_CONTINUOUS_MEASUREMENT: ["fast", "slow", "measurement_status", "device_sensor_status"],
    ch.WEIGHT_MEASUREMENT: ["imperial", "timestamp", "user_id", "bmi", "height"],
    ch.GLUCOSE_MEASUREMENT: [
        "sequence_number",
        "base_time",
        "time_offset_min",
        "timestamp",
        "concentration_unit",
        "sample_type",
        "sample_location",
        "sensor_status",
        "context_follows",
    ],
}
TS = (2023, 7, 14, 9, 26, 53)
MINIMAL = {  # every optional field absent
    ch.HEART_RATE_MEASUREMENT: ch.encode_heart_rate(70),
    ch.TEMPERATURE_MEASUREMENT: ch.encode_temperature(36.6),
    ch.BLOOD_PRESSURE_MEASUREMENT: ch.encode_blood_pressure(120, 80, 93),
    ch.PLX_SPOT_CHECK_MEASUREMENT: ch.encode_plx_spot_check(97, 70),
    ch.PLX_CONTINUOUS_MEASUREMENT: ch.encode_plx_continuous(97, 70),
    ch.WEIGHT_MEASUREMENT: ch.encode_weight(70),
    ch.GLUCOSE_MEASUREMENT: gl.encode_glucose(1, TS),
}
FULL = {  # every optional field present
    ch.HEART_RATE_MEASUREMENT: ch.encode_heart_rate(300, True, 5, [0.5]),
    ch.TEMPERATURE_MEASUREMENT: ch.encode_temperature(98.6, 1, True, TS, 2),
    ch.BLOOD_PRESSURE_MEASUREMENT: ch.encode_blood_pressure(
        16, 10.6, 12.4, True, 1, TS, 70, 0, 1, 0x1F
    ),
    ch.PLX_SPOT_CHECK_MEASUREMENT: ch.encode_plx_spot_check(97, 70, 0, TS, 1, 2, 1.5, 2, True),
    ch.PLX_CONTINUOUS_MEASUREMENT: ch.encode_plx_continuous(
        97, 70, 0, (96, 71), (98, 69), 1, 2, 1.5
    ),
    ch.WEIGHT_MEASUREMENT: ch.encode_weight(160.2, True, TS, 3, 22.1, 70.5),
    ch.GLUCOSE_MEASUREMENT: gl.encode_glucose(2, TS, -30, 5.4, True, 1, 1, 1, 7, True),
}


@pytest.mark.parametrize("uuid", sorted(KEY_ORDER))
def test_key_order_is_fixed_whatever_the_flags(uuid: int) -> None:
    for value in (MINIMAL[uuid], FULL[uuid]):
        assert list(ch.decode(uuid, value)) == HEAD + KEY_ORDER[uuid]


@pytest.mark.parametrize("uuid", sorted(KEY_ORDER))
def test_absent_fields_decode_as_none_and_present_ones_do_not(uuid: int) -> None:
    minimal, full = ch.decode(uuid, MINIMAL[uuid]), ch.decode(uuid, FULL[uuid])
    flag_keys = {
        "hr_uint16",
        "sensor_contact",
        "fahrenheit",
        "kpa",
        "device_clock_not_set",
        "imperial",
        "context_follows",
        "rr_intervals_s",
        "timestamp",
        "sequence_number",
        "base_time",
    }
    for key in KEY_ORDER[uuid]:
        assert full[key] is not None and full[key] != [], key
        if key not in flag_keys:
            assert minimal[key] is None, key
    assert full["flags"] != 0 and full["rfu_flags"] == 0


def test_decodes_do_not_share_state() -> None:
    first = ch.decode_heart_rate(ch.encode_heart_rate(70, rr_intervals_s=[0.5]))
    first["values"].append("mutated")
    first["rr_intervals_s"].append(9)
    again = ch.decode_heart_rate(ch.encode_heart_rate(70))
    assert len(again["values"]) == 1 and again["rr_intervals_s"] == []


def _pair(reader, flags, result):
    return reader.u8("a"), reader.u8("b")


LAYOUT = FlaggedLayout(
    "demo",
    0x1234,
    0xF0,
    (
        (ALWAYS, "first", uint_field(2, "first")),
        (0x01, "flag", FLAG),
        (0x02, ("a", "b"), _pair),
        (0x04, "last", uint_field(1, "last")),
    ),
)


def test_interpreter_reads_present_rows_in_order_and_names_fields_in_errors() -> None:
    assert LAYOUT.decode(b"\x07\x01\x02\x03\x04\x05") == {
        "characteristic": "demo",
        "uuid": 0x1234,
        "flags": 7,
        "rfu_flags": 0,
        "values": [],
        "first": 0x0201,
        "flag": True,
        "a": 3,
        "b": 4,
        "last": 5,
    }
    assert LAYOUT.decode(b"\x04\x01\x02\x05") == {
        "characteristic": "demo",
        "uuid": 0x1234,
        "flags": 4,
        "rfu_flags": 0,
        "values": [],
        "first": 0x0201,
        "flag": False,
        "a": None,
        "b": None,
        "last": 5,
    }
    with pytest.raises(GattError, match=r"^demo\.b: truncated"):
        LAYOUT.decode(b"\x02\x01\x02\x03")
    with pytest.raises(GattError, match="1 trailing bytes"):
        LAYOUT.decode(b"\x00\x01\x02\x03")
    assert LAYOUT.decode(b"\x10\x01\x02\x03")["rfu_flags"] == 0x10  # RFU: rest ignored
