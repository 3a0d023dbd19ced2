"""One patient's readings over a time range, read from the agent's journal and registry files.

Both files are opened read-only (SQLite `mode=ro`): an export never changes what the gateway
holds. Which readings are the patient's comes from the registry's device-patient bindings,
checked per reading time, so a device that moved from one patient to another is split
correctly. Payloads are decoded with protocol.uplink / cose / senml and no key: the journal
row's verdict (sealed, attested, manual) records what the gateway verified at reception, and
the monitoring centre can re-verify the same bytes (the Provenance names their digest).

A journal row that cannot be decoded is reported in `skipped`, never silently dropped.
Rows older than the journal's retention period (one year by default) are no longer on the
gateway: the monitoring centre holds the long-term copy.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.export.fhir import ENTERED_BY, DeviceInfo, ExportReading, MessageInfo
from edge_agent.journal import schema as journal_schema
from edge_agent.registry import schema as registry_schema
from edge_agent.registry.store import Binding, Registry, RegistryError, check_pseudonym
from protocol import cose, senml, topics, uplink
from protocol.errors import ProtocolError, SealError, ValidationError

DAY = 86400.0
# A reading's own time may precede its journal row by the device clock's skew (or by far more
# for records read from device memory, which arrive late, never early).
DEFAULT_SKEW_MARGIN_S = DAY


class SourceError(Exception):
    """A file cannot be used for an export (missing, not ours, wrong version, no patient)."""


@dataclass(frozen=True, slots=True)
class Skipped:
    message_id: int  # journal row id
    device_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class PatientReadings:
    patient: str
    readings: tuple[ExportReading, ...]  # in journal order
    devices: dict[str, DeviceInfo]  # the devices bound to the patient (all, used or not)
    gateway_id: str | None  # the gateway those devices are enrolled at, if exactly one
    skipped: tuple[Skipped, ...]  # journal rows that could not be decoded
    messages: int  # journal rows read


def open_readonly(path: str | os.PathLike[str], what: str) -> sqlite3.Connection:
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{what} {path}: no such file")
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True,
                               isolation_level=None)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as err:
        raise SourceError(f"{what} {path}: {err}") from None
    return conn


def _check_version(conn: sqlite3.Connection, path: Path, what: str, oldest: int,
                   newest: int) -> None:
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if not oldest <= found <= newest:
        conn.close()
        readable = f"{oldest}..{newest}" if oldest != newest else str(newest)
        raise SourceError(f"{what} {path} has schema version {found}; this agent reads "
                          f"version {readable}")


def decode_message(payload: bytes) -> tuple[str, list[senml.Reading]]:
    """A journaled readings payload -> (device id, readings), without any key.

    The sealed batch is a COSE_Mac0 (device session key) or a COSE_Sign1 (gateway key, for
    attested or manual readings); either way its payload is a SenML CBOR pack. Raises
    ProtocolError subclasses only.
    """
    device_id, sealed, _, received_ms = uplink.decode_readings(payload)
    try:
        seal: cose.CoseMessage = cose.mac0_parse(sealed)
    except SealError as mac_error:
        try:
            seal = cose.sign1_parse(sealed)
        except SealError:
            raise mac_error from None
    if seal.content_type != cose.CT_SENML_CBOR:
        raise ValidationError("content_type", f"expected {cose.CT_SENML_CBOR} (SenML CBOR), "
                              f"got {seal.content_type!r}")
    if seal.payload is None:
        raise ValidationError("payload", "detached payload: the readings are not in the journal")
    return device_id, senml.decode_pack(seal.payload, now=received_ms / 1000)


def split_flags(flags: Iterable[str]) -> tuple[tuple[str, ...], str | None]:
    """Journal flags -> (flags, who entered a manual reading from 'entered-by:<actor>')."""
    kept, entered_by = [], None
    for flag in flags:
        if flag.startswith(ENTERED_BY) and len(flag) > len(ENTERED_BY):
            entered_by = flag[len(ENTERED_BY):]
        else:
            kept.append(flag)
    return tuple(kept), entered_by


def _bound(bindings: list[Binding], time: float) -> bool:
    return any(b.since <= time and (b.until is None or time < b.until) for b in bindings)


def read_patient_readings(journal_path: str | os.PathLike[str],
                          registry_path: str | os.PathLike[str], patient: str, since: float,
                          until: float | None = None,
                          skew_margin_s: float = DEFAULT_SKEW_MARGIN_S) -> PatientReadings:
    """The readings of `patient` (pseudonym) with since <= time < until (POSIX seconds;
    until None = no end) from bound devices, decoded. Raises SourceError."""
    try:
        check_pseudonym(patient)
    except RegistryError as err:
        raise SourceError(f"patient: {err.reason}") from None
    bindings, devices, gateway_id = _registry_facts(Path(registry_path), patient)
    by_device: dict[str, list[Binding]] = {}
    for binding in bindings:
        by_device.setdefault(binding.device_id, []).append(binding)

    path = Path(journal_path)
    conn = open_readonly(path, "journal")
    # The columns read here exist since version 1; the agent migrates files when it opens them.
    _check_version(conn, path, "journal", 1, journal_schema.LATEST_VERSION)
    readings: list[ExportReading] = []
    skipped: list[Skipped] = []
    urns: dict[str, set[str]] = {}
    rows = 0
    try:
        for device_id, device_bindings in sorted(by_device.items()):
            cursor = conn.execute(
                "SELECT id, payload, digest, verdict, flags, received_at FROM messages "
                "WHERE kind = ? AND device_id = ? AND received_at >= ? ORDER BY id",
                (topics.UP_READINGS, device_id, since - skew_margin_s))
            for row_id, payload, digest, verdict, flags, received_at in cursor:
                rows += 1
                try:
                    claimed, decoded = decode_message(bytes(payload))
                    if claimed != device_id:
                        raise ValidationError("device", f"payload names device {claimed!r}")
                    kept, entered_by = split_flags(flags.split())
                    message = MessageInfo(bytes(digest), verdict, float(received_at),
                                          device_id, kept, entered_by)
                except (ProtocolError, ValueError) as err:
                    skipped.append(Skipped(row_id, device_id, f"cannot be decoded: {err}"))
                    continue
                for index, reading in enumerate(decoded):
                    if not (since <= reading.time and (until is None or reading.time < until)):
                        continue
                    if not _bound(device_bindings, reading.time):
                        continue  # the device was not this patient's then
                    if reading.device:
                        urns.setdefault(device_id, set()).add(reading.device.rstrip(":"))
                    readings.append(ExportReading(
                        f"{message.digest.hex()}/{index:04d}", reading.quantity, reading.value,
                        reading.unit, reading.time, message))
    except sqlite3.Error as err:
        raise SourceError(f"journal {path}: {err}") from None
    finally:
        conn.close()
    for device_id, seen in urns.items():
        info = devices[device_id]
        devices[device_id] = DeviceInfo(
            info.device_id, tuple(sorted(seen)), info.model, info.serial, info.firmware,
            info.registration_number, info.registration_valid_until, info.calibration_due,
            info.status)
    return PatientReadings(patient, tuple(readings), devices, gateway_id, tuple(skipped), rows)


def _registry_facts(path: Path, patient: str
                    ) -> tuple[list[Binding], dict[str, DeviceInfo], str | None]:
    conn = open_readonly(path, "registry")
    _check_version(conn, path, "registry", registry_schema.LATEST_VERSION,
                   registry_schema.LATEST_VERSION)  # read through Registry: current only
    registry = Registry(conn, path)  # read methods only: the connection is read-only anyway
    try:
        if patient not in registry.patients():
            raise SourceError(f"no patient {patient!r} in the registry {path}")
        bindings = registry.bindings(patient_id=patient)
        devices: dict[str, DeviceInfo] = {}
        gateways = set()
        for device_id in sorted({b.device_id for b in bindings}):
            d = registry.device(device_id)
            gateways.add(d.gateway_id)
            devices[device_id] = DeviceInfo(
                d.id, (), d.model, d.serial, d.firmware, d.registration_number,
                d.registration_valid_until, d.calibration_due, d.status)
    except (sqlite3.Error, RegistryError) as err:
        raise SourceError(f"registry {path}: {err}") from None
    finally:
        registry.close()
    return bindings, devices, gateways.pop() if len(gateways) == 1 else None
