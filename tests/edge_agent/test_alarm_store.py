"""Alarm persistence: restart in the middle of the loop, append-only steps, tamper evidence."""

import sqlite3
from pathlib import Path

import pytest

from edge_agent.alarms.evaluator import Condition, Evaluator, Reading
from edge_agent.alarms.grades import Grade
from edge_agent.alarms.lifecycle import AlarmLifecycle, LifecycleConfig, Step
from edge_agent.alarms.limits import LimitsBook
from edge_agent.alarms.store import AlarmStore, StoreError

CONFIG = LifecycleConfig(escalate_after=120)


def cond(grade: Grade | None, t: float, key: str = "spo2:low", patient: str | None = "P1",
         value: object = 88) -> Condition:
    return Condition(key, "threshold", grade, t, patient, "D1", "spo2", value, "spo2 low")


def test_an_agent_restart_in_the_middle_keeps_the_alarm(tmp_path: Path) -> None:
    path = tmp_path / "alarms.db"
    lc = AlarmLifecycle(CONFIG)
    with AlarmStore(path) as store:
        steps = lc.apply(cond(Grade.RED, 1000))
        steps.append(lc.notified(steps[0].alarm_id, "centre", 1000.4))
        steps += lc.tick(1120)  # escalation level 1
        store.append(steps, lc.alarm)
        alarm_id = steps[0].alarm_id
    live = lc.alarm(alarm_id)

    # the agent restarts: a new process, a new store object on the same file
    with AlarmStore(path) as store:
        [restored] = store.load_open()
        assert restored == live
        lc2 = AlarmLifecycle(CONFIG, restored=store.load_open())
        assert lc2.tick(1239) == []
        escalated = lc2.tick(1240)  # escalation continues on the original schedule
        assert [(s.kind, s.level, s.seq) for s in escalated] == [("escalated", 2, 3)]
        store.append(escalated, lc2.alarm)
        # the same condition after the restart updates the restored alarm, no duplicate
        assert lc2.apply(cond(Grade.RED, 1250)) == []
        steps = lc2.acknowledge(alarm_id, "dr.ada", 1300)
        steps += lc2.apply(cond(None, 1310))
        steps.append(lc2.close(alarm_id, "dr.ada", 1400, "treated"))
        store.append(steps, lc2.alarm)
        assert store.load_open() == []
        closed = store.load(alarm_id)
        assert closed.state == "closed" and closed.closed_by == "dr.ada"
        journal = store.steps(alarm_id)
        assert [(s.kind, s.actor, s.time) for s in journal] == [
            ("raised", "rules", 1000), ("notified", "centre", 1000.4),
            ("escalated", "rules", 1120), ("escalated", "rules", 1240),
            ("acknowledged", "dr.ada", 1300), ("resolved", "rules", 1310),
            ("closed", "dr.ada", 1400)]
        assert journal[0].value == 88 and journal[-1].detail == "treated"
        assert store.verify() == []


def test_a_condition_that_ends_during_a_restart_still_resolves(tmp_path: Path) -> None:
    path = tmp_path / "alarms.db"
    evaluator, lifecycle = Evaluator(LimitsBook()), AlarmLifecycle(CONFIG)
    with AlarmStore(path) as store:
        for t in range(12):  # SpO2 93 %: orange after 10 s
            steps = lifecycle.apply_all(evaluator.evaluate(Reading("P1", "D1", "spo2", 93, t)))
            store.append(steps, lifecycle.alarm)
        [alarm] = store.load_open()
        assert alarm.grade is Grade.ORANGE and alarm.condition_active
    with AlarmStore(path) as store:  # restart: fresh evaluator, alarms from the store
        lifecycle = AlarmLifecycle(CONFIG, restored=store.load_open())
        evaluator = Evaluator(LimitsBook())
        evaluator.resume(lifecycle.active_conditions())
        for t in range(100, 107):  # the patient recovered while the agent was down
            steps = lifecycle.apply_all(evaluator.evaluate(Reading("P1", "D1", "spo2", 97, t)))
            store.append(steps, lifecycle.alarm)
        [alarm] = store.load_open()
        assert not alarm.condition_active and alarm.resolved_at == 105
        assert [s.kind for s in store.steps(alarm.id)] == ["raised", "resolved"]


