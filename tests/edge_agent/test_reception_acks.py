"""Reception's acknowledgements: the state-store write (replay trackers, acknowledgement
marks) runs on the store thread, off the event loop, and every device-ack waits for it.

Real verifier, state store and journal; a real device sealing batches (test_pipeline_verifier's
Home and Device). The write is wrapped to record its thread and to be slowed or to fail.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.agent.reception import Inbound, LinkRef, Outcome, Reception
from edge_agent.journal import Journal
from edge_agent.pipeline import StateStore
from edge_agent.pipeline import verifier as v
from firmware import outbox
from protocol import messages
from tests.edge_agent.aio_harness import run_bounded
from tests.edge_agent.test_pipeline_verifier import T0, Device, Home, spo2_critical

LINK = LinkRef("serial", "bed1", "ox-1")


class SlowWrites:
    """Wraps StateStore.write_progress: records thread and end time, can be slowed or fail."""

    def __init__(self, store: StateStore, delay_s: float = 0.0) -> None:
        self.store = store
        self.real = store.write_progress
        self.delay_s = delay_s
        self.fail = False
        self.threads: list[str] = []
        self.finished: list[float] = []
        self.started = threading.Event()
        store.write_progress = self  # type: ignore[method-assign]

    def __call__(self, items: Any) -> None:
        self.threads.append(threading.current_thread().name)
        self.started.set()
        time.sleep(self.delay_s)
        if self.fail:
            raise sqlite3.OperationalError("disk I/O error")
        self.real(items)
        self.finished.append(time.monotonic())


class Rig:
    def __init__(self, tmp: Path, delay_s: float = 0.0) -> None:
        self.home = Home(tmp, critical=spo2_critical)
        self.device: Device = self.home.enroll("ox-1")
        assert self.home.connect(self.device, link="ox-1").outcome == v.OPENED
        self.writes = SlowWrites(self.home.store, delay_s)
        self.sent: list[tuple[float, bytes]] = []
        self.durable: list[Outcome] = []
        self.tmp = tmp

    def reception(self, journal: Journal) -> Reception:
        return Reception(self.home.verifier, attestor=None, journal=journal,  # type: ignore[arg-type]
                         reply=lambda _link, payload: self.sent.append((time.monotonic(), payload)),
                         on_durable=self.durable.extend)

    def submit(self, reception: Reception, count: int, at: int = T0, resend: bool = False
               ) -> None:
        for i in range(count):
            seq = 2 * i if resend else None  # a re-send from the outbox: same seqs, no chain
            raw = self.device.seal([("spo2", 97), ("hr", 70 + i)], at + i, seq=seq,
                                   chain=not resend)
            assert reception.submit(Inbound(LINK, at + i + 0.5, message=raw))

    def assert_first_batch_durable(self) -> None:
        """After a restart, re-sending the first batch is a duplicate: the tracker was written."""
        self.home.restart()
        resent = self.device.seal([("spo2", 97), ("hr", 70)], T0, seq=0, chain=False)
        verdict = self.home.verifier.handle(resent, received_at=T0 + 30, link_device="ox-1")
        assert verdict.outcome == v.DUPLICATE

    def ack_ranges(self) -> list[tuple[int, int]]:
        return [r for _, payload in self.sent for r in self.device.read_ack(payload).ranges]


def test_acks_wait_for_the_state_store_write_made_off_the_event_loop(tmp_path: Path) -> None:
    rig = Rig(tmp_path, delay_s=0.15)
    loop_gaps: list[float] = []

    async def scenario() -> None:
        async def ticker() -> None:  # how long the event loop is ever held up
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.005)
                now = time.monotonic()
                loop_gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        async with await Journal.open(tmp_path / "journal.db") as journal:
            reception = rig.reception(journal)
            await reception.start()
            rig.submit(reception, 3)
            await reception.stop()
        tick.cancel()

    run_bounded(scenario, 20)
    assert rig.writes.threads and all(name.startswith("state-store")
                                      for name in rig.writes.threads)
    assert threading.main_thread().name not in rig.writes.threads
    # Every ack left after a write had finished, and each batch's range is acknowledged.
    assert len(rig.sent) >= 1
    assert all(sent_at >= rig.writes.finished[0] for sent_at, _ in rig.sent)
    assert sorted(rig.ack_ranges()) == [(0, 1), (2, 3), (4, 5)]
    assert len(rig.durable) == 3 and all(o.acked for o in rig.durable)
    # The loop kept running while each 150 ms write was in progress.
    assert max(loop_gaps) < 0.1, max(loop_gaps)
    rig.assert_first_batch_durable()


def test_a_failed_state_store_write_sends_no_ack_and_the_resend_is_acked(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.writes.fail = True

    async def scenario() -> None:
        async with await Journal.open(tmp_path / "journal.db") as journal:
            reception = rig.reception(journal)
            await reception.start()
            rig.submit(reception, 2)
            await reception.drain()
            assert rig.sent == [] and len(rig.durable) == 2
            assert not any(o.acked for o in rig.durable)
            rig.writes.fail = False
            rig.submit(reception, 2, resend=True)  # the device re-sends its outbox
            rig.submit(reception, 1, at=T0 + 10)   # and goes on: seqs 4-5
            await reception.stop()

    run_bounded(scenario, 20)
    assert sorted(set(rig.ack_ranges())) == [(0, 1), (2, 3), (4, 5)]
    assert rig.writes.finished and rig.sent[-1][0] >= rig.writes.finished[-1]
    rig.assert_first_batch_durable()  # the next write carried the whole tracker


def test_no_ack_for_a_device_withdrawn_while_the_write_ran(tmp_path: Path) -> None:
    rig = Rig(tmp_path, delay_s=0.2)

    async def scenario() -> None:
        async with await Journal.open(tmp_path / "journal.db") as journal:
            reception = rig.reception(journal)
            await reception.start()
            rig.submit(reception, 1)
            await asyncio.to_thread(rig.writes.started.wait, 5)
            # A compromise is handled on the loop while the write is still running.
            assert rig.home.verifier.withdraw_device("ox-1", "tamper", T0 + 5)
            await reception.stop()

    run_bounded(scenario, 20)
    assert rig.writes.finished, "the write itself completed"
    assert rig.sent == [] and len(rig.durable) == 1 and not rig.durable[0].acked


def test_state_store_transactions_from_two_threads_stay_whole(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    store = rig.home.store
    session = rig.home.sessions.current("ox-1")
    assert session is not None
    progress = session.progress()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(200):
                rig.writes.real([progress])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    firsts = [store.reserve_seqs("ble:cms50", 1) for _ in range(200)]
    thread.join()
    assert errors == []
    assert firsts == list(range(200))
    assert [row.kid for row in store.sessions()] == [session.kid]


def test_deferring_progress_collects_instead_of_writing(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    store = rig.home.store
    session = rig.home.sessions.current("ox-1")
    assert session is not None
    with store.deferring_progress() as collected:
        store.save_progress([session.progress()])
        try:
            with store.deferring_progress():
                raise AssertionError("nested blocks must be refused")
        except RuntimeError:
            pass
    assert collected == [session.progress()] and rig.writes.finished == []
    store.save_progress([session.progress()])  # outside a block: written at once
    assert len(rig.writes.finished) == 1


def test_hello_accept_is_not_held_back_by_the_store_thread(tmp_path: Path) -> None:
    """Only device-acks wait for the progress write; an accept is sent at once."""
    rig = Rig(tmp_path)
    second = rig.home.enroll("ox-2")
    link = LinkRef("serial", "bed2", "ox-2")

    async def scenario() -> None:
        async with await Journal.open(tmp_path / "journal.db") as journal:
            reception = rig.reception(journal)
            await reception.start()
            handshake, hello = second.hello()
            reception.submit(Inbound(link, T0, message=hello))
            await reception.stop()
            kind, _ = messages.decode(rig.sent[0][1])
            assert kind == "accept"
            second.finish(handshake, rig.sent[0][1])

    run_bounded(scenario, 20)
    assert rig.writes.threads == []  # a hello saves its session itself (put_session)


# ---------------------------------------------------------------- one write per distinct ack


def device_sees(rig: Rig, device: Device) -> outbox.AckState:
    """Every ack the device received over its link, applied as the firmware applies them."""
    state = outbox.AckState()
    for _, payload in rig.sent:
        state.apply(device.read_ack(payload))
    return state


def sealed_entries(device: Device, batches: int, size: int = 2) -> list[outbox.Entry]:
    assert device.session is not None
    return [outbox.Entry(outbox.SEALED, device.session.session_id, size * i, size * i + 1, b"")
            for i in range(batches)]


def test_a_pass_writes_each_distinct_ack_once_and_the_device_has_every_batch_acked(
        tmp_path: Path) -> None:
    """After a checkpoint the session has a watermark: every ack of one pass says the same
    (upto), so one write per pass acknowledges all of its batches."""
    rig = Rig(tmp_path, delay_s=0.05)  # a slow write lets committed groups pile up
    batches = 60

    async def scenario() -> None:
        async with await Journal.open(tmp_path / "journal.db") as journal:
            reception = rig.reception(journal)
            await reception.start()
            rig.submit(reception, 2)
            reception.submit(Inbound(LINK, T0 + 3, message=rig.device.checkpoint(T0 + 3)))
            await reception.drain()
            before = len(rig.sent)
            rig.submit(reception, batches - 2, at=T0 + 10)
            await reception.stop()
            assert reception.counters.acks_sent == len(rig.sent)
            # Far fewer writes than batches once the watermark is known.
            assert len(rig.sent) - before < (batches - 2) // 4, len(rig.sent) - before

    run_bounded(scenario, 30)
    state = device_sees(rig, rig.device)
    assert all(state.covers(entry) for entry in sealed_entries(rig.device, batches))
    assert not state.covers(outbox.Entry(outbox.SEALED, rig.device.session.session_id,
                                         2 * batches, 2 * batches + 1, b""))
    assert len(rig.durable) == batches + 1 and all(o.acked for o in rig.durable)
    assert len(set(payload for _, payload in rig.sent)) == len(rig.sent)
    # Durable before acknowledged: no ack left before the first state-store write ended.
    assert all(sent_at >= rig.writes.finished[0] for sent_at, _ in rig.sent)
    rig.assert_first_batch_durable()


def test_acks_that_differ_all_go_out(tmp_path: Path) -> None:
    """Before the device's first checkpoint there is no watermark: each ack names its own
    batch's range, so each one is written (none would cover the others)."""
    rig = Rig(tmp_path, delay_s=0.05)
    batches = 40

    async def scenario() -> None:
        async with await Journal.open(tmp_path / "journal.db") as journal:
            reception = rig.reception(journal)
            await reception.start()
            rig.submit(reception, batches)
            await reception.stop()

    run_bounded(scenario, 30)
    assert len(rig.sent) == batches
    assert sorted(rig.ack_ranges()) == [(2 * i, 2 * i + 1) for i in range(batches)]
    state = device_sees(rig, rig.device)
    assert all(state.covers(entry) for entry in sealed_entries(rig.device, batches))


