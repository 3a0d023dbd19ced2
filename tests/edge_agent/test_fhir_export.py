"""FHIR R4 export: a scenario's readings, sealed and journaled like the gateway does, come
out of the journal as a Bundle that fhir.resources parses and our own code/unit checks pass;
mutations that fhir.resources accepts (wrong LOINC, wrong UCUM, no effective time...) are
caught by our checks; special values become dataAbsentReason; manual and attested
provenance is present; other patients' readings never leak in."""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.alarms import scenarios
from edge_agent.cli import CommandError
from edge_agent.commands import export as export_command
from edge_agent.export import fhir, fhir_checks, source
from edge_agent.journal.store import JournalStore, NewMessage
from edge_agent.registry import FILE_NAME as REGISTRY_FILE
from edge_agent.registry import Registry
from protocol import cose, crypto, cwt, sealing, senml, uplink, vitals

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 86400
START = T0 + 60  # scenario start
GW = "gw-1"
PATIENT = scenarios.PATIENT
OTHER = "P-OTHER-2"
ENTERER = "clinician:c-1234"
BAND_MOVES = START + 100  # the chest band goes to the other patient here


def _seed(label: str) -> bytes:
    return crypto.sha256(b"fhir-export-test:" + label.encode())


CA_SEED, GW_SEED = _seed("ca"), _seed("gw")


# ------------------------------------------------------------------ fixtures


def _make_registry(path: Path) -> None:
    now, year = T0 - DAY, 365 * DAY
    reg = Registry.open(path)
    ca_pub = crypto.ed25519_public_key(CA_SEED)
    reg.install_org_ca(cwt.issue_cwt(CA_SEED, "Test Org", "Test Org", ca_pub, now,
                                     now + 3 * year, role="ca", cti=b"ca"),
                       actor="installer", now=now)
    reg.enroll_gateway(GW, cwt.issue_cwt(
        CA_SEED, "Test Org", GW, crypto.ed25519_public_key(GW_SEED), now, now + 2 * year,
        agreement_key=crypto.x25519_public_key(_seed("gw-agree")), role="gateway"),
        actor="tech-ann", now=now)
    devices = (scenarios.OXIMETER, scenarios.BAND, scenarios.PATCH, scenarios.CUFF,
               "std-scale-1", "spot-1", "sim-ox-2")
    for device in devices:
        cert = cwt.issue_cwt(GW_SEED, GW, device, crypto.ed25519_public_key(_seed(device)), now,
                             now + year, role="device",
                             agreement_key=crypto.x25519_public_key(_seed(device + "-agree")))
        # The temperature patch is past its calibration date: its readings are flagged.
        calibration = T0 if device == scenarios.PATCH else now + year
        reg.enroll_device(device, GW, cert, model=f"VB-{device.upper()}", serial=f"SN-{device}",
                          firmware="1.2.3", registration_number="REG-42",
                          registration_valid_until=now + 2 * year, calibration_due=calibration,
                          actor="tech-ann", now=now)
    for patient in (PATIENT, OTHER):
        reg.add_patient(patient, actor="clinician:c-1", now=now)
    for device in devices:
        if device == "sim-ox-2":
            reg.bind(device, OTHER, since=T0, actor="tech-ann")
        elif device == scenarios.BAND:
            reg.bind(device, PATIENT, since=T0, until=BAND_MOVES, actor="tech-ann")
            reg.bind(device, OTHER, since=BAND_MOVES, actor="tech-ann")
        else:
            reg.bind(device, PATIENT, since=T0, actor="tech-ann")
    reg.close()


