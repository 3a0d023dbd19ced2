"""Alarms are never behind routine data on the way to the broker's PUBACK (real mosquitto).

A backlog of routine rows drains through the real MqttLink while alarms are journaled; the
order of events on the event loop (hand-over of the committed alarm, publish calls, PUBACKs)
is recorded and checked. Only orders and counts are asserted, never wall-clock times: an
alarm is published in the very callback that hands it over, only routine messages already in
flight at that moment can be confirmed before it, and it overtakes the rest of the backlog
that was queued long before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from test_uplink_delivery import (
    alarm,
    delivery_config,
    make_link,
    reading,
    run_async,
    wait_until,
)

from edge_agent.journal import Journal, StoredMessage
from edge_agent.uplink import Delivery, MqttLink
from edge_agent.uplink.mqtt_link import LinkEvent, PubAck, Queued
from protocol import topics
from simulator.broker import Broker

BACKLOG = 8000
ALARMS = 6


class OrderedLink:
    """The real link, logging in event-loop order: ("publish", kind, mid) for every publish
    call and ("puback", kind, mid) for every PUBACK event, before Delivery sees it."""

    def __init__(self, link: MqttLink) -> None:
        self._link = link
        self.receipt_topic = link.receipt_topic
        self.log: list[tuple[str, str, int]] = []
        self._kinds: dict[int, str] = {}

    def start(self, handler: Callable[[list[LinkEvent]], None]) -> None:
        def recorded(events: list[LinkEvent]) -> None:
            for event in events:
                if isinstance(event, PubAck) and event.mid in self._kinds:
                    self.log.append(("puback", self._kinds.pop(event.mid), event.mid))
            handler(events)
        self._link.start(recorded)

    def publish(self, topic: str, payload: bytes, correlation: bytes | None = None,
                response_topic: str | None = None) -> Queued:
        queued = self._link.publish(topic, payload, correlation, response_topic)
        kind = "alarm" if topics.parse(topic)[2] == topics.UP_ALARM else "routine"
        self._kinds[queued.mid] = kind
        self.log.append(("publish", kind, queued.mid))
        return queued

    async def close(self, timeout: float = 5.0) -> None:
        await self._link.close(timeout)

    def count(self, what: str, kind: str) -> int:
        return sum(1 for w, k, _ in self.log if (w, k) == (what, kind))


def record_hand_overs(journal: Journal, log: list[tuple[str, str, int]]) -> None:
    """Log ("handed", "alarm", n) when the journal hands committed urgent rows to Delivery."""
    register = journal.hand_over_urgent

    def recorded_register(consumer: Callable[[list[StoredMessage]], None] | None) -> None:
        if consumer is None:
            register(None)
            return
        inner = consumer

        def handed(rows: list[StoredMessage]) -> None:
            log.append(("handed", "alarm", len(rows)))
            inner(rows)
        register(handed)

    journal.hand_over_urgent = recorded_register  # type: ignore[method-assign]


# No centre is subscribed: rows stay "sent", so end-to-end flow control must not stop the drain.
CONFIG = delivery_config(receipt_timeout_s=600.0, max_unconfirmed=1 << 20)


async def drain_with_alarms(tmp_path: Path, link: OrderedLink) -> None:
    """A routine backlog drains; once it runs, ALARMS alarms are journaled one by one."""
    journal = await Journal.open(tmp_path / "journal.db")
    await journal.append_many([reading(i, f"dev-{i % 5}") for i in range(BACKLOG)])
    record_hand_overs(journal, link.log)
    delivery = Delivery(journal, link, CONFIG)
    await delivery.start()
    await wait_until(lambda: link.count("puback", "routine") >= 200, 30, "the drain to run")
    for i in range(ALARMS):
        await journal.append(alarm(i))
        await asyncio.sleep(0)
    await wait_until(lambda: link.count("puback", "alarm") == ALARMS, 30, "the alarms' PUBACKs")
    await wait_until(lambda: delivery.counters().sent == BACKLOG + ALARMS, 60, "the drain")
    await delivery.stop()
    await journal.close()


# paho's own cap (LinkConfig.max_inflight): the default, and one below the delivery window
# (64), where paho would queue routine publishes in a FIFO ahead of any alarm.
@pytest.mark.parametrize("paho_cap", [256, 16])
@run_async
async def test_an_alarm_is_confirmed_before_the_routine_backlog_queued_before_it(
        tmp_path: Path, paho_cap: int) -> None:
    with Broker(tmp_path / "broker") as broker:
        link = OrderedLink(make_link(broker.port, max_inflight=paho_cap))
        await drain_with_alarms(tmp_path, link)
    log = link.log
    handed = [i for i, (what, _, _) in enumerate(log) if what == "handed"]
    published = {mid: i for i, (what, kind, mid) in enumerate(log)
                 if (what, kind) == ("publish", "alarm")}
    acked = {mid: i for i, (what, kind, mid) in enumerate(log)
             if (what, kind) == ("puback", "alarm")}
    assert len(published) == len(acked) == ALARMS and handed
    capacity = min(CONFIG.max_in_flight, paho_cap - 1)  # one slot: the retained status
    routine_slots = capacity - min(CONFIG.urgent_reserve, capacity - 1)
    most_overtaking = 0
    for mid, at in published.items():
        hand_over = max(i for i in handed if i < at)
        # Published in the hand-over's own callback: nothing routine went out first ...
        assert not [e for e in log[hand_over + 1:at] if e[:2] == ("publish", "routine")]
        # ... and only routine messages already in flight are confirmed before it.
        overtaking = [e for e in log[hand_over + 1:acked[mid]] if e[:2] == ("puback", "routine")]
        assert len(overtaking) <= routine_slots, (mid, len(overtaking))
        most_overtaking = max(most_overtaking, len(overtaking))
    # The alarms overtook most of a backlog queued before them.
    routine_after = sum(1 for e in log[max(acked.values()) + 1:] if e[:2] == ("puback", "routine"))
    assert routine_after >= BACKLOG // 8, routine_after
    assert link.count("puback", "routine") == BACKLOG
    print(f"\nroutine PUBACKs before an alarm's, after its hand-over: at most {most_overtaking}"
          f" (window {routine_slots}); routine PUBACKs after the last alarm's: {routine_after}")
