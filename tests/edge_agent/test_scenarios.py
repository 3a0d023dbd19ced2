"""The named scenarios through the evaluator and the lifecycle, against their timelines."""

import pytest

from edge_agent.alarms import scenarios
from edge_agent.alarms.evaluator import Evaluator
from edge_agent.alarms.grades import Grade
from edge_agent.alarms.lifecycle import RAISED, REGRADED, AlarmLifecycle
from edge_agent.alarms.limits import LimitsBook
from edge_agent.alarms.scenarios import ExpectedAlarm, Scenario

R, OR, Y, B = Grade.RED, Grade.ORANGE, Grade.YELLOW, Grade.BLUE
START = 1_767_225_600.0
BUILT = {name: scenarios.build(name, start=START) for name in scenarios.NAMES}


def play(scenario: Scenario) -> tuple[list[tuple[Grade, str, float]], AlarmLifecycle]:
    """Every raise or upgrade of an alarm as (grade, key, seconds after start), with a
    one-second clock tick (offline detection, escalation) between readings."""
    evaluator, lifecycle = Evaluator(LimitsBook()), AlarmLifecycle()
    seen = []
    next_tick = scenario.start
    for reading in scenario.readings:
        while next_tick < reading.time:
            lifecycle.apply_all(evaluator.tick(next_tick))
            lifecycle.tick(next_tick)
            next_tick += 1.0
        for step in lifecycle.apply_all(evaluator.evaluate(reading)):
            if step.kind in (RAISED, REGRADED):
                key = lifecycle.alarm(step.alarm_id).key
                seen.append((step.grade, key, step.time - scenario.start))
    return seen, lifecycle


@pytest.mark.parametrize("name", scenarios.NAMES)
def test_every_expected_alarm_and_nothing_else(name: str) -> None:
    scenario = BUILT[name]
    seen, _ = play(scenario)
    unmatched = list(seen)
    for expected in scenario.expected:
        match = [s for s in unmatched if s[0] is expected.grade and s[1] == expected.key
                 and abs(s[2] - expected.at) <= 1.0]
        assert match, f"{name}: {expected} not raised; raised: {seen}"
        unmatched.remove(match[0])
    assert unmatched == [], f"{name}: unexpected alarms {unmatched}"


def first_time(scenario: Scenario, quantity: str, test) -> float:
    return next(r.time - scenario.start for i, r in enumerate(scenario.readings)
                if r.quantity == quantity and i not in scenario.artefacts and test(r.value))


def keys(scenario: Scenario) -> dict[str, list[ExpectedAlarm]]:
    out: dict[str, list[ExpectedAlarm]] = {}
    for e in scenario.expected:
        out.setdefault(e.key, []).append(e)
    return out


def test_the_timelines_say_what_the_clinical_story_says() -> None:
    """Hand-written checks of the derived timelines against the raw series."""
    assert BUILT["stable"].expected == ()
    sudden = BUILT["sudden-desaturation"]
    red_at = first_time(sudden, "spo2", lambda v: v < 92)  # SpO2 <= 91: NEWS2 3
    assert ExpectedAlarm(R, "spo2:low", red_at) in sudden.expected and 30 < red_at < 40
    fall = keys(sudden)["spo2:fall"]
    assert fall[0].grade is OR and fall[0].at <= red_at  # the fall is seen before the limit
    gradual = keys(BUILT["gradual-desaturation"])
    assert [e.grade for e in gradual["spo2:low"]] == [Y, OR, R]
    assert "spo2:fall" not in gradual  # 10 points over 260 s is not a sudden fall
    yellow = gradual["spo2:low"][0]
    run_start = yellow.at - 30  # yellow needs 30 s of SpO2 <= 95 without a break
    readings = [r for r in BUILT["gradual-desaturation"].readings if r.quantity == "spo2"
                and run_start <= r.time - START <= yellow.at]
    assert all(r.value < 96 for r in readings) and len(readings) == 31
    fever = keys(BUILT["fever"])
    assert [e.grade for e in fever["temp:high"]] == [Y, OR]
    orange_temp = first_time(BUILT["fever"], "temp", lambda v: v > 39.0)
    assert orange_temp + 10 <= fever["temp:high"][1].at <= orange_temp + 20  # next patch reading
    hypo = BUILT["hypotension"]
    sys_red = first_time(hypo, "sys", lambda v: v <= 90)  # spot measurement: at once
    assert ExpectedAlarm(R, "sys:low", sys_red) in hypo.expected
    assert keys(hypo)["news2"][-1].grade is R
    motion = BUILT["motion-artefact"]
    assert {e.key for e in motion.expected} == {"low-signal:sim-ox-1", "sensor-off:sim-ox-1"}
    assert all(e.grade is B for e in motion.expected)


def test_motion_artefact_raises_no_clinical_alarm() -> None:
    scenario = BUILT["motion-artefact"]
    assert len(scenario.artefacts) > 40
    # the injected values alone would alarm: the guards are what keeps this scenario quiet
    assert any(scenario.readings[i].value < 92 for i in scenario.artefacts
               if scenario.readings[i].quantity == "spo2")
    seen, lifecycle = play(scenario)
    assert [s for s in seen if s[0].clinical] == []
    assert all(not a.grade.clinical for a in lifecycle.open_alarms())


def test_scenarios_are_deterministic_and_sized() -> None:
    for name in scenarios.NAMES:
        again = scenarios.build(name, start=START)
        assert again == BUILT[name]
        scenario = BUILT[name]
        assert 60 <= scenario.duration <= 300
        times = [r.time for r in scenario.readings]
        assert times == sorted(times) and times[0] == START
        assert times[-1] - START == scenario.duration
        assert {r.patient for r in scenario.readings} == {scenarios.PATIENT}
    reseeded = scenarios.build("stable", seed=1)
    assert reseeded.readings != scenarios.build("stable").readings
    with pytest.raises(ValueError, match="unknown scenario"):
        scenarios.build("sepsis")


def test_a_red_alarm_in_a_scenario_escalates_when_nobody_answers() -> None:
    scenario = BUILT["sudden-desaturation"]
    _, lifecycle = play(scenario)
    red = lifecycle.find(scenarios.PATIENT, "spo2:low")
    assert red.grade is R and not red.acknowledged
    # raised at ~34 s, the default escalation is every 120 s: the 120 s run ends first
    assert red.escalation_level == 0
    steps = lifecycle.tick(red.raised_at + 120)
    assert [(s.kind, s.level) for s in steps] == [("escalated", 1)]