def test_values_and_gateway_alarms_round_trip(tmp_path: Path) -> None:
    lc = AlarmLifecycle()
    steps = lc.apply(cond(Grade.BLUE, 5, key="disk-budget", patient=None, value=0.93))
    steps += lc.apply(cond(Grade.BLUE, 6, key="certificate:D1", value="expiring"))
    steps += lc.apply(cond(Grade.ORANGE, 7.125, key="news2", value=6))
    with AlarmStore(tmp_path / "a.db") as store:
        store.append(steps, lc.alarm)
        loaded = {a.key: a for a in store.load_open()}
    assert loaded["disk-budget"].patient is None and loaded["disk-budget"].value == 0.93
    assert loaded["certificate:D1"].value == "expiring" and loaded["news2"].raised_at == 7.125
    assert {a.id: a for a in loaded.values()} == {a.id: a for a in lc.open_alarms()}


def test_steps_are_append_only(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    lc = AlarmLifecycle()
    steps = lc.apply(cond(Grade.RED, 0))
    with AlarmStore(path) as store:
        store.append(steps, lc.alarm)
        with pytest.raises(StoreError, match="does not follow"):
            store.append(steps, lc.alarm)  # the same step again
        gap = Step(steps[0].alarm_id, 5, "acknowledged", 1, "x", Grade.RED)
        with pytest.raises(StoreError, match="does not follow"):
            store.append([gap], lc.alarm)
        # a batch with one bad step writes nothing at all
        good = lc.acknowledge(steps[0].alarm_id, "n", 2)
        with pytest.raises(StoreError):
            store.append(good + [gap], lc.alarm)
        assert len(store.steps(steps[0].alarm_id)) == 1
    db = sqlite3.connect(path)
    for sql in ("UPDATE alarm_steps SET actor = 'mallory'", "DELETE FROM alarm_steps",
                "DELETE FROM alarms", "UPDATE alarms SET key = 'x'",
                "UPDATE alarms SET open = 1"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only|fixed"):
            db.execute(sql)
    db.close()


def test_verify_detects_a_step_edited_behind_the_triggers(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    lc = AlarmLifecycle()
    steps = lc.apply(cond(Grade.RED, 0))
    steps += lc.acknowledge(steps[0].alarm_id, "nurse.kim", 30)
    steps += lc.apply(cond(None, 40))
    with AlarmStore(path) as store:
        store.append(steps, lc.alarm)
        assert store.verify() == []
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER alarm_steps_no_update")
    db.execute("DROP TRIGGER alarm_steps_no_delete")
    db.execute("UPDATE alarm_steps SET actor = 'mallory' WHERE seq = 1")
    db.execute("DELETE FROM alarm_steps WHERE seq = 2")
    db.commit()
    db.close()
    with AlarmStore(path) as store:  # the triggers come back on open
        # The edit is caught. Cutting off the newest step (seq 2) leaves a valid chain: only
        # an anchor outside this file (the journal's checkpoints) can reveal a truncation.
        problems = store.verify()
        assert problems == [f"alarm {steps[0].alarm_id}: step 1 altered"]
        db = sqlite3.connect(path)
        db.execute("DROP TRIGGER alarm_steps_no_delete")
        db.execute("DELETE FROM alarm_steps WHERE seq = 0")
        db.commit()
        db.close()
        assert f"alarm {steps[0].alarm_id}: step 0 missing" in store.verify()


def test_a_store_from_a_newer_agent_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=7")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        AlarmStore(path)
