"""RunRecord -> the report.json document, and the verdict / exit status derived from it.

Deterministic: the same record always gives the same document (sorted device ids, alarms
ordered by time, floats rounded to FLOAT_DIGITS), so two runs with the same seed can be
diffed. See docs/simulator-reports.md for every key.
"""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any

from simulator.report.record import GRADES, AlarmOutcome, ReportError, RunRecord, validate
from simulator.report.stats import histogram, nearest_rank

FLOAT_DIGITS = 3
COUNTERS = ("generated", "received", "lost", "unexpected", "duplicated", "duplicated_as_new")
REASON_DEVICES = 5          # devices named in one reason before "..."


def summarise(record: RunRecord) -> dict[str, Any]:
    """The report.json document for record (raises ReportError on a record it cannot trust)."""
    validate(record)
    readings = _readings(record)
    alarms = sorted((_alarm(a, record.alarm_tolerance_s) for a in record.alarms), key=_alarm_order)
    summary: dict[str, Any] = {
        "kind": record.kind,
        "name": record.name,
        "seed": record.seed,
        "duration_s": _num(record.duration_s),
        "parameters": _json_safe(record.parameters, "parameters"),
        "readings": readings,
        "latency_ms": {
            "reading": _latency(record.reading_latency_ms),
            "alarm": _latency(record.alarm_latency_ms),
        },
        "alarms": alarms,
        "alarms_summary": _alarms_summary(alarms),
        "alarm_rules": {
            "fail_unexpected_grades": [g for g in GRADES if g in record.fail_unexpected_grades],
            "tolerance_s": _num(record.alarm_tolerance_s),
        },
        "faults": sorted(
            ({"name": f.name, "at": _num(f.at), "duration_s": _num(f.duration_s),
              "target": f.target, "detail": f.detail} for f in record.faults),
            key=lambda f: (f["at"], f["name"], f["target"], f["detail"])),
        "timeline": [{"t": _num(s.t), "backlog": s.backlog,
                      "delivered_per_s": _num(s.delivered_per_s)}
                     for s in sorted(record.timeline, key=lambda s: s.t)],
        "notes": list(record.notes),
    }
    reasons = _reasons(summary, record)
    summary["verdict"] = "fail" if reasons else "pass"
    summary["reasons"] = reasons
    return summary


def exit_status(summary: dict[str, Any]) -> int:
    """0 when the run passed; 1 when anything was lost, duplicated as new, an expected alarm
    never fired, or the verdict is otherwise "fail" (a malformed summary also gives 1)."""
    try:
        readings = summary["readings"]
        failed = (readings["lost"] > 0 or readings["duplicated_as_new"] > 0
                  or summary["alarms_summary"]["missed"] > 0 or summary["verdict"] != "pass")
    except (KeyError, TypeError):
        return 1
    return 1 if failed else 0


def _readings(record: RunRecord) -> dict[str, Any]:
    devices = sorted(set(record.generated) | set(record.received) | set(record.duplicated)
                     | set(record.duplicated_as_new))
    per_device: dict[str, dict[str, int]] = {}
    for device in devices:
        generated = record.generated.get(device, 0)
        received = record.received.get(device, 0)
        per_device[device] = {
            "generated": generated,
            "received": received,
            "lost": max(0, generated - received),
            # stored distinct readings no device generated: an oracle or replay defect
            "unexpected": max(0, received - generated),
            "duplicated": record.duplicated.get(device, 0),
            "duplicated_as_new": record.duplicated_as_new.get(device, 0),
        }
    totals: dict[str, Any] = {key: sum(d[key] for d in per_device.values()) for key in COUNTERS}
    totals["per_device"] = per_device
    return totals


def _latency(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "min": _num(min(values)) if values else None,
        "p50": _num(nearest_rank(values, 50)),
        "p99": _num(nearest_rank(values, 99)),
        "max": _num(max(values)) if values else None,
        "histogram": [{"lo": _num(b["lo"]), "hi": _num(b["hi"]), "count": b["count"]}
                      for b in histogram(values)],
    }


