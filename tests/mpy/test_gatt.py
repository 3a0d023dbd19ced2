# GATT codecs on the real MicroPython interpreter: SFLOAT/FLOAT and the encoders the
# firmware's BLE peripheral uses (heart rate, temperature, PLX). Expected bytes are
# written out by hand from the GSS field tables.
from protocol.errors import GattError
from protocol.gatt import characteristics as ch
from protocol.gatt import ieee11073 as ieee

TS = (2023, 7, 14, 9, 26, 53)
TS_BYTES = b"\xe7\x07\x07\x0e\x09\x1a\x35"


def _raises(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except GattError:
        return True
    return False


def _is_nan(x):
    return x != x


def test_sfloat_known_words():
    assert ieee.decode_sfloat(0xF16E) == 36.6
    assert ieee.decode_sfloat(0x0B2E) == -1234.0
    assert ieee.decode_sfloat(0x2002) == 200.0
    assert ieee.decode_sfloat(0xE0C8) == 2.0
    assert ieee.encode_sfloat(36.6, 1) == 0xF16E
    assert ieee.encode_sfloat(98) == 0x0062
    assert ieee.encode_sfloat(2.5) == 0x0003
    assert ieee.encode_sfloat(-2.5) == 0x0FFD
    assert ieee.encode_sfloat(12345) == 0x14D3
    assert ieee.encode_sfloat(2046) == 0x10CD


def test_sfloat_specials():
    names = {0x07FF: "nan", 0x0800: "nres", 0x07FE: "+inf", 0x0802: "-inf", 0x0801: "reserved"}
    for raw, name in names.items():
        assert ieee.sfloat_special(raw) == name
        assert ieee.encode_sfloat(name) == raw
    assert _is_nan(ieee.decode_sfloat(0x07FF))
    assert _is_nan(ieee.decode_sfloat(0x0800))
    assert _is_nan(ieee.decode_sfloat(0x0801))
    assert ieee.decode_sfloat(0x07FE) == float("inf")
    assert ieee.decode_sfloat(0x0802) == -float("inf")
    assert ieee.encode_sfloat(float("nan")) == 0x07FF
    assert ieee.encode_sfloat(float("inf")) == 0x07FE
    assert ieee.encode_sfloat(-float("inf")) == 0x0802
    assert ieee.sfloat_special(0x17FF) is None


def test_sfloat_words_reencode_exactly():
    for raw in range(0, 0x10000, 7):
        if ieee.sfloat_special(raw) is not None:
            continue
        mantissa, exponent = ieee.split_sfloat(raw)
        if abs(mantissa) <= ieee.SFLOAT_MAX_MANTISSA:
            assert ieee.encode_sfloat(ieee.decode_sfloat(raw), -exponent) == raw, raw


def test_float_words():
    assert ieee.decode_float(0xFF00016E) == 36.6
    assert ieee.decode_float(0x00FFFB2E) == -1234.0
    assert ieee.encode_float(36.6, 1) == 0xFF00016E
    assert ieee.encode_float(36.62, 2) == 0xFE000E4E
    names = {
        0x007FFFFF: "nan",
        0x00800000: "nres",
        0x007FFFFE: "+inf",
        0x00800002: "-inf",
        0x00800001: "reserved",
    }
    for raw, name in names.items():
        assert ieee.float_special(raw) == name
        assert ieee.encode_float(name) == raw
    assert ieee.decode_float(0x007FFFFE) == float("inf")


def test_encoders_reject_bad_values():
    assert _raises(ieee.encode_sfloat, 3e10)
    assert _raises(ieee.encode_sfloat, "hot")
    assert _raises(ieee.encode_sfloat, 1.0, 9)
    assert _raises(ch.encode_heart_rate, 72.5)
    assert _raises(ch.encode_heart_rate, 70000)
    assert _raises(ch.encode_temperature, 36.6, 1, False, (2023, 2, 29, 0, 0, 0))
    assert _raises(ch.encode_plx_continuous, 98, 60, 0, (97,))


def test_heart_rate_encoder():
    assert ch.encode_heart_rate(72) == b"\x00\x48"
    assert ch.encode_heart_rate(300) == b"\x01\x2c\x01"
    assert ch.encode_heart_rate(72, hr_uint16=True) == b"\x01\x48\x00"
    assert ch.encode_heart_rate(72, sensor_contact=False) == b"\x04\x48"
    data = ch.encode_heart_rate(72, True, 4660, [0.5, 1.0])
    assert data == b"\x1e\x48\x34\x12\x00\x02\x00\x04"
    decoded = ch.decode_heart_rate(data)
    assert decoded["values"][0]["v"] == 72.0
    assert decoded["sensor_contact"] is True
    assert decoded["energy_expended_kj"] == 4660
    assert decoded["rr_intervals_s"] == [0.5, 1.0]


def test_temperature_encoder():
    assert ch.encode_temperature(36.6, 1) == b"\x00\x6e\x01\x00\xff"
    data = ch.encode_temperature(36.62, 2, False, TS, 6)
    assert data == b"\x06\x4e\x0e\x00\xfe" + TS_BYTES + b"\x06"
    decoded = ch.decode_temperature(data)
    assert decoded["values"][0]["v"] == 36.62
    assert decoded["timestamp"]["minute"] == 26
    assert decoded["temperature_type"]["name"] == "mouth"
    assert ch.encode_temperature("nan") == b"\x00\xff\xff\x7f\x00"


def test_plx_encoders():
    assert ch.encode_plx_continuous(97, 62) == b"\x00\x61\x00\x3e\x00"
    data = ch.encode_plx_continuous(97, 62, device_sensor_status=0x008020, pai=2.1)
    assert data == b"\x18\x61\x00\x3e\x00\x20\x80\x00\xd2\xe0"
    decoded = ch.decode_plx_continuous(data)
    assert decoded["values"][2]["n"] == "pi"
    assert decoded["values"][2]["v"] == 2.1
    assert decoded["device_sensor_status"]["set"] == [
        "low_perfusion_detected",
        "sensor_disconnected",
    ]
    spot = ch.encode_plx_spot_check(98, 61, timestamp=TS, measurement_status=0x0120)
    assert spot == b"\x03\x62\x00\x3d\x00" + TS_BYTES + b"\x20\x01"
    assert ch.decode_plx_spot_check(spot)["measurement_status"]["raw"] == 0x0120
    nan_spot = ch.decode_plx_spot_check(ch.encode_plx_spot_check("nan", "nan"))
    assert nan_spot["values"][0]["special"] == "nan"


def test_decoders_reject_truncation_and_trailing_bytes():
    assert _raises(ch.decode_heart_rate, b"\x01\x48")
    assert _raises(ch.decode_heart_rate, b"\x10\x48\x00\x02\x00")
    assert _raises(ch.decode_temperature, b"\x00\x6e\x01\x00\xff\x00")
    assert _raises(ch.decode_plx_continuous, b"\x01\x61\x00\x3e\x00")
    assert _raises(ch.decode, 0x2A37, "not bytes")
    assert _raises(ch.decode, 0x1234, b"\x00\x48")


def test_every_decoder_runs_on_micropython():
    from protocol.gatt import glucose

    assert ch.decode(0x2A35, ch.encode_blood_pressure(120, 80, 93))["values"][2]["v"] == 93.0
    assert ch.decode(0x2A9D, ch.encode_weight(70.0))["values"][0]["v"] == 70.0
    record = ch.decode(0x2A18, glucose.encode_glucose(5, (2024, 12, 31, 23, 50, 0), 15, 95))
    assert record["values"][0]["v"] == 95.0
    assert record["timestamp"]["year"] == 2025
    assert ch.decode(0x2A52, glucose.encode_racp_report_from(5))["minimum"] == 5