def test_each_link_gets_its_own_acks_and_a_broken_link_costs_only_its_own(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, delay_s=0.05)
    second = rig.home.enroll("ox-2")
    assert rig.home.connect(second, link="ox-2").outcome == v.OPENED
    link2 = LinkRef("serial", "bed2", "ox-2")
    sent: dict[str, list[bytes]] = {"ox-1": [], "ox-2": []}
    attempts: dict[str, int] = {"ox-1": 0, "ox-2": 0}
    broken = {"ox-2"}

    def reply(link: LinkRef, payload: bytes) -> None:
        attempts[link.device_id] += 1
        if link.device_id in broken:
            raise OSError("port gone")
        sent[link.device_id].append(payload)

    async def scenario() -> None:
        async with await Journal.open(tmp_path / "journal.db") as journal:
            reception = Reception(rig.home.verifier, attestor=None,  # type: ignore[arg-type]
                                  journal=journal, reply=reply, on_durable=rig.durable.extend)
            await reception.start()
            for device, link in ((rig.device, LINK), (second, link2)):
                for i in range(2):
                    reception.submit(Inbound(link, T0 + i, message=device.seal(
                        [("spo2", 97), ("hr", 70 + i)], T0 + i)))
                reception.submit(Inbound(link, T0 + 3, message=device.checkpoint(T0 + 3)))
            await reception.drain()
            for i in range(30):
                for device, link in ((rig.device, LINK), (second, link2)):
                    reception.submit(Inbound(link, T0 + 10 + i, message=device.seal(
                        [("spo2", 97), ("hr", 70)], T0 + 10 + i)))
            await reception.stop()
            assert reception.counters.ack_failures == attempts["ox-2"]
            assert reception.counters.acks_sent == len(sent["ox-1"])

    run_bounded(scenario, 30)
    assert sent["ox-2"] == [] and 0 < attempts["ox-2"] < 32
    assert all(o.acked == (o.link == LINK) for o in rig.durable), "acked follows its link"
    state = outbox.AckState()
    for payload in sent["ox-1"]:
        state.apply(rig.device.read_ack(payload))
    assert all(state.covers(entry) for entry in sealed_entries(rig.device, 32))
