"""Readings -> an HL7 FHIR R4 Bundle of vital-signs Observations, Devices and Provenance.

Pure: no files, no clock, no keys. The caller (source.py, the `vitalbridge export fhir`
command, tests) hands in decoded readings, what the registry knows about each device and the
export time; the result is a JSON-ready dict plus a summary. The same input always gives the
same bytes: every fullUrl is a name-based UUID of what the resource stands for.

Decisions (docs/fhir.md has the reasoning and the full mapping table):

* Bundle type "transaction" (default) with conditional creates, so the file can be POSTed to
  an EMR's FHIR endpoint as one all-or-nothing unit and a second export of overlapping
  readings creates nothing twice; "collection" is available for viewers.
* One Observation per reading, following the base vital-signs profile and the specific one
  (heartrate, oxygensat, bodytemp, resprate, bodyweight); systolic + diastolic (+ mean) of
  one cuff measurement become one bp panel (85354-9) with components. Glucose is not a FHIR
  vital sign: category laboratory, no vital-signs profile.
* Provenance (sealed / attested / manual) is a Provenance resource per journaled message,
  with standard agent roles, plus a meta.tag on each Observation for filtering.
* A special value (NaN, NRes, +/-INF, measurement unsuccessful), a non-finite or impossible
  number, or a reading flagged as no measurement (sensor off...) becomes a dataAbsentReason,
  never a number. Other flags become Observation.note text and meta.tag codes.
"""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from protocol import vitals
from protocol.errors import ValidationError

FHIR_VERSION = "4.0.1"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MDC = "urn:iso:std:iso:11073:10101"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
URI = "urn:ietf:rfc:3986"  # Identifier.system for identifiers that are URIs themselves
PROFILE_BASE = "http://hl7.org/fhir/StructureDefinition/"
VITAL_SIGNS_PROFILE = PROFILE_BASE + "vitalsigns"
VITAL_SIGNS = "vital-signs"
LABORATORY = "laboratory"

# Our own systems live under a configurable base: the deploying organisation's canonical URL.
DEFAULT_CANONICAL_BASE = "https://vitalbridge.example/fhir"
VERDICTS = ("sealed", "attested", "manual")
BUNDLE_TYPES = ("transaction", "collection")

# Observation.value is replaced by a dataAbsentReason for these flags: the device itself said
# the number is no measurement (an oximeter reports SpO2 0 % with the finger out of the clip).
VOID_FLAGS = frozenset({"sensor-off", "sensor-fault", "invalid-measurement",
                        "measurement-unavailable", "measurement-error"})
# Readings flagged like this are never sent to a patient record.
EXCLUDED_FLAGS = frozenset({"demo-data", "test-data"})
# The flag that names who entered a manual reading: "entered-by:<actor>".
ENTERED_BY = "entered-by:"

FLAG_NOTES = {
    "cert-expired": "The device certificate had expired when this reading was received.",
    "cert-not-yet-valid": "The device certificate was not yet valid when this reading was "
                          "received.",
    "cert-revoked": "The device certificate had been revoked when this reading was received.",
    "calibration-overdue": "The device's calibration was overdue when this reading was taken.",
    "calibration-unknown": "The device's calibration due date is not recorded.",
    "calibration-due-soon": "The device's calibration falls due soon.",
    "registration-expired": "The device's regulatory registration had expired.",
    "registration-missing": "The device has no regulatory registration number on record.",
    "registration-unknown": "The validity of the device's regulatory registration is not "
                            "recorded.",
    "clock-skew": "The device clock differed from the gateway clock by more than the allowed "
                  "skew; the time is the gateway's.",
    "stored": "Taken from the device's memory, not live; the time is the device's own.",
    "device-time-unknown": "The device sent no usable time; the time is when the gateway "
                           "received it.",
    "poor-signal": "The device reported a poor signal.",
    "motion": "The device reported patient movement during the measurement.",
    "questionable-measurement": "The device marked this measurement as questionable.",
    "early-estimate": "The device marked this value as an early estimate.",
    "calibrating": "The device was calibrating.",
    "cuff-loose": "The device reported a loose cuff.",
    "irregular-pulse": "The device reported an irregular pulse.",
    "improper-position": "The device reported an improper measurement position.",
    "battery-low": "The device battery was low.",
}
VOID_NOTE = ("The device reported this value together with '%s': it is not a measurement, "
             "so no value is exported.")

