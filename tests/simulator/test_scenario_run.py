"""`vitalbridge sim scenario`: the replay plan, alarm judging, and whole runs with the real
agent, broker and centre (each end-to-end run takes ~10-15 s lock-stepped)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from edge_agent.alarms import scenarios
from edge_agent.alarms.grades import Grade
from edge_agent.cli import CommandError
from simulator import scenario_run
from simulator.scenario_run import (
    AlarmStep,
    alarm_rises,
    match_alarms,
    parse_speed,
    plan_replay,
    replay_speed,
    run_scenario,
)

CLINICAL = {"red", "orange", "yellow"}


# ---------------------------------------------------------------- pure parts


def test_plan_sends_every_reading_once_with_its_quality():
    scenario = scenarios.build("sudden-desaturation", start=1000.0)
    plan = plan_replay(scenario)
    assert [s.offset for s in plan] == list(range(121))
    sent = [(device, q, v, t) for s in plan for device, batch in s.batches.items()
            for q, v, t in batch if q != "sq"]
    assert sorted(sent) == sorted((r.device, r.quantity, r.value, r.time)
                                  for r in scenario.readings)
    oximeter = plan[30].batches[scenarios.OXIMETER]
    assert [q for q, _, _ in oximeter] == ["sq", "spo2", "pr"]   # one quality per batch
    assert not any(s.events for s in plan)
    assert replay_speed(plan, "auto") is None                     # lock-step only


def test_a_finger_off_has_one_name_from_firmware_event_to_expected_timeline():
    """The firmware reports a finger taken off as device-event `sensor-off` (cause
    `finger-off`); the agent raises the technical condition `sensor-off:<device>` for it
    (service._device_event -> evaluator.device_status); the scenario's expected timeline
    must name that same condition, or the run judges a correct alarm as missing."""
    from edge_agent.alarms.evaluator import SENSOR_OFF, DeviceStatus, Evaluator
    from edge_agent.alarms.limits import LimitsBook

    scenario = scenarios.build("motion-artefact", start=0.0)
    (off,) = [(s.offset, e) for s in plan_replay(scenario)
              for e in s.events.get(scenarios.OXIMETER, []) if e["event"] == SENSOR_OFF]
    raised = Evaluator(LimitsBook()).device_status(
        DeviceStatus(scenarios.OXIMETER, "p-0001", off[0], sensor_off=True))
    assert [c.key for c in raised] == [f"sensor-off:{scenarios.OXIMETER}"]
    expected = {e.key for e in scenario.expected if e.grade is Grade.BLUE}
    assert raised[0].key in expected
    assert not any(key.startswith("finger-off") for key in expected)


def test_plan_reports_a_finger_off_as_events_not_values():
    scenario = scenarios.build("motion-artefact", start=0.0)
    plan = plan_replay(scenario)
    events = [(s.offset, e["event"], e["cause"]) for s in plan
              for e in s.events.get(scenarios.OXIMETER, [])]
    assert events == [(100, "sensor-off", "finger-off"), (110, "sensor-on", "finger-on")]
    during = plan[105].batches[scenarios.OXIMETER]
    assert during == [("sq", 0.0, 105.0)]                         # no placeholder 0 values
    moving = dict((q, v) for q, v, _ in plan[35].batches[scenarios.OXIMETER])
    assert moving["sq"] < 40 and "spo2" in moving
    assert replay_speed(plan, "auto") == 1.0                      # events: real time
    assert replay_speed(plan, "max") is None and replay_speed(plan, 4) == 4.0


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "fast", ""])
def test_bad_speeds_are_refused(text):
    with pytest.raises(ValueError, match="speed"):
        parse_speed(text)


def step(alarm_id, seq, kind, grade, key, t, received=0.0):
    return AlarmStep(alarm_id, seq, kind, grade, key, t, "P-1", "ox", received)


def test_rises_count_only_new_highest_grades_per_key():
    steps = [step("a1", 0, "raised", "yellow", "spo2:low", 110.0),
             step("a1", 1, "regraded", "orange", "spo2:low", 112.0),
             step("a1", 2, "regraded", "yellow", "spo2:low", 115.0),   # down: not a rise
             step("a1", 3, "resolved", "yellow", "spo2:low", 120.0),
             step("a2", 0, "raised", "orange", "spo2:low", 130.0),     # same grade again
             step("a3", 0, "raised", "red", "news2", 131.0),
             step("a3", 1, "acknowledged", "red", "news2", 140.0)]
    rises = alarm_rises(steps, start=100.0)
    assert [(r.key, r.grade, r.at, r.ended_at) for r in rises] == [
        ("spo2:low", "yellow", 10.0, 20.0), ("spo2:low", "orange", 12.0, 20.0),
        ("news2", "red", 31.0, None)]


def test_matching_expected_and_raised():
    expected = [scenarios.ExpectedAlarm(Grade.RED, "spo2:low", 34.0),
                scenarios.ExpectedAlarm(Grade.BLUE, "low-signal:sim-ox-1", 35.0)]
    rises = alarm_rises([step("a", 0, "raised", "red", "spo2:low", 134.4),
                         step("b", 0, "raised", "orange", "news2", 140.0)], start=100.0)
    outcomes = match_alarms(expected, rises, "P-1")
    assert [(o.grade, o.condition, o.expected_at, o.raised_at, o.device) for o in outcomes] == [
        ("red", "spo2:low", 34.0, pytest.approx(34.4), "ox"),
        ("blue", "low-signal:sim-ox-1", 35.0, None, "sim-ox-1"),
        ("orange", "news2", None, 40.0, "ox")]


def test_unknown_scenario_is_refused_with_the_names(tmp_path):
    with pytest.raises(ValueError, match="known: stable, gradual-desaturation"):
        run_scenario("no-such", tmp_path)
    parser = argparse.ArgumentParser()
    scenario_run.register(parser.add_subparsers())
    args = parser.parse_args(["scenario", "no-such", "--report", str(tmp_path)])
    with pytest.raises(CommandError, match="known: " + ", ".join(scenarios.NAMES)):
        args.handler(args)
    args = parser.parse_args(["scenario", "stable", "--report", str(tmp_path), "--speed", "0"])
    with pytest.raises(CommandError, match="speed"):
        args.handler(args)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- whole runs


def assert_expected_alarms_on_time(summary: dict, name: str) -> None:
    scenario = scenarios.build(name)
    expected = {(e.key, e.grade.label, e.at) for e in scenario.expected}
    judged = {(a["condition"], a["grade"], a["expected_at"]): a for a in summary["alarms"]
              if a["expected_at"] is not None}
    assert set(judged) == expected
    for alarm in judged.values():
        assert alarm["raised_at"] is not None, alarm
        assert abs(alarm["raised_at"] - alarm["expected_at"]) <= 1.0, alarm


def test_sudden_desaturation_end_to_end(tmp_path: Path):
    summary, (json_path, html_path) = run_scenario("sudden-desaturation", tmp_path / "report",
                                                   speed="max", workdir=tmp_path / "run")
    assert summary["alarms_summary"]["expected"] == 4          # spo2 fall, spo2 low, news2, pr
    assert_expected_alarms_on_time(summary, "sudden-desaturation")
    assert not [a for a in summary["alarms"] if a["status"] == "unexpected"
                and a["grade"] in CLINICAL]
    readings = summary["readings"]
    assert readings["generated"] > 480 and readings["lost"] == 0
    assert readings["duplicated_as_new"] == 0
    assert summary["latency_ms"]["reading"]["count"] == readings["received"]
    assert summary["verdict"] == "pass", summary["reasons"]
    assert scenario_run.exit_status(summary) == 0
    assert json.loads(json_path.read_text()) == summary
    assert "PASS" in html_path.read_text()


def test_motion_artefact_raises_no_clinical_alarm(tmp_path: Path):
    summary, _ = run_scenario("motion-artefact", tmp_path / "report", speed="max",
                              workdir=tmp_path / "run")
    assert summary["readings"]["lost"] == 0
    raised = [a for a in summary["alarms"] if a["raised_at"] is not None]
    assert not [a for a in raised if a["grade"] in CLINICAL], raised


@pytest.mark.slow
@pytest.mark.parametrize("name", scenarios.NAMES)
def test_every_scenario_end_to_end(tmp_path: Path, name: str):
    summary, _ = run_scenario(name, tmp_path / "report", workdir=tmp_path / "run")
    assert summary["readings"]["lost"] == 0
    assert_expected_alarms_on_time(summary, name)
    assert scenario_run.exit_status(summary) == 0, summary["reasons"]
