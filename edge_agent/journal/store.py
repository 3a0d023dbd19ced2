"""Synchronous access to the journal file: one SQLite connection, used from one thread.

The asyncio side (committer.py) owns that thread; tests and tools may use this class directly.
Everything written here is durable when the method returns: WAL with synchronous=FULL, one
transaction (one WAL fsync) per call, never per row.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from edge_agent.journal import policy, schema
from edge_agent.journal.schema import RECEIVED, SENT, STORED
from edge_agent.sqlite_tx import immediate
from protocol import topics
from protocol.errors import ValidationError


class Priority(IntEnum):
    ROUTINE = 0
    CRITICAL = 1  # a reading outside the patient's limits
    ALARM = 2  # an alarm transition


# Upstream kinds that go through the journal. Retained state (status, the active alarm set) is
# republished from live state, never replayed from here.
JOURNAL_KINDS = (topics.UP_READINGS, topics.UP_CHECKPOINT, topics.UP_ALARM, topics.UP_EVENT)
# How the message's provenance was established.
VERDICTS = ("sealed", "attested", "manual")

MAX_PAYLOAD_BYTES = 1 << 20
MAX_SESSION_BYTES = 64
MAX_SEQ = (1 << 63) - 1
_FLAG = re.compile(r"[a-z0-9][a-z0-9._:-]{0,63}\Z")
_MAX_REASON = 500


def _as_bytes(name: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise ValidationError(name, "must be bytes")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to journal. Validated on construction, so one bad row never fails a group."""

    kind: str
    device_id: str | None
    payload: bytes
    priority: int = Priority.ROUTINE
    verdict: str = "sealed"
    flags: tuple[str, ...] = ()
    session: bytes | None = None
    first_seq: int | None = None
    last_seq: int | None = None
    count: int = 0
    received_at: float = field(default_factory=time.time)
    digest: bytes = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in JOURNAL_KINDS:
            raise ValidationError("kind", f"not journaled: {self.kind!r}")
        if self.device_id is not None:
            topics.check_id("device_id", self.device_id)
        elif self.kind in topics.PER_DEVICE_KINDS:
            raise ValidationError("device_id", f"required for kind {self.kind!r}")
        payload = _as_bytes("payload", self.payload)
        if not payload or len(payload) > MAX_PAYLOAD_BYTES:
            raise ValidationError("payload", f"must be 1..{MAX_PAYLOAD_BYTES} bytes")
        object.__setattr__(self, "payload", payload)
        if not _is_int(self.priority) or self.priority not in (0, 1, 2):
            raise ValidationError("priority", "must be 0, 1 or 2")
        object.__setattr__(self, "priority", Priority(self.priority))
        if self.verdict not in VERDICTS:
            raise ValidationError("verdict", f"must be one of {', '.join(VERDICTS)}")
        flags = tuple(self.flags)
        for flag in flags:
            if not isinstance(flag, str) or not _FLAG.match(flag):
                raise ValidationError("flags", f"bad flag {flag!r} (lower-case token)")
        if len(set(flags)) != len(flags):
            raise ValidationError("flags", "duplicate flag")
        object.__setattr__(self, "flags", flags)
        if self.session is not None:
            session = _as_bytes("session", self.session)
            if len(session) > MAX_SESSION_BYTES:
                raise ValidationError("session", f"longer than {MAX_SESSION_BYTES} bytes")
            object.__setattr__(self, "session", session)
        if (self.first_seq is None) != (self.last_seq is None):
            raise ValidationError("first_seq", "first_seq and last_seq go together")
        if self.first_seq is not None:
            if not (_is_int(self.first_seq) and _is_int(self.last_seq)):
                raise ValidationError("first_seq", "sequence numbers must be integers")
            if not 0 <= self.first_seq <= self.last_seq <= MAX_SEQ:
                raise ValidationError("last_seq", "need 0 <= first_seq <= last_seq < 2**63")
        if not _is_int(self.count) or self.count < 0:
            raise ValidationError("count", "must be an integer >= 0")
        _check_time("received_at", self.received_at)
        object.__setattr__(self, "received_at", float(self.received_at))
        object.__setattr__(self, "digest", hashlib.sha256(payload).digest())


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """Input that failed decoding or verification: kept as evidence, never forwarded."""

    raw: bytes
    reason: str
    device_id: str | None = None  # as claimed; may itself be why the input was refused
    source: str | None = None
    received_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        object.__setattr__(self, "raw", _as_bytes("raw", self.raw))
        if not isinstance(self.reason, str) or not self.reason.strip():
            raise ValidationError("reason", "must be a non-empty string")
        object.__setattr__(self, "reason", self.reason[:_MAX_REASON])
        for name in ("device_id", "source"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, str):
                    raise ValidationError(name, "must be a string or None")
                object.__setattr__(self, name, value[:200])
        _check_time("received_at", self.received_at)
        object.__setattr__(self, "received_at", float(self.received_at))