# IEEE 11073-20601 special values (protocol.gatt.ieee11073 names) and WSS "unsuccessful".
SPECIAL_ABSENT_REASONS = {
    "nan": "not-a-number",
    "+inf": "positive-infinity",
    "-inf": "negative-infinity",
    "nres": "unsupported",  # the device cannot represent the value at its resolution
    "reserved": "error",
    "unsuccessful": "error",
}
ABSENT_REASON_DISPLAY = {
    "unknown": "Unknown",
    "error": "Error",
    "unsupported": "Unsupported",
    "not-a-number": "Not a Number (NaN)",
    "positive-infinity": "Positive Infinity (PINF)",
    "negative-infinity": "Negative Infinity (NINF)",
}

# ------------------------------------------------------------------ the vocabulary table


@dataclass(frozen=True, slots=True)
class Coding:
    system: str
    code: str
    display: str

    def as_fhir(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}


@dataclass(frozen=True, slots=True)
class VitalCode:
    """How a quantity, in one wire unit, is exported."""

    quantity: str  # protocol.vitals name
    unit: str  # wire unit token (protocol.vitals)
    loinc: tuple[Coding, ...]  # first: the code the profile fixes; then more specific ones
    mdc: Coding | None
    ucum: str  # valueQuantity.code
    unit_display: str  # valueQuantity.unit
    profile: str | None  # specific FHIR profile; None for components and non-vital signs
    category: str  # observation-category code
    component_only: bool = False  # exported only inside the bp panel

    @property
    def profiles(self) -> tuple[str, ...]:
        if self.category != VITAL_SIGNS:
            return ()
        if self.profile is None or self.profile == VITAL_SIGNS_PROFILE:
            return (VITAL_SIGNS_PROFILE,)
        return (VITAL_SIGNS_PROFILE, self.profile)


def _loinc(code: str, display: str) -> Coding:
    return Coding(LOINC, code, display)


def _mdc(quantity: str) -> Coding | None:
    # Codes come from the one vocabulary (protocol.vitals); display = the reference id.
    entry = vitals.QUANTITIES[quantity]["mdc"]
    return None if entry is None else Coding(MDC, str(entry[1]), entry[0])


def _vital(quantity: str, unit: str, loinc: Sequence[Coding], ucum: str, unit_display: str,
           profile: str | None, category: str = VITAL_SIGNS,
           component_only: bool = False) -> VitalCode:
    return VitalCode(quantity, unit, tuple(loinc), _mdc(quantity), ucum, unit_display,
                     None if profile is None else PROFILE_BASE + profile, category,
                     component_only)


HEART_RATE = _loinc("8867-4", "Heart rate")
VOCABULARY: dict[tuple[str, str], VitalCode] = {
    (v.quantity, v.unit): v
    for v in (
        _vital("hr", "beat/min", [HEART_RATE], "/min", "beats/minute", "heartrate"),
        _vital("pr", "beat/min", [HEART_RATE, _loinc("8889-8", "Heart rate by Pulse oximetry")],
               "/min", "beats/minute", "heartrate"),
        _vital("spo2", "%", [_loinc("2708-6", "Oxygen saturation in Arterial blood"),
                             _loinc("59408-5", "Oxygen saturation in Arterial blood by Pulse "
                                               "oximetry")],
               "%", "%", "oxygensat"),
        _vital("temp", "Cel", [_loinc("8310-5", "Body temperature")], "Cel", "°C", "bodytemp"),
        _vital("rr", "1/min", [_loinc("9279-1", "Respiratory rate")], "/min", "breaths/minute",
               "resprate"),
        _vital("weight", "kg", [_loinc("29463-7", "Body weight")], "kg", "kg", "bodyweight"),
        _vital("sys", "mm[Hg]", [_loinc("8480-6", "Systolic blood pressure")], "mm[Hg]", "mmHg",
               None, component_only=True),
        _vital("dia", "mm[Hg]", [_loinc("8462-4", "Diastolic blood pressure")], "mm[Hg]",
               "mmHg", None, component_only=True),
        # Mean pressure: a bp panel component when measured with sys/dia, else on its own
        # under the base vital-signs profile (there is no specific R4 profile for it).
        _vital("map", "mm[Hg]", [_loinc("8478-0", "Mean blood pressure")], "mm[Hg]", "mmHg",
               "vitalsigns"),
        _vital("glucose", "mmol/L", [_loinc("15074-8", "Glucose [Moles/volume] in Blood")],
               "mmol/L", "mmol/L", None, category=LABORATORY),
        _vital("glucose", "mg/dL", [_loinc("2339-0", "Glucose [Mass/volume] in Blood")],
               "mg/dL", "mg/dL", None, category=LABORATORY),
    )
}
BP_PANEL = _loinc("85354-9", "Blood pressure panel with all children optional")
BP_PANEL_MDC = Coding(MDC, "150020", "MDC_PRESS_BLD_NONINV")
BP_PROFILE = PROFILE_BASE + "bp"
BP_COMPONENTS = ("sys", "dia", "map")
BP_REQUIRED = ("sys", "dia")  # the bp profile's SystolicBP and DiastolicBP slices (1..1)
# Firmware version type (PHD IG value set MDCDeviceVersionTypes).
FIRMWARE_VERSION = Coding(MDC, "531976", "MDC_ID_PROD_SPEC_FW")
# Wire quantities never exported: device properties or no verified code (docs/fhir.md).
NOT_EXPORTED = ("pi", "bat", "sq")


