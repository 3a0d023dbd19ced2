"""JournalStore on real SQLite files: schema, delivery states, retention, budget, integrity."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.journal import (
    JournalStore,
    NewMessage,
    Priority,
    QuarantineEntry,
    SchemaError,
    policy,
    schema,
)
from protocol.errors import ValidationError

DAY = 86400.0
YEAR = 365 * DAY
T0 = 1_800_000_000.0


def msg(
    seq: int,
    *,
    device: str = "dev-1",
    priority: int = Priority.ROUTINE,
    kind: str = "readings",
    at: float = T0,
    size: int = 40,
) -> NewMessage:
    payload = f"{device}:{seq}:".encode().ljust(size, b".")
    return NewMessage(
        kind,
        device,
        payload,
        priority=priority,
        first_seq=seq,
        last_seq=seq,
        count=1,
        session=b"\x01\x02",
        received_at=at,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JournalStore]:
    s = JournalStore.open(tmp_path / "journal.db")
    yield s
    s.close()


def test_open_creates_wal_full_and_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    s = JournalStore.open(path)
    conn = s._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert schema.user_version(conn) == schema.LATEST_VERSION
    s.close()
    again = JournalStore.open(path)  # reopening an existing file migrates nothing
    assert schema.user_version(again._conn) == schema.LATEST_VERSION
    again.close()


def test_migrations_run_stepwise_and_atomically(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    steps = (("CREATE TABLE a (x)",), ("CREATE TABLE b (y)", "INSERT INTO a VALUES (1)"))
    assert schema.migrate(conn, steps[:1]) == 1
    assert schema.migrate(conn, steps) == 1  # only the missing step
    assert schema.user_version(conn) == 2
    broken = (*steps, ("CREATE TABLE c (z)", "THIS IS NOT SQL"))
    with pytest.raises(sqlite3.OperationalError):
        schema.migrate(conn, broken)
    assert schema.user_version(conn) == 2  # the failed step left no trace
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'c'").fetchone()[0] == 0
    conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {schema.LATEST_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaError):
        JournalStore.open(path)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        JournalStore.open(path)


def test_append_stores_exact_bytes_and_digest(store: JournalStore) -> None:
    m = msg(7, priority=Priority.CRITICAL)
    (row_id,) = store.append([m])
    (got,) = store.get([row_id])
    assert got.payload == m.payload
    assert got.digest == hashlib.sha256(m.payload).digest()
    assert (got.first_seq, got.last_seq, got.count, got.priority) == (7, 7, 1, Priority.CRITICAL)
    assert got.session == b"\x01\x02" and got.state == "stored" and got.attempts == 0
    assert got.received_at == T0 and got.sent_at is None and got.acked_at is None


def test_one_group_is_one_commit(store: JournalStore) -> None:
    before = store.commits
    ids = store.append([msg(i) for i in range(500)])
    assert store.commits == before + 1
    assert ids == sorted(ids) and len(set(ids)) == 500


def test_same_payload_twice_is_one_row_and_keeps_the_higher_priority(store: JournalStore) -> None:
    a = msg(1)
    first = store.append([a])
    alarm_copy = NewMessage("readings", "dev-1", a.payload, priority=Priority.ALARM)
    second = store.append([alarm_copy, a])
    assert second == first * 2
    (got,) = store.get(first)
    assert got.priority == Priority.ALARM


@pytest.mark.parametrize(
    "bad",
    [
        dict(kind="status"),  # retained state is not journaled
        dict(kind="readings", device_id=None),  # per-device kind needs a device
        dict(device_id="dev/1"),  # would break the topic
        dict(payload=b""),
        dict(payload="text"),
        dict(priority=3),
        dict(priority=True),
        dict(verdict="trusted"),
        dict(flags=("Cert Expired",)),
        dict(flags=("x", "x")),
        dict(first_seq=5, last_seq=4),
        dict(first_seq=5),
        dict(first_seq=-1, last_seq=1),
        dict(count=-1),
        dict(received_at=float("nan")),
        dict(session=b"k" * 65),
    ],
)
def test_invalid_messages_are_refused_before_reaching_sqlite(bad: dict[str, object]) -> None:
    fields: dict[str, object] = dict(kind="readings", device_id="dev-1", payload=b"x")
    fields.update(bad)
    with pytest.raises(ValidationError):
        NewMessage(**fields)  # type: ignore[arg-type]


def test_next_batch_alarms_then_critical_then_oldest(store: JournalStore) -> None:
    routine = store.append([msg(i) for i in range(10)])
    critical = store.append([msg(100, priority=Priority.CRITICAL)])
    alarm = store.append([NewMessage("alarm", None, b"red: SpO2 82", priority=Priority.ALARM)])
    batch = store.next_batch(limit=5)
    assert [m.id for m in batch] == alarm + critical + routine[:3]
    # Claimed rows are in flight and not handed out twice.
    assert [m.id for m in store.next_batch(limit=4)] == routine[3:7]
    store.release(routine[3:7], failed=True)
    assert [m.id for m in store.next_batch(limit=100)] == routine[3:]
    assert store.get(routine[3:4])[0].attempts == 1
    assert store.next_batch() == []


def test_next_batch_respects_max_bytes_but_never_stalls(store: JournalStore) -> None:
    ids = store.append([msg(i, size=1000) for i in range(5)])
    assert [m.id for m in store.next_batch(limit=10, max_bytes=2500)] == ids[:2]
    store.release(ids[:2], failed=False)
    assert [m.id for m in store.next_batch(limit=10, max_bytes=10)] == ids[:1]


def test_state_transitions_and_idempotent_receipts(store: JournalStore) -> None:
    ids = store.append([msg(i) for i in range(4)])
    batch = store.next_batch(limit=4)
    assert store.mark_sent(ids, at=T0 + 1) == 4
    assert store.mark_sent(ids, at=T0 + 2) == 0  # already sent: no second attempt counted
    assert {m.state for m in store.get(ids)} == {"sent"}
    digests = [m.digest for m in batch]
    stranger = hashlib.sha256(b"not ours").digest()
    first = store.mark_received([*digests[:2], stranger, b"short"], at=T0 + 3)
    assert (first.matched, first.already, first.unknown) == (2, 0, (stranger, b"short"))
    again = store.mark_received(digests, at=T0 + 4)
    assert (again.matched, again.already, again.unknown) == (2, 2, ())
    rows = store.get(ids)
    assert [m.state for m in rows] == ["received"] * 4
    assert [m.acked_at for m in rows] == [T0 + 3, T0 + 3, T0 + 4, T0 + 4]
    assert all(m.attempts == 1 and m.sent_at == T0 + 1 for m in rows)


def test_receipt_before_puback_is_not_downgraded(store: JournalStore) -> None:
    (i,) = store.append([msg(1)])
    (m,) = store.next_batch()
    store.mark_received([m.digest], at=T0 + 1)
    assert store.mark_sent([i], at=T0 + 2) == 0
    assert store.get([i])[0].state == "received"
    assert store.in_flight == frozenset()


def test_restart_resends_sent_rows_and_forgets_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    s = JournalStore.open(path)
    ids = s.append([msg(i) for i in range(6)])
    s.next_batch(limit=6)
    s.mark_sent(ids[:4], at=T0 + 1)
    s.mark_received([m.digest for m in s.get(ids[:1])], at=T0 + 2)
    s.close()  # ids[4:] were in flight when the process ended

    s = JournalStore.open(path)
    assert s.revert_unsent() == 3
    pending = s.next_batch(limit=10)
    assert [m.id for m in pending] == ids[1:]
    assert [m.attempts for m in pending] == [1, 1, 1, 0, 0]  # history survives the revert
    s.close()


def test_revert_unsent_only_overdue(store: JournalStore) -> None:
    ids = store.append([msg(i) for i in range(3)])
    store.next_batch()
    store.mark_sent(ids[:1], at=T0)
    store.mark_sent(ids[1:], at=T0 + 100)
    assert store.revert_unsent(sent_before=T0 + 50) == 1
    assert [m.state for m in store.get(ids)] == ["stored", "sent", "sent"]


def test_purge_needs_receipt_and_retention(store: JournalStore) -> None:
    old = store.append([msg(i, at=T0) for i in range(5)])
    young = store.append([msg(i + 10, at=T0 + 200 * DAY) for i in range(3)])
    store.next_batch(limit=100)
    store.mark_sent(old + young, at=T0 + 1)
    store.mark_received([m.digest for m in store.get(old[:4] + young)], at=T0 + 2)
    store.add_quarantine([QuarantineEntry(b"\xff", "cbor: truncated", received_at=T0)])
    now = T0 + YEAR + 1
    assert store.purge(now, YEAR, chunk=3) == 3
    assert store.purge(now, YEAR, chunk=3) == 2  # 1 message + 1 quarantined input
    assert store.purge(now, YEAR, chunk=3) == 0
    left = {m.id: m.state for m in store.get(old + young)}
    assert left == {old[4]: "sent", **{i: "received" for i in young}}  # unconfirmed stays
    assert store.quarantined() == []
    assert store.purge(T0 + 200 * DAY + YEAR, YEAR) == 3
    log = store.deletions()
    assert [(action, rows) for _, action, rows, _, _ in log] == [
        ("retention", 3),
        ("retention", 2),
        ("retention", 3),
    ]


def test_quarantine_keeps_evidence_bounded(tmp_path: Path) -> None:
    s = JournalStore.open(tmp_path / "q.db", quarantine_max_bytes=16)
    entry = QuarantineEntry(
        b"A" * 100, "seal: MAC mismatch", device_id="dev-9", source="serial:/dev/ttyUSB0"
    )
    (qid,) = s.add_quarantine([entry])
    ((got_id, device, reason, raw, raw_len, _at),) = s.quarantined()
    assert (got_id, device, reason, raw, raw_len) == (qid, "dev-9", entry.reason, b"A" * 16, 100)
    assert s.next_batch() == []  # never forwarded
    assert s.stats(T0).quarantined == 1
    s.close()


def test_stats_count_backlog_by_state_and_priority(store: JournalStore) -> None:
    store.append([msg(i, at=T0 + i) for i in range(3)])
    store.append([msg(9, priority=Priority.ALARM, at=T0 + 9)])
    batch = store.next_batch(limit=1)
    store.mark_sent([batch[0].id], at=T0 + 10)
    stats = store.stats(T0 + 20)
    assert stats.rows == {("sent", 2): 1, ("stored", 0): 3}
    assert stats.backlog() == 4 and stats.backlog(Priority.ALARM) == 1
    assert stats.oldest_unsent_age_s == 20.0
    assert stats.unsent_bytes == 4 * 40
    assert stats.used_bytes > 0 and stats.file_bytes >= stats.used_bytes
    assert stats.commits == store.commits


def _fill(store: JournalStore, n: int, size: int = 300) -> None:
    """n messages over 3 devices; every 10th critical, every 25th an alarm."""
    msgs = []
    for i in range(n):
        prio = Priority.ALARM if i % 25 == 0 else Priority.CRITICAL if i % 10 == 0 else 0
        msgs.append(msg(i, device=f"dev-{i % 3}", priority=prio, at=T0 + i, size=size))
    for start in range(0, n, 1000):
        store.append(msgs[start : start + 1000])


def _rows(path: Path) -> dict[int, tuple[int, str, str]]:
    """id -> (priority, state, device), read through a separate connection."""
    conn = sqlite3.connect(path)
    try:
        return {
            i: (prio, state, device)
            for i, prio, state, device in conn.execute(
                "SELECT id, priority, state, device_id FROM messages"
            )
        }
    finally:
        conn.close()


def test_budget_deletes_received_routine_first_and_never_critical(store: JournalStore) -> None:
    _fill(store, 3000)
    batch = store.next_batch(limit=1500, max_bytes=10**9)
    store.mark_sent([m.id for m in batch], at=T0 + 5000)
    store.mark_received([m.digest for m in batch], at=T0 + 5001)
    before = _rows(store.path)
    outcome = store.enforce_budget(int(store.used_bytes() * 0.8), T0 + 6000)
    after = _rows(store.path)
    gone = before.keys() - after.keys()
    assert gone and outcome.used_after <= outcome.budget_bytes < outcome.used_before
    assert [a.step for a in outcome.actions] == [policy.STEP_RECEIVED_EARLY]
    assert {before[i][:2] for i in gone} == {(0, "received")}
    assert max(gone) < min(i for i in after if before[i][:2] == (0, "received"))  # oldest first
    assert all(i in after for i, (prio, _s, _d) in before.items() if prio)
    logged = store.deletions()
    assert [row[1] for row in logged] == [policy.STEP_RECEIVED_EARLY]
    assert logged[0][2] == len(gone) and logged[0][4] == outcome.actions[0].description


def test_budget_thins_old_unsent_routine_and_really_frees_pages(store: JournalStore) -> None:
    _fill(store, 3000)
    store.add_quarantine([QuarantineEntry(b"junk" * 50, "frame: bad CRC", received_at=T0)] * 5)
    claimed = {m.id for m in store.next_batch(limit=30)}  # in flight: being published
    before = _rows(store.path)
    budget = int(store.used_bytes() * 0.7)
    outcome = store.enforce_budget(budget, T0 + 6000)
    after = _rows(store.path)
    gone = before.keys() - after.keys()
    assert [a.step for a in outcome.actions] == [policy.STEP_QUARANTINE, policy.STEP_THINNED]
    assert store.quarantined() == []
    # One round was enough (the estimate matched the pages really freed), without overshoot.
    assert 0.8 * budget <= outcome.used_after <= budget
    assert {before[i][0] for i in gone} == {0}  # routine only
    assert all(i in after for i, (prio, _s, _d) in before.items() if prio)
    assert claimed <= after.keys()
    assert all(i in after for i in before if i > max(gone))  # newer data untouched
    for device in ("dev-0", "dev-1", "dev-2"):  # kept windows hold every device's data
        old = [i for i, (p, _s, d) in before.items() if d == device and p == 0 and i < max(gone)]
        assert 0.3 < sum(i in after for i in old) / len(old) < 0.7  # keep 1 block in 2
    actions = [row[1] for row in store.deletions()]
    assert actions == [policy.STEP_QUARANTINE, policy.STEP_THINNED]


def test_budget_that_cannot_be_met_reports_shortfall_and_keeps_alarms(
    store: JournalStore,
) -> None:
    _fill(store, 1000)
    before = _rows(store.path)
    outcome = store.enforce_budget(8192, T0 + 6000)
    after = _rows(store.path)
    assert outcome.over_budget and outcome.shortfall_bytes > 0
    assert all(i in after for i, (prio, _s, _d) in before.items() if prio)
    for device in ("dev-0", "dev-1", "dev-2"):  # every device keeps its oldest routine row
        first = min(i for i, (p, _s, d) in before.items() if d == device and p == 0)
        assert first in after
