"""Standard BLE health profiles: what we subscribe to and how a decoded value becomes readings.

Two jobs, both pure (no I/O, no clock):

* `PROFILES`: the measurement characteristics of the SIG health services the agent
  subscribes to, and whether their service specification delivers them by notification or
  indication. bleak's `start_notify` (BlueZ and our bumble backend alike) writes the CCCD
  for notifications when the characteristic supports them, else for indications, which is
  what every one of these specifications requires of a collector.
* `interpret(decoded, ...)`: a characteristic dict from `protocol.gatt` (docs/gatt.md) ->
  transport-neutral `Reading`s in the vitals vocabulary, the device conditions the value
  reports (sensor contact, finger off, signal quality, ...) and the problems that made a
  value unusable. An IEEE 11073 special value (NaN, NRes, +/-INF, reserved) or a weight
  scale's "measurement unsuccessful" becomes a Reading with `value=None` and `special`
  set: it is reported, never turned into a number that an alarm rule could compare.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol import ble_service, vitals
from protocol.errors import ValidationError

NOTIFY = "notify"
INDICATE = "indicate"

# protocol.gatt reports blood pressure in "mmHg"; the vitals vocabulary uses UCUM "mm[Hg]".
_UNIT_TOKENS = {"mmHg": "mm[Hg]"}

DEFAULT_MAX_CLOCK_SKEW_S = 300.0


@dataclass(frozen=True, slots=True)
class CharacteristicProfile:
    """One standard measurement characteristic the agent subscribes to."""

    uuid16: int
    service16: int
    name: str  # protocol.gatt's "characteristic" name
    delivery: str  # what the service specification mandates: NOTIFY or INDICATE
    stored: bool = False  # values are records fetched from the device's memory

    @property
    def uuid(self) -> str:
        return ble_service.sig_uuid(self.uuid16)


PROFILES: tuple[CharacteristicProfile, ...] = (
    CharacteristicProfile(
        ble_service.HEART_RATE_MEASUREMENT, ble_service.HEART_RATE_SERVICE, "heart_rate", NOTIFY
    ),
    CharacteristicProfile(
        ble_service.TEMPERATURE_MEASUREMENT,
        ble_service.HEALTH_THERMOMETER_SERVICE,
        "temperature",
        INDICATE,
    ),
    CharacteristicProfile(
        ble_service.BLOOD_PRESSURE_MEASUREMENT,
        ble_service.BLOOD_PRESSURE_SERVICE,
        "blood_pressure",
        INDICATE,
    ),
    CharacteristicProfile(
        ble_service.PLX_SPOT_CHECK_MEASUREMENT,
        ble_service.PULSE_OXIMETER_SERVICE,
        "plx_spot_check",
        INDICATE,
    ),
    CharacteristicProfile(
        ble_service.PLX_CONTINUOUS_MEASUREMENT,
        ble_service.PULSE_OXIMETER_SERVICE,
        "plx_continuous",
        NOTIFY,
    ),
    # Glucose records arrive by notification, in answer to a RACP request (GLS 1.0).
    CharacteristicProfile(
        ble_service.GLUCOSE_MEASUREMENT, ble_service.GLUCOSE_SERVICE, "glucose", NOTIFY, True
    ),
    CharacteristicProfile(
        ble_service.WEIGHT_MEASUREMENT, ble_service.WEIGHT_SCALE_SERVICE, "weight", INDICATE
    ),
)
PROFILES_BY_UUID16: dict[int, CharacteristicProfile] = {p.uuid16: p for p in PROFILES}

# The glucose RACP: written by us, answered by indication.
RACP = CharacteristicProfile(
    ble_service.RECORD_ACCESS_CONTROL_POINT, ble_service.GLUCOSE_SERVICE, "racp", INDICATE
)


@dataclass(frozen=True, slots=True)
class Reading:
    """One measured quantity from a standard device (it cannot seal: the gateway attests it).

    `value` is None exactly when the device sent a special value, named in `special`
    ("nan", "nres", "+inf", "-inf", "reserved", "unsuccessful"). `time` is the POSIX time
    to file the reading under: the receipt time for live values, the device's own
    timestamp for records from its memory (flag "stored"). `device_time` is the device's
    timestamp as sent (ISO 8601, local wall clock, no zone) and `clock_offset_s` how far
    it lay from the receipt time. `flags` holds the device conditions reported with the
    value and the time flags ("stored", "clock-skew", "device-time-unknown").
    """

    quantity: str
    value: float | None
    unit: str
    time: float
    received_at: float
    source: str  # protocol.gatt characteristic name
    special: str | None = None
    flags: frozenset[str] = frozenset()
    device_time: str | None = None
    clock_offset_s: float | None = None
    device_seq: int | None = None  # the device's record number (glucose)
    reported: tuple[float, str] | None = None  # value and unit as sent, when converted


@dataclass(frozen=True, slots=True)
class Interpretation:
    """What one characteristic value says: readings, device conditions, unusable values."""

    readings: list[Reading] = field(default_factory=list)
    conditions: frozenset[str] = frozenset()
    problems: list[str] = field(default_factory=list)


# --- device conditions ---------------------------------------------------------------
# protocol.gatt status bit names -> the agent's condition vocabulary. Several spec bits
# fold into one condition: a technical alarm needs "sensor off", not which of three bits.

_PLX_DEVICE_CONDITIONS = {
    "sensor_disconnected": "sensor-off",
    "sensor_unconnected_to_user": "sensor-off",  # finger out of the clip
    "sensor_displaced": "sensor-off",
    "equipment_malfunction_detected": "sensor-fault",
    "sensor_malfunctioning": "sensor-fault",
    "unknown_sensor_connected": "sensor-fault",
    "inadequate_signal_detected": "poor-signal",
    "poor_signal_detected": "poor-signal",
    "low_perfusion_detected": "poor-signal",
    "erratic_signal_detected": "poor-signal",
    "nonpulsatile_signal_detected": "poor-signal",
    "questionable_pulse_detected": "poor-signal",
    "signal_processing_irregularity_detected": "poor-signal",
    "sensor_interference_detected": "poor-signal",
}
_PLX_MEASUREMENT_CONDITIONS = {
    "invalid_measurement_detected": "invalid-measurement",
    "questionable_measurement_detected": "questionable-measurement",
    "measurement_unavailable": "measurement-unavailable",
    "calibration_ongoing": "calibrating",
    "early_estimated_data": "early-estimate",
    "data_for_demonstration": "demo-data",
    "data_for_testing": "test-data",
}
_BP_CONDITIONS = {
    "body_movement": "motion",
    "cuff_too_loose": "cuff-loose",
    "irregular_pulse": "irregular-pulse",
    "improper_position": "improper-position",
}
_GLUCOSE_CONDITIONS = {
    "device_battery_low": "battery-low",
    "sensor_malfunction": "sensor-fault",
    "general_device_fault": "sensor-fault",
    "sample_size_insufficient": "measurement-error",
    "strip_insertion_error": "measurement-error",
    "strip_type_incorrect": "measurement-error",
    "read_interrupted": "measurement-error",
    "result_too_high": "result-above-range",
    "result_too_low": "result-below-range",
    "temperature_too_high": "temperature-out-of-range",
    "temperature_too_low": "temperature-out-of-range",
    "time_fault": "device-clock-fault",
}


def _mapped(status: Mapping[str, Any] | None, table: Mapping[str, str]) -> set[str]:
    if not status:
        return set()
    return {table[name] for name in status.get("set", ()) if name in table}


def conditions_of(decoded: Mapping[str, Any]) -> frozenset[str]:
    """The device conditions a decoded characteristic reports (empty: measuring normally)."""
    kind = decoded.get("characteristic")
    found: set[str] = set()
    if kind == "heart_rate":
        if decoded.get("sensor_contact") is False:  # None: the strap cannot tell
            found.add("no-sensor-contact")
    elif kind in ("plx_spot_check", "plx_continuous"):
        found |= _mapped(decoded.get("device_sensor_status"), _PLX_DEVICE_CONDITIONS)
        found |= _mapped(decoded.get("measurement_status"), _PLX_MEASUREMENT_CONDITIONS)
        if decoded.get("device_clock_not_set"):
            found.add("device-clock-not-set")
    elif kind == "blood_pressure":
        status = decoded.get("measurement_status")
        found |= _mapped(status, _BP_CONDITIONS)
        if status and status.get("pulse_rate_range") in ("above_upper_limit", "below_lower_limit"):
            found.add("pulse-rate-out-of-range")
    elif kind == "glucose":
        found |= _mapped(decoded.get("sensor_status"), _GLUCOSE_CONDITIONS)
    return frozenset(found)


def _is_stored(decoded: Mapping[str, Any], stored: bool) -> bool:
    status = decoded.get("measurement_status")
    from_memory = bool(status) and "data_from_measurement_storage" in status.get("set", ())
    return stored or from_memory


# --- time ---------------------------------------------------------------------------------


def device_datetime(timestamp: Mapping[str, Any] | None) -> datetime.datetime | None:
    """A protocol.gatt timestamp dict as a naive datetime; None if absent or date unknown."""
    if not timestamp or None in (
        timestamp.get("year"),
        timestamp.get("month"),
        timestamp.get("day"),
    ):
        return None
    return datetime.datetime(
        timestamp["year"],
        timestamp["month"],
        timestamp["day"],
        timestamp["hour"],
        timestamp["minute"],
        timestamp["second"],
    )


def _posix(moment: datetime.datetime, zone: datetime.tzinfo | None) -> float:
    # Device clocks are local wall clocks; a naive datetime's timestamp() uses the
    # gateway's local zone, which is where the patient and the device are.
    return (moment.replace(tzinfo=zone) if zone is not None else moment).timestamp()


def _timing(
    decoded: Mapping[str, Any],
    received_at: float,
    stored: bool,
    max_clock_skew_s: float,
    zone: datetime.tzinfo | None,
) -> tuple[float, set[str], str | None, float | None]:
    """(time to file under, time flags, device time text, clock offset)."""
    flags: set[str] = {"stored"} if stored else set()
    has_timestamp = "timestamp" in decoded and decoded["timestamp"] is not None
    moment = device_datetime(decoded.get("timestamp"))
    if moment is None:
        if has_timestamp or stored:
            flags.add("device-time-unknown")
        return received_at, flags, None, None
    device_time = _posix(moment, zone)
    offset = device_time - received_at
    if stored:
        return device_time, flags, moment.isoformat(), offset
    # A live value was measured just now: a timestamp far from now is a wrong device clock.
    if abs(offset) > max_clock_skew_s:
        flags.add("clock-skew")
    return received_at, flags, moment.isoformat(), offset


# --- readings -----------------------------------------------------------------------------


def interpret(
    decoded: Mapping[str, Any],
    *,
    received_at: float,
    stored: bool = False,
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
    zone: datetime.tzinfo | None = None,
) -> Interpretation:
    """Readings, conditions and problems of one decoded characteristic value.

    `stored`: the value is a record from the device's memory (glucose via RACP); PLX
    values flagged "data from measurement storage" count as stored too. `zone`: the time
    zone of device clocks (None: the gateway's local zone). A value outside what
    protocol.vitals calls possible is not a reading: it is listed in `problems`.
    """
    conditions = conditions_of(decoded)
    stored = _is_stored(decoded, stored)
    time, time_flags, device_time, offset = _timing(
        decoded, received_at, stored, max_clock_skew_s, zone
    )
    flags = frozenset(conditions | time_flags)
    source = str(decoded.get("characteristic"))
    sequence = decoded.get("sequence_number")
    readings: list[Reading] = []
    problems: list[str] = []
    for entry in decoded.get("values", ()):
        quantity = entry["n"]
        unit = _UNIT_TOKENS.get(entry["u"], entry["u"])
        special = entry.get("special")
        reported = entry.get("reported")
        value: float | None = None
        if special is None:
            value = float(entry["v"])
            try:
                vitals.check_value(quantity, value, unit)
            except ValidationError as exc:
                problems.append(f"{source}.{quantity}: {exc.reason}")
                continue
        readings.append(
            Reading(
                quantity=quantity,
                value=value,
                unit=unit,
                time=time,
                received_at=received_at,
                source=source,
                special=special,
                flags=flags,
                device_time=device_time,
                clock_offset_s=offset,
                device_seq=sequence,
                reported=None if reported is None else (reported["v"], reported["u"]),
            )
        )
    return Interpretation(readings, conditions, problems)