def vital_code(quantity: str, unit: str) -> VitalCode | None:
    return VOCABULARY.get((quantity, unit))


# ------------------------------------------------------------------ input


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """The journaled message a reading came in: the unit of provenance."""

    digest: bytes  # SHA-256 of the journaled payload (= MQTT correlation data)
    verdict: str  # sealed | attested | manual
    received_at: float  # gateway wall time, POSIX seconds
    device_id: str | None = None  # registry device id; None: entered without a device
    flags: tuple[str, ...] = ()  # journal flags, without the entered-by one
    entered_by: str | None = None  # manual: the actor who entered it ("clinician:c-1234")

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValidationError("verdict", f"must be one of {', '.join(VERDICTS)}")
        if not isinstance(self.digest, bytes) or len(self.digest) != 32:
            raise ValidationError("digest", "must be the 32-byte SHA-256 of the message")
        if self.device_id is None and self.verdict != "manual":
            raise ValidationError("device_id", f"a {self.verdict} message comes from a device")


@dataclass(frozen=True, slots=True)
class ExportReading:
    """One reading to export. `value` None means the device sent a special value, named in
    `special` (protocol.gatt.ieee11073 names or "unsuccessful")."""

    key: str  # unique and stable, e.g. "<message digest hex>/<seq>"
    quantity: str
    value: float | int | None
    unit: str
    time: float  # POSIX seconds the reading is filed under
    message: MessageInfo
    special: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What the registry knows about a device; only `device_id` is required."""

    device_id: str
    urns: tuple[str, ...] = ()  # SenML base names seen, without the trailing ':'
    model: str | None = None
    serial: str | None = None
    firmware: str | None = None
    registration_number: str | None = None
    registration_valid_until: int | None = None
    calibration_due: int | None = None
    status: str | None = None  # registry: active | retired | compromised


@dataclass(frozen=True, slots=True)
class ExportConfig:
    patient_system: str | None = None  # default: <canonical_base>/sid/patient-pseudonym
    canonical_base: str = DEFAULT_CANONICAL_BASE
    bundle_type: str = "transaction"
    gateway_id: str | None = None  # the gateway that verified/attested/recorded, if known

    def __post_init__(self) -> None:
        if self.bundle_type not in BUNDLE_TYPES:
            raise ValidationError("bundle_type", f"must be one of {', '.join(BUNDLE_TYPES)}")
        for name in ("patient_system", "canonical_base"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or ":" not in value
                                      or any(c.isspace() for c in value)):
                raise ValidationError(name, "must be an absolute URI without spaces")

    @property
    def base(self) -> str:
        return self.canonical_base.rstrip("/")

    @property
    def patient_identifier_system(self) -> str:
        return self.patient_system or f"{self.base}/sid/patient-pseudonym"

    def system(self, name: str) -> str:
        """One of our own code or identifier systems under the canonical base."""
        return f"{self.base}/{name}"


@dataclass(slots=True)
class ExportSummary:
    observations: int = 0
    bp_panels: int = 0
    devices: int = 0
    provenances: int = 0
    absent_values: int = 0  # observations or components exported with a dataAbsentReason
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> readings not exported
    first_time: str | None = None
    last_time: str | None = None

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count

    def as_dict(self) -> dict[str, Any]:
        return {"observations": self.observations, "bp_panels": self.bp_panels,
                "devices": self.devices, "provenances": self.provenances,
                "absent_values": self.absent_values, "skipped": dict(sorted(self.skipped.items())),
                "first_time": self.first_time, "last_time": self.last_time}


@dataclass(frozen=True, slots=True)
class ExportResult:
    bundle: dict[str, Any]
    summary: ExportSummary


# ------------------------------------------------------------------ helpers

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:vitalbridge:fhir-export")


def _urn(kind: str, *parts: str) -> str:
    return "urn:uuid:" + str(uuid.uuid5(_NAMESPACE, "|".join((kind, *parts))))


def fhir_instant(seconds: float) -> str:
    """POSIX seconds -> FHIR instant/dateTime in UTC ("2026-01-01T00:00:00Z", ms if needed)."""
    if not vitals.is_finite(seconds):
        raise ValidationError("time", "must be a finite number of seconds")
    moment = datetime.fromtimestamp(seconds, UTC)
    spec = "seconds" if moment.microsecond == 0 else "milliseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def ni_uri(digest: bytes) -> str:
    """RFC 6920 named-information URI of a SHA-256 digest."""
    return "ni:///sha-256;" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _concept(*codings: Coding | None) -> dict[str, Any]:
    return {"coding": [c.as_fhir() for c in codings if c is not None]}


def _absent(code: str) -> dict[str, Any]:
    return {"coding": [{"system": DATA_ABSENT_REASON, "code": code,
                        "display": ABSENT_REASON_DISPLAY[code]}]}


def _number(value: float | int) -> float | int:
    # An integral float is written as an integer ("97", not "97.0"): same decimal value.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _value_or_absence(reading: ExportReading) -> tuple[float | int | None, str | None, str | None]:
    """(number, dataAbsentReason code, note) for a reading: a number only if it is one."""
    void = sorted(VOID_FLAGS.intersection(reading.message.flags))
    if void:
        return None, "error", VOID_NOTE % void[0]
    value = reading.value
    if value is None:
        reason = SPECIAL_ABSENT_REASONS.get(reading.special or "", "unknown")
        what = reading.special or "no value"
        return None, reason, f"The device reported a special value ({what}) instead of a number."
    if not vitals.is_number(value):
        return None, "error", "The reading carried no number."
    if math.isnan(value):
        return None, "not-a-number", None
    if math.isinf(value):
        return None, "positive-infinity" if value > 0 else "negative-infinity", None
    try:
        vitals.check_value(reading.quantity, value, reading.unit)
    except ValidationError:
        return None, "error", ("The device value was outside the range a patient or a working "
                               "sensor can produce, so it is not exported.")
    return _number(value), None, None


def _quantity(code: VitalCode, value: float | int) -> dict[str, Any]:
    return {"value": value, "unit": code.unit_display, "system": UCUM, "code": code.ucum}


# ------------------------------------------------------------------ the builder


class _Builder:
    def __init__(self, patient: str, devices: Mapping[str, DeviceInfo],
                 config: ExportConfig) -> None:
        self.patient = patient
        self.devices = devices
        self.config = config
        self.summary = ExportSummary()
        self.patient_url = _urn("patient", config.patient_identifier_system, patient)
        self.gateway_url = (None if config.gateway_id is None
                            else _urn("gateway", config.base, config.gateway_id))
        self.device_urls: dict[str, str] = {}
        # message digest -> (message, [observation fullUrls], [reading times])
        self.provenance: dict[bytes, tuple[MessageInfo, list[str], list[float]]] = {}
        self.observations: list[tuple[float, str, str, dict[str, Any]]] = []

    # -- observations ----------------------------------------------------------------------

    def add(self, readings: Sequence[ExportReading]) -> None:
        seen: set[str] = set()
        exportable: list[tuple[ExportReading, VitalCode]] = []
        for reading in readings:
            if reading.key in seen:
                self.summary.skip("duplicate")
                continue
            seen.add(reading.key)
            excluded = sorted(EXCLUDED_FLAGS.intersection(reading.message.flags))
            if excluded:
                self.summary.skip(f"flagged-{excluded[0]}")
                continue
            code = vital_code(reading.quantity, reading.unit)
            if code is None:
                self.summary.skip(f"not-exported-{reading.quantity}")
                continue
            if not vitals.is_finite(reading.time):
                self.summary.skip("no-time")
                continue
            exportable.append((reading, code))
        pressures: dict[tuple[str | None, float], dict[str, list[ExportReading]]] = {}
        for reading, code in exportable:
            if reading.quantity in BP_COMPONENTS:
                key = (reading.message.device_id, reading.time)
                pressures.setdefault(key, {}).setdefault(reading.quantity, []).append(reading)
            else:
                self._single(reading, code)
        for group in pressures.values():
            self._pressures(group)

    def _pressures(self, group: dict[str, list[ExportReading]]) -> None:
        """Pair the sys/dia/map readings of one cuff measurement into bp panels (in key order,
        so repeated measurements at one instant pair up deterministically)."""
        for quantity in group:
            group[quantity].sort(key=lambda r: r.key)
        if not any(group.get(q) for q in BP_REQUIRED):
            for reading in group.get("map", []):  # a mean pressure measured on its own
                self._single(reading, VOCABULARY[("map", reading.unit)])
            return
        panels = max(len(group.get(q, [])) for q in BP_COMPONENTS)
        for i in range(panels):
            members = {q: group[q][i] for q in BP_COMPONENTS if len(group.get(q, [])) > i}
            self._panel(members)

    def _base(self, kind: str, key: str, messages: Iterable[MessageInfo],
              profiles: Sequence[str], category: str) -> tuple[str, dict[str, Any]]:
        url = _urn(kind, key)
        messages = list({m.digest: m for m in messages}.values())
        tags = [{"system": self.config.system("CodeSystem/provenance-verdict"),
                 "code": verdict} for verdict in sorted({m.verdict for m in messages})]
        tags += [{"system": self.config.system("CodeSystem/reading-flag"), "code": flag}
                 for flag in sorted({f for m in messages for f in m.flags})]
        meta: dict[str, Any] = {}
        if profiles:
            meta["profile"] = list(profiles)
        if tags:
            meta["tag"] = tags
        resource: dict[str, Any] = {"resourceType": "Observation"}
        if meta:
            resource["meta"] = meta
        resource.update({
            "identifier": [{"system": URI, "value": url}],
            "status": "final",
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": category,
                                      "display": ("Vital Signs" if category == VITAL_SIGNS
                                                  else "Laboratory")}]}],
        })
        return url, resource

    def _finish(self, url: str, resource: dict[str, Any], reading: ExportReading,
                messages: Iterable[MessageInfo], notes: list[str], sort_key: str) -> None:
        messages = list({m.digest: m for m in messages}.values())
        resource["subject"] = {"reference": self.patient_url}
        resource["effectiveDateTime"] = fhir_instant(reading.time)
        resource["issued"] = fhir_instant(max(m.received_at for m in messages))
        device_id = reading.message.device_id
        if device_id is not None:
            resource["device"] = {"reference": self._device_url(device_id)}
        for message in messages:
            for flag in message.flags:
                if flag not in VOID_FLAGS:
                    notes.append(FLAG_NOTES.get(flag, f"VitalBridge flag: {flag}."))
            if message.verdict == "manual":
                who = message.entered_by or "a person not recorded by the gateway"
                notes.append(f"Entered manually by {who}.")
        if notes:
            resource["note"] = [{"text": text} for text in dict.fromkeys(notes)]
        for message in messages:
            entry = self.provenance.setdefault(message.digest, (message, [], []))
            entry[1].append(url)
            entry[2].append(reading.time)
        self.observations.append((reading.time, sort_key, url, resource))
        self.summary.observations += 1

    def _single(self, reading: ExportReading, code: VitalCode) -> None:
        url, resource = self._base("observation", reading.key, [reading.message],
                                   code.profiles, code.category)
        resource["code"] = _concept(*code.loinc, code.mdc)
        value, absent, note = _value_or_absence(reading)
        notes = [] if note is None else [note]
        if absent is None:
            resource["valueQuantity"] = _quantity(code, value)  # type: ignore[arg-type]
        else:
            resource["dataAbsentReason"] = _absent(absent)
            self.summary.absent_values += 1
        self._finish(url, resource, reading, [reading.message], notes,
                     f"{code.quantity}|{reading.key}")

    def _panel(self, members: dict[str, ExportReading]) -> None:
        first = next(members[q] for q in BP_COMPONENTS if q in members)
        messages = [members[q].message for q in BP_COMPONENTS if q in members]
        key = "+".join(members[q].key for q in BP_COMPONENTS if q in members)
        url, resource = self._base("bp-panel", key, messages,
                                   (VITAL_SIGNS_PROFILE, BP_PROFILE), VITAL_SIGNS)
        resource["code"] = _concept(BP_PANEL, BP_PANEL_MDC)
        notes: list[str] = []
        components = []
        for quantity in BP_COMPONENTS:
            reading = members.get(quantity)
            if reading is None and quantity not in BP_REQUIRED:
                continue
            code = VOCABULARY[(quantity, "mm[Hg]")]
            component: dict[str, Any] = {"code": _concept(*code.loinc, code.mdc)}
            if reading is None:  # the profile requires the slice: say why it is empty
                value, absent, note = None, "unknown", None
            else:
                value, absent, note = _value_or_absence(reading)
            if note is not None:
                notes.append(f"{code.loinc[0].display}: {note}")
            if absent is None:
                component["valueQuantity"] = _quantity(code, value)  # type: ignore[arg-type]
            else:
                component["dataAbsentReason"] = _absent(absent)
                self.summary.absent_values += 1
            components.append(component)
        resource["component"] = components
        self._finish(url, resource, first, messages, notes, f"bp|{key}")
        self.summary.bp_panels += 1

    # -- devices, patient, provenance ------------------------------------------------------

    def _device_url(self, device_id: str) -> str:
        url = self.device_urls.get(device_id)
        if url is None:
            url = self.device_urls[device_id] = _urn("device", self.config.base, device_id)
        return url

    def device_resource(self, device_id: str) -> dict[str, Any]:
        info = self.devices.get(device_id) or DeviceInfo(device_id)
        identifiers: list[dict[str, Any]] = [
            {"system": self.config.system("sid/device-id"), "value": device_id}]
        identifiers += [{"system": URI, "value": urn} for urn in info.urns]
        if info.registration_number:
            registration: dict[str, Any] = {
                "type": {"text": "Regulatory registration number"},
                "system": self.config.system("sid/device-registration"),
                "value": info.registration_number}
            if info.registration_valid_until is not None:
                registration["period"] = {"end": fhir_instant(info.registration_valid_until)}
            identifiers.append(registration)
        resource: dict[str, Any] = {"resourceType": "Device", "identifier": identifiers,
                                    "status": {"active": "active", "retired": "inactive",
                                               "compromised": "inactive"}.get(
                                                   info.status or "", "unknown")}
        if info.model:
            resource["deviceName"] = [{"name": info.model, "type": "model-name"}]
            resource["modelNumber"] = info.model
        if info.serial:
            resource["serialNumber"] = info.serial
        if info.firmware:
            resource["version"] = [{"type": _concept(FIRMWARE_VERSION), "value": info.firmware}]
        notes = []
        if info.calibration_due is not None:
            notes.append(f"Calibration due {fhir_instant(info.calibration_due)}.")
        if info.status == "compromised":
            notes.append("The gateway registry marks this device as compromised.")
        if notes:
            resource["note"] = [{"text": text} for text in notes]
        return resource

    def gateway_resource(self) -> dict[str, Any]:
        return {"resourceType": "Device",
                "identifier": [{"system": self.config.system("sid/gateway-id"),
                                "value": self.config.gateway_id}],
                "status": "active",
                "deviceName": [{"name": f"VitalBridge gateway {self.config.gateway_id}",
                                "type": "user-friendly-name"}]}

    def patient_resource(self) -> dict[str, Any]:
        # A pseudonym only: no name, contact, birth date or address ever leaves the gateway.
        return {"resourceType": "Patient",
                "identifier": [{"system": self.config.patient_identifier_system,
                                "value": self.patient}]}

    def provenance_resource(self, message: MessageInfo, targets: list[str],
                            times: list[float]) -> dict[str, Any]:
        gateway_role = {"sealed": ("verifier", "Verifier"), "attested": ("attester", "Attester"),
                        "manual": ("assembler", "Assembler")}[message.verdict]
        agents = []
        if message.verdict == "manual":
            who: dict[str, Any] = {"display": message.entered_by or "not recorded"}
            if message.entered_by:
                who["identifier"] = {"system": self.config.system("sid/actor"),
                                     "value": message.entered_by}
            agents.append(self._agent("enterer", "Enterer", who))
        if message.device_id is not None:
            agents.append(self._agent("performer", "Performer",
                                      {"reference": self._device_url(message.device_id)}))
        gateway = ({"reference": self.gateway_url} if self.gateway_url is not None
                   else {"display": "VitalBridge gateway"})
        agents.append(self._agent(*gateway_role, gateway))
        return {
            "resourceType": "Provenance",
            "meta": {"tag": [{"system": self.config.system("CodeSystem/provenance-verdict"),
                              "code": message.verdict}]},
            "target": [{"reference": url} for url in dict.fromkeys(targets)],
            "occurredPeriod": {"start": fhir_instant(min(times)), "end": fhir_instant(max(times))},
            "recorded": fhir_instant(message.received_at),
            "activity": {"coding": [{"system": DATA_OPERATION, "code": "CREATE",
                                     "display": "create"}]},
            "agent": agents,
            "entity": [{"role": "source", "what": {
                "identifier": {"system": URI, "value": ni_uri(message.digest)},
                "display": f"VitalBridge readings message as journaled ({message.verdict}); "
                           "its SHA-256 is the MQTT correlation data"}}],
        }

    @staticmethod
    def _agent(code: str, display: str, who: dict[str, Any]) -> dict[str, Any]:
        return {"type": {"coding": [{"system": PARTICIPANT_TYPE, "code": code,
                                     "display": display}]}, "who": who}

    # -- the bundle ------------------------------------------------------------------------

    def bundle(self, timestamp: float | None) -> dict[str, Any]:
        entries: list[tuple[str, dict[str, Any], str | None]] = []  # url, resource, condition
        if self.observations:
            system = self.config.patient_identifier_system
            entries.append((self.patient_url, self.patient_resource(),
                            f"identifier={quote(system, safe=':/')}|{quote(self.patient)}"))
            for device_id, url in sorted(self.device_urls.items()):
                entries.append((url, self.device_resource(device_id),
                                self._identifier_condition("sid/device-id", device_id)))
            if self.gateway_url is not None and self.provenance:
                entries.append((self.gateway_url, self.gateway_resource(),
                                self._identifier_condition("sid/gateway-id",
                                                           str(self.config.gateway_id))))
        self.summary.devices = len(self.device_urls)
        self.observations.sort(key=lambda o: (o[0], o[1]))
        for _, _, url, resource in self.observations:
            entries.append((url, resource, f"identifier={URI}|{url}"))
        if self.observations:
            self.summary.first_time = self.observations[0][3]["effectiveDateTime"]
            self.summary.last_time = self.observations[-1][3]["effectiveDateTime"]
        for digest, (message, targets, times) in sorted(self.provenance.items()):
            entries.append((_urn("provenance", digest.hex()),
                            self.provenance_resource(message, targets, times), None))
            self.summary.provenances += 1
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": self.config.bundle_type}
        if timestamp is not None:
            bundle["timestamp"] = fhir_instant(timestamp)
        bundle["entry"] = [self._entry(url, resource, condition)
                           for url, resource, condition in entries]
        return bundle

    def _identifier_condition(self, system: str, value: str) -> str:
        return f"identifier={quote(self.config.system(system), safe=':/')}|{quote(value)}"

    def _entry(self, url: str, resource: dict[str, Any], condition: str | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"fullUrl": url, "resource": resource}
        if self.config.bundle_type == "transaction":
            request = {"method": "POST", "url": resource["resourceType"]}
            if condition is not None:  # a second export of the same data creates nothing new
                request["ifNoneExist"] = condition
            entry["request"] = request
        return entry


def build_bundle(patient: str, readings: Sequence[ExportReading],
                 devices: Mapping[str, DeviceInfo] | None = None,
                 config: ExportConfig | None = None,
                 timestamp: float | None = None) -> ExportResult:
    """The FHIR R4 Bundle for `patient`'s `readings` (see the module docstring).

    `patient` is the pseudonymous id; `devices` maps registry device ids to what the registry
    knows (a device without an entry still gets a Device resource with its identifiers);
    `timestamp` (POSIX seconds) becomes Bundle.timestamp. Raises ValidationError for a
    bad configuration or patient id; readings that cannot be exported are counted in
    `summary.skipped`, never silently dropped.
    """
    config = config or ExportConfig()
    if not isinstance(patient, str) or not patient or any(c.isspace() for c in patient):
        raise ValidationError("patient", "must be a pseudonymous id without spaces")
    builder = _Builder(patient, devices or {}, config)
    builder.add(readings)
    return ExportResult(builder.bundle(timestamp), builder.summary)
