"""Delivery's performance hooks against a scripted link: alarms arrive by the journal's
hand-over (no claim round trip), and routine publishing keeps to its CPU share of the event
loop while alarms are never held back by it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from edge_agent.journal import Journal, JournalConfig, Priority
from edge_agent.uplink import Delivery, DeliveryConfig
from edge_agent.uplink.mqtt_link import LinkUp, PubAck, Queued
from protocol import topics
from tests.edge_agent.test_uplink_delivery import (
    GW,
    ScriptedLink,
    alarm,
    delivery_config,
    reading,
    run_async,
    scripted,
    settle,
    until_published,
    wait_until,
)

PUBLISH_COST_S = 0.002


class CostlyLink(ScriptedLink):
    """Each publish burns PUBLISH_COST_S of CPU (as paho and the observers do) and is
    PUBACKed on the next loop turn."""

    def publish(self, topic: str, payload: bytes, correlation: bytes | None = None,
                response_topic: str | None = None) -> Queued:
        end = time.perf_counter() + PUBLISH_COST_S
        while time.perf_counter() < end:
            pass
        queued = super().publish(topic, payload, correlation, response_topic)
        asyncio.get_running_loop().call_soon(
            self.emit, PubAck(queued.mid, 0, time.monotonic()))
        return queued


@run_async
async def test_an_alarm_is_published_without_a_claim_round_trip(tmp_path: Path) -> None:
    journal, link, delivery, _ = await scripted(tmp_path, routine_cpu_share=1.0)
    link.emit(LinkUp(False, 65535))
    await settle()
    claims: list[int] = []
    next_batch = journal.next_batch

    async def counted(limit: int = 256, max_bytes: int = 256 * 1024) -> list:  # type: ignore[type-arg]
        claims.append(limit)
        return await next_batch(limit, max_bytes)

    journal.next_batch = counted  # type: ignore[method-assign]
    await journal.append(alarm(1))
    await until_published(link, 1)
    assert link.published[0][1] == topics.up(GW, "alarm")
    assert 1 not in claims  # the per-commit urgent claim (limit=1) is gone
    await delivery.stop(timeout=0)
    await journal.close()


@pytest.mark.parametrize("share", [0.1, 0.3])
def test_routine_publishing_keeps_to_its_cpu_share(tmp_path: Path, share: float) -> None:
    @run_async
    async def scenario() -> None:
        journal, _, delivery, _ = await scripted(tmp_path, routine_cpu_share=share,
                                                 routine_burst_s=0.01)
        link = CostlyLink()
        delivery.link = link
        link.start(delivery._on_events)
        await journal.append_many([reading(i) for i in range(2000)])
        started = time.perf_counter()
        link.emit(LinkUp(False, 65535))
        await asyncio.sleep(1.0)
        elapsed = time.perf_counter() - started
        spent = len(link.published) * PUBLISH_COST_S
        # The budget: share x elapsed, one burst, one publish of overshoot (plus slack for
        # the busy-wait's own timer reads).
        assert spent <= share * elapsed + 0.01 + PUBLISH_COST_S + 0.01, (spent, elapsed)
        assert spent >= share * elapsed * 0.3, (spent, elapsed)  # and it does progress
        await delivery.stop(timeout=0)
        await journal.close()

    scenario()


@run_async
async def test_alarms_are_not_held_back_by_the_routine_budget(tmp_path: Path) -> None:
    journal, _, delivery, _ = await scripted(tmp_path, routine_cpu_share=0.01,
                                             routine_burst_s=0.01)
    link = CostlyLink()
    delivery.link = link
    link.start(delivery._on_events)
    await journal.append_many([reading(i) for i in range(500)])
    link.emit(LinkUp(False, 65535))
    await wait_until(lambda: len(link.published) >= 3, 5, "the first routine burst")
    await settle()
    burst = len(link.published)
    # The budget is spent: at a 1 % share the next routine publish is > 0.4 s away.
    appended = time.perf_counter()
    await journal.append(alarm(1))
    await wait_until(lambda: any(t == topics.up(GW, "alarm") for _, t, _, _ in link.published),
                     5, "the alarm")
    assert time.perf_counter() - appended < 0.4
    assert len(link.published) <= burst + 2  # the alarm, at most one routine resume
    await delivery.stop(timeout=0)
    await journal.close()


def test_share_and_chunk_are_validated() -> None:
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            DeliveryConfig(GW, routine_cpu_share=bad)
    with pytest.raises(ValueError):
        DeliveryConfig(GW, routine_burst_s=0.0)
    with pytest.raises(ValueError):
        DeliveryConfig(GW, claim_chunk=0)


@run_async
async def test_rows_the_journal_does_not_hand_over_are_still_found(tmp_path: Path) -> None:
    # urgent_priority=2: critical readings commit as routine and are not handed over.
    journal = await Journal.open(tmp_path / "journal.db", JournalConfig(urgent_priority=2))
    link = ScriptedLink()
    delivery = Delivery(journal, link, delivery_config(flush_interval_s=0.001, prefetch=8,
                                                       max_in_flight=4, urgent_reserve=2))
    await delivery.start()
    await journal.append_many([reading(i) for i in range(100)])
    link.emit(LinkUp(False, 65535))
    await until_published(link, 2)  # routine slots full, routine lane full
    await journal.append(reading(1000, priority=Priority.CRITICAL))
    await until_published(link, 3)
    assert link.published[-1][2].startswith(b"reading-00001000-")
    await delivery.stop(timeout=0)
    await journal.close()