class _Journaler:
    """Seals readings per device and second like a device does, journals them like the
    gateway does (verdict, currency flags from the registry)."""

    def __init__(self, journal: JournalStore, registry: Registry) -> None:
        self.journal, self.registry = journal, registry
        self.seqs: dict[str, int] = {}
        self.messages: list[NewMessage] = []

    def _records(self, device: str, rows: list[tuple[str, float, float]]) -> list[dict]:
        records = []
        for quantity, value, t in rows:
            seq = self.seqs.get(device, 0) + 1
            self.seqs[device] = seq
            unit = "mmol/L" if quantity == "glucose" else None
            records.append(senml.make_record(quantity, value, unit, time=t, seq=seq))
        return records

    def add(self, device: str, rows: list[tuple[str, float, float]], verdict: str = "sealed",
            flags: tuple[str, ...] = ()) -> None:
        records = self._records(device, rows)
        base = f"urn:dev:vb:{device}:"
        if verdict == "sealed":
            sealed = sealing.seal_batch(_seed("session-" + device), b"kid-" + device[:4].encode(),
                                        records, base)
        else:  # standard devices and manual entries: the gateway signs with its own key
            pack = senml.encode_pack(records, base_name=base)
            sealed = cose.sign1_create(GW_SEED, pack, kid=b"gw-key-1",
                                       content_type=cose.CT_SENML_CBOR)
        received = max(t for _, _, t in rows) + 0.25
        currency = self.registry.device(device).currency_flags(int(received))
        payload = uplink.encode_readings(device, sealed, verdict, int(received * 1000))
        self.messages.append(NewMessage(
            "readings", device, payload, verdict=verdict, flags=tuple(currency) + flags,
            first_seq=records[0][senml.SEQ], last_seq=records[-1][senml.SEQ],
            count=len(records), received_at=received))

    def commit(self) -> None:
        self.journal.append(self.messages)


SCENARIO = scenarios.build("hypotension", start=START)


