#!/usr/bin/env python3
"""Cost of the alarm rules per reading, against a baseline measured in the same run.

    .venv/bin/python bench/rules_bench.py [--repeat N]

Readings: every named scenario (edge_agent/alarms/scenarios.py), about 3,850 readings of
six quantities with noise, persistence, NEWS2, a fall rule and artefacts. Measured:
  rules     Evaluator.evaluate(reading) + AlarmLifecycle.apply_all(...) on each reading,
            a fresh evaluator and lifecycle per scenario (so state is realistic);
  baseline  a bare loop over the same readings doing one comparison each
            (value < limit), i.e. the cheapest possible "rule".
Prints microseconds per reading for both and their ratio (best of N passes).

Then the burst case (`--burst N`, default 4000): one oximeter sending N SpO2 readings that
share a few timestamps (a device replaying stored readings), so every reading lies inside
the 30 s window of the `spo2:fall` rate rule. Rules time per reading must not grow with N.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.alarms import scenarios  # noqa: E402
from edge_agent.alarms.evaluator import Evaluator, Reading  # noqa: E402
from edge_agent.alarms.lifecycle import AlarmLifecycle  # noqa: E402
from edge_agent.alarms.limits import LimitsBook  # noqa: E402


def rules_pass(series: list[tuple[Reading, ...]]) -> tuple[float, int]:
    steps = 0
    start = time.perf_counter()
    for readings in series:
        evaluator, lifecycle = Evaluator(LimitsBook()), AlarmLifecycle()
        for reading in readings:
            steps += len(lifecycle.apply_all(evaluator.evaluate(reading)))
    return time.perf_counter() - start, steps


def baseline_pass(series: list[tuple[Reading, ...]]) -> tuple[float, int]:
    hits = 0
    start = time.perf_counter()
    for readings in series:
        for reading in readings:
            if reading.value < 92:
                hits += 1
    return time.perf_counter() - start, hits


def burst_pass(count: int) -> float:
    evaluator = Evaluator(LimitsBook())
    readings = [Reading("P-BENCH", "ox-bench", "spo2", 97.0 - (i % 3), 1_700_000_000.0 + i // 1000)
                for i in range(count)]
    start = time.perf_counter()
    for reading in readings:
        evaluator.evaluate(reading)
    return (time.perf_counter() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="passes; the best one counts")
    parser.add_argument("--burst", type=int, default=4000, help="readings in the burst case")
    args = parser.parse_args()
    series = [scenarios.build(name).readings for name in scenarios.NAMES]
    count = sum(len(readings) for readings in series)
    rules = min(rules_pass(series)[0] for _ in range(args.repeat))
    baseline = min(baseline_pass(series)[0] for _ in range(args.repeat))
    rules_us, baseline_us = rules / count * 1e6, baseline / count * 1e6
    print(f"readings per pass: {count} ({len(series)} scenarios), best of {args.repeat} passes")
    print(f"baseline (one comparison per reading): {baseline_us:8.3f} us/reading")
    print(f"rules (evaluator + lifecycle):         {rules_us:8.3f} us/reading")
    print(f"ratio rules/baseline: {rules_us / baseline_us:.0f}x; "
          f"{1e6 / rules_us:,.0f} readings/s on one core")
    for count in (args.burst // 4, args.burst):
        best = min(burst_pass(count) for _ in range(max(1, args.repeat // 2)))
        print(f"burst of {count} readings, 1000 per timestamp: {best:8.3f} us/reading")


if __name__ == "__main__":
    main()
