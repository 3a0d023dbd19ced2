"""Urgent inserts ahead of the writer's routine work (real SQLite): an alarm appended while
the writer is claiming a batch cuts the claim short and commits before a mark-sent queued
earlier; the rows an urgent insert returns are claimed exactly as reading them back would
claim them; the journal's "urgent under way" signal goes back to False. Orders and counts
only, no timing."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from edge_agent.journal import Journal, JournalStore, NewMessage, Priority, StoredMessage
from tests.edge_agent.test_uplink_delivery import alarm, reading, run_async, wait_until


@run_async
async def test_an_alarm_cuts_a_claim_and_commits_before_an_earlier_mark_sent(
    tmp_path: Path,
) -> None:
    journal = await Journal.open(tmp_path / "journal.db")
    handed: list[StoredMessage] = []
    journal.hand_over_urgent(handed.extend)
    routine_ids = await journal.append_many([reading(i) for i in range(300)])
    first = await journal.next_batch(limit=10)
    assert [r.id for r in first] == routine_ids[:10]

    store = journal._store
    assert store is not None
    order: list[str] = []  # what the writer thread finished, in order
    entered, go = threading.Event(), threading.Event()
    next_batch, mark_sent, claim_rows = store.next_batch, store.mark_sent, store.claim_rows

    def held_next_batch(*args: Any, **kwargs: Any) -> list[StoredMessage]:
        entered.set()  # the writer is inside the claim job...
        go.wait(10)  # ...until the test has queued a mark-sent and then an alarm
        rows = next_batch(*args, **kwargs)
        order.append(f"claim of {len(rows)}")
        return rows

    def logged_mark_sent(*args: Any) -> int:
        order.append("mark_sent")
        return mark_sent(*args)

    def logged_claim_rows(rows: Any) -> list[StoredMessage]:
        order.append("urgent committed")
        return claim_rows(rows)

    store.next_batch = held_next_batch  # type: ignore[method-assign]
    store.mark_sent = logged_mark_sent  # type: ignore[method-assign]
    store.claim_rows = logged_claim_rows  # type: ignore[method-assign]

    claim = asyncio.ensure_future(journal.next_batch(limit=200))
    await asyncio.to_thread(entered.wait, 10)
    marked = asyncio.ensure_future(journal.mark_sent([r.id for r in first]))
    await asyncio.sleep(0)  # the mark-sent job is queued now, before the alarm
    assert not journal.urgent_busy()
    urgent = asyncio.ensure_future(journal.append_many([alarm(1)]))
    await wait_until(journal.urgent_busy, 5, "the alarm queued for the writer")
    go.set()

    (alarm_id,) = await urgent
    assert await marked == 10
    cut = await claim
    assert order == ["claim of 1", "urgent committed", "mark_sent"]
    assert [r.id for r in cut] == [routine_ids[10]]  # cut after its first row
    await wait_until(lambda: len(handed) == 1, 5, "the hand-over")
    assert handed[0].id == alarm_id
    await wait_until(lambda: not journal.urgent_busy(), 5, "urgent work done")

    # Nothing skipped by the cut: the next claim goes on where it stopped, oldest first.
    store.next_batch = next_batch  # type: ignore[method-assign]
    rest = await journal.next_batch(limit=1000, max_bytes=1 << 30)
    assert [r.id for r in rest] == routine_ids[11:]
    await journal.close()


def test_a_claim_is_cut_only_after_its_first_row(tmp_path: Path) -> None:
    store = JournalStore.open(tmp_path / "journal.db")
    ids = store.append([reading(i) for i in range(5)])
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) >= 2

    assert [r.id for r in store.next_batch(10, stop=stop)] == ids[:2]
    assert [r.id for r in store.next_batch(10, stop=lambda: True)] == ids[2:3]
    assert [r.id for r in store.next_batch(10, stop=lambda: False)] == ids[3:]
    store.close()


def _apply(store: JournalStore, base: list[NewMessage], again: list[NewMessage],
           returned: bool) -> list[StoredMessage]:
    """The same history in either store; the last group's urgent rows claimed either from
    what their inserts returned or by reading them back."""
    ids = store.append(base)
    store.mark_sent([ids[1]], 1000.5)
    store.next_batch(limit=1)  # the alarm first: in flight now
    with store.group() as add:
        if returned:
            rows = [store.insert_row(m) for m in again]
        else:
            ids = [add(m) for m in again]
    return store.claim_rows(rows) if returned else store.claim_committed(ids)


def test_rows_returned_by_the_insert_are_claimed_as_reading_them_back_would(
    tmp_path: Path,
) -> None:
    base = [reading(1), reading(2), alarm(3), reading(4)]

    def same(m: NewMessage, priority: int) -> NewMessage:
        return NewMessage(m.kind, m.device_id, m.payload, priority=priority,
                          received_at=m.received_at + 1.0 / 3)

    again = [same(base[0], Priority.ALARM),  # a stored routine row: priority raised, claimed
             same(base[1], Priority.ALARM),  # already sent: not claimed
             base[2],  # in flight: not claimed twice
             alarm(9), alarm(10),  # new rows
             same(base[3], Priority.CRITICAL)]
    again.insert(4, again[3])  # the same new step twice in one group: claimed once
    stores = [JournalStore.open(tmp_path / f"{name}.db") for name in ("returned", "read")]
    returned = _apply(stores[0], base, again, True)
    read_back = _apply(stores[1], base, again, False)
    assert returned == read_back
    assert [r.payload for r in returned] == [again[0].payload, again[3].payload,
                                             again[5].payload, again[6].payload]
    assert [r.priority for r in returned] == [Priority.ALARM, Priority.ALARM, Priority.ALARM,
                                              Priority.CRITICAL]
    assert returned[0].received_at == base[0].received_at  # the existing row, as stored
    assert stores[0].in_flight == stores[1].in_flight
    for store in stores:
        store.close()


@run_async
async def test_urgent_busy_clears_with_and_without_a_consumer(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "journal.db")
    await journal.append_many([alarm(1), reading(2)])
    assert not journal.urgent_busy()  # no consumer: done at the commit
    handed: list[StoredMessage] = []
    journal.hand_over_urgent(handed.extend)
    await journal.append_many([alarm(3)])
    await wait_until(lambda: len(handed) == 1, 5, "the hand-over")
    assert not journal.urgent_busy()
    journal.hand_over_urgent(None)
    await journal.append_many([alarm(4)])  # consumer gone: nothing posted, nothing pending
    assert not journal.urgent_busy()
    await journal.close()
