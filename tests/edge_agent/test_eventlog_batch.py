"""The event journal's batch write path (EventLog.append_validated, used by EventRecorder)
writes exactly what the per-entry path wrote, and stays all-or-nothing.

- golden: data/eventlog_golden.json holds the rows the code before the batch path wrote for
  a seeded sequence of every kind (eventlog_golden.py); today's recorder path and today's
  public `append` must write byte-identical rows (seq, time, kind, actor, subject, details
  JSON, prev, hash; and, for the recorder path, the signed checkpoints);
- the body by protocol.cbor's plain fast path (chain.plain_entry_body) equals the general
  CBOR encoder, and the fast path takes only details the stored JSON gives back unchanged;
- a journal written by the batch path verifies (file and export, via the CLI);
- a disk error in the middle of a batch commits nothing, and the recorder's retry writes
  every entry once, in order;
- checkpoints keep their cadence when entries arrive in batches, also across a boundary.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

import eventlog_golden as golden  # noqa: E402

from edge_agent.agent.recorder import EventRecorder  # noqa: E402
from edge_agent.eventlog import EventLog, EventLogFile, chain, kinds  # noqa: E402
from protocol import cbor, crypto  # noqa: E402

GW = golden.GATEWAY


def public_key() -> bytes:
    return crypto.ed25519_public_key(golden.SEED)


def recorder_on(log: EventLog) -> EventRecorder:
    """An EventRecorder around `log` without its flusher task: tests call _write/record."""
    return EventRecorder(None, log)  # type: ignore[arg-type]


def validated(batch: list[golden.Event]) -> list[golden.Event]:
    """The batch as EventRecorder.record queues it (validated, clean copies)."""
    out = []
    for kind, actor, subject, details, at in batch:
        kind, actor, subject, clean = kinds.validate(kind, actor, subject, details)
        out.append((kind, actor, subject, clean, at))
    return out


# ---------------------------------------------------------------- golden rows


def test_the_golden_sequence_exercises_what_it_claims() -> None:
    events = golden.golden_events()
    assert {e[0] for e in events} == set(golden.GOLDEN_KINDS) <= set(kinds.KINDS)
    values = [v for e in events for v in e[3].values()]
    assert any(type(v) is tuple for v in values)  # normalised to a list by the round trip
    assert any(type(v) is golden.Label for v in values)  # a str subclass
    assert any(type(v) is golden.Code for v in values)  # an int subclass
    assert any(type(v) is float for v in values) and any(e[4] is None for e in events)
    assert len(golden.load_fixture()["checkpoints"]) >= 5


def test_recorder_batch_path_writes_the_golden_rows(tmp_path: Path) -> None:
    def write_batch(log: EventLog, batch: list[golden.Event]) -> None:
        recorder_on(log)._write(validated(batch))

    golden.write_golden(tmp_path / "e.db", write_batch)
    rows = golden.journal_rows(tmp_path / "e.db")
    expected = golden.load_fixture()
    assert rows["entries"] == expected["entries"]
    assert rows["checkpoints"] == expected["checkpoints"]


def test_public_append_writes_the_golden_entries(tmp_path: Path) -> None:
    def write_batch(log: EventLog, batch: list[golden.Event]) -> None:
        with log.batch():
            for kind, actor, subject, details, at in batch:
                log.append(kind, actor, subject, details, at=at)

    golden.write_golden(tmp_path / "e.db", write_batch)
    rows = golden.journal_rows(tmp_path / "e.db")
    expected = golden.load_fixture()
    assert rows == expected


def test_append_returns_the_entry_as_read_back(tmp_path: Path) -> None:
    """A tuple or a subclass is hashed as the row reads back, as before."""
    log = EventLog.open(tmp_path / "e.db", GW, golden.SEED)
    entry = log.append("config.changed", "agent", "gateway:gw-0001",
                       {"source": golden.Label("cli"), "digest": "ab" * 32,
                        "settings": ("uplink.host", "uplink.port")})
    [stored] = list(log.entries())
    assert entry == stored and type(stored.details["settings"]) is list
    assert type(entry.details["source"]) is str
    log.close()


# ---------------------------------------------------------------- the body encoder

JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(1 << 64), (1 << 64) - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
ODD_VALUES = (st.floats() | st.integers() | st.tuples(st.text(max_size=3))
              | st.lists(st.lists(st.integers(0, 3), max_size=2), max_size=2)
              | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
              | st.builds(golden.Label, st.text(max_size=5)) | st.sampled_from(list(golden.Code)))
DETAILS = st.dictionaries(st.text(max_size=45), JSON_SCALARS | st.lists(JSON_SCALARS, max_size=4)
                          | ODD_VALUES, max_size=8)


@settings(deadline=None)
@given(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1), st.text(max_size=30),
       st.text(max_size=30), st.text(max_size=300), DETAILS)
def test_direct_body_encoding_equals_the_general_encoder(seq: int, time_ms: int, kind: str,
                                                         actor: str, subject: str,
                                                         details: dict[str, Any]) -> None:
    try:
        reference = cbor.dumps({"seq": seq, "time": time_ms, "kind": kind, "actor": actor,
                                "subject": subject, "details": details})
    except (ValueError, UnicodeError):
        return  # outside the model (e.g. int too large, lone surrogate): the general path
    direct = chain.plain_entry_body(seq, time_ms, kind, actor, subject, details)
    assert direct is None or direct == reference
    assert chain.entry_body(seq, time_ms, kind, actor, subject, details) == reference


def test_direct_body_declines_what_json_would_change() -> None:
    base = ("agent.started", "agent", "s")
    for details in ({"a": (1,)}, {"a": golden.Label("x")}, {"a": golden.Code.SUCCESS},
                    {golden.Label("a"): 1}, {"a": float("inf")}, {"a": 1 << 64},
                    {"a": [(1,)]}, {"a": {"b": golden.Label("c")}}, {1: "x"}):
        assert chain.plain_entry_body(1, 2, *base, details) is None, details
    for details in ({"a": [1, "x", None, 1.5, True]}, {"a": [[1]]}, {"a": {"b": [1.5]}}):
        # JSON gives these back unchanged: no round trip needed
        assert chain.details_from_json(chain.details_to_json(details)) == details
        body = chain.plain_entry_body(1, 2, *base, details)
        assert body == cbor.dumps({"seq": 1, "time": 2, "kind": base[0], "actor": base[1],
                                   "subject": base[2], "details": details})


def test_direct_body_takes_only_details_a_row_can_read_back() -> None:
    """Details nested deeper than the format allows must take the general path, whose JSON
    round trip refuses them, rather than be hashed into a row that cannot be read back."""
    base = ("agent.started", "agent", "s")
    inner: Any = 1
    for level in range(chain.MAX_DETAILS_DEPTH - 1):  # the details map is the first level
        inner = [inner] if level % 2 else {"b": inner}
    details = {"a": inner}
    assert chain.plain_entry_body(1, 2, *base, details) is not None
    assert chain.details_from_json(chain.details_to_json(details)) == details
    deeper = {"a": [inner]}
    assert chain.plain_entry_body(1, 2, *base, deeper) is None
    with pytest.raises(chain.FormatError):
        chain.details_from_json(chain.details_to_json(deeper))


# ---------------------------------------------------------------- verification


def test_batch_path_journal_verifies_by_file_and_export(tmp_path: Path) -> None:
    from edge_agent.cli import main as cli_main

    def write_batch(log: EventLog, batch: list[golden.Event]) -> None:
        recorder_on(log)._write(validated(batch))

    path = tmp_path / "e.db"
    golden.write_golden(path, write_batch)
    key = public_key().hex()
    assert cli_main(["journal", "verify", "--db", str(path), "--key", key]) == 0
    assert cli_main(["journal", "export", "--db", str(path), "--out",
                     str(tmp_path / "e.jsonl")]) == 0
    assert cli_main(["journal", "verify", "--export", str(tmp_path / "e.jsonl"),
                     "--key", key]) == 0
    reader = EventLogFile.open_readonly(path)
    report = reader.verify(public_key())
    reader.close()
    assert report.ok and report.entries == len(golden.golden_events())
    assert report.uncovered == 0
    conn = sqlite3.connect(path, isolation_level=None)  # and an edit is still caught
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET time = time + 1 WHERE seq = 77")
    conn.close()
    assert cli_main(["journal", "verify", "--db", str(path), "--key", key]) == 1


# ---------------------------------------------------------------- failure mid-batch


class FlakyConnection:
    """A connection whose executemany fails like a full disk, `failures` times."""

    def __init__(self, conn: sqlite3.Connection, failures: int) -> None:
        self._conn = conn
        self.failures = failures

    def executemany(self, sql: str, rows: Any) -> Any:
        if self.failures and sql.startswith("INSERT INTO entries"):
            self.failures -= 1
            rows = list(rows)
            self._conn.executemany(sql, rows[:len(rows) // 2])  # half of it got in
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def record_and_flush_with_a_disk_error(path: Path) -> tuple[int, list[str]]:
    recorder = await EventRecorder.open(path, GW, golden.SEED, checkpoint_every=1000,
                                        checkpoint_interval_s=60.0, flush_interval_s=3600)
    recorder._task.cancel()  # type: ignore[union-attr]  # flush by hand
    assert recorder.record("agent.started", "agent", "gateway:gw-0001", {"version": "1"})
    await recorder.flush()
    first = recorder.written  # the first batch went in
    flaky = FlakyConnection(recorder._log._conn, failures=1)
    recorder._log._conn = flaky  # type: ignore[assignment]
    for i in range(9):
        assert recorder.record("alarm.raised", "agent", f"alarm:a-{i}",
                               {"alarm_id": f"a-{i}", "grade": "red"})
    await recorder.flush()  # fails half-way: nothing of it may stay
    seen = [e.subject for e in recorder._log.entries()]
    assert seen == ["gateway:gw-0001"] and recorder.written == first == 1
    assert len(recorder._pending) == 9 and flaky.failures == 0
    await recorder.flush()  # the retry
    recorder._log._conn = flaky._conn
    written = recorder.written
    await recorder.close()
    reader = EventLogFile.open_readonly(path)
    try:
        assert reader.verify(public_key()).ok
        return written, [e.subject for e in reader.entries()]
    finally:
        reader.close()


def test_a_disk_error_mid_batch_commits_nothing_and_the_retry_writes_all(tmp_path: Path
                                                                         ) -> None:
    written, subjects = asyncio.run(record_and_flush_with_a_disk_error(tmp_path / "e.db"))
    assert written == 10
    assert subjects == ["gateway:gw-0001"] + [f"alarm:a-{i}" for i in range(9)]


def test_a_bad_time_mid_batch_commits_nothing(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "e.db", GW, golden.SEED)
    batch = validated([("agent.started", "agent", "gateway:gw-0001", {"version": "1"}, None)] * 3)
    batch[1] = (*batch[1][:4], -5.0)
    with pytest.raises(ValueError):
        log.append_validated(batch)
    assert log.stats().last_seq == 0 and not log._conn.in_transaction
    assert log.append_validated(batch[:1] + batch[2:]) == 2
    log.close()


# ---------------------------------------------------------------- checkpoint cadence


def test_checkpoints_by_count_when_batches_cross_a_boundary(tmp_path: Path) -> None:
    clock = golden.FakeClock()
    published: list[chain.Checkpoint] = []
    log = EventLog.open(tmp_path / "e.db", GW, golden.SEED, checkpoint_every=5,
                        checkpoint_interval_s=60, clock=clock, on_checkpoint=published.append)
    event = validated([("agent.started", "agent", "gateway:gw-0001", {"version": "1"}, None)])
    assert log.append_validated(event * 3) == 3 and published == []  # 3 < 5
    assert log.append_validated(event * 4) == 7  # crosses 5: signed when the batch commits
    assert [(cp.first, cp.last) for cp in published] == [(1, 7)]
    assert log.append_validated(event * 12) == 19  # more than a whole period in one batch
    assert [(cp.first, cp.last) for cp in published] == [(1, 7), (8, 19)]
    assert log.append_validated(event * 4) == 23  # 4 uncovered: not due
    assert len(published) == 2
    clock.now += 61  # due by age: the next batch's commit signs it
    assert log.append_validated(event) == 24
    assert [(cp.first, cp.last) for cp in published][-1] == (20, 24)
    log.close()
    reader = EventLogFile.open_readonly(tmp_path / "e.db")
    assert [cp.last for cp in reader.checkpoints()] == [7, 19, 24]
    assert reader.verify(public_key()).ok
    reader.close()



async def record_bad_times(path: Path) -> tuple[int, list[int]]:
    recorder = await EventRecorder.open(path, GW, golden.SEED, checkpoint_every=1000,
                                        checkpoint_interval_s=60.0)
    event = ("agent.started", "agent", "gateway:gw-0001", {"version": "1"})
    for at in (-5.0, float("nan"), float("inf"), 2.0**53, 10**400, True, "1700000000"):
        assert not recorder.record(*event, at=at)  # type: ignore[arg-type]
    assert recorder.record(*event, at=0) and recorder.record(*event, at=1_700_000_000.25)
    await recorder.close()
    reader = EventLogFile.open_readonly(path)
    try:
        return recorder.refused, [e.time for e in reader.entries()]
    finally:
        reader.close()


def test_a_time_the_journal_cannot_hold_is_refused_when_recorded(tmp_path: Path) -> None:
    """Queued, it would fail its batch on every retry and hold up all later entries."""
    refused, times = asyncio.run(record_bad_times(tmp_path / "e.db"))
    assert refused == 7 and times == [0, 1_700_000_000_250]
