"""The journal's urgent hand-over (committer.Journal.hand_over_urgent) and the one-statement
id-list writes of the store: an urgent row reaches its consumer only once durable, claimed,
exactly once; routine rows never; rows the consumer cannot take are given back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_agent.journal import Journal, JournalStore, Priority, StoredMessage
from tests.edge_agent.test_uplink_delivery import alarm, reading, run_async, settle, wait_until


def durable_state(path: Path, row_id: int) -> str | None:
    """The row's state as another connection sees it (i.e. committed), or None."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT state FROM messages WHERE id = ?", (row_id,)).fetchone()
    finally:
        db.close()
    return None if row is None else row[0]


@run_async
async def test_urgent_rows_are_handed_over_durable_and_claimed(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = await Journal.open(path)
    seen: list[tuple[StoredMessage, str | None]] = []

    def consumer(rows: list[StoredMessage]) -> None:
        seen.extend((row, durable_state(path, row.id)) for row in rows)

    journal.hand_over_urgent(consumer)
    routine_ids = await journal.append_many([reading(i) for i in range(20)])
    urgent = [alarm(1), reading(2, priority=Priority.CRITICAL)]
    urgent_ids = await journal.append_many(urgent)
    await wait_until(lambda: len(seen) == 2, 5, "two urgent rows handed over")
    await settle()
    assert [row.id for row, _ in seen] == urgent_ids  # in commit order, routine never
    assert all(state == "stored" for _, state in seen)  # committed before the hand-over
    assert [row.digest for row, _ in seen] == [m.digest for m in urgent]
    assert [row.payload for row, _ in seen] == [m.payload for m in urgent]
    # Claimed for the consumer: next_batch returns only the routine rows.
    claimed = await journal.next_batch(limit=100)
    assert sorted(row.id for row in claimed) == sorted(routine_ids)
    await journal.close()


@run_async
async def test_a_step_journaled_again_is_not_handed_over_twice(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "journal.db")
    seen: list[StoredMessage] = []
    journal.hand_over_urgent(seen.extend)
    step = alarm(7)
    (row_id,) = await journal.append_many([step])
    await wait_until(lambda: len(seen) == 1, 5, "the hand-over")
    again = await journal.append(step)  # in flight (claimed): same row, not handed out
    assert again == row_id
    await journal.mark_sent([row_id])
    await journal.append(step)  # sent: nothing to publish
    await settle()
    assert [row.id for row in seen] == [row_id]
    await journal.close()


@run_async
async def test_rows_a_consumer_cannot_take_are_released(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "journal.db")

    def broken(rows: list[StoredMessage]) -> None:
        raise RuntimeError("consumer bug")

    journal.hand_over_urgent(broken)
    (first,) = await journal.append_many([alarm(1)])
    await settle()
    # A consumer replaced while rows were in transit: the rows go back too.
    journal.hand_over_urgent(None)
    (second,) = await journal.append_many([alarm(2)])
    stale = (await journal._call(lambda store: store.claim_committed([second])))
    journal.hand_over_urgent(lambda rows: None)
    journal._deliver_urgent(broken, stale)
    await settle()
    claimed = await journal.next_batch(limit=10)
    assert sorted(row.id for row in claimed) == [first, second]
    await journal.close()


@run_async
async def test_without_a_consumer_nothing_is_claimed(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "journal.db")
    ids = await journal.append_many([alarm(1), alarm(2)])
    claimed = await journal.next_batch(limit=10)
    assert [row.id for row in claimed] == ids
    assert not journal.take_missed_hand_over()
    await journal.close()


def test_id_list_writes_touch_exactly_the_rows_named(tmp_path: Path) -> None:
    store = JournalStore.open(tmp_path / "journal.db")
    try:
        ids = store.append([reading(i) for i in range(10)])
        claimed = store.next_batch(limit=4)
        assert [row.id for row in claimed] == ids[:4]
        # In-flight rows are excluded by SQL, and the claim stops at its limit.
        assert [row.id for row in store.next_batch(limit=3)] == ids[4:7]
        assert store.mark_sent([ids[0], ids[0], ids[1], 10_000], at=1.0) == 2
        assert store.mark_sent([ids[0]], at=2.0) == 0  # already sent: not moved again
        assert store.release([ids[2], ids[3]], failed=True) == 2
        rows = {row.id: row for row in store.get(ids[:4])}
        assert [rows[i].state for i in ids[:4]] == ["sent", "sent", "stored", "stored"]
        assert [rows[i].attempts for i in ids[:4]] == [1, 1, 1, 1]
        assert [row.id for row in store.claim_committed([ids[3], ids[0], ids[3], ids[9]])] \
            == [ids[3], ids[9]]  # sent and in-flight rows are never claimed
        with pytest.raises(TypeError):
            store.mark_sent(["1"], at=3.0)  # type: ignore[list-item]
        with pytest.raises(TypeError):
            store.release([True])
    finally:
        store.close()


def test_a_large_claim_excludes_thousands_in_flight(tmp_path: Path) -> None:
    store = JournalStore.open(tmp_path / "journal.db")
    try:
        ids = store.append([reading(i) for i in range(3000)])
        first = store.next_batch(limit=2500, max_bytes=1 << 30)
        second = store.next_batch(limit=1000, max_bytes=1 << 30)
        assert [row.id for row in first + second] == ids
        assert store.next_batch(limit=10) == []
        assert store.mark_sent(ids, at=1.0) == 3000
    finally:
        store.close()

