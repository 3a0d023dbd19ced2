"""The closed loop: steps with actors and times, latching, escalation, updates, ids, folding."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.alarms.evaluator import Condition
from edge_agent.alarms.grades import Grade
from edge_agent.alarms.lifecycle import (
    Alarm,
    AlarmLifecycle,
    LifecycleConfig,
    LifecycleError,
    alarm_id,
)

R, OR, Y, B = Grade.RED, Grade.ORANGE, Grade.YELLOW, Grade.BLUE


def cond(grade: Grade | None, t: float, key: str = "spo2:low", patient: str = "P1",
         value: float = 90) -> Condition:
    return Condition(key, "threshold", grade, t, patient, "D1", "spo2", value, "detail")


def kinds(steps) -> list[str]:
    return [s.kind for s in steps]


def test_full_closed_loop_with_actors_and_times() -> None:
    lc = AlarmLifecycle()
    [raised] = lc.apply(cond(OR, 10))
    alarm = lc.alarm(raised.alarm_id)
    assert (raised.kind, raised.seq, raised.actor, raised.grade, raised.time) == (
        "raised", 0, "rules", OR, 10)
    assert raised.needs_notification and alarm.state == "raised" and alarm.signal_active
    notified = lc.notified(alarm.id, "centre", 10.2)
    assert (notified.kind, notified.actor, notified.seq) == ("notified", "centre", 1)
    assert not notified.needs_notification and alarm.state == "notified"
    [ack] = lc.acknowledge(alarm.id, "nurse.kim", 30)
    assert (ack.kind, ack.actor, ack.time) == ("acknowledged", "nurse.kim", 30)
    assert alarm.state == "acknowledged" and alarm.acknowledged_by == "nurse.kim"
    assert lc.acknowledge(alarm.id, "nurse.kim", 31) == []  # idempotent
    with pytest.raises(LifecycleError, match="still active"):
        lc.close(alarm.id, "nurse.kim", 35)
    [resolved] = lc.apply(cond(None, 40))
    assert (resolved.kind, resolved.actor) == ("resolved", "rules") and not alarm.signal_active
    closed = lc.close(alarm.id, "nurse.kim", 50, "patient repositioned")
    assert (closed.kind, closed.actor, closed.detail, closed.seq) == (
        "closed", "nurse.kim", "patient repositioned", 4)
    assert alarm.state == "closed" and not alarm.is_open and lc.open_alarms() == []
    with pytest.raises(LifecycleError, match="closed"):
        lc.acknowledge(alarm.id, "x", 60)
    assert lc.apply(cond(None, 61)) == []


def test_close_needs_an_acknowledgement_and_actors_must_be_named() -> None:
    lc = AlarmLifecycle()
    [raised] = lc.apply(cond(Y, 0))
    lc.apply(cond(None, 5))
    with pytest.raises(LifecycleError, match="not acknowledged"):
        lc.close(raised.alarm_id, "nurse", 6)
    for actor in ("", "   ", None):
        with pytest.raises(LifecycleError, match="actor"):
            lc.acknowledge(raised.alarm_id, actor, 7)
    with pytest.raises(LifecycleError, match="no alarm"):
        lc.acknowledge("0000", "nurse", 7)


def test_red_latches_until_acknowledged_and_orange_does_not() -> None:
    lc = AlarmLifecycle()
    [red] = lc.apply(cond(R, 0))
    lc.apply(cond(None, 3))
    alarm = lc.alarm(red.alarm_id)
    assert alarm.state == "resolved" and not alarm.condition_active
    assert alarm.signal_active  # latched
    lc.acknowledge(alarm.id, "dr.ada", 20)
    assert not alarm.signal_active
    [orange] = lc.apply(cond(OR, 0, key="pr:high"))
    lc.apply(cond(None, 3, key="pr:high"))
    assert not lc.alarm(orange.alarm_id).signal_active


def test_unacknowledged_red_escalates_on_time_until_acknowledged() -> None:
    lc = AlarmLifecycle(LifecycleConfig(escalate_after=120, max_escalation_level=2))
    [red] = lc.apply(cond(R, 1000))
    lc.apply(cond(OR, 1000, key="pr:high"))  # orange never escalates
    assert lc.tick(1119.9) == []
    [first] = lc.tick(1120)
    assert (first.kind, first.level, first.time, first.alarm_id) == (
        "escalated", 1, 1120, red.alarm_id)
    assert first.needs_notification and lc.alarm(red.alarm_id).escalation_level == 1
    assert lc.tick(1200) == []
    lc.apply(cond(None, 1210))  # resolved but latched: escalation continues
    [second] = lc.tick(1240)
    assert second.level == 2
    assert lc.tick(1360) == [] and lc.tick(5000) == []  # capped at max_escalation_level
    lc.acknowledge(red.alarm_id, "dr.ada", 5001)
    assert lc.tick(10_000) == []


def test_acknowledged_red_does_not_escalate() -> None:
    lc = AlarmLifecycle()
    [red] = lc.apply(cond(R, 0))
    lc.acknowledge(red.alarm_id, "nurse", 60)
    assert lc.tick(1000) == []


def test_reoccurrence_and_worsening_update_the_same_alarm() -> None:
    lc = AlarmLifecycle(LifecycleConfig(escalate_after=60))
    [raised] = lc.apply(cond(Y, 0))
    alarm = lc.alarm(raised.alarm_id)
    assert lc.apply(cond(Y, 1)) == []  # the same condition again: nothing new
    [regraded] = lc.apply(cond(OR, 2))
    assert (regraded.kind, regraded.alarm_id, alarm.grade) == ("regraded", alarm.id, OR)
    lc.acknowledge(alarm.id, "nurse", 3)
    assert lc.apply(cond(Y, 4)) == []  # a lower grade never downgrades an open alarm
    lc.apply(cond(None, 10))
    [recurred] = lc.apply(cond(Y, 20, value=94))
    assert (recurred.kind, recurred.grade, recurred.value) == ("recurred", OR, 94)
    assert recurred.alarm_id == alarm.id and not alarm.acknowledged  # needs a new ack
    assert recurred.needs_notification
    [worse] = lc.apply(cond(R, 30))
    assert worse.kind == "regraded" and alarm.grade is R and alarm.escalation_base == 30
    assert [s.level for s in lc.tick(90)] == [1]
    assert len(lc.open_alarms()) == 1 and alarm.step_count == 7


def test_ids_are_deterministic_and_a_closed_alarm_is_never_reused() -> None:
    def run() -> list[str]:
        lc = AlarmLifecycle()
        ids = []
        for patient in ("P1", "P2"):
            [s] = lc.apply(cond(R, 100.25, patient=patient))
            ids.append(s.alarm_id)
        lc.acknowledge(ids[0], "n", 101)
        lc.apply(cond(None, 101, patient="P1"))
        lc.close(ids[0], "n", 101)
        [again] = lc.apply(cond(R, 101, patient="P1"))
        ids.append(again.alarm_id)
        return ids

    first = run()
    assert first == run() and len(set(first)) == 3
    assert first[0] == alarm_id("P1", "spo2:low", 100.25)
    assert len(first[0]) == 16 and int(first[0], 16) >= 0
    lc = AlarmLifecycle()
    [a] = lc.apply(cond(R, 5))
    lc.acknowledge(a.alarm_id, "n", 5)
    lc.apply(cond(None, 5))
    lc.close(a.alarm_id, "n", 5)
    [b] = lc.apply(cond(R, 5))  # same key, same millisecond: a new id all the same
    assert b.alarm_id != a.alarm_id and b.alarm_id == alarm_id("P1", "spo2:low", 5, 1)


def test_open_alarms_are_ordered_and_filterable() -> None:
    lc = AlarmLifecycle()
    lc.apply(cond(Y, 1, key="a"))
    lc.apply(cond(R, 2, key="b"))
    lc.apply(cond(B, 0, key="offline:D1", patient="P2"))
    assert [a.key for a in lc.open_alarms()] == ["b", "a", "offline:D1"]
    assert [a.key for a in lc.open_alarms("P2")] == ["offline:D1"]
    assert lc.find("P1", "b").grade is R and lc.find("P1", "zzz") is None


def test_out_of_order_steps_are_refused_by_the_fold() -> None:
    lc = AlarmLifecycle()
    [raised] = lc.apply(cond(R, 0))
    copy = Alarm(raised.alarm_id, "P1", "spo2:low", "threshold", "spo2", "D1")
    copy.apply(raised)
    with pytest.raises(LifecycleError, match="out of order"):
        copy.apply(raised)


_ops = st.lists(st.tuples(
    st.sampled_from(["cond", "clear", "ack", "close", "notify", "tick"]),
    st.sampled_from([Y, OR, R, B]), st.sampled_from(["k1", "k2"]), st.floats(0, 50)),
    max_size=40)


@given(_ops)
def test_replaying_the_steps_rebuilds_every_alarm(ops) -> None:
    """Whatever happens, folding an alarm's steps from scratch gives the live state, and
    the invariants of the loop hold."""
    lc = AlarmLifecycle(LifecycleConfig(escalate_after=30))
    steps = []
    t = 0.0
    for op, grade, key, dt in ops:
        t += dt
        alarm = lc.find("P1", key)
        try:
            if op == "cond":
                steps += lc.apply(cond(grade, t, key=key))
            elif op == "clear":
                steps += lc.apply(cond(None, t, key=key))
            elif op == "tick":
                steps += lc.tick(t)
            elif alarm is not None and op == "ack":
                steps += lc.acknowledge(alarm.id, "nurse", t)
            elif alarm is not None and op == "notify":
                steps.append(lc.notified(alarm.id, "centre", t))
            elif alarm is not None and op == "close":
                steps.append(lc.close(alarm.id, "nurse", t))
        except LifecycleError:
            assert op == "close"
    by_alarm: dict[str, list] = {}
    for step in steps:
        by_alarm.setdefault(step.alarm_id, []).append(step)
    for aid, history in by_alarm.items():
        live = lc.alarm(aid)
        rebuilt = Alarm(aid, live.patient, live.key, live.kind, live.quantity, live.device)
        for step in history:
            rebuilt.apply(step)
        assert rebuilt == live
        assert [s.seq for s in history] == list(range(len(history)))
        grades = [s.grade for s in history]
        assert grades == sorted(grades)  # an open alarm's grade never goes down
        if not live.is_open:
            assert live.acknowledged and not live.condition_active
    assert len({(a.patient, a.key) for a in lc.open_alarms()}) == len(lc.open_alarms())