def _check_time(name: str, value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValidationError(name, "must be a finite number of seconds")


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    kind: str
    device_id: str | None
    session: bytes | None
    first_seq: int | None
    last_seq: int | None
    count: int
    priority: Priority
    payload: bytes
    digest: bytes
    verdict: str
    flags: tuple[str, ...]
    received_at: float
    state: str
    sent_at: float | None
    acked_at: float | None
    attempts: int


@dataclass(frozen=True, slots=True)
class ReceiptResult:
    matched: int  # rows that became 'received' now
    already: int  # digests whose row was already 'received' (a repeated receipt)
    unknown: tuple[bytes, ...]  # digests with no row (purged, thinned, or not ours)


@dataclass(frozen=True, slots=True)
class JournalStats:
    rows: dict[tuple[str, int], int]  # (state, priority) -> number of messages
    unsent_bytes: int  # payload bytes not yet confirmed by the centre
    oldest_unsent_age_s: float | None
    in_flight: int
    quarantined: int
    file_bytes: int  # database + WAL on disk
    used_bytes: int  # pages in use (what the disk budget measures)
    commits: int

    def backlog(self, priority: int | None = None) -> int:
        """Messages not yet confirmed by the centre (stored + sent)."""
        return sum(
            n
            for (state, prio), n in self.rows.items()
            if state != RECEIVED and (priority is None or prio == priority)
        )


@dataclass(frozen=True, slots=True)
class CheckResult:
    sqlite: tuple[str, ...]  # PRAGMA integrity_check / quick_check output; ("ok",) when sound
    digest_mismatches: tuple[int, ...]  # ids whose payload no longer hashes to its digest

    @property
    def ok(self) -> bool:
        return self.sqlite == ("ok",) and not self.digest_mismatches


@dataclass(frozen=True, slots=True)
class BudgetOutcome:
    used_before: int
    used_after: int
    budget_bytes: int
    actions: tuple[policy.BudgetAction, ...]
    shortfall_bytes: int  # still over budget with nothing left that may be deleted

    @property
    def over_budget(self) -> bool:
        return self.used_after > self.budget_bytes


_COLUMNS = (
    "id, kind, device_id, session, first_seq, last_seq, count, priority, payload, digest, "
    "verdict, flags, received_at, state, sent_at, acked_at, attempts"
)
_INSERT = (
    "INSERT INTO messages (kind, device_id, session, first_seq, last_seq, count, priority, "
    "payload, digest, verdict, flags, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    # The same payload twice is the same message: keep one row, return its id, and let a
    # higher priority win so an alarm never hides behind an earlier routine copy.
    "ON CONFLICT (digest) DO UPDATE SET priority = max(priority, excluded.priority) "
    "RETURNING id"
)
# The same insert returning the whole row as it stands after the statement (a new row, or
# the existing one with its state and the raised priority): an urgent row can be handed to
# the uplink after its commit without reading it back (each statement step on the writer
# thread hands the GIL back, and under load every hand-back waits for the event loop).
_INSERT_ROW = _INSERT.removesuffix("RETURNING id") + f"RETURNING {_COLUMNS}"
_FETCH = 500


def _id_list(ids: Iterable[int]) -> str:
    """Row ids as one JSON array parameter (`json_each`): a single statement for any
    number of ids, with no SQL variable limit. Anything but an int is a caller bug."""
    values = list(ids)
    for i in values:
        if not _is_int(i):
            raise TypeError(f"row ids must be integers, not {type(i).__name__}")
    return json.dumps(values)


def _row_to_message(row: tuple[Any, ...]) -> StoredMessage:
    values = list(row)
    values[7] = Priority(values[7])
    values[11] = tuple(values[11].split()) if values[11] else ()
    return StoredMessage(*values)


class JournalStore:
    """The journal file. Not thread-safe: create and use it from one thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path, quarantine_max_bytes: int) -> None:
        self._conn = conn
        self.path = path
        self.quarantine_max_bytes = quarantine_max_bytes
        self._in_flight: set[int] = set()
        self.commits = 0  # write transactions committed since open (metrics, tests)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        quarantine_max_bytes: int = 65536,
        wal_size_limit: int = 64 << 20,
    ) -> JournalStore:
        """Open (creating or migrating) the journal at `path` with durable settings."""
        path = Path(path)
        conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise schema.SchemaError(f"could not switch {path} to WAL (got {mode!r})")
            # FULL: the WAL is fsynced at every commit, so a commit survives power loss, not
            # only a process crash (NORMAL syncs only at checkpoints). Per connection, not stored.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA journal_size_limit = {int(wal_size_limit):d}")
            schema.migrate(conn)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, quarantine_max_bytes)

    def close(self) -> None:
        self._conn.close()

    # -- writing ----------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with immediate(self._conn):
            yield self._conn
        self.commits += 1

    @contextmanager
    def group(self) -> Iterator[Callable[[NewMessage | QuarantineEntry], int]]:
        """One write transaction for many items: yields `add(item) -> row id`. The block's
        exit commits them all with one WAL fsync; an exception rolls them all back."""
        with self._transaction():
            yield self._insert

    def commit_group(
        self, messages: Sequence[NewMessage], quarantined: Sequence[QuarantineEntry] = ()
    ) -> tuple[list[int], list[int]]:
        """Journal messages and quarantined inputs in ONE transaction; return their row ids."""
        with self.group() as add:
            ids = [add(m) for m in messages]
            qids = [add(q) for q in quarantined]
        return ids, qids

    def _insert(self, item: NewMessage | QuarantineEntry) -> int:
        if isinstance(item, QuarantineEntry):
            return self._insert_quarantine(self._conn, item)
        return int(self._execute_insert(_INSERT, item)[0])

    def insert_row(self, message: NewMessage) -> tuple[Any, ...]:
        """Inside `group()`: insert like `add`, returning the row as it now stands (the
        columns of a StoredMessage); hand it to `claim_rows` once the group committed."""
        return self._execute_insert(_INSERT_ROW, message)

    def claim_rows(self, rows: Iterable[tuple[Any, ...]]) -> list[StoredMessage]:
        """Claim rows returned by `insert_row` after their commit, exactly as
        `claim_committed` would read them back: only rows `stored` and not already in flight
        (a step journaled again, already sent or claimed, is never handed out twice), in the
        order given. No statement: this connection is the only writer, so nothing changed
        them between the insert and now."""
        wanted: dict[int, tuple[Any, ...]] = {}
        for row in rows:
            if row[0] not in self._in_flight and row[13] == STORED:
                wanted.setdefault(row[0], row)
        return self._claim([_row_to_message(row) for row in wanted.values()])

    def _execute_insert(self, sql: str, m: NewMessage) -> tuple[Any, ...]:
        row = self._conn.execute(
            sql,
            (
                m.kind,
                m.device_id,
                m.session,
                m.first_seq,
                m.last_seq,
                m.count,
                int(m.priority),
                m.payload,
                m.digest,
                m.verdict,
                " ".join(m.flags),
                m.received_at,
            ),
        ).fetchone()
        return tuple(row)

    def _insert_quarantine(self, conn: sqlite3.Connection, entry: QuarantineEntry) -> int:
        cursor = conn.execute(
            "INSERT INTO quarantine (device_id, source, reason, raw, raw_len, received_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                entry.device_id,
                entry.source,
                entry.reason,
                entry.raw[: self.quarantine_max_bytes],  # a flood must not fill the disk
                len(entry.raw),
                entry.received_at,
            ),
        )
        if cursor.lastrowid is None:
            raise sqlite3.DatabaseError("quarantine insert returned no row id")
        return int(cursor.lastrowid)

    def append(self, messages: Sequence[NewMessage]) -> list[int]:
        return self.commit_group(messages)[0]

    def add_quarantine(self, entries: Sequence[QuarantineEntry]) -> list[int]:
        return self.commit_group((), entries)[1]

    # -- delivery ---------------------------------------------------------------------------

    def next_batch(
        self,
        limit: int = 256,
        max_bytes: int = 256 * 1024,
        stop: Callable[[], bool] | None = None,
    ) -> list[StoredMessage]:
        """Claim up to `limit` stored messages (at least one, even if larger than `max_bytes`),
        alarms and critical readings first, then oldest first. Claimed ids are "in flight" —
        not returned again — until mark_sent, mark_received or release. The in-flight set is
        in memory only: after a restart every stored row is eligible again.

        `stop` is asked before each row after the first: once it answers True the claim ends
        there (a shorter batch, the rest stays stored). Every row stepped hands the GIL back
        and, under load, waits for it; the journal's writer stops a claim this way when an
        urgent insert is waiting, so an alarm waits for one row, not for the whole claim."""
        if limit < 1:
            return []
        batch: list[StoredMessage] = []
        size = 0
        # In-flight rows are excluded by SQLite and the scan stops at `limit`: every row
        # stepped costs a GIL hand-back, which under load delays the alarms queued behind.
        cursor = self._conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE state = ? AND id NOT IN "
            "(SELECT value FROM json_each(?)) ORDER BY priority DESC, id LIMIT ?",
            (STORED, _id_list(self._in_flight), limit),
        )
        try:
            for values in cursor:
                message = _row_to_message(values)
                if batch and size + len(message.payload) > max_bytes:
                    break
                batch.append(message)
                size += len(message.payload)
                if stop is not None and len(batch) < limit and stop():
                    break
        finally:
            cursor.close()
        return self._claim(batch)

    def claim_committed(self, ids: Iterable[int]) -> list[StoredMessage]:
        """Claim rows just committed (the journal's urgent hand-over to the uplink), in the
        order given: only rows still `stored` and not already in flight, so a step journaled
        again (same digest, already sent or claimed) is never handed out twice. Reads by
        primary key, in one statement; no write, no fsync."""
        wanted = [i for i in dict.fromkeys(ids) if i not in self._in_flight]
        if not wanted:
            return []
        found = {
            values[0]: values
            for values in self._conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE id IN "
                "(SELECT value FROM json_each(?)) AND +state = ?",  # by rowid, not by state
                (_id_list(wanted), STORED),
            )
        }
        return self._claim([_row_to_message(found[i]) for i in wanted if i in found])

    def _claim(self, batch: list[StoredMessage]) -> list[StoredMessage]:
        self._in_flight.update(m.id for m in batch)
        return batch

    @property
    def in_flight(self) -> frozenset[int]:
        return frozenset(self._in_flight)

    def mark_sent(self, ids: Iterable[int], at: float) -> int:
        """PUBACK: the broker has these. Returns rows moved stored -> sent (a row the centre
        already confirmed stays 'received')."""
        ids = list(ids)
        self._in_flight.difference_update(ids)
        with self._transaction() as conn:
            cursor = conn.execute(  # one statement, not one step per id (see next_batch)
                "UPDATE messages SET state = ?, sent_at = ?, attempts = attempts + 1 "
                "WHERE id IN (SELECT value FROM json_each(?)) AND +state = ?",
                (SENT, at, _id_list(ids), STORED),
            )
            return max(cursor.rowcount, 0)

    def release(self, ids: Iterable[int], failed: bool = True) -> int:
        """Give claimed ids back for a later batch; `failed` counts a publish attempt."""
        ids = list(ids)
        self._in_flight.difference_update(ids)
        if not failed or not ids:
            return 0
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE messages SET attempts = attempts + 1 "
                "WHERE id IN (SELECT value FROM json_each(?)) AND +state = ?",
                (_id_list(ids), STORED),
            )
            return max(cursor.rowcount, 0)

    def mark_received(self, digests: Iterable[bytes], at: float) -> ReceiptResult:
        """The centre's application receipts. Idempotent; unknown digests are reported."""
        matched = already = 0
        unknown: list[bytes] = []
        checked = [_as_bytes("digest", raw) for raw in digests]  # before touching anything
        with self._transaction() as conn:
            for digest in checked:
                if len(digest) != 32:  # not a SHA-256: cannot be one of ours
                    unknown.append(digest)
                    continue
                row = conn.execute(
                    "UPDATE messages SET state = ?, acked_at = ? WHERE digest = ? AND state != ? "
                    "RETURNING id",
                    (RECEIVED, at, digest, RECEIVED),
                ).fetchone()
                if row is not None:
                    matched += 1
                    self._in_flight.discard(row[0])
                elif conn.execute("SELECT 1 FROM messages WHERE digest = ?", (digest,)).fetchone():
                    already += 1
                else:
                    unknown.append(digest)
        return ReceiptResult(matched, already, tuple(unknown))

    def revert_unsent(self, sent_before: float | None = None) -> int:
        """Make 'sent' rows without a receipt eligible again (at-least-once; the centre
        deduplicates by digest). All of them on restart; those sent before `sent_before`
        when a receipt is overdue."""
        with self._transaction() as conn:
            if sent_before is None:
                cursor = conn.execute(
                    "UPDATE messages SET state = ? WHERE state = ?", (STORED, SENT)
                )
            else:
                cursor = conn.execute(
                    "UPDATE messages SET state = ? WHERE state = ? AND sent_at < ?",
                    (STORED, SENT, sent_before),
                )
            return max(cursor.rowcount, 0)

    def get(self, ids: Iterable[int]) -> list[StoredMessage]:
        rows = []
        for i in ids:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE id = ?", (i,)
            ).fetchone()
            if row is not None:
                rows.append(_row_to_message(row))
        return rows

    # -- retention and budget ---------------------------------------------------------------

    def purge(self, now: float, retention_s: float, chunk: int = 1000) -> int:
        """Delete up to `chunk` received messages and quarantined inputs whose retention has
        elapsed, in one transaction. Call again while it returns `chunk`."""
        cutoff = policy.retention_cutoff(now, retention_s)
        with self._transaction() as conn:
            sizes = conn.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages"
                " WHERE state = ? AND received_at <= ? ORDER BY received_at LIMIT ?)"
                " RETURNING length(payload)",
                (RECEIVED, cutoff, chunk),
            ).fetchall()
            evidence = 0
            if len(sizes) < chunk:
                evidence = conn.execute(
                    "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine"
                    " WHERE received_at <= ? ORDER BY received_at LIMIT ?)",
                    (cutoff, chunk - len(sizes)),
                ).rowcount
                conn.execute("DELETE FROM deletions WHERE at <= ?", (cutoff,))
            if sizes or evidence:
                self._log(
                    now,
                    "retention",
                    len(sizes) + evidence,
                    sum(size for (size,) in sizes),
                    f"retention elapsed: {len(sizes)} received messages, "
                    f"{evidence} quarantined inputs",
                )
            return len(sizes) + evidence

    def enforce_budget(
        self,
        budget_bytes: int,
        now: float,
        *,
        keep_every: int = 2,
        block_bytes: int = 64 * 1024,
        target_fraction: float = 0.9,
        max_rounds: int = 4,
    ) -> BudgetOutcome:
        """Apply policy.plan_budget until the journal fits or nothing more may go. Each round
        is one transaction that deletes and records what it deleted in `deletions`."""
        used_before = used = self.used_bytes()
        actions: list[policy.BudgetAction] = []
        shortfall = 0
        for _ in range(max_rounds):
            if used <= budget_bytes:
                break
            received = self._budget_rows((RECEIVED,), "received_at, id")
            quarantine = self._quarantine_rows()
            unsent = self._budget_rows((STORED, SENT), "id")
            with self._transaction():
                try:
                    plan = policy.plan_budget(
                        used,
                        budget_bytes,
                        received=received,
                        quarantine=quarantine,
                        unsent=unsent,
                        keep_every=keep_every,
                        block_bytes=block_bytes,
                        target_fraction=target_fraction,
                    )
                finally:  # finish the reading cursors before deleting
                    received.close()
                    quarantine.close()
                    unsent.close()
                for action in plan.actions:
                    table = "quarantine" if action.step == policy.STEP_QUARANTINE else "messages"
                    self._conn.executemany(
                        f"DELETE FROM {table} WHERE id = ?", [(i,) for i in action.ids]
                    )
                    self._log(now, action.step, len(action.ids), action.bytes, action.description)
            actions.extend(plan.actions)
            shortfall = plan.shortfall_bytes
            used = self.used_bytes()
            if not plan.actions:
                break
        return BudgetOutcome(used_before, used, budget_bytes, tuple(actions), shortfall)

    def _budget_rows(self, states: tuple[str, ...], order: str) -> Iterator[policy.RowInfo]:
        marks = ", ".join("?" for _ in states)
        cursor = self._conn.execute(
            "SELECT id, device_id, kind, priority, state, received_at, length(payload)"
            " + ifnull(length(session), 0) + ifnull(length(device_id), 0) FROM messages"
            f" WHERE state IN ({marks}) AND priority = ? ORDER BY {order}",
            (*states, int(Priority.ROUTINE)),
        )
        try:
            for rows in iter(lambda: cursor.fetchmany(_FETCH), []):
                for i, device, kind, prio, state, at, size in rows:
                    if i in self._in_flight:  # being published right now: leave it alone
                        continue
                    yield policy.RowInfo(
                        i, device, kind, prio, state, at, size + policy.ROW_OVERHEAD_BYTES
                    )
        finally:
            cursor.close()

    def _quarantine_rows(self) -> Iterator[policy.QuarantineInfo]:
        cursor = self._conn.execute(
            "SELECT id, received_at, length(raw) + length(reason) FROM quarantine"
            " ORDER BY received_at, id"
        )
        try:
            for rows in iter(lambda: cursor.fetchmany(_FETCH), []):
                for i, at, size in rows:
                    yield policy.QuarantineInfo(i, at, size + policy.ROW_OVERHEAD_BYTES)
        finally:
            cursor.close()

    def _log(self, at: float, action: str, rows: int, size: int, detail: str) -> None:
        self._conn.execute(
            "INSERT INTO deletions (at, action, rows, bytes, detail) VALUES (?, ?, ?, ?, ?)",
            (at, action, rows, size, detail),
        )

    def deletions(self, since: float = 0.0) -> list[tuple[float, str, int, int, str]]:
        return self._conn.execute(
            "SELECT at, action, rows, bytes, detail FROM deletions WHERE at >= ? ORDER BY id",
            (since,),
        ).fetchall()

    # -- observation ------------------------------------------------------------------------

    def used_bytes(self) -> int:
        """Bytes of database pages in use. Deleting rows moves pages to the freelist, which
        SQLite reuses, so this — not the file size — is what a deletion can bring down."""
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        return (pages - free) * size

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(str(self.path) + suffix).st_size
            except FileNotFoundError:
                pass
        return total

    def stats(self, now: float) -> JournalStats:
        rows = {
            (state, prio): n
            for state, prio, n in self._conn.execute(
                "SELECT state, priority, count(*) FROM messages GROUP BY state, priority"
            )
        }
        unsent_bytes = self._conn.execute(
            "SELECT ifnull(sum(length(payload)), 0) FROM messages WHERE state IN (?, ?)",
            (STORED, SENT),
        ).fetchone()[0]
        oldest = [
            self._conn.execute(
                "SELECT min(received_at) FROM messages WHERE state = ?", (state,)
            ).fetchone()[0]
            for state in (STORED, SENT)
        ]
        oldest_at = min((t for t in oldest if t is not None), default=None)
        quarantined = self._conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        return JournalStats(
            rows=rows,
            unsent_bytes=unsent_bytes,
            oldest_unsent_age_s=None if oldest_at is None else max(0.0, now - oldest_at),
            in_flight=len(self._in_flight),
            quarantined=quarantined,
            file_bytes=self.file_bytes(),
            used_bytes=self.used_bytes(),
            commits=self.commits,
        )

    def quarantined(self, limit: int = 100) -> list[tuple[int, str | None, str, bytes, int, float]]:
        """Newest quarantined inputs: (id, device_id, reason, raw, raw_len, received_at)."""
        return self._conn.execute(
            "SELECT id, device_id, reason, raw, raw_len, received_at FROM quarantine"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()

    def check(self, full: bool = False) -> CheckResult:
        """SQLite's own check (quick_check, or integrity_check when `full`); `full` also
        re-hashes every payload against its digest, which SQLite cannot know about."""
        pragma = "integrity_check" if full else "quick_check"
        sqlite_result = tuple(row[0] for row in self._conn.execute(f"PRAGMA {pragma}"))
        mismatches: list[int] = []
        if full:
            cursor = self._conn.execute("SELECT id, payload, digest FROM messages")
            for rows in iter(lambda: cursor.fetchmany(_FETCH), []):
                for i, payload, digest in rows:
                    if hashlib.sha256(payload).digest() != digest:
                        mismatches.append(i)
        return CheckResult(sqlite_result, tuple(mismatches))
