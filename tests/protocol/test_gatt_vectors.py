"""Golden vectors for EVERY flag combination of every GATT health characteristic.

Expected bytes are built here with `struct` straight from the GSS field tables, and
expected values with `fractions.Fraction` arithmetic, independently of the code under
test. Each case checks: decode(bytes) == expected; encoder(**kwargs) == bytes (for
combinations the encoder emits); every truncation raises GattError; a trailing byte
raises GattError; with an RFU flag set, unknown trailing bytes are ignored.
"""

import itertools
import math
import struct
from datetime import datetime, timedelta
from fractions import Fraction

import pytest

from protocol.errors import GattError
from protocol.gatt import characteristics as ch
from protocol.gatt import glucose as gl


def sfloat(mantissa: int, exponent: int) -> bytes:
    """SFLOAT bytes per IEEE 11073-20601: 4-bit exponent | 12-bit mantissa, LE."""
    return struct.pack("<H", ((exponent & 0xF) << 12) | (mantissa & 0xFFF))


def float32(mantissa: int, exponent: int) -> bytes:
    return struct.pack("<I", ((exponent & 0xFF) << 24) | (mantissa & 0xFFFFFF))


def dec(mantissa: int, exponent: int) -> Fraction:
    return Fraction(mantissa) * Fraction(10) ** exponent


def date_bytes(year, month, day, hour, minute, second) -> bytes:
    return struct.pack("<HBBBBB", year, month, day, hour, minute, second)


def date_dict(year, month, day, hour, minute, second) -> dict:
    return {
        "year": year,
        "month": month,
        "day": day,
        "hour": hour,
        "minute": minute,
        "second": second,
    }


