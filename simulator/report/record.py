"""What one simulated run (a fleet or a clinical scenario) observed: the report's input.

The producer (fleet runner, scenario runner) fills a RunRecord from its oracle; the
summary and the page are pure functions of it. Times are seconds from the run start,
latencies are milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

GRADES = ("red", "orange", "yellow", "blue")

FAULT_NAMES = (
    "broker-restart", "broker-outage", "agent-kill", "ble-disconnect", "serial-unplug",
    "garbage", "device-reboot", "clock-skew", "disk-full", "slow-consumer",
)


class ReportError(ValueError):
    """The record cannot be reported faithfully (a non-finite number, a negative count...)."""


@dataclass
class AlarmOutcome:
    """One expected and/or raised alarm."""

    grade: str                      # "red" | "orange" | "yellow" | "blue"
    condition: str                  # e.g. "spo2-low", "news2", "device-offline"
    patient: str | None
    device: str | None
    expected_at: float | None       # seconds from run start; None when not expected
    raised_at: float | None         # seconds from run start; None when it never fired
    closed_at: float | None = None


@dataclass
class FaultRecord:
    """One injected fault."""

    name: str                       # one of FAULT_NAMES (others are reported as given)
    at: float                       # seconds from run start
    duration_s: float
    target: str                     # "broker", a gateway id or a device id
    detail: str = ""


@dataclass
class Sample:
    """One point per second for the plots."""

    t: float
    backlog: int                    # readings generated but not yet stored by the centre
    delivered_per_s: float


@dataclass
class RunRecord:
    kind: str                       # "fleet" | "scenario"
    name: str
    seed: int
    duration_s: float
    parameters: dict[str, Any]
    generated: dict[str, int]       # device id -> readings generated (distinct seqs)
    received: dict[str, int]        # device id -> distinct readings the centre stored (oracle)
    duplicated: dict[str, int]      # device id -> repeats the centre saw and suppressed
    duplicated_as_new: dict[str, int]  # device id -> readings stored twice as distinct (must be 0)
    reading_latency_ms: list[float]
    alarm_latency_ms: list[float]
    alarms: list[AlarmOutcome]
    faults: list[FaultRecord]
    timeline: list[Sample]
    notes: list[str] = field(default_factory=list)
    # Compatible extensions (defaults keep the fleet's behaviour unchanged):
    # grades of which an alarm raised that nobody expected fails the run (a clinical
    # scenario passes ("red", "orange", "yellow"): a false clinical alarm is a failure).
    fail_unexpected_grades: tuple[str, ...] = ()
    # when set, an expected alarm raised further than this from expected_at fails the run.
    alarm_tolerance_s: float | None = None


def validate(record: RunRecord) -> None:
    """Refuse what would make the report lie: non-finite numbers, negative counts, bad grades."""
    _finite("duration_s", record.duration_s)
    if record.duration_s < 0:
        raise ReportError(f"duration_s must not be negative, got {record.duration_s!r}")
    if isinstance(record.seed, bool) or not isinstance(record.seed, int):
        raise ReportError(f"seed must be an int, got {record.seed!r}")
    for label in ("generated", "received", "duplicated", "duplicated_as_new"):
        for device, count in getattr(record, label).items():
            if not isinstance(device, str):
                raise ReportError(f"{label}: device id must be a string, got {device!r}")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ReportError(f"{label}[{device}] must be a non-negative int, got {count!r}")
    for label in ("reading_latency_ms", "alarm_latency_ms"):
        for index, value in enumerate(getattr(record, label)):
            _finite(f"{label}[{index}]", value)
    for index, alarm in enumerate(record.alarms):
        where = f"alarms[{index}]"
        if alarm.grade not in GRADES:
            raise ReportError(f"{where}.grade must be one of {', '.join(GRADES)}, "
                              f"got {alarm.grade!r}")
        for name in ("expected_at", "raised_at", "closed_at"):
            value = getattr(alarm, name)
            if value is not None:
                _finite(f"{where}.{name}", value)
        if alarm.expected_at is None and alarm.raised_at is None:
            raise ReportError(f"{where} is neither expected nor raised")
    for index, fault in enumerate(record.faults):
        _finite(f"faults[{index}].at", fault.at)
        _finite(f"faults[{index}].duration_s", fault.duration_s)
        if fault.duration_s < 0:
            raise ReportError(f"faults[{index}].duration_s must not be negative")
    for index, sample in enumerate(record.timeline):
        _finite(f"timeline[{index}].t", sample.t)
        _finite(f"timeline[{index}].delivered_per_s", sample.delivered_per_s)
        if isinstance(sample.backlog, bool) or not isinstance(sample.backlog, int):
            raise ReportError(f"timeline[{index}].backlog must be an int")
    for grade in record.fail_unexpected_grades:
        if grade not in GRADES:
            raise ReportError(f"fail_unexpected_grades: {grade!r} is not one of "
                              f"{', '.join(GRADES)}")
    if record.alarm_tolerance_s is not None:
        _finite("alarm_tolerance_s", record.alarm_tolerance_s)
        if record.alarm_tolerance_s < 0:
            raise ReportError("alarm_tolerance_s must not be negative")


def _finite(label: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(f"{label} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ReportError(f"{label} is {value!r}: latencies and times must be finite numbers "
                          "(a NaN/inf means the producer lost track of a reading)")
