"""Pure logic of the scale ramp: what a step measured, whether it passed, the table.

A step passes when (1) the centres stored every reading generated in it (zero loss), none
stored twice as distinct, (2) the gateways shed nothing, (3) the backlog (readings generated
but not yet stored by a centre) stayed bounded: in the second half of the window it never
exceeded what `latency_bound_s` worth of readings allows (twice that, for scheduling jitter)
and did not trend upwards by more than one bound's worth, and (4) the end-to-end latency
p99 (reading's own time -> centre received it) is under `latency_bound_s`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class StepFigures:
    devices: int
    gateways: int
    window_s: int
    generated: int
    stored: int  # distinct readings of the window stored by a centre
    lost: int
    duplicated: int  # repeats the centres recognised (delta over the step)
    duplicated_as_new: int
    shed: int
    latencies_s: list[float] = field(repr=False, default_factory=list)
    backlog: list[tuple[float, int]] = field(default_factory=list)  # (s from t0, readings)
    drain_s: float = 0.0  # after the window, until the centres held everything
    cpu_percent: dict[str, float] = field(default_factory=dict)  # role -> % of one core
    late_s_max: float = 0.0
    per_device_lost: dict[str, int] = field(default_factory=dict)

    @property
    def readings_per_s(self) -> float:
        return self.generated / self.window_s if self.window_s else 0.0


def compare(generated: Mapping[str, int], rows: Iterable[tuple[str, int, float]]
            ) -> tuple[int, int, dict[str, int], list[float]]:
    """Generated per device vs the centres' rows (device, seq, latency) of the window ->
    (stored distinct, duplicated as new, lost per device, latencies)."""
    seen: Counter[tuple[str, int]] = Counter()
    latencies: list[float] = []
    for device, seq, latency in rows:
        if device not in generated:
            continue
        seen[(device, seq)] += 1
        if seen[(device, seq)] == 1:
            latencies.append(latency)
    per_device = Counter(device for device, _ in seen)
    lost = {d: n - per_device.get(d, 0) for d, n in generated.items()
            if n > per_device.get(d, 0)}
    return len(seen), sum(n - 1 for n in seen.values()), lost, latencies


def backlog_bounded(samples: Sequence[tuple[float, int]], window_s: float,
                    readings_per_s: float, latency_bound_s: float) -> tuple[bool, str]:
    """Bounded in the second half of the window (see the module docstring)."""
    late = [b for t, b in samples if window_s / 2 <= t <= window_s]
    if len(late) < 2:
        return True, "too few samples to judge"
    allowance = max(1.0, readings_per_s * latency_bound_s)
    if max(late) > 2 * allowance:
        return False, f"backlog reached {max(late)} readings (> {2 * allowance:.0f})"
    half = len(late) // 2
    growth = sum(late[half:]) / (len(late) - half) - sum(late[:half]) / half
    if growth > allowance:
        return False, f"backlog grew by {growth:.0f} readings over the window"
    return True, f"max {max(late)} readings"


def judge(step: StepFigures, latency_bound_s: float) -> tuple[bool, list[str]]:
    reasons = []
    if step.lost:
        reasons.append(f"{step.lost} readings lost")
    if step.duplicated_as_new:
        reasons.append(f"{step.duplicated_as_new} readings stored twice as new")
    if step.shed:
        reasons.append(f"{step.shed} messages shed by reception")
    bounded, why = backlog_bounded(step.backlog, step.window_s, step.readings_per_s,
                                   latency_bound_s)
    if not bounded:
        reasons.append(why)
    p99 = percentile(step.latencies_s, 0.99)
    if p99 is None or p99 > latency_bound_s:
        reasons.append("latency p99 " + ("n/a" if p99 is None else f"{p99:.2f}")
                       + f" s > {latency_bound_s} s")
    return not reasons, reasons


def step_document(step: StepFigures, latency_bound_s: float,
                  baseline_readings_per_s: float | None) -> dict[str, Any]:
    ok, reasons = judge(step, latency_bound_s)

    def ms(q: float) -> float | None:
        value = percentile(step.latencies_s, q)
        return None if value is None else round(value * 1000, 1)

    return {
        "devices": step.devices, "gateways": step.gateways, "window_s": step.window_s,
        "readings_per_s": round(step.readings_per_s, 1),
        "ratio_to_baseline": (round(step.readings_per_s / baseline_readings_per_s, 3)
                              if baseline_readings_per_s else None),
        "readings": {"generated": step.generated, "received": step.stored, "lost": step.lost,
                     "duplicated": step.duplicated,
                     "duplicated_as_new": step.duplicated_as_new, "shed": step.shed},
        "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": ms(1.0),
                       "count": len(step.latencies_s)},
        "backlog": [{"t": round(t, 1), "readings": b} for t, b in step.backlog],
        "backlog_max": max((b for _, b in step.backlog), default=0),
        "drain_s": round(step.drain_s, 2), "late_submit_s_max": round(step.late_s_max, 3),
        "cpu_percent": step.cpu_percent,
        "lost_per_device": dict(sorted(step.per_device_lost.items())[:20]),
        "verdict": "pass" if ok else "fail", "reasons": reasons,
    }


def table(steps: Sequence[Mapping[str, Any]]) -> str:
    """The per-step table printed by the bench."""
    head = (f"{'devices':>7} {'readings':>9} {'readings/s':>10} {'lost':>6} {'dup*':>5} "
            f"{'p50 ms':>8} {'p99 ms':>8} {'backlog':>8} {'ratio':>7} {'verdict':>7}  "
            "cpu % of one core")
    lines = [head, "-" * len(head)]
    for s in steps:
        r, lat = s["readings"], s["latency_ms"]
        cpu = " ".join(f"{k} {v}" for k, v in s["cpu_percent"].items())
        lines.append(f"{s['devices']:>7} {r['generated']:>9} {s['readings_per_s']:>10.0f} "
                     f"{r['lost']:>6} {r['duplicated_as_new']:>5} {lat['p50']!s:>8} "
                     f"{lat['p99']!s:>8} {s['backlog_max']:>8} {s['ratio_to_baseline']!s:>7} "
                     f"{s['verdict']:>7}  {cpu}")
        for reason in s["reasons"]:
            lines.append("        ! " + reason)
    return "\n".join(lines)
