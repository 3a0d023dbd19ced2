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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="passes; the best one counts")
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


if __name__ == "__main__":
    main()
