"""The fleet's pure parts: --faults parsing, the fault schedule, the oracle's comparisons."""

from __future__ import annotations

import random

import pytest

from edge_agent.alarms.grades import Grade
from edge_agent.alarms.scenarios import ExpectedAlarm
from simulator.fleet.devices import Sealed
from simulator.fleet.faults import (
    FAULT_NAMES,
    FaultSpecError,
    FaultTiming,
    PlannedFault,
    check_plan,
    parse_faults,
    plan_faults,
)
from simulator.fleet.oracle import (
    AlarmStep,
    ExpectedAlarmAt,
    StoredReading,
    compare_readings,
    match_alarms,
)


def test_all_names_every_fault_and_order_is_canonical() -> None:
    everything = parse_faults("all")
    assert everything == FAULT_NAMES and "ble-disconnect" in everything
    assert parse_faults(" garbage , agent-kill ") == ("agent-kill", "garbage")
    with pytest.raises(FaultSpecError, match="unknown fault 'al'"):
        parse_faults("al")


@pytest.mark.parametrize("seed", range(20))
def test_the_schedule_injects_each_fault_inside_the_window_without_broker_overlaps(
        seed: int) -> None:
    names = parse_faults("all")
    plan = plan_faults(names, 40.0, ["gw-01", "gw-02"], ["a", "b", "c", "d"],
                       random.Random(seed), skew_devices=["b", "d"], ble_devices=["x", "y"])
    assert {f.name for f in plan} == set(names)
    assert plan == sorted(plan, key=lambda f: (f.at, f.name, f.target))
    for fault in plan:
        assert 6.0 <= fault.at and fault.at + fault.duration_s <= 36.0 + 1e-9, fault
    spans = [(f.at, f.at + f.duration_s) for f in plan
             if f.name in ("broker-outage", "broker-restart", "disk-full")]
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    assert all(f.target in ("b", "d") for f in plan if f.name == "clock-skew")
    # every jump is explicit in the plan: the default size, either way
    assert all(abs(f.jump_s) == 120.0 for f in plan if f.name == "clock-skew")
    assert all(f.jump_s == 0.0 for f in plan if f.name != "clock-skew")
    check_plan(plan, ["gw-01", "gw-02"], ["a", "b", "c", "d"], ["x", "y"])
    assert sum(f.name == "agent-kill" for f in plan) >= 2
    assert plan == plan_faults(names, 40.0, ["gw-01", "gw-02"], ["a", "b", "c", "d"],
                               random.Random(seed), skew_devices=["b", "d"],
                               ble_devices=["x", "y"])


@pytest.mark.parametrize("seed", range(20))
def test_ble_disconnects_come_in_storms_at_ble_devices_each_after_the_last_ended(
        seed: int) -> None:
    timing = FaultTiming()
    plan = [f for f in plan_faults(("ble-disconnect", "garbage"), 35.0, ["gw-01"], ["a"],
                                   random.Random(seed), timing, ble_devices=["x", "y", "z"])
            if f.name == "ble-disconnect"]
    assert len(plan) == 2 * timing.storm_size  # one storm per two BLE devices, rounded up
    by_target: dict[str, list] = {}
    for fault in plan:
        by_target.setdefault(fault.target, []).append(fault)
        assert fault.target in ("x", "y", "z")
        assert 6.0 <= fault.at and fault.at + fault.duration_s <= 31.0 + 1e-9, fault
        assert fault.duration_s == (timing.out_of_range_s if fault.mode == "out-of-range"
                                    else 0.0)
    assert all(len(storm) == timing.storm_size for storm in by_target.values())
    for storm in by_target.values():  # one storm per device
        storm.sort(key=lambda f: f.at)
        for before, after in zip(storm, storm[1:], strict=False):
            assert before.mode != after.mode
            # the next one strikes only after the device is back in range
            assert after.at - (before.at + before.duration_s) >= timing.storm_gap_s[0] - 1e-9
    # no BLE device: nothing to disconnect, the rest of the plan is unchanged
    assert not [f for f in plan_faults(("ble-disconnect",), 35.0, ["gw-01"], ["a"],
                                       random.Random(seed)) if f.name == "ble-disconnect"]


def test_jump_signs_go_both_ways_over_seeds() -> None:
    signs = {f.jump_s > 0 for seed in range(20)
             for f in plan_faults(("clock-skew",), 40.0, ["gw-01"], ["a", "b"],
                                  random.Random(seed)) if f.name == "clock-skew"}
    assert signs == {True, False}