def _alarm(alarm: AlarmOutcome, tolerance_s: float | None) -> dict[str, Any]:
    delay = None
    if alarm.expected_at is not None and alarm.raised_at is not None:
        delay = alarm.raised_at - alarm.expected_at
    if alarm.raised_at is None:
        status = "missed"
    elif alarm.expected_at is None:
        status = "unexpected"
    elif tolerance_s is None:
        status = "raised"
    elif delay > tolerance_s:
        status = "late"
    elif delay < -tolerance_s:
        status = "early"
    else:
        status = "on-time"
    return {"grade": alarm.grade, "condition": alarm.condition, "patient": alarm.patient,
            "device": alarm.device, "expected_at": _num(alarm.expected_at),
            "raised_at": _num(alarm.raised_at), "closed_at": _num(alarm.closed_at),
            "delay_s": _num(delay), "status": status}


def _alarm_order(alarm: dict[str, Any]) -> tuple:
    first = alarm["expected_at"] if alarm["expected_at"] is not None else alarm["raised_at"]
    return (first, alarm["condition"], alarm["grade"], alarm["patient"] or "",
            alarm["device"] or "", alarm["raised_at"] is None, alarm["raised_at"] or 0)


def _alarms_summary(alarms: list[dict[str, Any]]) -> dict[str, int]:
    def count(*statuses: str) -> int:
        return sum(1 for a in alarms if a["status"] in statuses)
    return {
        "expected": sum(1 for a in alarms if a["expected_at"] is not None),
        "raised": sum(1 for a in alarms if a["raised_at"] is not None),
        "missed": count("missed"),
        "unexpected": count("unexpected"),
        "late": count("late"),
        "early": count("early"),
    }


def _reasons(summary: dict[str, Any], record: RunRecord) -> list[str]:
    readings = summary["readings"]
    per_device = readings["per_device"]
    reasons = []
    if readings["generated"] == 0:
        reasons.append("no readings were generated: the run proves nothing")
    for key, what in (("lost", "readings lost"),
                      ("duplicated_as_new", "readings stored twice as distinct readings"),
                      ("unexpected", "readings stored that no device generated")):
        if readings[key]:
            reasons.append(f"{readings[key]} {what} ({_worst_devices(per_device, key)})")
    for alarm in summary["alarms"]:
        who = _alarm_label(alarm)
        if alarm["status"] == "missed":
            reasons.append(f"expected alarm never raised: {who} at {alarm['expected_at']} s")
        elif alarm["status"] in ("late", "early"):
            reasons.append(f"alarm {alarm['status']}: {who} raised at {alarm['raised_at']} s, "
                           f"expected at {alarm['expected_at']} s "
                           f"(tolerance {_num(record.alarm_tolerance_s)} s)")
        elif alarm["status"] == "unexpected" and alarm["grade"] in record.fail_unexpected_grades:
            reasons.append(f"alarm raised that nobody expected: {who} at {alarm['raised_at']} s")
    return reasons


def _alarm_label(alarm: dict[str, Any]) -> str:
    where = "/".join(x for x in (alarm["patient"], alarm["device"]) if x)
    return f"{alarm['grade']} {alarm['condition']}" + (f" ({where})" if where else "")


def _worst_devices(per_device: dict[str, dict[str, int]], key: str) -> str:
    hit = sorted(((counts[key], device) for device, counts in per_device.items() if counts[key]),
                 key=lambda item: (-item[0], item[1]))
    named = ", ".join(f"{device}: {n}" for n, device in hit[:REASON_DEVICES])
    return named + (f", ... {len(hit) - REASON_DEVICES} more devices"
                    if len(hit) > REASON_DEVICES else "")


def _num(value: float | None) -> float | None:
    """A time, rate or latency as it appears in the document (counts stay ints elsewhere)."""
    if value is None:
        return None
    rounded = round(float(value), FLOAT_DIGITS)
    return 0.0 if rounded == 0 else rounded      # no "-0.0" in the document


def _json_safe(value: Any, where: str) -> Any:
    """Parameters as plain JSON values; refuse what has no faithful, stable JSON form."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ReportError(f"{where} is {value!r}: parameters must be finite")
        return _num(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, list | tuple):
        return [_json_safe(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        safe = {}
        for key, item in value.items():
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise ReportError(f"{where}: key {key!r} must be a string or an int")
            if str(key) in safe:
                raise ReportError(f"{where}: key {key!r} collides with another key as text")
            safe[str(key)] = _json_safe(item, f"{where}.{key}")
        return safe
    raise ReportError(f"{where} is a {type(value).__name__}: report parameters must be "
                      "JSON values (None, bool, int, float, str, list, dict, path)")
