#!/usr/bin/env python3
"""Cost of the alarm rules per reading: the current evaluator against a frozen OLD one,
interleaved in the same process (a shared, busy machine makes separate runs incomparable).

    .venv/bin/python bench/rules_bench.py [--rounds N] [--old-rev REV] [--no-old]

OLD is the rules engine as it was before the session-3 performance pass: evaluator.py,
limits.py and news2.py read with `git show REV:<path>` (default REV: commit 41578f5) into a
throwaway package in a temporary directory, never imported by the product. grades.py is
shared (it is unchanged, and both sides must use the same Grade enum).

Cases (Evaluator.evaluate only, a fresh evaluator per pass, Reading objects built before
the clock starts, each side with its own Reading type):
  in-range   one bound patient, an oximeter at 1 Hz: SpO2 and pulse inside the limits,
             signal quality reported, no alarm (the common case; target <= 5 us/reading)
  crossing   SpO2 drifting across the red/orange/yellow bounds and back: raises, regrades,
             clears, the fall rule firing
  artefacts  low signal quality, finger-off and implausible spikes among clean readings
  news2-all  all five NEWS2 vitals fresh (oximeter, band, patch, cuff), so every reading
             re-scores the aggregate
  scenarios  every named scenario (edge_agent/alarms/scenarios.py), evaluate + lifecycle
  burst      one oximeter replaying 4,000 readings over 4 timestamps
Prints the best microseconds per reading of each side over the rounds and NEW/OLD.
"""

from __future__ import annotations

import argparse
import math
import random
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.alarms import evaluator as new_evaluator  # noqa: E402
from edge_agent.alarms import limits as new_limits  # noqa: E402
from edge_agent.alarms import scenarios  # noqa: E402
from edge_agent.alarms.lifecycle import AlarmLifecycle  # noqa: E402

OLD_REV = "41578f51b9ada0a95d96812c10067f639bcd61c2"  # before the session-3 performance pass
START = 1_700_000_000.0


def load_old(rev: str) -> tuple[types.ModuleType, types.ModuleType]:
    """(evaluator, limits) modules of the rules engine at git revision `rev`, loaded as the
    package `rules_old` from a temporary directory."""
    folder = Path(tempfile.mkdtemp(prefix="rules_old_")) / "rules_old"
    folder.mkdir()
    (folder / "__init__.py").write_text('"""FROZEN OLD rules engine for bench/rules_bench.py."""\n')
    for name in ("news2", "limits", "evaluator"):
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:edge_agent/alarms/{name}.py"],
            check=True, capture_output=True, text=True).stdout
        source = source.replace("from edge_agent.alarms import news2",
                                "from rules_old import news2")
        source = source.replace("from edge_agent.alarms.limits import",
                                "from rules_old.limits import")
        (folder / f"{name}.py").write_text(source)
    sys.path.insert(0, str(folder.parent))
    import rules_old.evaluator
    import rules_old.limits
    return rules_old.evaluator, rules_old.limits


# ---------------------------------------------------------------------- cases
# A case builds its readings with one side's Reading type: rows of (quantity, value, t, flags).

Row = tuple[str, str, float, float, dict]


