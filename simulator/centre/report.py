"""The oracle's numbers: what the simulator generated against what the centre holds.

`build_report(store, generated)` returns a plain dict (JSON-ready) for the fleet and
scenario reports. Definitions (docs/centre.md):
  received    distinct readings stored, one per (device, session, seq), whatever their verdict
  duplicated  copies that arrived again (same digest, or a stored seq once more)
  lost        generated - received per device (never negative); for a device the simulator
              did not declare: the seqs its own checkpoints proved lost, or the holes
              between the seqs received in a session, whichever is larger
  lost_proven seqs a device checkpoint names that never arrived before its deadline
Latencies are in milliseconds: a reading's own time -> stored at the centre, an alarm's
raise time (gateway clock) -> received at the centre. Percentiles are nearest-rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from simulator.centre import verifier as v
from simulator.centre.store import Store


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted `values` (None when empty)."""
    if not 0 <= q <= 100:
        raise ValueError("q must be in [0, 100]")
    if not values:
        return None
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[rank - 1]


def latency_summary(delays_s: Iterable[float]) -> dict[str, float | int | None]:
    ordered = sorted(d * 1000.0 for d in delays_s)

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {"count": len(ordered), "p50": rounded(percentile(ordered, 50)),
            "p90": rounded(percentile(ordered, 90)), "p99": rounded(percentile(ordered, 99)),
            "max": rounded(ordered[-1] if ordered else None)}


def _session_gaps(store: Store) -> dict[str, int]:
    gaps: dict[str, int] = {}
    for row in store.session_spans():
        missing = row["hi"] - row["lo"] + 1 - row["n"]
        gaps[row["device"]] = gaps.get(row["device"], 0) + missing
    return gaps


def build_report(store: Store, generated: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Per-device and total counts, checkpoint outcomes, latencies and alarms."""
    generated = dict(generated or {})
    counts = store.device_counts()
    verdicts = store.verdict_counts()
    proven_lost = store.losses()
    gaps = _session_gaps(store)
    devices: dict[str, dict[str, Any]] = {}
    for device in sorted(set(counts) | set(generated)):
        row = counts.get(device)
        received = row["received"] if row else 0
        made = generated.get(device)
        lost_proven = proven_lost.get(device, 0)
        if made is not None:
            lost = max(0, made - received)
        else:
            lost = max(lost_proven, gaps.get(device, 0))
        devices[device] = {
            "gateway": row["gateway"] if row else None,
            "generated": made,
            "received": received,
            "duplicated": row["duplicates"] if row else 0,
            "conflicting": row["conflicts"] if row else 0,
            "rejected_messages": row["rejected"] if row else 0,
            "lost": lost,
            "lost_proven": lost_proven,
            "gaps": gaps.get(device, 0),
            "surplus": max(0, received - made) if made is not None else 0,
            "verdicts": dict(sorted(verdicts.get(device, {}).items())),
        }
    totals: dict[str, int] = {}
    for name in ("received", "duplicated", "conflicting", "rejected_messages", "lost",
                 "lost_proven", "gaps", "surplus"):
        totals[name] = sum(d[name] for d in devices.values())
    verdict_totals: dict[str, int] = {}
    for per_device in verdicts.values():
        for verdict, n in per_device.items():
            verdict_totals[verdict] = verdict_totals.get(verdict, 0) + n
    readings = {"generated": sum(generated.values()), **totals,
                "device_proven": verdict_totals.get(v.DEVICE_PROVEN, 0),
                "verdicts": dict(sorted(verdict_totals.items()))}
    return {
        "readings": readings,
        "latency_ms": {"reading": latency_summary(store.reading_delays()),
                       "alarm": latency_summary(store.alarm_delays())},
        "checkpoints": dict(sorted(store.checkpoint_counts().items())),
        "devices": devices,
        "alarms": [_alarm(row) for row in store.raised_alarms()],
    }


def _alarm(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "gateway": row["gateway"], "grade": row["grade"],
            "key": row["key"], "patient": row["patient"], "device": row["device"],
            "raised_ms": row["raised_ms"], "received_at": row["raised_received_at"],
            "state": row["state"], "level": row["level"], "open": bool(row["is_open"])}
