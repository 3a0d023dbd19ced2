"""The asyncio group committer over a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from edge_agent.journal import (
    Journal,
    JournalClosedError,
    JournalConfig,
    JournalStore,
    NewMessage,
    Priority,
    QuarantineEntry,
    SchemaError,
    schema,
)

T0 = 1_800_000_000.0


def reading(seq: int, priority: int = Priority.ROUTINE, device: str = "dev-1") -> NewMessage:
    return NewMessage(
        "readings",
        device,
        f"{device}/{seq}".encode(),
        priority=priority,
        first_seq=seq,
        last_seq=seq,
        count=1,
        received_at=T0 + seq,
    )


def alarm(n: int) -> NewMessage:
    return NewMessage("alarm", None, f"alarm {n}".encode(), priority=Priority.ALARM)


def count_rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        conn.close()


def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    async def main() -> tuple[list[int], int]:
        async with await Journal.open(tmp_path / "j.db") as journal:
            before = journal.commits
            ids = await asyncio.gather(*(journal.append(reading(i)) for i in range(1000)))
            return list(ids), journal.commits - before

    ids, commits = asyncio.run(main())
    assert len(set(ids)) == 1000
    assert commits <= 20, commits  # 1000 rows, group_max 256: a handful of fsyncs, not 1000
    assert count_rows(tmp_path / "j.db") == 1000


def test_a_lone_append_commits_after_the_linger(tmp_path: Path) -> None:
    async def main() -> float:
        config = JournalConfig(group_linger_s=0.05)
        async with await Journal.open(tmp_path / "j.db", config) as journal:
            start = time.monotonic()
            await journal.append(reading(1))
            return time.monotonic() - start

    assert asyncio.run(main()) >= 0.05


def test_alarms_do_not_wait_behind_a_pending_routine_group(tmp_path: Path) -> None:
    async def main() -> None:
        # Routine items wait up to 30 s for company; an alarm must not.
        config = JournalConfig(group_linger_s=30.0, group_max=100_000)
        journal = await Journal.open(tmp_path / "j.db", config)
        routine = [asyncio.ensure_future(journal.append(reading(i))) for i in range(200)]
        await asyncio.sleep(0.05)
        start = time.monotonic()
        alarm_id = await asyncio.wait_for(journal.append(alarm(1)), 5.0)
        critical_id = await asyncio.wait_for(journal.append(reading(999, Priority.CRITICAL)), 5.0)
        assert time.monotonic() - start < 5.0
        assert not any(task.done() for task in routine)  # still lingering
        await journal.close()  # closing commits what was submitted
        routine_ids = [task.result() for task in routine]
        assert alarm_id < critical_id < min(routine_ids)  # committed first

    asyncio.run(main())
    assert count_rows(tmp_path / "j.db") == 202


def test_an_alarm_cuts_into_a_routine_group_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alarm arrives while the writer is inserting row 20 of a 300-row group: it is
    committed with the first CUT_EVERY-aligned prefix (32 rows), not after all 300."""
    alarm_queued = threading.Event()
    real_insert = JournalStore._insert
    inserted = 0

    async def main() -> None:
        loop = asyncio.get_running_loop()
        config = JournalConfig(group_max=1000, group_linger_s=0.2)
        journal = await Journal.open(tmp_path / "j.db", config)
        alarm_task: list[asyncio.Future[int]] = []

        def submit_alarm() -> None:  # on the event loop
            alarm_task.append(asyncio.ensure_future(journal.append(alarm(1))))
            loop.call_soon(alarm_queued.set)  # runs after the task's first step queued it

        def spy(store: JournalStore, item: NewMessage | QuarantineEntry) -> int:
            nonlocal inserted
            inserted += 1
            if inserted == 20:  # writer thread, mid-group: have an alarm queued, then go on
                loop.call_soon_threadsafe(submit_alarm)
                assert alarm_queued.wait(5.0)
            return real_insert(store, item)

        monkeypatch.setattr(JournalStore, "_insert", spy)
        commits = journal.commits
        routine = await journal.append_many([reading(i) for i in range(300)])
        alarm_id = await alarm_task[0]
        assert routine[:32] == list(range(1, 33))
        assert alarm_id == 33  # rode in the commit of the first 32 rows
        assert routine[32:] == list(range(34, 302))
        assert journal.commits - commits == 2
        await journal.close()

    asyncio.run(main())