def _in_range(count: int) -> list[Row]:
    rng = random.Random(1)
    rows = []
    for i in range(count // 2):
        t = START + i
        rows.append(("ox", "spo2", rng.choice((96, 97, 97, 98)), t, {"signal_quality": 90.0}))
        rows.append(("ox", "pr", rng.randint(68, 80), t, {"signal_quality": 90.0}))
    return rows


def _crossing(count: int) -> list[Row]:
    rng = random.Random(2)
    rows = []
    for i in range(count // 2):
        t = START + i
        spo2 = round(94 + 5 * math.sin(i / 40) + rng.gauss(0, 0.5))
        rows.append(("ox", "spo2", min(100, spo2), t, {"signal_quality": 90.0}))
        rows.append(("ox", "pr", 75 + (i // 60) % 60, t, {"signal_quality": 90.0}))
    return rows


def _artefacts(count: int) -> list[Row]:
    rng = random.Random(3)
    rows = []
    for i in range(count // 2):
        t = START + i
        phase = (i // 20) % 5
        if phase == 1:  # motion: low signal quality
            flags = {"signal_quality": rng.uniform(5, 35)}
            rows.append(("ox", "spo2", rng.randint(70, 99), t, flags))
            rows.append(("ox", "pr", rng.randint(40, 170), t, flags))
        elif phase == 3 and i % 20 < 8:  # finger out
            rows.append(("ox", "spo2", 0, t, {"finger_off": True}))
            rows.append(("ox", "pr", 0, t, {"finger_off": True}))
        else:
            spike = i % 13 == 0
            rows.append(("ox", "spo2", 80 if spike else 97, t, {"signal_quality": 85.0}))
            rows.append(("ox", "pr", 74, t, {"signal_quality": 85.0}))
    return rows


def _news2_all(count: int) -> list[Row]:
    rng = random.Random(4)
    rows: list[Row] = []
    i = 0
    while len(rows) < count:
        t = START + i
        rows.append(("ox", "spo2", rng.choice((96, 97, 98)), t, {"signal_quality": 90.0}))
        rows.append(("ox", "pr", rng.randint(70, 80), t, {"signal_quality": 90.0}))
        rows.append(("band", "rr", rng.randint(14, 18), t, {}))
        if i % 10 == 0:
            rows.append(("patch", "temp", round(rng.uniform(36.6, 37.2), 1), t, {}))
        if i % 30 == 0:
            rows.append(("cuff", "sys", rng.randint(115, 130), t, {}))
        i += 1
    return rows[:count]


CASES: dict[str, Callable[[int], list[Row]]] = {
    "in-range": _in_range, "crossing": _crossing, "artefacts": _artefacts,
    "news2-all": _news2_all}


def build(module: types.ModuleType, rows: list[Row]) -> list:
    return [module.Reading("P-BENCH", device, quantity, value, t, **flags)
            for device, quantity, value, t, flags in rows]


def evaluate_pass(module: types.ModuleType, limits: types.ModuleType, readings: list) -> float:
    evaluator = module.Evaluator(limits.LimitsBook())
    evaluate = evaluator.evaluate
    start = time.perf_counter()
    for reading in readings:
        evaluate(reading)
    return (time.perf_counter() - start) / len(readings) * 1e6


def scenario_pass(module: types.ModuleType, limits: types.ModuleType, series: list) -> float:
    count = 0
    start = time.perf_counter()
    for readings in series:
        evaluator, lifecycle = module.Evaluator(limits.LimitsBook()), AlarmLifecycle()
        for reading in readings:
            lifecycle.apply_all(evaluator.evaluate(reading))
        count += len(readings)
    return (time.perf_counter() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; best counts")
    parser.add_argument("--readings", type=int, default=20_000, help="readings per case")
    parser.add_argument("--old-rev", default=OLD_REV, help="git revision of the OLD engine")
    parser.add_argument("--no-old", action="store_true", help="measure the current code only")
    args = parser.parse_args()

    sides: dict[str, tuple[types.ModuleType, types.ModuleType]] = {
        "new": (new_evaluator, new_limits)}
    if not args.no_old:
        sides["old"] = load_old(args.old_rev)
    work: dict[str, dict[str, Callable[[], float]]] = {name: {} for name in sides}
    scenario_rows = [[(r.device, r.quantity, r.value, r.time,
                       {"signal_quality": r.signal_quality, "finger_off": r.finger_off,
                        "sensor_off": r.sensor_off, "manual": r.manual})
                      for r in scenarios.build(name).readings] for name in scenarios.NAMES]
    burst_rows: list[Row] = [("ox-bench", "spo2", 97.0 - (i % 3), START + i // 1000, {})
                             for i in range(4000)]
    for side, (module, limits) in sides.items():
        for case, make in CASES.items():
            readings = build(module, make(args.readings))
            work[side][case] = (lambda m=module, lim=limits, rs=readings:
                                evaluate_pass(m, lim, rs))
        series = [build(module, rows) for rows in scenario_rows]
        work[side]["scenarios"] = lambda m=module, lim=limits, s=series: scenario_pass(m, lim, s)
        burst = build(module, burst_rows)
        work[side]["burst"] = lambda m=module, lim=limits, rs=burst: evaluate_pass(m, lim, rs)

    best: dict[tuple[str, str], float] = {}
    order = list(sides)
    for round_index in range(args.rounds):
        for case in work[order[0]]:
            for side in order if round_index % 2 == 0 else reversed(order):
                us = work[side][case]()
                best[(side, case)] = min(best.get((side, case), us), us)
    print(f"best of {args.rounds} interleaved rounds, us per reading "
          f"(OLD = git {args.old_rev[:7]})")
    print(f"{'case':<11}{'new':>9}" + (f"{'old':>9}{'new/old':>9}" if "old" in sides else ""))
    for case in work["new"]:
        line = f"{case:<11}{best[('new', case)]:9.3f}"
        if "old" in sides:
            old = best[("old", case)]
            line += f"{old:9.3f}{best[('new', case)] / old:9.2f}"
        print(line)


if __name__ == "__main__":
    main()
