"""The rules' time-built state across a restart (Evaluator.rebuild), offline tracking only
for devices with a link, and the rate windows' O(1) bookkeeping against the plain scan."""

from __future__ import annotations

import copy
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.alarms import scenarios
from edge_agent.alarms.evaluator import (
    OFFLINE,
    Evaluator,
    RateRule,
    Reading,
    _RateHistory,
)
from edge_agent.alarms.grades import Grade
from edge_agent.alarms.lifecycle import AlarmLifecycle, Step
from edge_agent.alarms.limits import LimitsBook

START = 1_700_000_000.0


def pulse(t: float, value: float = 100.0, device: str = "ox-1", manual: bool = False
          ) -> Reading:
    return Reading("p-1", device, "pr", value, START + t, manual=manual)


def timeline(steps: list[Step], lifecycle: AlarmLifecycle) -> list[tuple[str, str, str, float]]:
    return [(s.kind, lifecycle.alarm(s.alarm_id).key, s.grade.label, s.time) for s in steps
            if s.kind in ("raised", "regraded", "recurred", "resolved")]


# ---------------------------------------------------------------- rebuild


def test_a_yellow_building_up_before_a_restart_fires_at_its_original_time() -> None:
    before = [pulse(t) for t in range(0, 20)]
    evaluator = Evaluator(LimitsBook())
    assert not [c for r in before for c in evaluator.evaluate(r)]  # 20 s < 30 s: nothing yet

    restarted = Evaluator(LimitsBook())
    assert restarted.rebuild(before, []) == []
    fired = [(c.key, c.grade, c.time - START) for t in range(20, 40)
             for c in restarted.evaluate(pulse(t))]
    assert fired == [("pr:high", Grade.YELLOW, 30.0)]

    forgetful = Evaluator(LimitsBook())  # what a restart did before: the 30 s start again
    fired = [(c.key, c.time - START) for t in range(20, 60) for c in forgetful.evaluate(pulse(t))]
    assert fired == [("pr:high", 50.0)]


@pytest.mark.parametrize("name", scenarios.NAMES)
@pytest.mark.parametrize("cut", [0.2, 0.45, 0.7, 0.9])
def test_a_restart_anywhere_in_a_scenario_changes_no_alarm(name: str, cut: float) -> None:
    """Continuous run vs. a run whose evaluator is replaced at the cut (the lifecycle and
    its alarms survive, as they do through the alarm store): the same alarm steps after it."""
    readings = scenarios.build(name, start=START).readings
    k = int(len(readings) * cut)
    evaluator, lifecycle = Evaluator(LimitsBook()), AlarmLifecycle()
    for reading in readings[:k]:
        lifecycle.apply_all(evaluator.evaluate(reading))
    restored = AlarmLifecycle(restored=copy.deepcopy(lifecycle.open_alarms()))
    continuous = [s for r in readings[k:] for s in lifecycle.apply_all(evaluator.evaluate(r))]

    restarted = Evaluator(LimitsBook())
    window_start = readings[k - 1].time - restarted.config.rebuild_window
    history = [r for r in readings[:k] if r.time >= window_start]
    assert restarted.rebuild(history, restored.active_conditions()) == []
    after = [s for r in readings[k:] for s in restored.apply_all(restarted.evaluate(r))]
    assert timeline(after, restored) == timeline(continuous, lifecycle)


def test_a_condition_whose_alarm_step_was_lost_is_returned_to_raise() -> None:
    history = [pulse(t) for t in range(0, 40)]  # yellow fired at 30 s ...
    evaluator = Evaluator(LimitsBook())
    lost = evaluator.rebuild(history, [])  # ... but no restored alarm holds it
    assert [(c.key, c.grade, c.time - START) for c in lost] == [("pr:high", Grade.YELLOW, 30.0)]
    held = Evaluator(LimitsBook()).rebuild(history, [("p-1", "pr:high", Grade.YELLOW)])
    assert held == []
    higher = Evaluator(LimitsBook()).rebuild(history, [("p-1", "pr:high", Grade.RED)])
    assert higher == []


