"""The retained active alarm set: built from durable steps (pure), compared by the centre,
and end to end with real mosquitto: a late subscriber sees it, it matches the centre's
folded view after acknowledgement and closure, and an agent restart publishes it again."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.alarms.active_set import ActiveSet, to_transition
from edge_agent.alarms.evaluator import Condition
from edge_agent.alarms.grades import Grade
from edge_agent.alarms.lifecycle import AlarmLifecycle
from protocol import alarm_messages, topics
from simulator.centre.service import compare_alarm_set
from simulator.centre.store import fold_steps
from tests.edge_agent import test_service_integration as integration
from tests.edge_agent.test_service_integration import GW, Rig, until


def _cond(grade: Grade | None, key: str, t: float) -> Condition:
    return Condition(key, "threshold", grade, t, "p-1", "ox-1", "spo2", 90, "")


def test_active_set_follows_steps_most_severe_first_and_drops_closed_alarms() -> None:
    lc = AlarmLifecycle()
    active = ActiveSet()
    yellow = lc.apply(_cond(Grade.YELLOW, "pr:high", 1.0))
    red = lc.apply(_cond(Grade.RED, "spo2:low", 2.0))
    alarms = {a.id: a for a in lc.open_alarms()}
    assert active.update(yellow + red, alarms, 2000)
    time_ms, items = alarm_messages.decode_alarm_set(active.payload())
    assert time_ms == 2000 and [i.key for i in items] == ["spo2:low", "pr:high"]
    first = active.payload()
    assert not active.update(red, alarms, 9000)  # a step already folded changes nothing
    assert active.payload() == first  # same bytes: a re-publish is idempotent
    red_id = red[0].alarm_id
    steps = lc.acknowledge(red_id, "nurse:n-1", 3.0) + lc.apply(_cond(None, "spo2:low", 4.0))
    assert active.update(steps, {red_id: lc.alarm(red_id)}, 4000)
    [latest] = [i for i in alarm_messages.decode_alarm_set(active.payload())[1]
                if i.alarm_id == red_id]
    assert (latest.kind, latest.seq) == ("resolved", 2)
    closed = lc.close(red_id, "nurse:n-1", 5.0)
    assert active.update([closed], {red_id: lc.alarm(red_id)}, 5000)
    assert active.ids() == {yellow[0].alarm_id}


def test_centre_comparison_names_each_kind_of_difference() -> None:
    lc = AlarmLifecycle()
    a = lc.apply(_cond(Grade.RED, "spo2:low", 1.0))[0]
    b = lc.apply(_cond(Grade.ORANGE, "news2", 1.0))[0]
    c = lc.apply(_cond(Grade.YELLOW, "pr:high", 1.0))[0]
    b_later = lc.notified(b.alarm_id, "policy", 2.0, "centre")
    wire = {s.alarm_id: s for s in (a, b, c)}
    alarm = {i: lc.alarm(i) for i in wire}
    views = [fold_steps(GW, [to_transition(wire[a.alarm_id], alarm[a.alarm_id])]),
             fold_steps(GW, [to_transition(b_later, alarm[b.alarm_id])])]  # seq 0 missing
    diff = compare_alarm_set(GW, [b.alarm_id, c.alarm_id], views)
    assert diff.only_in_set == (c.alarm_id,) and diff.only_at_centre == (a.alarm_id,)
    assert diff.incomplete == (b.alarm_id,) and not diff.agree
    assert compare_alarm_set(GW, [], []).agree


# ---------------------------------------------------------------- against real mosquitto


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    built = integration.make_rig(tmp_path)
    yield built
    integration.close_rig(built)


def retained_set(port: int, timeout: float = 5.0) -> tuple[int, list[str]] | None:
    """Subscribe afresh (a late subscriber) and return the retained alarm set, if any."""
    got: list[bytes] = []
    arrived = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="late-subscriber",
                         protocol=mqtt.MQTTv5)

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe(topics.up(GW, topics.UP_ALARMS), qos=1)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got.append(bytes(msg.payload))
            arrived.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        arrived.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    if not got:
        return None
    time_ms, items = alarm_messages.decode_alarm_set(got[-1])
    return time_ms, sorted(i.alarm_id for i in items)


def test_retained_set_for_late_subscribers_matches_the_centre_and_survives_a_restart(
        rig: Rig) -> None:
    normal = threading.Event()
    loop = rig.device("ox-1", interval=0.05,
                      spo2=lambda i: 97 if i < 5 or normal.is_set() else 85)

    def ids_at_centre() -> list[str]:
        return sorted(a.id for a in rig.centre.active_alarms(GW))

    def seen_by_late_subscriber() -> list[str] | None:
        found = retained_set(rig.broker.port, timeout=1.0)
        return None if found is None else found[1]

    async def scenario() -> None:
        config = rig.config()
        service = await integration.started(config)
        loop.start()
        try:
            assert await until(lambda: any(a.key == "spo2:low" and a.grade == "red"
                                           for a in rig.centre.active_alarms(GW)))
            red = next(a for a in rig.centre.active_alarms(GW) if a.key == "spo2:low")
            assert await until(lambda: red.id in (seen_by_late_subscriber() or []), 15)
            assert await until(lambda: (d := rig.centre.alarm_set_difference(GW)) is not None
                               and d.agree and ids_at_centre() == seen_by_late_subscriber())
        finally:
            await service.stop("restart")
        # The broker forgets retained messages on restart (no persistence): the restarted
        # agent must publish its set again, from its alarm store.
        rig.broker.restart()
        assert await until(lambda: rig.centre.connected, 15)
        assert seen_by_late_subscriber() is None
        restarted = await integration.started(config)
        try:
            assert await until(lambda: red.id in (seen_by_late_subscriber() or []), 15)
            assert rig.centre.acknowledge(red.id, "nurse:n-0001").wait()
            normal.set()  # readings back to normal: the condition resolves after 5 s
            assert await until(lambda: rig.centre.store.alarm(red.id) is not None
                               and rig.centre.store.alarm(red.id).state == "resolved", 20)
            assert rig.centre.close(red.id, "nurse:n-0001", "recovered").wait()
            assert await until(lambda: red.id not in ids_at_centre(), 10)
            assert await until(lambda: seen_by_late_subscriber() == ids_at_centre()
                               and rig.centre.alarm_set_difference(GW).agree, 15)
            assert red.id not in (seen_by_late_subscriber() or [])
        finally:
            loop.stop_sending.set()
            await restarted.stop("test over")

    integration.play(scenario)