@pytest.fixture(scope="module")
def agent_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with a registry and a journal holding the hypotension scenario,
    an attested scale reading, manual entries, a finger-off, another patient's readings and
    one corrupt row."""
    data = tmp_path_factory.mktemp("agent")
    _make_registry(data / REGISTRY_FILE)
    journal = JournalStore.open(data / "journal.sqlite3")
    registry = Registry.open(data / REGISTRY_FILE)
    writer = _Journaler(journal, registry)
    groups: dict[tuple[str, float], list[scenarios.Reading]] = {}
    for reading in SCENARIO.readings:
        groups.setdefault((reading.device, reading.time), []).append(reading)
    for (device, t), readings in groups.items():
        rows = [(r.quantity, r.value, t) for r in readings]
        quality = [r.signal_quality for r in readings if r.signal_quality is not None]
        if quality:  # signal quality travels too; it is a device property, not exported
            rows.append(("sq", round(quality[0]), t))
        flags = ("sensor-off",) if any(r.finger_off for r in readings) else ()
        writer.add(device, rows, flags=flags)
    writer.add(scenarios.OXIMETER, [("spo2", 0, START + 250), ("pr", 0, START + 250)],
               flags=("sensor-off",))
    writer.add("std-scale-1", [("weight", 72.4, START + 30)], verdict="attested")
    writer.add("spot-1", [("temp", 38.2, START + 45), ("glucose", 6.1, START + 45)],
               verdict="manual", flags=(fhir.ENTERED_BY + ENTERER,))
    writer.add("sim-ox-2", [("spo2", 91, START + 5), ("pr", 101, START + 5)])
    writer.messages.append(NewMessage(
        "readings", scenarios.PATCH,
        uplink.encode_readings(scenarios.PATCH, b"\xd1\x84garbage", "sealed", START * 1000),
        received_at=START + 1.0))
    writer.commit()
    journal.close()
    registry.close()
    return data


@pytest.fixture(scope="module")
def exported(agent_files: Path) -> tuple[source.PatientReadings, fhir.ExportResult]:
    data = source.read_patient_readings(agent_files / "journal.sqlite3",
                                        agent_files / REGISTRY_FILE, PATIENT, since=T0)
    config = fhir.ExportConfig(patient_system="https://hospital.example/sid/rpm",
                               gateway_id=data.gateway_id)
    return data, fhir.build_bundle(PATIENT, data.readings, data.devices, config, T0 + DAY)


def _resources(bundle: dict, rtype: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def _loinc(obs: dict) -> str:
    return next(c["code"] for c in obs["code"]["coding"] if c["system"] == fhir.LOINC)


def _by_url(bundle: dict) -> dict[str, dict]:
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


# ------------------------------------------------------------------ the scenario export


def test_scenario_export_passes_structure_and_our_checks(exported: Any) -> None:
    _, result = exported
    assert fhir_checks.structural_problems(result.bundle) == []
    assert fhir_checks.check_bundle(result.bundle) == []
    json.dumps(result.bundle, allow_nan=False)  # no NaN can reach the file


def test_every_scenario_reading_is_exported_with_its_value_time_and_code(exported: Any) -> None:
    _, result = exported
    bundle = result.bundle
    found: dict[tuple[str, str], Any] = {}
    for obs in _resources(bundle, "Observation"):
        if "component" in obs:
            for component in obs["component"]:
                key = (_loinc(component), obs["effectiveDateTime"])
                found[key] = component["valueQuantity"]["value"]
        elif "valueQuantity" in obs:
            found[(_loinc(obs), obs["effectiveDateTime"])] = obs["valueQuantity"]["value"]
    codes = {"spo2": "2708-6", "pr": "8867-4", "rr": "9279-1", "temp": "8310-5",
             "sys": "8480-6", "dia": "8462-4"}
    expected = [r for r in SCENARIO.readings
                if not (r.device == scenarios.BAND and r.time >= BAND_MOVES)]
    assert len(expected) > 500
    for reading in expected:
        key = (codes[reading.quantity], fhir.fhir_instant(reading.time))
        assert key in found, reading
        assert found[key] == reading.value, reading
    cuff = sum(1 for r in SCENARIO.readings if r.quantity == "sys")
    assert result.summary.bp_panels == cuff
    assert result.summary.skipped == {"not-exported-sq": sum(
        1 for (d, t) in {(r.device, r.time) for r in SCENARIO.readings}
        if d == scenarios.OXIMETER)}


def test_codes_units_and_profiles_follow_the_vital_signs_profiles(exported: Any) -> None:
    _, result = exported
    seen = {}
    for obs in _resources(result.bundle, "Observation"):
        seen.setdefault(_loinc(obs), obs)
    spo2 = seen["2708-6"]
    assert spo2["meta"]["profile"] == [fhir.VITAL_SIGNS_PROFILE, fhir.PROFILE_BASE + "oxygensat"]
    assert {(c["system"], c["code"]) for c in spo2["code"]["coding"]} == {
        (fhir.LOINC, "2708-6"), (fhir.LOINC, "59408-5"), (fhir.MDC, "150456")}
    assert spo2["valueQuantity"]["system"] == fhir.UCUM and spo2["valueQuantity"]["code"] == "%"
    assert seen["8867-4"]["valueQuantity"]["code"] == "/min"
    assert seen["9279-1"]["valueQuantity"]["code"] == "/min"
    assert seen["8310-5"]["valueQuantity"]["code"] == "Cel"
    assert seen["29463-7"]["valueQuantity"] == {"value": 72.4, "unit": "kg", "system": fhir.UCUM,
                                                "code": "kg"}
    glucose = seen["15074-8"]
    assert glucose["valueQuantity"]["code"] == "mmol/L"
    assert glucose["category"][0]["coding"][0]["code"] == "laboratory"
    assert "profile" not in glucose["meta"]
    panel = seen["85354-9"]
    assert panel["meta"]["profile"] == [fhir.VITAL_SIGNS_PROFILE, fhir.BP_PROFILE]
    assert [_loinc(c) for c in panel["component"]] == ["8480-6", "8462-4"]
    assert all(c["valueQuantity"]["code"] == "mm[Hg]" for c in panel["component"])
    for obs in seen.values():
        if obs is not glucose:
            assert obs["category"][0]["coding"][0] == {
                "system": fhir.OBSERVATION_CATEGORY, "code": "vital-signs",
                "display": "Vital Signs"}


def test_subject_is_the_pseudonym_only_and_devices_carry_registry_facts(exported: Any) -> None:
    _, result = exported
    bundle = result.bundle
    (patient,) = _resources(bundle, "Patient")
    assert patient == {"resourceType": "Patient", "identifier": [
        {"system": "https://hospital.example/sid/rpm", "value": PATIENT}]}
    urls = _by_url(bundle)
    oximeter = next(d for d in _resources(bundle, "Device")
                    if {"system": fhir.URI, "value": "urn:dev:vb:sim-ox-1"} in d["identifier"])
    assert oximeter["serialNumber"] == "SN-sim-ox-1"
    assert oximeter["modelNumber"] == "VB-SIM-OX-1"
    assert oximeter["version"][0]["value"] == "1.2.3"
    assert oximeter["version"][0]["type"]["coding"][0]["code"] == "531976"
    assert any(i.get("value") == "REG-42" for i in oximeter["identifier"])
    for obs in _resources(bundle, "Observation"):
        assert urls[obs["subject"]["reference"]]["resourceType"] == "Patient"
        assert urls[obs["device"]["reference"]]["resourceType"] == "Device"
    ids = {i["value"] for d in _resources(bundle, "Device") for i in d["identifier"]}
    assert "sim-ox-2" not in ids  # the other patient's device is not in this export


def test_other_patients_readings_stay_out_even_from_a_shared_device(
        agent_files: Path, exported: Any) -> None:
    _, result = exported
    rr = [o for o in _resources(result.bundle, "Observation") if _loinc(o) == "9279-1"]
    assert rr and all(o["effectiveDateTime"] < fhir.fhir_instant(BAND_MOVES) for o in rr)
    assert len(rr) == BAND_MOVES - START
    other = source.read_patient_readings(agent_files / "journal.sqlite3",
                                         agent_files / REGISTRY_FILE, OTHER, since=T0)
    quantities = {(r.message.device_id, r.quantity) for r in other.readings}
    assert quantities == {("sim-ox-2", "spo2"), ("sim-ox-2", "pr"), (scenarios.BAND, "rr")}
    assert min(r.time for r in other.readings if r.quantity == "rr") == BAND_MOVES


def test_time_range_is_half_open_on_reading_times(agent_files: Path) -> None:
    data = source.read_patient_readings(agent_files / "journal.sqlite3",
                                        agent_files / REGISTRY_FILE, PATIENT,
                                        since=START + 10, until=START + 20)
    times = {r.time for r in data.readings}
    assert min(times) == START + 10 and max(times) == START + 19


def test_sealed_attested_and_manual_provenance(exported: Any) -> None:
    _, result = exported
    bundle = result.bundle
    urls = _by_url(bundle)
    provenances = _resources(bundle, "Provenance")
    by_target = {t["reference"]: p for p in provenances for t in p["target"]}

    def provenance_of(loinc: str) -> tuple[dict, dict]:
        url, obs = next((u, r) for u, r in urls.items()
                        if r["resourceType"] == "Observation" and _loinc(r) == loinc)
        return obs, by_target[url]

    def roles(provenance: dict) -> dict[str, dict]:
        return {a["type"]["coding"][0]["code"]: a["who"] for a in provenance["agent"]}

    spo2, sealed = provenance_of("2708-6")
    assert sealed["meta"]["tag"][0]["code"] == "sealed"
    assert set(roles(sealed)) == {"performer", "verifier"}
    assert urls[roles(sealed)["verifier"]["reference"]]["identifier"][0]["value"] == GW
    assert {"system": fhir.DEFAULT_CANONICAL_BASE + "/CodeSystem/provenance-verdict",
            "code": "sealed"} in spo2["meta"]["tag"]
    assert sealed["entity"][0]["what"]["identifier"]["value"].startswith("ni:///sha-256;")

    weight, attested = provenance_of("29463-7")
    assert attested["meta"]["tag"][0]["code"] == "attested"
    assert set(roles(attested)) == {"performer", "attester"}

    temp_obs = [o for o in _resources(bundle, "Observation")
                if _loinc(o) == "8310-5" and "Entered manually by " + ENTERER + "." in
                [n["text"] for n in o.get("note", [])]]
    assert len(temp_obs) == 1 and temp_obs[0]["valueQuantity"]["value"] == 38.2
    glucose, manual = provenance_of("15074-8")
    assert manual["meta"]["tag"][0]["code"] == "manual"
    enterer = roles(manual)["enterer"]
    assert enterer["identifier"]["value"] == ENTERER
    assert "assembler" in roles(manual)


def test_flags_become_notes_and_tags_and_finger_off_has_no_value(exported: Any) -> None:
    _, result = exported
    observations = _resources(result.bundle, "Observation")
    patch = [o for o in observations if _loinc(o) == "8310-5" and o["effectiveDateTime"]
             != fhir.fhir_instant(START + 45)]
    assert patch and all(
        {"text": fhir.FLAG_NOTES["calibration-overdue"]} in o["note"] for o in patch)
    assert all(any(t["code"] == "calibration-overdue" for t in o["meta"]["tag"]) for o in patch)
    off = [o for o in observations if o["effectiveDateTime"] == fhir.fhir_instant(START + 250)]
    assert {_loinc(o) for o in off} == {"2708-6", "8867-4"}
    for obs in off:
        assert "valueQuantity" not in obs
        assert obs["dataAbsentReason"]["coding"][0]["code"] == "error"
        assert "sensor-off" in obs["note"][0]["text"]


def test_undecodable_journal_row_is_reported_not_dropped(exported: Any) -> None:
    data, _ = exported
    assert len(data.skipped) == 1
    assert data.skipped[0].device_id == scenarios.PATCH
    assert "cannot be decoded" in data.skipped[0].reason


def test_export_is_deterministic_and_transaction_entries_are_conditional(exported: Any) -> None:
    data, result = exported
    config = fhir.ExportConfig(patient_system="https://hospital.example/sid/rpm",
                               gateway_id=data.gateway_id)
    again = fhir.build_bundle(PATIENT, data.readings, data.devices, config, T0 + DAY)
    assert json.dumps(again.bundle) == json.dumps(result.bundle)
    for entry in result.bundle["entry"]:
        assert entry["request"]["method"] == "POST"
        assert entry["request"]["url"] == entry["resource"]["resourceType"]
        if entry["resource"]["resourceType"] != "Provenance":
            assert entry["request"]["ifNoneExist"].startswith("identifier=")
    collection = fhir.build_bundle(PATIENT, data.readings[:20], data.devices,
                                   fhir.ExportConfig(bundle_type="collection"))
    assert collection.bundle["type"] == "collection"
    assert all("request" not in e for e in collection.bundle["entry"])
    assert fhir_checks.check_bundle(collection.bundle) == []


# ------------------------------------------------------------------ mutations


def _message(verdict: str = "sealed", flags: tuple[str, ...] = (), device: str | None = "ox-1",
             label: str = "m") -> fhir.MessageInfo:
    return fhir.MessageInfo(hashlib.sha256(label.encode()).digest(), verdict, T0 + 1.0, device,
                            flags)


def _small_bundle() -> dict:
    message = _message()
    readings = [
        fhir.ExportReading("m/0", "spo2", 97, "%", T0, message),
        fhir.ExportReading("m/1", "pr", 72, "beat/min", T0, message),
        fhir.ExportReading("m/2", "sys", 121, "mm[Hg]", T0, message),
        fhir.ExportReading("m/3", "dia", 79, "mm[Hg]", T0, message),
        fhir.ExportReading("m/4", "glucose", 101, "mg/dL", T0, message),
    ]
    return fhir.build_bundle("P-1234", readings, {}, fhir.ExportConfig(), T0).bundle


def _observation(bundle: dict, loinc: str) -> dict:
    return next(o for o in _resources(bundle, "Observation") if _loinc(o) == loinc)


def _set_loinc(code: str) -> Callable[[dict], None]:
    def mutate(bundle: dict) -> None:
        _observation(bundle, "2708-6")["code"]["coding"][0]["code"] = code
    return mutate


def _set_ucum(code: str) -> Callable[[dict], None]:
    def mutate(bundle: dict) -> None:
        _observation(bundle, "2708-6")["valueQuantity"]["code"] = code
    return mutate


def _drop(loinc: str, key: str) -> Callable[[dict], None]:
    def mutate(bundle: dict) -> None:
        del _observation(bundle, loinc)[key]
    return mutate


def _name_patient(bundle: dict) -> None:
    _resources(bundle, "Patient")[0]["name"] = [{"family": "Doe"}]


def _dangling_device(bundle: dict) -> None:
    _observation(bundle, "8867-4")["device"] = {
        "reference": "urn:uuid:00000000-0000-4000-8000-000000000000"}


def _value_and_absence(bundle: dict) -> None:
    _observation(bundle, "8867-4")["dataAbsentReason"] = {"coding": [
        {"system": fhir.DATA_ABSENT_REASON, "code": "error"}]}


def _drop_diastolic(bundle: dict) -> None:
    panel = _observation(bundle, "85354-9")
    panel["component"] = [c for c in panel["component"] if _loinc(c) != "8462-4"]


def _systolic_alone(bundle: dict) -> None:
    _observation(bundle, "85354-9")["code"]["coding"] = [
        {"system": fhir.LOINC, "code": "8480-6"}]
    del _observation(bundle, "8480-6")["component"]


def _glucose_as_vital_sign(bundle: dict) -> None:
    _observation(bundle, "2339-0")["category"][0]["coding"][0]["code"] = "vital-signs"


def _glucose_wrong_unit_for_code(bundle: dict) -> None:
    _observation(bundle, "2339-0")["valueQuantity"]["code"] = "mmol/L"


def _drop_provenance(bundle: dict) -> None:
    bundle["entry"] = [e for e in bundle["entry"]
                       if e["resource"]["resourceType"] != "Provenance"]


def _invalid_status(bundle: dict) -> None:
    _observation(bundle, "8867-4")["status"] = "done"


def _day_only(bundle: dict) -> None:
    _observation(bundle, "8867-4")["effectiveDateTime"] = "2026-01-01"


def _heart_rate_coded_spo2(bundle: dict) -> None:
    obs = _observation(bundle, "2708-6")
    obs["code"]["coding"] = [{"system": fhir.LOINC, "code": "8867-4"},
                             {"system": fhir.MDC, "code": "150456"}]


MUTATIONS = [
    ("unknown LOINC", _set_loinc("2708-7"), "not in the export vocabulary"),
    ("LOINC of another quantity", _heart_rate_coded_spo2, "name no single quantity"),
    ("wrong UCUM", _set_ucum("/min"), "UCUM unit '/min'"),
    ("UCUM spelled like SenML", _set_ucum("beat/min"), "UCUM unit"),
    ("no effective time", _drop("2708-6", "effectiveDateTime"), "no effective time"),
    ("effective without time of day", _day_only, "not a date-time"),
    ("no category", _drop("2708-6", "category"), "needs category vital-signs"),
    ("no value", _drop("8867-4", "valueQuantity"), "neither a value nor"),
    ("value and absent reason", _value_and_absence, "both a value and a dataAbsentReason"),
    ("patient named", _name_patient, "carries name"),
    ("dangling device", _dangling_device, "does not resolve inside the bundle"),
    ("bp without diastolic", _drop_diastolic, "needs exactly one component 8462-4"),
    ("systolic alone", _systolic_alone, "only as a component"),
    ("glucose as vital sign", _glucose_as_vital_sign, "needs category laboratory"),
    ("glucose unit not its code's", _glucose_wrong_unit_for_code, "UCUM unit 'mmol/L'"),
    ("no provenance", _drop_provenance, "no Provenance"),
    ("status not a code", _invalid_status, "not an Observation status"),
]


def test_unmutated_small_bundle_is_clean() -> None:
    bundle = _small_bundle()
    assert fhir_checks.structural_problems(bundle) == []
    assert fhir_checks.check_bundle(bundle) == []


@pytest.mark.parametrize("name, mutate, expected", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mutation_accepted_by_fhir_resources_is_caught_by_our_checks(
        name: str, mutate: Callable[[dict], None], expected: str) -> None:
    bundle = copy.deepcopy(_small_bundle())
    mutate(bundle)
    assert fhir_checks.structural_problems(bundle) == [], name  # the library lets it through
    problems = [str(p) for p in fhir_checks.check_bundle(bundle)]
    assert any(expected in p for p in problems), problems


# ------------------------------------------------------------------ special values


@pytest.mark.parametrize("value, special, reason", [
    (None, "nan", "not-a-number"),
    (None, "nres", "unsupported"),
    (None, "+inf", "positive-infinity"),
    (None, "-inf", "negative-infinity"),
    (None, "unsuccessful", "error"),
    (None, None, "unknown"),
    (math.nan, None, "not-a-number"),
    (math.inf, None, "positive-infinity"),
    (-math.inf, None, "negative-infinity"),
    (400, None, "error"),  # impossible heart rate: never exported as a number
])
def test_special_values_become_data_absent_reason_never_a_number(
        value: float | None, special: str | None, reason: str) -> None:
    reading = fhir.ExportReading("m/0", "hr", value, "beat/min", T0, _message(),
                                 special=special)
    result = fhir.build_bundle("P-1234", [reading])
    (obs,) = _resources(result.bundle, "Observation")
    assert "valueQuantity" not in obs
    assert obs["dataAbsentReason"]["coding"][0] == {
        "system": fhir.DATA_ABSENT_REASON, "code": reason,
        "display": fhir.ABSENT_REASON_DISPLAY[reason]}
    assert result.summary.absent_values == 1
    json.dumps(result.bundle, allow_nan=False)
    assert fhir_checks.structural_problems(result.bundle) == []
    assert fhir_checks.check_bundle(result.bundle) == []


_QUANTITY_UNITS = [(q, u) for q, e in vitals.QUANTITIES.items() for u in e["units"]]
_SPECIALS = [None, "nan", "nres", "+inf", "-inf", "reserved", "unsuccessful", "bogus"]
_FLAGS = ["sensor-off", "calibration-overdue", "test-data", "cert-expired", "odd-flag"]


@st.composite
def _hostile_readings(draw: st.DrawFn) -> list[fhir.ExportReading]:
    messages = []
    for i in range(draw(st.integers(1, 3))):
        verdict = draw(st.sampled_from(fhir.VERDICTS))
        device = draw(st.sampled_from(["ox-1", "cuff-1"] + ([None] if verdict == "manual"
                                                             else [])))
        messages.append(fhir.MessageInfo(
            hashlib.sha256(b"%d" % i).digest(), verdict, T0 + 200.0, device,
            tuple(draw(st.lists(st.sampled_from(_FLAGS), unique=True, max_size=2))),
            draw(st.sampled_from([None, ENTERER])) if verdict == "manual" else None))
    readings = []
    for i in range(draw(st.integers(1, 12))):
        quantity, unit = draw(st.sampled_from(_QUANTITY_UNITS))
        value = draw(st.one_of(st.none(), st.floats(), st.integers(-1000, 3000)))
        readings.append(fhir.ExportReading(
            f"r/{draw(st.integers(0, 14)):02d}/{i}", quantity, value, unit,
            T0 + draw(st.sampled_from([0, 0.5, 1, 100])), draw(st.sampled_from(messages)),
            special=draw(st.sampled_from(_SPECIALS))))
    return readings


@settings(max_examples=150, deadline=None)
@given(_hostile_readings(), st.sampled_from(fhir.BUNDLE_TYPES))
def test_any_readings_give_a_bundle_that_passes_both_checks(
        readings: list[fhir.ExportReading], bundle_type: str) -> None:
    result = fhir.build_bundle("P-1234", readings, {},
                               fhir.ExportConfig(bundle_type=bundle_type, gateway_id="gw-1"))
    json.dumps(result.bundle, allow_nan=False)  # raises on any NaN or infinity
    assert fhir_checks.structural_problems(result.bundle) == []
    assert fhir_checks.check_bundle(result.bundle) == []
    by_code = {v.loinc[0].code: v for v in fhir.VOCABULARY.values()}
    for obs in _resources(result.bundle, "Observation"):
        for node in [obs, *obs.get("component", [])]:
            if "valueQuantity" in node:  # a number only if it is a possible one
                vital = by_code[_loinc(node)]
                vitals.check_value(vital.quantity, node["valueQuantity"]["value"], vital.unit)


def test_special_systolic_keeps_the_panel_with_an_absent_component() -> None:
    message = _message()
    result = fhir.build_bundle("P-1234", [
        fhir.ExportReading("m/0", "sys", None, "mm[Hg]", T0, message, special="nan"),
        fhir.ExportReading("m/1", "dia", 80, "mm[Hg]", T0, message),
        fhir.ExportReading("m/2", "map", 95, "mm[Hg]", T0, message),
    ])
    (panel,) = _resources(result.bundle, "Observation")
    systolic, diastolic, mean = panel["component"]
    assert systolic["dataAbsentReason"]["coding"][0]["code"] == "not-a-number"
    assert diastolic["valueQuantity"]["value"] == 80 and _loinc(mean) == "8478-0"
    assert fhir_checks.check_bundle(result.bundle) == []


def test_unexportable_and_test_data_readings_are_counted_not_hidden() -> None:
    test_data = _message(flags=("test-data",), label="t")
    result = fhir.build_bundle("P-1234", [
        fhir.ExportReading("m/0", "bat", 80, "%EL", T0, _message()),
        fhir.ExportReading("m/1", "pi", 2.5, "%", T0, _message()),
        fhir.ExportReading("t/0", "hr", 70, "beat/min", T0, test_data),
        fhir.ExportReading("m/0", "bat", 80, "%EL", T0, _message()),
    ])
    assert result.summary.observations == 0
    assert result.summary.skipped == {"not-exported-bat": 1, "not-exported-pi": 1,
                                      "flagged-test-data": 1, "duplicate": 1}
    assert result.bundle["entry"] == []  # no stub Patient is created for nothing


# ------------------------------------------------------------------ vocabulary


def test_vocabulary_agrees_with_the_protocol_vitals_table() -> None:
    for (quantity, unit), code in fhir.VOCABULARY.items():
        entry = vitals.QUANTITIES[quantity]
        assert unit in entry["units"]
        assert {c.code for c in code.loinc} <= set(entry["loinc"]), quantity
        assert code.mdc is not None and int(code.mdc.code) == entry["mdc"][1]
        assert code.mdc.display == entry["mdc"][0]
        assert all(c.system == fhir.LOINC for c in code.loinc)
    exported_units = {(q, u) for q, e in vitals.QUANTITIES.items() for u in e["units"]
                      if q not in fhir.NOT_EXPORTED}
    assert exported_units == set(fhir.VOCABULARY)
    assert fhir.BP_PANEL_MDC.code == str(2 * 65536 + 18948)  # MDC_PRESS_BLD_NONINV


# ------------------------------------------------------------------ the command


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vitalbridge")
    export_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_command_writes_a_checked_bundle_and_leaves_the_journal_untouched(
        agent_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = agent_files / "journal.sqlite3"
    before = hashlib.sha256(journal.read_bytes()).hexdigest()
    out = tmp_path / "bundle.json"
    status = _run(["export", "fhir", "--patient", PATIENT, "--since", "2026-01-01T00:00:00Z",
                   "--until", "2026-01-01T00:02:00", "--journal", str(journal),
                   "--out", str(out), "--json-summary"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["observations"] > 100 and summary["problems"] == 0
    assert summary["last_time"] < "2026-01-01T00:02:00Z"
    assert len(summary["undecodable_messages"]) == 1
    bundle = json.loads(out.read_text())
    assert fhir_checks.check_bundle(bundle) == []
    assert hashlib.sha256(journal.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("argv, message", [
    (["--patient", "Jane Doe"], "pseudonym"),
    (["--patient", "P-9999"], "no patient"),
    (["--since", "yesterday"], "not an ISO-8601"),
    (["--until", "2025-01-01"], "--until must be after --since"),
    (["--registry", "/nonexistent/registry.sqlite3"], "no such file"),
    (["--max-readings", "10"], "exceed --max-readings 10"),
    (["--patient-system", "not a uri"], "--patient-system"),
])
def test_command_errors_are_one_line(agent_files: Path, tmp_path: Path, argv: list[str],
                                     message: str) -> None:
    base = {"--patient": PATIENT, "--since": "2026-01-01", "--journal":
            str(agent_files / "journal.sqlite3"), "--out": str(tmp_path / "b.json")}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        base[flag] = value
    args = ["export", "fhir"] + [x for pair in base.items() for x in pair]
    with pytest.raises(CommandError) as err:
        _run(args)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert err.value.status == 2
    assert not (tmp_path / "b.json").exists()


def test_unusable_files_are_refused_not_guessed_at(agent_files: Path, tmp_path: Path) -> None:
    registry = agent_files / REGISTRY_FILE
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database at all" * 50)
    with pytest.raises(source.SourceError, match="journal .*not a database"):
        source.read_patient_readings(garbage, registry, PATIENT, since=T0)
    newer = tmp_path / "newer.sqlite3"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(source.SourceError, match="schema version 99"):
        source.read_patient_readings(newer, registry, PATIENT, since=T0)
