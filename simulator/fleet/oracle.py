"""The fleet's oracle: what the devices sealed against what the centre stored.

Pure functions over plain data (`compare_readings`, `match_alarms`) plus `CentreView`, a
read-only connection to the centre's SQLite file (WAL: reading never blocks its writer).

Definitions (docs/fleet.md):
  generated          distinct seqs a device sealed (its outbox is its truth)
  received           distinct seqs stored at the centre whose quantity and value are the
                     ones the device sealed (a stored seq with other content is not it)
  duplicated         repeats the centre recognised and suppressed (its own counter)
  duplicated_as_new  extra rows for one (device, seq): a reading stored twice as distinct
                     (seqs are unique per device across reboots, so any extra row is one)
  reading latency    the device sealed it -> the centre committed it (stored_at)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.alarms.scenarios import ExpectedAlarm
from simulator.fleet.devices import Sealed
from simulator.report import AlarmOutcome

GRADE_RANK = {"blue": 0, "yellow": 1, "orange": 2, "red": 3}


@dataclass(frozen=True)
class StoredReading:
    device: str
    seq: int
    quantity: str
    value: float
    received_at: float  # the centre's MQTT client got the message
    stored_at: float  # the centre committed the row (after any queueing or slow consumer)


@dataclass(frozen=True)
class AlarmStep:
    """A raise or regrade the centre received."""

    alarm_id: str
    gateway: str
    kind: str  # "raised" | "regraded"
    grade: str
    key: str
    patient: str | None
    device: str | None
    received_at: float


@dataclass
class DeviceTally:
    generated: int = 0
    received: int = 0
    duplicated_as_new: int = 0
    wrong_content: int = 0  # seqs stored with a value the device never sealed
    unknown_seqs: int = 0  # seqs stored that the device never sealed
    latency_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ExpectedAlarmAt:
    """A scenario's expectation placed on the run's clock for one patient and device."""

    expected: ExpectedAlarm
    patient: str | None
    device: str | None
    at: float  # seconds from run start


class CentreView:
    """Read-only queries on the centre's database file."""

    def __init__(self, database: Path) -> None:
        self.conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10,
                                    check_same_thread=False)

    def close(self) -> None:
        self.conn.close()

    def stored_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0])

    def readings(self) -> list[StoredReading]:
        return [StoredReading(*row) for row in self.conn.execute(
            "SELECT device, seq, quantity, value, received_at, stored_at FROM readings")]

    def duplicates(self) -> dict[str, int]:
        return {device: int(n) for device, n in self.conn.execute(
            "SELECT device, duplicates FROM device_counts")}

    def alarm_steps(self) -> list[AlarmStep]:
        return [AlarmStep(*row) for row in self.conn.execute(
            "SELECT alarm_id, gateway, kind, grade, key, patient, device, received_at "
            "FROM alarm_steps WHERE kind IN ('raised', 'regraded') ORDER BY received_at")]


def compare_readings(truth: Mapping[str, Mapping[int, Sealed]],
                     stored: Iterable[StoredReading]) -> dict[str, DeviceTally]:
    """Per device: generated, received, duplicated as new, latencies (sealed -> the
    centre committed the first matching row: a slow centre shows in them)."""
    tallies = {device: DeviceTally(generated=len(sealed)) for device, sealed in truth.items()}
    rows: dict[tuple[str, int], list[StoredReading]] = {}
    for row in stored:
        rows.setdefault((row.device, row.seq), []).append(row)
    for (device, seq), copies in rows.items():
        tally = tallies.setdefault(device, DeviceTally())
        tally.duplicated_as_new += len(copies) - 1
        sealed = truth.get(device, {}).get(seq)
        if sealed is None:
            tally.unknown_seqs += 1
            continue
        matching = [c for c in copies if c.quantity == sealed.quantity
                    and float(c.value) == sealed.value]
        if not matching:
            tally.wrong_content += 1
            continue
        tally.received += 1
        first = min(c.stored_at for c in matching)
        tally.latency_ms.append(max(0.0, (first - sealed.sealed_at) * 1000.0))
    return tallies


def match_alarms(expected: Iterable[ExpectedAlarmAt], steps: Iterable[AlarmStep],
                 run_start: float) -> tuple[list[AlarmOutcome], list[float]]:
    """Each expectation is met by the first raise/regrade of the same condition key for the
    same patient (and device, when the expectation names one) at the expected grade or
    higher. Alarms nobody expected are listed with expected_at None. Returns the outcomes
    and the alarm latencies (ms, expected -> received by the centre) of the met ones."""
    steps = sorted(steps, key=lambda s: s.received_at)
    matched_ids: set[str] = set()
    outcomes: list[AlarmOutcome] = []
    latencies: list[float] = []
    for item in sorted(expected, key=lambda e: e.at):
        want = item.expected
        grade = want.grade.name.lower()
        hit = next((s for s in steps if s.key == want.key and s.patient == item.patient
                    and (item.device is None or s.device in (None, item.device))
                    and _meets(s.grade, grade)), None)
        raised_at = None
        if hit is not None:
            matched_ids.add(hit.alarm_id)
            raised_at = hit.received_at - run_start
            latencies.append(max(0.0, (raised_at - item.at) * 1000.0))
        outcomes.append(AlarmOutcome(grade, want.key, item.patient, item.device, item.at,
                                     raised_at))
    for step in steps:
        if step.kind == "raised" and step.alarm_id not in matched_ids:
            matched_ids.add(step.alarm_id)
            outcomes.append(AlarmOutcome(step.grade, step.key, step.patient, step.device, None,
                                         step.received_at - run_start))
    return outcomes, latencies


def _meets(got: str, wanted: str) -> bool:
    if wanted == "blue" or got == "blue":
        return got == wanted
    return GRADE_RANK.get(got, -1) >= GRADE_RANK[wanted]
