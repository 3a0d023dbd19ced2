"""Rate-of-change rules per device (issue 6 follow-up 6): two oximeters on one patient are
never compared with each other, a real fall on either raises, and a rate condition clears
only after `clear_after` of normal readings."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.alarms.evaluator import Condition, Evaluator, EvaluatorConfig, Reading
from edge_agent.alarms.grades import Grade
from edge_agent.alarms.lifecycle import AlarmLifecycle
from edge_agent.alarms.limits import LimitsBook

FALL = "spo2:fall"
PATIENT = "p-0001"
FIRMWARE, BLE = "vb-d3e4", "ble-ox-1"  # the demo's two oximeters: whole seconds and .66 s
RULE = EvaluatorConfig().rate_rules[0]  # spo2 fall of >= 5 points within 30 s, orange


def spo2(device: str, t: float, value: float) -> Reading:
    return Reading(PATIENT, device, "spo2", value, t)


def falls(conditions: list[Condition]) -> list[tuple[float, Grade | None]]:
    return [(round(c.time, 2), c.grade) for c in conditions if c.key == FALL]


def play(readings: list[Reading], evaluator: Evaluator | None = None) -> list[Condition]:
    evaluator = evaluator or Evaluator(LimitsBook())
    out: list[Condition] = []
    for reading in sorted(readings, key=lambda r: r.time):
        out.extend(evaluator.evaluate(reading))
    return out


def two_oximeters(seconds: int, firmware_level, ble_level, seed: int = 1) -> list[Reading]:
    """The demo's pattern: the firmware oximeter at whole seconds, the BLE one at .66 s,
    each with +-1 point of noise around its own level (a function of time)."""
    rng = random.Random(seed)
    out = []
    for s in range(seconds):
        out.append(spo2(FIRMWARE, s, round(firmware_level(s)) + rng.choice((-1, 0, 1))))
        out.append(spo2(BLE, s + 0.66, round(ble_level(s + 0.66)) + rng.choice((-1, 0, 1))))
    return out


def shared_window_falls(readings: list[Reading]) -> int:
    """How often the old rule (one window per patient) saw a fall: the flapping the demo had."""
    count = 0
    for reading in readings:
        window = [r.value for r in readings
                  if reading.time - RULE.window <= r.time <= reading.time]
        count += max(window) - reading.value >= RULE.delta
    return count


def test_two_devices_that_disagree_do_not_flap() -> None:
    readings = two_oximeters(120, lambda t: 90, lambda t: 96)
    # hostile series: in one shared window a fall appears on most firmware readings and
    # vanishes on every BLE reading
    assert shared_window_falls(readings) > 60
    evaluator, lifecycle = Evaluator(LimitsBook()), AlarmLifecycle()
    conditions = play(readings, evaluator)
    assert falls(conditions) == []
    steps = lifecycle.apply_all(conditions)
    assert not [s for s in steps if lifecycle.alarm(s.alarm_id).key == FALL]


@pytest.mark.parametrize("falling", [FIRMWARE, BLE])
def test_a_real_fall_on_either_device_raises_once_and_clears_once(falling: str) -> None:
    def desaturating(t: float) -> float:
        # 97 -> 88 in 5 s from t = 40 (fast, but within the jump guard's 4 + 2/s)
        return 97 - 9 * min(max(t - 40, 0), 5) / 5

    def steady(t: float) -> float:
        return 97

    firmware, ble = (desaturating, steady) if falling == FIRMWARE else (steady, desaturating)
    readings = two_oximeters(120, firmware, ble, seed=7)
    evaluator, lifecycle = Evaluator(LimitsBook()), AlarmLifecycle()
    conditions = play(readings, evaluator)
    changes = [c for c in conditions if c.key == FALL]
    assert [c.grade for c in changes] == [Grade.ORANGE, None]
    raised, cleared = changes
    own = [r for r in readings if r.device == falling]
    showing = [r.time for r in own if max(
        o.value for o in own if r.time - RULE.window <= o.time <= r.time) - r.value >= 5]
    assert raised.time == showing[0] and raised.device == falling
    assert raised.value == next(r.value for r in own if r.time == raised.time)
    # the steady device's readings in between did not clear it; it cleared once the falling
    # device's own 30 s window no longer held the high values, plus clear_after
    last_fall = showing[-1]
    normal_from = last_fall + 1.0  # that device's next reading
    assert normal_from + 5.0 <= cleared.time < normal_from + 5.0 + 1.0
    kinds = [s.kind for s in lifecycle.apply_all(conditions)
             if lifecycle.alarm(s.alarm_id).key == FALL]
    assert kinds == ["raised", "resolved"]  # no recurrence, so one acknowledgement closes it


def test_clear_after_is_respected_and_a_renewed_fall_keeps_the_condition() -> None:
    values = [99] * 5 + [93] * 3 + [99] * 3 + [93] * 2 + [99] * 12
    conditions = play([spo2(FIRMWARE, t, v) for t, v in enumerate(values)])
    # raised at 5; normal from 8; the fall at 11 is back within clear_after and keeps the
    # same condition (the old rule cleared at 8 and raised again at 11); normal again from
    # 13, cleared at 18 (13 + 5 s)
    assert falls(conditions) == [(5, Grade.ORANGE), (18, None)]


def test_clear_after_is_configurable() -> None:
    values = [99] * 5 + [93] + [99] * 10
    config = EvaluatorConfig(clear_after=2.0)
    conditions = play([spo2(FIRMWARE, t, v) for t, v in enumerate(values)],
                      Evaluator(LimitsBook(), config))
    assert falls(conditions) == [(5, Grade.ORANGE), (8, None)]  # normal from 6, + 2 s


def test_a_device_that_stopped_sending_does_not_hold_the_condition() -> None:
    firmware = [97.0] * 10 + [94.0, 91.0, 88.0]  # then silent
    readings = [spo2(FIRMWARE, t, v) for t, v in enumerate(firmware)]
    readings += [spo2(BLE, t + 0.5, 97) for t in range(80)]
    conditions = play(readings)
    # the firmware's last verdict (at 12) counts until it is older than the 30 s window;
    # the BLE readings are normal from 42.5, so it clears 5 s later
    assert falls(conditions) == [(11, Grade.ORANGE), (47.5, None)]


# ------------------------------------------------------------------ one device: as before


def old_rule(values: list[tuple[float, float]]) -> list[tuple[int, Grade | None]]:
    """The rule before follow-up 6, written out plainly for one device: a reading shows the
    fall when it is >= 5 below the highest value of the last 30 s, and the condition
    followed that verdict at once. Changes as (reading index, grade)."""
    out: list[tuple[int, Grade | None]] = []
    active = False
    for i, (t, v) in enumerate(values):
        window = [w for s, w in values[:i + 1] if s >= t - RULE.window]
        shows = max(window) - v >= RULE.delta
        if shows != active:
            active = shows
            out.append((i, Grade.ORANGE if shows else None))
    return out


def with_hysteresis(values: list[tuple[float, float]], old: list[tuple[int, Grade | None]],
                    clear_after: float) -> list[tuple[float, Grade | None]] | None:
    """The old changes with each clear moved to the first reading at least clear_after
    later; None if the old rule flapped (raised again before that reading)."""
    out: list[tuple[float, Grade | None]] = []
    for n, (i, grade) in enumerate(old):
        if grade is not None:
            out.append((values[i][0], grade))
            continue
        cleared = next((j for j in range(i, len(values))
                        if values[j][0] - values[i][0] >= clear_after), None)
        again = old[n + 1][0] if n + 1 < len(old) else None
        if again is not None and (cleared is None or again <= cleared):
            return None  # a fall came back within clear_after: the old rule flapped
        if cleared is not None:
            out.append((values[cleared][0], None))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.5, 1.0, 1.0, 1.0, 2.0, 7.0, 31.0]),
                          st.integers(80, 100)), min_size=1, max_size=120))
def test_one_device_gives_what_the_old_rule_gave_when_it_did_not_flap(
        steps: list[tuple[float, int]]) -> None:
    values, t = [], 0.0
    for dt, value in steps:
        t += dt
        values.append((t, float(value)))
    expected = with_hysteresis(values, old_rule(values), EvaluatorConfig().clear_after)
    unguarded = Evaluator(LimitsBook(), EvaluatorConfig(jump_guards={}))  # rates only
    conditions = play([spo2(FIRMWARE, t, v) for t, v in values], unguarded)
    if expected is not None:
        assert falls(conditions) == [(round(t, 2), g) for t, g in expected]
    # flapping or not, raised and cleared alternate (one alarm episode at a time)
    grades = [g for _, g in falls(conditions)]
    assert all(a is not b for a, b in zip(grades, grades[1:], strict=False))
