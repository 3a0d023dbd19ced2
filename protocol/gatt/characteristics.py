"""Codecs for the Bluetooth SIG health measurement characteristics.

Decoders (edge agent, any commercial device) and encoders (our firmware's BLE
peripheral: heart rate, temperature, PLX; the simulator's virtual devices: the rest).
Field layouts follow the GATT Specification Supplement (GSS) and the service specs
HRS, HTS, BLS, PLXS, WSS; glucose and the Record Access Control Point live in
`protocol.gatt.glucose`. Output shape, units and strictness rules: docs/gatt.md.

Every decoder takes bytes and returns a dict:
  {"characteristic": name, "uuid": 0x2Axx, "flags": raw flags, "rfu_flags": set RFU bits,
   "values": [{"n": quantity, "v": float, "u": unit, ["special"], ["reported"]}, ...],
   ...characteristic-specific keys}
and raises only GattError (reason names the field). Runs on MicroPython.
"""

from protocol.errors import GattError
from protocol.gatt import ieee11073
from protocol.gatt.fields import (
    ALWAYS,
    FLAG,
    FlaggedLayout,
    Reader,
    Writer,
    bit,
    bitfield,
    bits_field,
    code_field,
    date_time_field,
    entry,
    pack_date_time,
    pack_float,
    pack_sfloat,
    pack_uint,
    quantize,
    read_date_time,
    sfloat_entry,
    uint_field,
)

GLUCOSE_MEASUREMENT = 0x2A18
TEMPERATURE_MEASUREMENT = 0x2A1C
DATE_TIME = 0x2A08
BLOOD_PRESSURE_MEASUREMENT = 0x2A35
HEART_RATE_MEASUREMENT = 0x2A37
RECORD_ACCESS_CONTROL_POINT = 0x2A52
PLX_SPOT_CHECK_MEASUREMENT = 0x2A5E
PLX_CONTINUOUS_MEASUREMENT = 0x2A5F
WEIGHT_MEASUREMENT = 0x2A9D

BEAT_PER_MIN = "beat/min"
UNKNOWN_USER = 255  # User ID value meaning "unknown user" (BLS, WSS)


def _check_flag(value, field):
    if not isinstance(value, bool):
        raise GattError("%s: expected True or False, got %r" % (field, value))
    return value


# --- Heart Rate Measurement 0x2A37 (HRS 1.0, GSS) -------------------------------

_HR_UINT16 = 0x01
_HR_CONTACT_DETECTED = 0x02
_HR_CONTACT_SUPPORTED = 0x04
_HR_ENERGY = 0x08
_HR_RR = 0x10
_HR_RFU = 0xE0
RR_TICKS_PER_SECOND = 1024


def _read_hr(reader, flags, result):
    hr = reader.uint(2 if flags & _HR_UINT16 else 1, "hr")
    result["values"].append({"n": "hr", "v": float(hr), "u": BEAT_PER_MIN})


def _sensor_contact(reader, flags, result):
    # Bits 1-2: 0b0x = feature not supported, 0b10 = no contact, 0b11 = contact.
    return bool(flags & _HR_CONTACT_DETECTED) if flags & _HR_CONTACT_SUPPORTED else None