def test_append_many_and_quarantine(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Journal.open(tmp_path / "j.db") as journal:
            ids = await journal.append_many([reading(i) for i in range(10)])
            assert ids == list(range(ids[0], ids[0] + 10))
            qid = await journal.quarantine(QuarantineEntry(b"\x00garbage", "cbor: bad header"))
            assert qid == 1
            assert (await journal.stats()).quarantined == 1

    asyncio.run(main())


def test_one_bad_row_does_not_sink_its_group(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Journal.open(tmp_path / "j.db") as journal:
            bad = reading(5)
            object.__setattr__(bad, "priority", 7)  # slips past validation; the CHECK refuses
            results = await asyncio.gather(
                *(journal.append(m) for m in [*map(reading, range(5)), bad]),
                return_exceptions=True,
            )
            assert isinstance(results[-1], sqlite3.IntegrityError)
            assert all(isinstance(r, int) for r in results[:-1])

    asyncio.run(main())
    assert count_rows(tmp_path / "j.db") == 5


def test_a_cancelled_append_is_still_journaled(tmp_path: Path) -> None:
    async def main() -> None:
        journal = await Journal.open(tmp_path / "j.db", JournalConfig(group_linger_s=30.0))
        task = asyncio.ensure_future(journal.append(reading(1)))
        await asyncio.sleep(0.01)
        task.cancel()
        await journal.close()

    asyncio.run(main())
    assert count_rows(tmp_path / "j.db") == 1


def test_closed_journal_refuses_work(tmp_path: Path) -> None:
    async def main() -> None:
        journal = await Journal.open(tmp_path / "j.db")
        await journal.close()
        await journal.close()  # idempotent
        with pytest.raises(JournalClosedError):
            await journal.append(reading(1))
        with pytest.raises(JournalClosedError):
            await journal.next_batch()

    asyncio.run(main())


def test_open_reports_an_unusable_file(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {schema.LATEST_VERSION + 5}")
    conn.close()

    async def main() -> None:
        with pytest.raises(SchemaError):
            await Journal.open(path)

    asyncio.run(main())


def test_delivery_cycle_and_restart_recovery(tmp_path: Path) -> None:
    path = tmp_path / "j.db"

    async def first_run() -> list[int]:
        async with await Journal.open(path) as journal:
            ids = await journal.append_many([reading(i) for i in range(6)])
            assert await journal.wait_for_stored(timeout=1.0)
            batch = await journal.next_batch(limit=4)
            assert [m.id for m in batch] == ids[:4]
            assert await journal.mark_sent([m.id for m in batch[:3]], at=T0 + 10) == 3
            receipt = await journal.mark_received([batch[0].digest], at=T0 + 11)
            assert receipt.matched == 1
            stats = await journal.stats(now=T0 + 20)
            assert stats.rows == {("received", 0): 1, ("sent", 0): 2, ("stored", 0): 3}
            assert stats.in_flight == 1
            return ids  # ids[3] in flight, ids[1:3] sent without receipt: the process "dies"

    async def second_run(ids: list[int]) -> None:
        async with await Journal.open(path) as journal:
            pending = await journal.next_batch(limit=10)
            assert [m.id for m in pending] == ids[1:]  # sent-but-unconfirmed go out again
            assert not await journal.wait_for_stored(timeout=0.01)

    ids = asyncio.run(first_run())
    asyncio.run(second_run(ids))


def test_purge_runs_in_chunks_and_budget_is_optional(tmp_path: Path) -> None:
    async def main() -> None:
        config = JournalConfig(purge_chunk=2, retention_s=100.0)
        async with await Journal.open(tmp_path / "j.db", config) as journal:
            await journal.append_many([reading(i) for i in range(5)])
            batch = await journal.next_batch()
            await journal.mark_received([m.digest for m in batch], at=T0 + 50)
            assert await journal.purge(now=T0 + 103.5) == 4  # seq 0..3 are old enough
            assert await journal.purge(now=T0 + 1000) == 1
            assert await journal.enforce_budget() is None
            assert (await journal.check(full=True)).ok

    asyncio.run(main())


def test_check_finds_a_payload_that_no_longer_matches_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    store = JournalStore.open(path)
    ids = store.append([reading(i) for i in range(3)])
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE messages SET payload = ? WHERE id = ?", (b"bit rot", ids[1]))
    conn.commit()
    conn.close()
    store = JournalStore.open(path)
    assert store.check().ok  # SQLite itself sees nothing wrong
    result = store.check(full=True)
    assert result.sqlite == ("ok",) and result.digest_mismatches == (ids[1],)
    assert not result.ok
    store.close()


def test_budget_via_the_journal_reports_actions(tmp_path: Path) -> None:
    async def main() -> None:
        config = JournalConfig(budget_bytes=64 * 1024)
        async with await Journal.open(tmp_path / "j.db", config) as journal:
            msgs = [reading(i, device=f"dev-{i % 2}") for i in range(2000)]
            msgs[10] = reading(10, Priority.CRITICAL)
            await journal.append_many(msgs)
            outcome = await journal.enforce_budget(now=T0)
            assert outcome is not None and outcome.actions
            assert all(a.description.startswith("disk budget: ") for a in outcome.actions)
            stats = await journal.stats()
            assert stats.rows[("stored", 1)] == 1

    asyncio.run(main())


def test_an_abandoned_claim_gives_its_rows_back(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Journal.open(tmp_path / "j.db") as journal:
            ids = await journal.append_many([reading(i) for i in range(3)])
            gate = threading.Event()
            blocker = asyncio.ensure_future(journal._call(lambda _store: gate.wait(5.0)))
            claim = asyncio.ensure_future(journal.next_batch())
            await asyncio.sleep(0.01)
            claim.cancel()  # e.g. the uplink's wait_for timed out
            gate.set()
            await blocker
            await journal.stats()  # the claim ran on the writer, then its release was queued
            assert claim.cancelled()
            assert [m.id for m in await journal.next_batch()] == ids

    asyncio.run(main())