def test_a_restored_alarm_the_history_shows_ended_still_resolves() -> None:
    history = [pulse(t, 70.0) for t in range(0, 10)]  # normal before the restart
    evaluator = Evaluator(LimitsBook())
    assert evaluator.rebuild(history, [("p-1", "pr:high", Grade.YELLOW)]) == []
    cleared = [c for t in range(10, 20) for c in evaluator.evaluate(pulse(t, 70.0))]
    assert [(c.key, c.grade) for c in cleared] == [("pr:high", None)]


def test_the_history_does_not_make_devices_offline_at_start_up() -> None:
    evaluator = Evaluator(LimitsBook())
    evaluator.rebuild([pulse(t) for t in range(0, 10)], [])
    assert evaluator.tick(START + 3600) == []  # a long downtime: no offline burst
    evaluator.evaluate(pulse(3600))  # the device sends again: tracked from now on
    assert [c.key for c in evaluator.tick(START + 3700)] == [f"{OFFLINE}:ox-1"]


def test_the_rebuild_window_covers_every_time_built_state() -> None:
    config = Evaluator(LimitsBook()).config
    assert config.rebuild_window == max(config.news2_freshness, 30.0 + config.clear_after)


# ---------------------------------------------------------------- offline tracking


def test_manual_entries_never_raise_device_offline() -> None:
    evaluator = Evaluator(LimitsBook())
    evaluator.evaluate(Reading("p-1", "manual-p-1", "spo2", 97.0, START, manual=True))
    assert evaluator.tick(START + 600) == []


def test_devices_without_a_continuous_link_are_not_offline_tracked() -> None:
    evaluator = Evaluator(LimitsBook(), continuous_link=lambda device: device != "cuff-1")
    for device in ("cuff-1", "ox-1"):
        evaluator.evaluate(Reading("p-1", device, "pr", 70.0, START))
    assert [c.key for c in evaluator.tick(START + 120)] == [f"{OFFLINE}:ox-1"]


def test_every_device_is_offline_tracked_by_default() -> None:
    evaluator = Evaluator(LimitsBook())
    evaluator.evaluate(pulse(0, 70.0, device="cuff-1"))
    assert [c.grade for c in evaluator.tick(START + 61)] == [Grade.BLUE]


# ---------------------------------------------------------------- rate windows


def scan_changes(history: deque[tuple[float, float]], span: float, rules: list[RateRule],
                 t: float, value: float) -> list[float]:
    """The evaluator's rate bookkeeping before it was made O(1): append, trim the front to
    the longest window, scan each rule's window."""
    history.append((t, value))
    while history and history[0][0] < t - span:
        history.popleft()
    out = []
    for rule in rules:
        window = [v for ht, v in history if ht >= t - rule.window]
        out.append(max(window) - value if rule.direction == "fall" else value - min(window))
    return out


RULES = [RateRule("spo2", "fall", 5.0, 30.0, Grade.ORANGE),
         RateRule("spo2", "rise", 3.0, 12.0, Grade.YELLOW)]


@settings(deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0, 17.0, 40.0, -2.0, -35.0]),
                          st.floats(50, 100, allow_nan=False)), min_size=1, max_size=200))
def test_the_monotonic_windows_give_what_the_scan_gave(steps: list[tuple[float, float]]
                                                       ) -> None:
    """Random series with repeated times, gaps longer than the windows and late readings
    (times going backwards): identical changes at every reading."""
    fast, slow = _RateHistory(30.0, tuple(RULES)), deque()
    t = START
    for dt, value in steps:
        t += dt
        assert fast.add(t, value) == scan_changes(slow, 30.0, RULES, t, value)


def test_many_readings_with_one_time_stay_cheap() -> None:
    """The quadratic case: the deques hold one candidate however many readings share a time."""
    history = _RateHistory(30.0, tuple(RULES))
    for _ in range(5000):
        history.add(START, 95.0)
    assert all(len(extreme) == 1 for extreme in history._extremes)