def same(actual, expected) -> bool:
    """Structural equality that treats nan as equal to nan and int 0 != False."""
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(actual, float) and math.isnan(actual)
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and actual.keys() == expected.keys()
            and all(same(actual[k], expected[k]) for k in expected)
        )
    if isinstance(expected, (list, tuple)):
        return (
            isinstance(actual, type(expected))
            and len(actual) == len(expected)
            and all(same(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return type(actual) is type(expected) and actual == expected


TS = (2023, 7, 14, 9, 26, 53)
TS_BYTES = date_bytes(*TS)
TS_DICT = date_dict(*TS)


class Case:
    def __init__(self, name, data, expected, encode, kwargs, canonical=True, rr_prefixes=()):
        self.name = name
        self.data = data
        self.expected = expected
        self.encode = encode
        self.kwargs = kwargs
        self.canonical = canonical  # the encoder emits exactly these bytes
        self.rr_prefixes = rr_prefixes  # truncation lengths that stay valid (whole RR values)


def header(name, uuid, flags, rfu_mask, values):
    return {
        "characteristic": name,
        "uuid": uuid,
        "flags": flags,
        "rfu_flags": flags & rfu_mask,
        "values": values,
    }


def bools(n):
    return itertools.product((False, True), repeat=n)


# --- heart rate -------------------------------------------------------------------


def heart_rate_cases():
    rr_ticks = (512, 1024, 1500)
    for wide, contact_bits, energy, rr in itertools.product(
        (False, True), range(4), (False, True), (False, True)
    ):
        flags = wide | contact_bits << 1 | energy << 3 | rr << 4
        hr = 300 if wide else 72
        data = bytes([flags]) + (struct.pack("<H", hr) if wide else bytes([hr]))
        if energy:
            data += struct.pack("<H", 4660)
        base = len(data)
        if rr:
            data += struct.pack("<3H", *rr_ticks)
        contact = {0: None, 1: None, 2: False, 3: True}[contact_bits]
        rr_s = [float(Fraction(t, 1024)) for t in rr_ticks] if rr else []
        expected = header(
            "heart_rate", 0x2A37, flags, 0xE0, [{"n": "hr", "v": float(hr), "u": "beat/min"}]
        )
        expected.update(
            hr_uint16=wide,
            sensor_contact=contact,
            energy_expended_kj=4660 if energy else None,
            rr_intervals_s=rr_s,
        )
        kwargs = dict(
            hr=hr,
            sensor_contact=contact,
            energy_expended_kj=4660 if energy else None,
            rr_intervals_s=rr_s or None,
            hr_uint16=wide,
        )
        yield Case(
            f"hr-{flags:02x}",
            data,
            expected,
            ch.encode_heart_rate,
            kwargs,
            canonical=contact_bits != 1,
            rr_prefixes=(base + 2, base + 4) if rr else (),
        )


# --- temperature ------------------------------------------------------------------


def temperature_cases():
    for fahrenheit, stamped, typed in bools(3):
        flags = fahrenheit | stamped << 1 | typed << 2
        if fahrenheit:
            data = bytes([flags]) + float32(986, -1)
            value = {
                "v": float((dec(986, -1) - 32) * Fraction(5, 9)),
                "u": "Cel",
                "n": "temp",
                "reported": {"v": float(dec(986, -1)), "u": "[degF]"},
            }
            kwargs = dict(value=98.6, decimals=1, fahrenheit=True)
        else:
            data = bytes([flags]) + float32(3662, -2)
            value = {"v": float(dec(3662, -2)), "u": "Cel", "n": "temp"}
            kwargs = dict(value=36.62, decimals=2, fahrenheit=False)
        if stamped:
            data += TS_BYTES
        if typed:
            data += bytes([2])
        expected = header("temperature", 0x2A1C, flags, 0xF8, [value])
        expected.update(
            fahrenheit=bool(fahrenheit),
            timestamp=TS_DICT if stamped else None,
            temperature_type={"code": 2, "name": "body"} if typed else None,
        )
        kwargs.update(timestamp=TS if stamped else None, temperature_type=2 if typed else None)
        yield Case(f"temp-{flags:02x}", data, expected, ch.encode_temperature, kwargs)


# --- blood pressure ---------------------------------------------------------------

MMHG_PER_KPA = Fraction(1000) / Fraction("133.322387415")


def blood_pressure_cases():
    for kpa, stamped, pulse, user, status in bools(5):
        flags = kpa | stamped << 1 | pulse << 2 | user << 3 | status << 4
        pressures = ((160, -1), (107, -1), (124, -1)) if kpa else ((1200, -1), (800, -1), (933, -1))
        data = bytes([flags]) + b"".join(sfloat(m, e) for m, e in pressures)
        values = []
        for name, (m, e) in zip(("sys", "dia", "map"), pressures, strict=True):
            if kpa:
                values.append(
                    {
                        "v": float(dec(m, e) * MMHG_PER_KPA),
                        "u": "mmHg",
                        "n": name,
                        "reported": {"v": float(dec(m, e)), "u": "kPa"},
                    }
                )
            else:
                values.append({"v": float(dec(m, e)), "u": "mmHg", "n": name})
        if stamped:
            data += TS_BYTES
        if pulse:
            data += sfloat(72, 0)
            values.append({"v": 72.0, "u": "beat/min", "n": "pr"})
        if user:
            data += bytes([3])
        if status:
            data += struct.pack("<H", 0x0025)  # body movement, irregular pulse, position
        expected = header("blood_pressure", 0x2A35, flags, 0xE0, values)
        expected.update(
            kpa=bool(kpa),
            timestamp=TS_DICT if stamped else None,
            user_id=3 if user else None,
            measurement_status={
                "raw": 0x0025,
                "set": ["body_movement", "irregular_pulse", "improper_position"],
                "pulse_rate_range": "within_range",
            }
            if status
            else None,
        )
        kwargs = dict(
            systolic=float(dec(*pressures[0])),
            diastolic=float(dec(*pressures[1])),
            mean_arterial_pressure=float(dec(*pressures[2])),
            kpa=bool(kpa),
            decimals=1,
            timestamp=TS if stamped else None,
            pulse_rate=72 if pulse else None,
            user_id=3 if user else None,
            measurement_status=0x0025 if status else None,
        )
        yield Case(f"bp-{flags:02x}", data, expected, ch.encode_blood_pressure, kwargs)


# --- PLX ---------------------------------------------------------------------------

PLX_MS = 0x0120  # measurement ongoing + fully qualified data
PLX_MS_SET = ["measurement_ongoing", "fully_qualified_data"]
PLX_DSS = 0x018020  # low perfusion + sensor disconnected + RFU bit 16 (ignored)
PLX_DSS_SET = ["low_perfusion_detected", "sensor_disconnected"]


def spo2_pr(spo2, pr):
    return [{"v": float(spo2), "u": "%", "n": "spo2"}, {"v": float(pr), "u": "beat/min", "n": "pr"}]


def plx_spot_check_cases():
    for stamped, ms, dss, pai, clock in bools(5):
        flags = stamped | ms << 1 | dss << 2 | pai << 3 | clock << 4
        data = bytes([flags]) + sfloat(98, 0) + sfloat(61, 0)
        values = spo2_pr(98, 61)
        if stamped:
            data += TS_BYTES
        if ms:
            data += struct.pack("<H", PLX_MS)
        if dss:
            data += struct.pack("<I", PLX_DSS)[:3]
        if pai:
            data += sfloat(210, -2)
            values.append({"v": 2.1, "u": "%", "n": "pi"})
        expected = header("plx_spot_check", 0x2A5E, flags, 0xE0, values)
        expected.update(
            timestamp=TS_DICT if stamped else None,
            device_clock_not_set=bool(clock),
            measurement_status={"raw": PLX_MS, "set": PLX_MS_SET} if ms else None,
            device_sensor_status={"raw": PLX_DSS, "set": PLX_DSS_SET} if dss else None,
        )
        kwargs = dict(
            spo2=98,
            pulse_rate=61,
            timestamp=TS if stamped else None,
            measurement_status=PLX_MS if ms else None,
            device_sensor_status=PLX_DSS if dss else None,
            pai=2.1 if pai else None,
            pai_decimals=2,
            device_clock_not_set=bool(clock),
        )
        yield Case(f"plx-spot-{flags:02x}", data, expected, ch.encode_plx_spot_check, kwargs)


def plx_continuous_cases():
    for fast, slow, ms, dss, pai in bools(5):
        flags = fast | slow << 1 | ms << 2 | dss << 3 | pai << 4
        data = bytes([flags]) + sfloat(97, 0) + sfloat(62, 0)
        values = spo2_pr(97, 62)
        if fast:
            data += sfloat(96, 0) + sfloat(63, 0)
        if slow:
            data += sfloat(98, 0) + sfloat(60, 0)
        if ms:
            data += struct.pack("<H", PLX_MS)
        if dss:
            data += struct.pack("<I", PLX_DSS)[:3]
        if pai:
            data += sfloat(210, -2)
            values.append({"v": 2.1, "u": "%", "n": "pi"})
        fast_pair = spo2_pr(96, 63)
        slow_pair = spo2_pr(98, 60)
        expected = header("plx_continuous", 0x2A5F, flags, 0xE0, values)
        expected.update(
            fast={"spo2": fast_pair[0], "pr": fast_pair[1]} if fast else None,
            slow={"spo2": slow_pair[0], "pr": slow_pair[1]} if slow else None,
            measurement_status={"raw": PLX_MS, "set": PLX_MS_SET} if ms else None,
            device_sensor_status={"raw": PLX_DSS, "set": PLX_DSS_SET} if dss else None,
        )
        kwargs = dict(
            spo2=97,
            pulse_rate=62,
            fast=(96, 63) if fast else None,
            slow=(98, 60) if slow else None,
            measurement_status=PLX_MS if ms else None,
            device_sensor_status=PLX_DSS if dss else None,
            pai=2.1 if pai else None,
            pai_decimals=2,
        )
        yield Case(f"plx-cont-{flags:02x}", data, expected, ch.encode_plx_continuous, kwargs)


# --- weight -------------------------------------------------------------------------

KG_PER_LB = Fraction("0.45359237")
M_PER_IN = Fraction("0.0254")


def weight_cases():
    for imperial, stamped, user, bmi in bools(4):
        flags = imperial | stamped << 1 | user << 2 | bmi << 3
        raw = 15432 if imperial else 14000
        data = bytes([flags]) + struct.pack("<H", raw)
        if imperial:
            weight = {
                "n": "weight",
                "v": float(Fraction(raw, 100) * KG_PER_LB),
                "u": "kg",
                "reported": {"v": 154.32, "u": "[lb_av]"},
            }
        else:
            weight = {"n": "weight", "v": float(Fraction(raw * 5, 1000)), "u": "kg"}
        if stamped:
            data += TS_BYTES
        if user:
            data += bytes([2])
        height = None
        if bmi:
            raw_height = 695 if imperial else 1765
            data += struct.pack("<HH", 224, raw_height)
            if imperial:
                height = {
                    "v": float(Fraction(raw_height, 10) * M_PER_IN),
                    "u": "m",
                    "reported": {"v": 69.5, "u": "[in_i]"},
                }
            else:
                height = {"v": 1.765, "u": "m"}
        expected = header("weight", 0x2A9D, flags, 0xF0, [weight])
        expected.update(
            imperial=bool(imperial),
            timestamp=TS_DICT if stamped else None,
            user_id=2 if user else None,
            bmi=22.4 if bmi else None,
            height=height,
        )
        kwargs = dict(
            weight=154.32 if imperial else 70.0,
            imperial=bool(imperial),
            timestamp=TS if stamped else None,
            user_id=2 if user else None,
            bmi=22.4 if bmi else None,
            height=(69.5 if imperial else 1.765) if bmi else None,
        )
        yield Case(f"weight-{flags:02x}", data, expected, ch.encode_weight, kwargs)


# --- glucose ------------------------------------------------------------------------

BASE = (2023, 3, 1, 0, 30, 0)  # offset -90 min crosses into 28 Feb (non-leap year)


def glucose_cases():
    for offset, conc, mol, status, context in bools(5):
        flags = offset | conc << 1 | mol << 2 | status << 3 | context << 4
        data = bytes([flags]) + struct.pack("<H", 0x0102) + date_bytes(*BASE)
        if offset:
            data += struct.pack("<h", -90)
        values = []
        if conc:
            if mol:
                data += sfloat(53, -4)
                values.append(
                    {
                        "v": float(dec(53, -4) * 1000),
                        "u": "mmol/L",
                        "n": "glucose",
                        "reported": {"v": float(dec(53, -4)), "u": "mol/L"},
                    }
                )
            else:
                data += sfloat(95, -5)
                values.append(
                    {
                        "v": float(dec(95, -5) * 10**5),
                        "u": "mg/dL",
                        "n": "glucose",
                        "reported": {"v": float(dec(95, -5)), "u": "kg/L"},
                    }
                )
            data += bytes([0x12])  # type 2 (low nibble), location 1 (high nibble)
        if status:
            data += struct.pack("<H", 0x0801)
        when = datetime(*BASE) + (timedelta(minutes=-90) if offset else timedelta())
        expected = {
            "characteristic": "glucose",
            "uuid": 0x2A18,
            "flags": flags,
            "rfu_flags": 0,
            "values": values,
            "sequence_number": 0x0102,
            "base_time": date_dict(*BASE),
            "time_offset_min": -90 if offset else None,
            "timestamp": date_dict(*when.timetuple()[:6]),
            "concentration_unit": ("mol/L" if mol else "kg/L") if conc else None,
            "sample_type": {"code": 2, "name": "capillary_plasma"} if conc else None,
            "sample_location": {"code": 1, "name": "finger"} if conc else None,
            "sensor_status": {"raw": 0x0801, "set": ["device_battery_low", "time_fault"]}
            if status
            else None,
            "context_follows": bool(context),
        }
        kwargs = dict(
            sequence_number=0x0102,
            base_time=BASE,
            time_offset_min=-90 if offset else None,
            concentration=(5.3 if mol else 95) if conc else None,
            mmol=bool(mol),
            decimals=1 if mol else 0,
            sample_type=2,
            sample_location=1,
            sensor_status=0x0801 if status else None,
            context_follows=bool(context),
        )
        # The units bit means nothing without a concentration; our encoder leaves it 0.
        yield Case(
            f"glucose-{flags:02x}",
            data,
            expected,
            gl.encode_glucose,
            kwargs,
            canonical=conc or not mol,
        )


ALL_CASES = [
    *heart_rate_cases(),
    *temperature_cases(),
    *blood_pressure_cases(),
    *plx_spot_check_cases(),
    *plx_continuous_cases(),
    *weight_cases(),
    *glucose_cases(),
]
UUIDS = {
    "heart_rate": 0x2A37,
    "temperature": 0x2A1C,
    "blood_pressure": 0x2A35,
    "plx_spot_check": 0x2A5E,
    "plx_continuous": 0x2A5F,
    "weight": 0x2A9D,
    "glucose": 0x2A18,
}


def test_every_flag_combination_is_covered():
    counts = {}
    for case in ALL_CASES:
        counts[case.expected["characteristic"]] = counts.get(case.expected["characteristic"], 0) + 1
    assert counts == {
        "heart_rate": 32,
        "temperature": 8,
        "blood_pressure": 32,
        "plx_spot_check": 32,
        "plx_continuous": 32,
        "weight": 16,
        "glucose": 32,
    }
    assert len({case.name for case in ALL_CASES}) == len(ALL_CASES)


def decode(data: bytes, case: Case):
    return ch.decode(UUIDS[case.expected["characteristic"]], data)


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_decode_golden(case):
    assert same(decode(case.data, case), case.expected), decode(case.data, case)


@pytest.mark.parametrize("case", [c for c in ALL_CASES if c.canonical], ids=lambda c: c.name)
def test_encode_golden(case):
    assert case.encode(**case.kwargs) == case.data


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_every_truncation_is_rejected(case):
    for length in range(len(case.data)):
        if length in case.rr_prefixes:
            cut = decode(case.data[:length], case)
            kept = (length - case.rr_prefixes[0]) // 2 + 1
            assert cut["rr_intervals_s"] == case.expected["rr_intervals_s"][:kept]
            continue
        with pytest.raises(GattError):
            decode(case.data[:length], case)


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_trailing_byte_is_rejected(case):
    with pytest.raises(GattError):
        decode(case.data + b"\x00", case)


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_rfu_flag_allows_unknown_trailing_fields(case):
    data = bytes([case.data[0] | 0x80]) + case.data[1:] + b"\xaa\xbb"
    expected = dict(case.expected, flags=case.data[0] | 0x80, rfu_flags=0x80)
    if expected["characteristic"] == "heart_rate" and case.data[0] & 0x10:
        # RR-intervals run to the end of the value, so the new bytes read as one more.
        expected["rr_intervals_s"] = expected["rr_intervals_s"] + [0xBBAA / 1024]
    assert same(decode(data, case), expected)