def _read_rr_intervals(reader, flags, result):
    # Always called: an absent RR-Interval field decodes as [] (not None).
    rr_intervals = []
    if flags & _HR_RR:
        left = reader.remaining()
        if left == 0:
            raise reader.error("rr_intervals", "flag set but no interval present")
        if left % 2:
            raise reader.error("rr_intervals", "odd length %d (uint16 values)" % left)
        for _ in range(left // 2):
            rr_intervals.append(reader.u16("rr_intervals") / RR_TICKS_PER_SECOND)
    return rr_intervals


# GSS "Heart Rate Measurement" field table, after Flags (rows: fields.read_fields).
_HEART_RATE = FlaggedLayout(
    "heart_rate",
    HEART_RATE_MEASUREMENT,
    _HR_RFU,
    (
        (ALWAYS, None, _read_hr),  # Heart Rate Measurement Value, uint8 or uint16 (bit 0)
        (_HR_UINT16, "hr_uint16", FLAG),
        (ALWAYS, "sensor_contact", _sensor_contact),  # bits 1-2, no bytes
        (_HR_ENERGY, "energy_expended_kj", uint_field(2, "energy_expended")),  # Energy Expended
        (ALWAYS, "rr_intervals_s", _read_rr_intervals),  # RR-Interval, bit 4: the rest, uint16s
    ),
)


def decode_heart_rate(data) -> dict:
    """Heart rate (beat/min), sensor contact, energy expended (kJ), RR-intervals (s)."""
    return _HEART_RATE.decode(data)


def encode_heart_rate(
    hr: int,
    sensor_contact=None,
    energy_expended_kj=None,
    rr_intervals_s=None,
    hr_uint16: bool = False,
) -> bytes:
    """Heart Rate Measurement value.

    hr: int beat/min (uint16 format chosen automatically above 255, or by hr_uint16);
    sensor_contact: None = feature not supported, True/False = contact detected or not;
    energy_expended_kj: None or uint16; rr_intervals_s: None/[] or seconds, oldest first,
    sent in 1/1024 s units. The caller keeps the value within the ATT MTU.
    """
    if rr_intervals_s is not None and not isinstance(rr_intervals_s, (list, tuple)):
        raise GattError("heart_rate.rr_intervals_s: expected a list, got %r" % (rr_intervals_s,))
    wide = _check_flag(hr_uint16, "heart_rate.hr_uint16") or (
        isinstance(hr, int) and not isinstance(hr, bool) and hr > 0xFF
    )
    flags = bit(0, _HR_UINT16, wide)
    if sensor_contact is not None:
        flags |= _HR_CONTACT_SUPPORTED
        flags = bit(
            flags, _HR_CONTACT_DETECTED, _check_flag(sensor_contact, "heart_rate.sensor_contact")
        )
    writer = Writer("heart_rate", bit(flags, _HR_RR, bool(rr_intervals_s)))
    writer.field("hr", hr, pack_uint, 2 if wide else 1)
    writer.optional(_HR_ENERGY, "energy_expended_kj", energy_expended_kj, pack_uint, 2)
    for seconds in rr_intervals_s or ():
        ticks = quantize(seconds, RR_TICKS_PER_SECOND, "heart_rate.rr_intervals_s")
        writer.field("rr_intervals_s", ticks, pack_uint, 2)
    return writer.value()


# --- Temperature Measurement 0x2A1C (HTS 1.0, GSS) ------------------------------

_T_FAHRENHEIT = 0x01
_T_TIMESTAMP = 0x02
_T_TYPE = 0x04
_T_RFU = 0xF8

TEMPERATURE_TYPES = {
    1: "armpit",
    2: "body",
    3: "ear",
    4: "finger",
    5: "gastrointestinal_tract",
    6: "mouth",
    7: "rectum",
    8: "toe",
    9: "tympanum",
}


def fahrenheit_to_celsius(mantissa: int, exponent: int) -> float:
    """(F - 32) * 5 / 9 for F = mantissa * 10**exponent, rounded once."""
    # F = numerator / scale exactly; C = (numerator - 32 * scale) * 5 / (9 * scale).
    if exponent >= 0:
        numerator, scale = mantissa * 10**exponent, 1
    else:
        numerator, scale = mantissa, 10 ** (-exponent)
    return ieee11073.decimal_to_float(numerator - 32 * scale, 0, 5, 9 * scale)


def _read_temperature(reader, flags, result):
    raw = reader.uint(4, "temperature")
    if flags & _T_FAHRENHEIT:
        value = entry("temp", "Cel", raw, True, fahrenheit_to_celsius, "[degF]")
    else:
        value = entry("temp", "Cel", raw, True)
    result["values"].append(value)


# GSS "Temperature Measurement" field table, after Flags (rows: fields.read_fields).
_TEMPERATURE = FlaggedLayout(
    "temperature",
    TEMPERATURE_MEASUREMENT,
    _T_RFU,
    (
        (ALWAYS, None, _read_temperature),  # Temperature Measurement Value, FLOAT, Cel or degF
        (_T_FAHRENHEIT, "fahrenheit", FLAG),
        (_T_TIMESTAMP, "timestamp", date_time_field("timestamp")),  # Time Stamp
        (_T_TYPE, "temperature_type", code_field("temperature_type", TEMPERATURE_TYPES)),
    ),
)


def decode_temperature(data) -> dict:
    """Body temperature (always Cel; Fahrenheit converted), timestamp, temperature type."""
    return _TEMPERATURE.decode(data)


def encode_temperature(
    value,
    decimals: int = 2,
    fahrenheit: bool = False,
    timestamp=None,
    temperature_type=None,
) -> bytes:
    """Temperature Measurement value.

    value: number in Cel (or [degF] if fahrenheit) or an 11073 special name, sent as a
    FLOAT with `decimals` decimals; timestamp: Date Time dict or (y, m, d, h, min, s);
    temperature_type: None or the uint8 code (TEMPERATURE_TYPES).
    """
    writer = Writer(
        "temperature", bit(0, _T_FAHRENHEIT, _check_flag(fahrenheit, "temperature.fahrenheit"))
    )
    writer.field("value", value, pack_float, decimals)
    writer.optional(_T_TIMESTAMP, "timestamp", timestamp, pack_date_time)
    writer.optional(_T_TYPE, "temperature_type", temperature_type, pack_uint, 1)
    return writer.value()


# --- Blood Pressure Measurement 0x2A35 (BLS 1.0, GSS) ---------------------------

_BP_KPA = 0x01
_BP_TIMESTAMP = 0x02
_BP_PULSE_RATE = 0x04
_BP_USER_ID = 0x08
_BP_STATUS = 0x10
_BP_RFU = 0xE0

BP_STATUS_BITS = (
    "body_movement",
    "cuff_too_loose",
    "irregular_pulse",
    None,  # bits 3-4: pulse rate range, reported separately
    None,
    "improper_position",
)
PULSE_RATE_RANGES = ("within_range", "above_upper_limit", "below_lower_limit", "reserved")


def kpa_to_mmhg(mantissa: int, exponent: int) -> float:
    """kPa -> mmHg with 1 mmHg = 133.322387415 Pa (exact conventional value)."""
    return ieee11073.decimal_to_float(mantissa, exponent + 12, 1, 133322387415)


def _read_pressures(reader, flags, result):
    # Systolic, Diastolic, Mean Arterial Pressure: SFLOAT each, mmHg or kPa (bit 0).
    for name in ("sys", "dia", "map"):
        raw = reader.u16(name)
        if flags & _BP_KPA:
            result["values"].append(entry(name, "mmHg", raw, False, kpa_to_mmhg, "kPa"))
        else:
            result["values"].append(entry(name, "mmHg", raw))


def _read_bp_status(reader, flags, result):
    raw_status = reader.u16("measurement_status")
    status = bitfield(raw_status, BP_STATUS_BITS)
    status["pulse_rate_range"] = PULSE_RATE_RANGES[(raw_status >> 3) & 3]
    return status


# GSS "Blood Pressure Measurement" field table, after Flags (rows: fields.read_fields).
_BLOOD_PRESSURE = FlaggedLayout(
    "blood_pressure",
    BLOOD_PRESSURE_MEASUREMENT,
    _BP_RFU,
    (
        (ALWAYS, None, _read_pressures),  # Systolic, Diastolic, MAP
        (_BP_KPA, "kpa", FLAG),
        (_BP_TIMESTAMP, "timestamp", date_time_field("timestamp")),  # Time Stamp
        (_BP_PULSE_RATE, None, sfloat_entry("pulse_rate", "pr", BEAT_PER_MIN)),  # Pulse Rate
        (_BP_USER_ID, "user_id", uint_field(1, "user_id")),  # User ID
        (_BP_STATUS, "measurement_status", _read_bp_status),  # Measurement Status
    ),
)


def decode_blood_pressure(data) -> dict:
    """Systolic, diastolic, MAP (always mmHg; kPa converted), pulse rate, user, status."""
    return _BLOOD_PRESSURE.decode(data)


def encode_blood_pressure(
    systolic,
    diastolic,
    mean_arterial_pressure,
    kpa: bool = False,
    decimals: int = 0,
    timestamp=None,
    pulse_rate=None,
    pulse_rate_decimals: int = 0,
    user_id=None,
    measurement_status=None,
) -> bytes:
    """Blood Pressure Measurement value (pressures in mmHg, or kPa if kpa=True).

    Pressures and pulse_rate: numbers or 11073 special names, SFLOAT with the given
    decimals; user_id: None or uint8 (255 = unknown user); measurement_status: uint16.
    """
    writer = Writer("blood_pressure", bit(0, _BP_KPA, _check_flag(kpa, "blood_pressure.kpa")))
    writer.field("systolic", systolic, pack_sfloat, decimals)
    writer.field("diastolic", diastolic, pack_sfloat, decimals)
    writer.field("mean_arterial_pressure", mean_arterial_pressure, pack_sfloat, decimals)
    writer.optional(_BP_TIMESTAMP, "timestamp", timestamp, pack_date_time)
    writer.optional(_BP_PULSE_RATE, "pulse_rate", pulse_rate, pack_sfloat, pulse_rate_decimals)
    writer.optional(_BP_USER_ID, "user_id", user_id, pack_uint, 1)
    writer.optional(_BP_STATUS, "measurement_status", measurement_status, pack_uint, 2)
    return writer.value()


# --- PLX Spot-Check 0x2A5E and Continuous 0x2A5F (PLXS 1.0.1, GSS) --------------

_SC_TIMESTAMP = 0x01
_SC_STATUS = 0x02
_SC_DEVICE_STATUS = 0x04
_SC_PAI = 0x08
_SC_CLOCK_NOT_SET = 0x10
_SC_RFU = 0xE0

_CM_FAST = 0x01
_CM_SLOW = 0x02
_CM_STATUS = 0x04
_CM_DEVICE_STATUS = 0x08
_CM_PAI = 0x10
_CM_RFU = 0xE0

PLX_MEASUREMENT_STATUS_BITS = (
    None,
    None,
    None,
    None,
    None,  # bits 0-4 RFU
    "measurement_ongoing",
    "early_estimated_data",
    "validated_data",
    "fully_qualified_data",
    "data_from_measurement_storage",
    "data_for_demonstration",
    "data_for_testing",
    "calibration_ongoing",
    "measurement_unavailable",
    "questionable_measurement_detected",
    "invalid_measurement_detected",
)
PLX_DEVICE_SENSOR_STATUS_BITS = (  # bits 16-23 RFU
    "extended_display_update_ongoing",
    "equipment_malfunction_detected",
    "signal_processing_irregularity_detected",
    "inadequate_signal_detected",
    "poor_signal_detected",
    "low_perfusion_detected",
    "erratic_signal_detected",
    "nonpulsatile_signal_detected",
    "questionable_pulse_detected",
    "signal_analysis_ongoing",
    "sensor_interference_detected",
    "sensor_unconnected_to_user",
    "unknown_sensor_connected",
    "sensor_displaced",
    "sensor_malfunctioning",
    "sensor_disconnected",
)


_SPO2 = sfloat_entry("spo2", "spo2", "%")
_PULSE_RATE = sfloat_entry("pulse_rate", "pr", BEAT_PER_MIN)
_PAI = sfloat_entry("pulse_amplitude_index", "pi", "%")
_PLX_STATUS = bits_field(2, "measurement_status", PLX_MEASUREMENT_STATUS_BITS)
_PLX_DEVICE_STATUS = bits_field(3, "device_sensor_status", PLX_DEVICE_SENSOR_STATUS_BITS)


def _spo2_pr_field(prefix):
    """SpO2PR-Fast / SpO2PR-Slow: {"spo2": entry, "pr": entry}."""

    def read(reader, flags, result):
        spo2 = entry("spo2", "%", reader.u16(prefix + "spo2"))
        return {"spo2": spo2, "pr": entry("pr", BEAT_PER_MIN, reader.u16(prefix + "pulse_rate"))}

    return read


# GSS "PLX Spot-Check Measurement" field table, after Flags (rows: fields.read_fields).
_PLX_SPOT_CHECK = FlaggedLayout(
    "plx_spot_check",
    PLX_SPOT_CHECK_MEASUREMENT,
    _SC_RFU,
    (
        (ALWAYS, None, _SPO2),  # SpO2PR-Spot-Check - SpO2
        (ALWAYS, None, _PULSE_RATE),  # SpO2PR-Spot-Check - PR
        (_SC_TIMESTAMP, "timestamp", date_time_field("timestamp")),  # Timestamp
        (_SC_CLOCK_NOT_SET, "device_clock_not_set", FLAG),
        (_SC_STATUS, "measurement_status", _PLX_STATUS),  # Measurement Status
        (_SC_DEVICE_STATUS, "device_sensor_status", _PLX_DEVICE_STATUS),  # Device and Sensor Status
        (_SC_PAI, None, _PAI),  # Pulse Amplitude Index
    ),
)

# GSS "PLX Continuous Measurement" field table, after Flags (rows: fields.read_fields).
_PLX_CONTINUOUS = FlaggedLayout(
    "plx_continuous",
    PLX_CONTINUOUS_MEASUREMENT,
    _CM_RFU,
    (
        (ALWAYS, None, _SPO2),  # SpO2PR-Normal - SpO2
        (ALWAYS, None, _PULSE_RATE),  # SpO2PR-Normal - PR
        (_CM_FAST, "fast", _spo2_pr_field("fast.")),  # SpO2PR-Fast
        (_CM_SLOW, "slow", _spo2_pr_field("slow.")),  # SpO2PR-Slow
        (_CM_STATUS, "measurement_status", _PLX_STATUS),  # Measurement Status
        (_CM_DEVICE_STATUS, "device_sensor_status", _PLX_DEVICE_STATUS),  # Device and Sensor Status
        (_CM_PAI, None, _PAI),  # Pulse Amplitude Index
    ),
)


def decode_plx_spot_check(data) -> dict:
    """SpO2 (%), pulse rate, timestamp, statuses, pulse amplitude index as "pi" (%)."""
    return _PLX_SPOT_CHECK.decode(data)


def decode_plx_continuous(data) -> dict:
    """SpO2PR-Normal in "values" (+ "pi"), SpO2PR-Fast/-Slow under "fast"/"slow"."""
    return _PLX_CONTINUOUS.decode(data)


def _pack_plx_tail(writer, flag_masks, measurement_status, device_sensor_status, pai, pai_decimals):
    status_mask, device_mask, pai_mask = flag_masks
    writer.optional(status_mask, "measurement_status", measurement_status, pack_uint, 2)
    writer.optional(device_mask, "device_sensor_status", device_sensor_status, pack_uint, 3)
    writer.optional(pai_mask, "pai", pai, pack_sfloat, pai_decimals)


def _pack_pair(pair, decimals, field):
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise GattError("%s: expected a (spo2, pulse_rate) pair, got %r" % (field, pair))
    return pack_sfloat(pair[0], decimals, field + ".spo2") + pack_sfloat(
        pair[1], decimals, field + ".pulse_rate"
    )


def encode_plx_spot_check(
    spo2,
    pulse_rate,
    decimals: int = 0,
    timestamp=None,
    measurement_status=None,
    device_sensor_status=None,
    pai=None,
    pai_decimals: int = 2,
    device_clock_not_set: bool = False,
) -> bytes:
    """PLX Spot-Check Measurement value.

    spo2 (%), pulse_rate (beat/min), pai (%): numbers or 11073 special names as SFLOAT;
    measurement_status uint16; device_sensor_status uint24 (None = field absent).
    """
    clock_not_set = _check_flag(device_clock_not_set, "plx_spot_check.device_clock_not_set")
    writer = Writer("plx_spot_check", bit(0, _SC_CLOCK_NOT_SET, clock_not_set))
    writer.field("spo2", spo2, pack_sfloat, decimals)
    writer.field("pulse_rate", pulse_rate, pack_sfloat, decimals)
    writer.optional(_SC_TIMESTAMP, "timestamp", timestamp, pack_date_time)
    _pack_plx_tail(
        writer,
        (_SC_STATUS, _SC_DEVICE_STATUS, _SC_PAI),
        measurement_status,
        device_sensor_status,
        pai,
        pai_decimals,
    )
    return writer.value()


def encode_plx_continuous(
    spo2,
    pulse_rate,
    decimals: int = 0,
    fast=None,
    slow=None,
    measurement_status=None,
    device_sensor_status=None,
    pai=None,
    pai_decimals: int = 2,
) -> bytes:
    """PLX Continuous Measurement value; fast/slow: None or (spo2, pulse_rate) pairs."""
    writer = Writer("plx_continuous")
    writer.field("spo2", spo2, pack_sfloat, decimals)
    writer.field("pulse_rate", pulse_rate, pack_sfloat, decimals)
    writer.optional(_CM_FAST, "fast", fast, _pack_pair, decimals)
    writer.optional(_CM_SLOW, "slow", slow, _pack_pair, decimals)
    _pack_plx_tail(
        writer,
        (_CM_STATUS, _CM_DEVICE_STATUS, _CM_PAI),
        measurement_status,
        device_sensor_status,
        pai,
        pai_decimals,
    )
    return writer.value()


# --- Weight Measurement 0x2A9D (WSS 1.0, GSS) -----------------------------------

_W_IMPERIAL = 0x01
_W_TIMESTAMP = 0x02
_W_USER_ID = 0x04
_W_BMI_HEIGHT = 0x08
_W_RFU = 0xF0
WEIGHT_UNSUCCESSFUL = 0xFFFF  # "Measurement Unsuccessful"
UNSUCCESSFUL = "unsuccessful"

_KG_STEPS = 200  # 0.005 kg
_LB_STEPS = 100  # 0.01 lb
_M_STEPS = 1000  # 0.001 m
_IN_STEPS = 10  # 0.1 in
_BMI_STEPS = 10  # 0.1 kg/m2


def _read_weight(reader, flags, result):
    imperial = flags & _W_IMPERIAL
    raw = reader.u16("weight")
    if raw == WEIGHT_UNSUCCESSFUL:
        nan = ieee11073.SPECIAL_VALUES[ieee11073.NAN]
        weight = {"n": "weight", "v": nan, "u": "kg", "special": UNSUCCESSFUL}
        if imperial:
            weight["reported"] = {"v": nan, "u": "[lb_av]"}
        if flags & _W_BMI_HEIGHT:
            raise reader.error("weight", "measurement unsuccessful but BMI and height present")
    elif imperial:
        # 1 lb = 0.45359237 kg exactly: kg = raw * 0.01 * 0.45359237.
        weight = {
            "n": "weight",
            "v": ieee11073.decimal_to_float(raw, -10, 45359237),
            "u": "kg",
            "reported": {"v": ieee11073.decimal_to_float(raw, -2), "u": "[lb_av]"},
        }
    else:
        weight = {"n": "weight", "v": ieee11073.decimal_to_float(raw * 5, -3), "u": "kg"}
    result["values"].append(weight)


def _read_bmi(reader, flags, result):
    return ieee11073.decimal_to_float(reader.u16("bmi"), -1)


def _read_height(reader, flags, result):
    raw_height = reader.u16("height")
    if flags & _W_IMPERIAL:
        # 1 in = 0.0254 m exactly: m = raw * 0.1 * 0.0254.
        return {
            "v": ieee11073.decimal_to_float(raw_height * 254, -5),
            "u": "m",
            "reported": {"v": ieee11073.decimal_to_float(raw_height, -1), "u": "[in_i]"},
        }
    return {"v": ieee11073.decimal_to_float(raw_height, -3), "u": "m"}


# GSS "Weight Measurement" field table, after Flags (rows: fields.read_fields).
_WEIGHT = FlaggedLayout(
    "weight",
    WEIGHT_MEASUREMENT,
    _W_RFU,
    (
        (ALWAYS, None, _read_weight),  # Weight, uint16, 0.005 kg or 0.01 lb (bit 0)
        (_W_IMPERIAL, "imperial", FLAG),
        (_W_TIMESTAMP, "timestamp", date_time_field("timestamp")),  # Time Stamp
        (_W_USER_ID, "user_id", uint_field(1, "user_id")),  # User ID
        (_W_BMI_HEIGHT, "bmi", _read_bmi),  # BMI, 0.1 kg/m2
        (_W_BMI_HEIGHT, "height", _read_height),  # Height, 0.001 m or 0.1 in
    ),
)


def decode_weight(data) -> dict:
    """Body weight (always kg; lb converted), timestamp, user id, BMI (kg/m2), height (m)."""
    return _WEIGHT.decode(data)


def encode_weight(
    weight,
    imperial: bool = False,
    timestamp=None,
    user_id=None,
    bmi=None,
    height=None,
) -> bytes:
    """Weight Measurement value.

    weight: kg (lb if imperial) rounded to 0.005 kg / 0.01 lb, or "unsuccessful";
    bmi (kg/m2, 0.1) and height (m / in, 0.001 m / 0.1 in) are given together or not at all.
    """
    if (bmi is None) != (height is None):
        raise GattError("weight.bmi: BMI and height travel together")
    if weight == UNSUCCESSFUL and bmi is not None:
        raise GattError("weight.bmi: not allowed with an unsuccessful measurement")
    writer = Writer("weight", bit(0, _W_IMPERIAL, _check_flag(imperial, "weight.imperial")))
    if weight == UNSUCCESSFUL:
        raw = WEIGHT_UNSUCCESSFUL
    else:
        raw = quantize(weight, _LB_STEPS if imperial else _KG_STEPS, "weight.weight")
        if not 0 <= raw < WEIGHT_UNSUCCESSFUL:
            raise GattError("weight.weight: %r outside the encodable range" % (weight,))
    writer.field("weight", raw, pack_uint, 2)
    writer.optional(_W_TIMESTAMP, "timestamp", timestamp, pack_date_time)
    writer.optional(_W_USER_ID, "user_id", user_id, pack_uint, 1)
    if bmi is not None:  # one flag for both fields
        writer.flags |= _W_BMI_HEIGHT
        writer.field("bmi", quantize(bmi, _BMI_STEPS, "weight.bmi"), pack_uint, 2)
        steps = _IN_STEPS if imperial else _M_STEPS
        writer.field("height", quantize(height, steps, "weight.height"), pack_uint, 2)
    return writer.value()


# --- Date Time 0x2A08 -----------------------------------------------------------


def decode_date_time(data) -> dict:
    """The Date Time characteristic on its own: {"timestamp": {...}}."""
    reader = Reader(data, "date_time")
    timestamp = read_date_time(reader, "timestamp")
    reader.finish(0)
    return {"characteristic": "date_time", "uuid": DATE_TIME, "timestamp": timestamp}


def encode_date_time(timestamp) -> bytes:
    """7-byte Date Time from a dict or a (y, m, d, h, min, s, ...) sequence."""
    return pack_date_time(timestamp, "date_time.timestamp")


# --- registry -------------------------------------------------------------------


def _decode_glucose(data):
    # Imported on first use so firmware that only encodes never loads it.
    from protocol.gatt import glucose

    return glucose.decode_glucose(data)


def _decode_racp(data):
    from protocol.gatt import glucose

    return glucose.decode_racp(data)


DECODERS = {
    HEART_RATE_MEASUREMENT: decode_heart_rate,
    TEMPERATURE_MEASUREMENT: decode_temperature,
    BLOOD_PRESSURE_MEASUREMENT: decode_blood_pressure,
    PLX_SPOT_CHECK_MEASUREMENT: decode_plx_spot_check,
    PLX_CONTINUOUS_MEASUREMENT: decode_plx_continuous,
    GLUCOSE_MEASUREMENT: _decode_glucose,
    RECORD_ACCESS_CONTROL_POINT: _decode_racp,
    WEIGHT_MEASUREMENT: decode_weight,
    DATE_TIME: decode_date_time,
}


def decode(uuid16: int, data) -> dict:
    """Decode the value of the characteristic with 16-bit UUID `uuid16`."""
    decoder = DECODERS.get(uuid16) if isinstance(uuid16, int) else None
    if decoder is None:
        raise GattError("uuid %r: no decoder for this characteristic" % (uuid16,))
    return decoder(data)