@pytest.mark.parametrize(("fault", "message"), [
    (PlannedFault("bogus", 1.0, 0.0, "broker"), "unknown"),
    (PlannedFault("garbage", -1.0, 0.0, "a"), "must be >= 0"),
    (PlannedFault("garbage", 1.0, 0.0, "zz"), "target 'zz' is not one of a, b"),
    (PlannedFault("garbage", 1.0, 0.0, "x"), "target 'x'"),  # a BLE device has no line
    (PlannedFault("agent-kill", 1.0, 1.0, "a"), "not one of gw-01"),
    (PlannedFault("broker-outage", 1.0, 1.0, "gw-01"), "not one of broker"),
    (PlannedFault("slow-consumer", 1.0, 1.0, "broker"), "not one of centre"),
    (PlannedFault("ble-disconnect", 1.0, 0.0, "x"), "mode must be one of terminate"),
    (PlannedFault("ble-disconnect", 1.0, 0.0, "a", "terminate"), "not one of x"),
    (PlannedFault("clock-skew", 1.0, 3.0, "a"), "jump_s must be non-zero"),
])
def test_an_explicit_plan_the_runner_cannot_carry_out_is_refused(fault: PlannedFault,
                                                                 message: str) -> None:
    good = [PlannedFault("clock-skew", 2.0, 3.0, "b", jump_s=-30.0),
            PlannedFault("ble-disconnect", 3.0, 2.0, "x", "out-of-range")]
    check_plan(good, ["gw-01"], ["a", "b"], ["x"])
    with pytest.raises(FaultSpecError, match=message):
        check_plan([*good, fault], ["gw-01"], ["a", "b"], ["x"])


def sealed(quantity: str, value: float, at: float = 100.0) -> Sealed:
    return Sealed(quantity, value, int(at), at)


def test_compare_counts_only_seqs_stored_with_the_sealed_content() -> None:
    truth = {"d1": {0: sealed("spo2", 97), 1: sealed("pr", 70), 2: sealed("spo2", 96),
                    3: sealed("pr", 71)}}
    # (arrival at the centre, commit): latency is measured to the commit
    stored = [StoredReading("d1", 0, "spo2", 97, 100.1, 100.5),
              StoredReading("d1", 1, "pr", 70, 100.05, 100.25),
              StoredReading("d1", 1, "pr", 70, 100.9, 101.0),  # the same seq stored again
              StoredReading("d1", 2, "spo2", 55, 100.5, 100.5),  # not what the device sealed
              StoredReading("d1", 9, "pr", 70, 100.5, 100.5)]  # never sealed
    tally = compare_readings(truth, stored)["d1"]
    assert (tally.generated, tally.received, tally.duplicated_as_new) == (4, 2, 1)
    assert (tally.wrong_content, tally.unknown_seqs) == (1, 1)
    assert sorted(tally.latency_ms) == [250.0, 500.0]


def test_a_slow_centre_shows_in_reading_latency() -> None:
    """Arrived at once, committed 3 s later (queued behind a slow consumer): 3000 ms."""
    truth = {"d1": {0: sealed("spo2", 97)}}
    tally = compare_readings(truth, [StoredReading("d1", 0, "spo2", 97, 100.01, 103.0)])["d1"]
    assert tally.latency_ms == [3000.0]


def step(grade: str, key: str, at: float, kind: str = "raised", alarm: str = "a1",
         patient: str | None = "p1") -> AlarmStep:
    return AlarmStep(alarm, "gw", kind, grade, key, patient, "d1", at)


def expect(grade: Grade, key: str, at: float, patient: str | None = "p1") -> ExpectedAlarmAt:
    return ExpectedAlarmAt(ExpectedAlarm(grade, key, at), patient, "d1", at)


def test_alarms_match_by_key_patient_and_at_least_the_grade() -> None:
    start = 1000.0
    expected = [expect(Grade.YELLOW, "spo2:low", 10.0), expect(Grade.RED, "spo2:low", 12.0),
                expect(Grade.ORANGE, "spo2:fall", 11.0), expect(Grade.BLUE, "disk-budget", 5.0,
                                                                 patient=None)]
    steps = [step("orange", "spo2:low", start + 10.5),
             step("red", "spo2:low", start + 12.25, kind="regraded"),
             step("yellow", "spo2:fall", start + 11.5, alarm="a2"),  # too low a grade
             step("blue", "offline", start + 20.0, alarm="a3"),
             step("red", "spo2:low", start + 9.0, alarm="a4", patient="p2")]  # other patient
    outcomes, latencies = match_alarms(expected, steps, start)
    by_key = {(o.condition, o.grade, o.expected_at is None): o for o in outcomes}
    assert by_key[("spo2:low", "yellow", False)].raised_at == 10.5
    assert by_key[("spo2:low", "red", False)].raised_at == 12.25
    assert by_key[("spo2:fall", "orange", False)].raised_at is None  # missed
    assert by_key[("disk-budget", "blue", False)].raised_at is None
    unexpected = sorted((o.condition, o.patient) for o in outcomes if o.expected_at is None)
    assert unexpected == [("offline", "p1"), ("spo2:fall", "p1"), ("spo2:low", "p2")]
    assert sorted(latencies) == [250.0, 500.0]
