"""The event journal on disk: one SQLite file, append-only, hash-chained, checkpointed.

Tables: `meta` (format, gateway id), `signers` (public keys and certificates that signed
checkpoints), `entries` (the chain, chain.py), `checkpoints` (COSE_Sign1 by the gateway key).

Append-only is guarded twice, for two different threats:
- SQLite triggers refuse UPDATE and DELETE on every table, refuse an entry whose seq is not
  head + 1 and a checkpoint that does not continue the last one (which also defeats
  INSERT OR REPLACE). They stop accidents, bugs and casual edits with the sqlite3 shell.
  They are no security boundary: anyone who can write the file can drop a trigger.
- The hash chain and the signed checkpoints catch the rest: verification (chain.py) names
  the first edited, deleted, reordered or inserted entry, a forged checkpoint, and what is
  not yet covered by a signature. Deleting the whole file, or the tail after the last
  checkpoint, is only bounded by the checkpoints the agent publishes to the centre
  (`on_checkpoint`): see docs/eventlog.md.

Writes are serialised by SQLite (BEGIN IMMEDIATE) and every append reads the head inside its
own transaction, so even a second writer could not fork the chain; the intended use is one
EventLog per file, shared by the agent's threads (a lock keeps the connection to one at a
time). Each append (or `batch()` of appends) is one transaction, fsynced when
synchronous="FULL".
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent.eventlog import chain, kinds
from edge_agent.journal.schema import SchemaError, migrate, user_version
from edge_agent.sqlite_tx import NestedTransactions
from protocol import cose, crypto

_log = logging.getLogger(__name__)
_APPEND_ONLY = "event journal is append-only"

_V1 = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """
    CREATE TABLE signers (
        id          INTEGER PRIMARY KEY,
        kid         BLOB    NOT NULL,                -- protocol.cose.key_id(public_key)
        public_key  BLOB    NOT NULL,                -- Ed25519, 32 bytes
        certificate BLOB,                            -- the gateway's CWT, if given
        added_at    INTEGER NOT NULL,                -- ms
        CHECK (length(public_key) = 32)
    )
    """,
    """
    CREATE TABLE entries (
        seq     INTEGER PRIMARY KEY,                 -- 1, 2, 3 ... without gaps
        time    INTEGER NOT NULL,                    -- POSIX ms, gateway wall clock
        kind    TEXT    NOT NULL,                    -- kinds.KINDS
        actor   TEXT    NOT NULL,
        subject TEXT    NOT NULL,
        details TEXT    NOT NULL,                    -- JSON object (kinds.py rule applies)
        prev    BLOB    NOT NULL,                    -- hash of seq - 1 (genesis for seq 1)
        hash    BLOB    NOT NULL                     -- SHA-256(prev || CBOR entry)
    )
    """,
    "CREATE INDEX entries_time ON entries (time)",
    """
    CREATE TABLE checkpoints (
        last_seq  INTEGER PRIMARY KEY,
        first_seq INTEGER NOT NULL,
        head      BLOB    NOT NULL,
        time      INTEGER NOT NULL,
        gateway   TEXT    NOT NULL,
        kid       BLOB    NOT NULL,
        cose      BLOB    NOT NULL                   -- the evidence; the columns are a view
    )
    """,
    # Triggers: no UPDATE or DELETE anywhere; inserts only continue what is there.
    *(
        f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: {op} on {table} refused'); END"
        for table in ("meta", "signers", "entries", "checkpoints")
        for op in ("UPDATE", "DELETE")
    ),
    "CREATE TRIGGER meta_insert_once BEFORE INSERT ON meta "
    "WHEN EXISTS (SELECT 1 FROM meta WHERE name = NEW.name) "
    f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: meta values are set once'); END",
    "CREATE TRIGGER signers_insert_new BEFORE INSERT ON signers "
    "WHEN EXISTS (SELECT 1 FROM signers WHERE id = NEW.id) "
    f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: signers are never replaced'); END",
    "CREATE TRIGGER entries_in_order BEFORE INSERT ON entries "
    "WHEN NEW.seq IS NOT (SELECT ifnull(max(seq), 0) + 1 FROM entries) "
    f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: an entry must have seq = head + 1'); END",
    "CREATE TRIGGER checkpoints_in_order BEFORE INSERT ON checkpoints "
    "WHEN NEW.first_seq IS NOT (SELECT ifnull(max(last_seq), 0) + 1 FROM checkpoints) "
    "OR NEW.last_seq < NEW.first_seq "
    "OR NEW.last_seq > (SELECT ifnull(max(seq), 0) FROM entries) "
    f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: a checkpoint must continue the last one'); END",
)
MIGRATIONS = (_V1,)
# SQLite's header field for "which application's file is this" ("VBEV"): the reading journal
# and the registry are SQLite files at user_version 1 too, and must never be mistaken for this.
APPLICATION_ID = 0x56424556
_ENTRY_COLUMNS = "seq, time, kind, actor, subject, details, prev, hash"
_INSERT_ENTRY = f"INSERT INTO entries ({_ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
# (kind, actor, subject, details, at): what kinds.validate returned, and the time in seconds
# (None: the clock's, when written).
ValidatedEvent = tuple[str, str, str, dict[str, Any], float | None]
_CHECKPOINT_COLUMNS = "first_seq, last_seq, head, time, gateway, cose"


def to_ms(value: float) -> int:
    return int(round(value * 1000))


def _when_ms(value: float | datetime | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:  # a naive instant is UTC, as everywhere in the agent
            value = value.replace(tzinfo=UTC)
        return to_ms(value.timestamp())
    return to_ms(value)


@dataclass(frozen=True, slots=True)
class EventLogStats:
    last_seq: int  # entries ever appended (the head's seq)
    covered_through: int  # last seq under a signed checkpoint (0: none yet)
    uncovered: int  # entries not yet under a signed checkpoint
    oldest_uncovered_at: float | None  # seconds; what the time-based checkpoint bounds
    last_checkpoint_at: float | None  # seconds


@dataclass(frozen=True, slots=True)
class ExportSummary:
    path: Path
    first_seq: int
    last_seq: int  # first_seq - 1 when nothing was exported
    entries: int
    checkpoints: int


class EventLogFile:
    """Read access: verification, export and statistics. `open_readonly` never writes."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path
        self.gateway_id = self._meta("gateway")

    @classmethod
    def open_readonly(cls, path: str | os.PathLike[str]) -> EventLogFile:
        """Open an existing journal for reading only. SchemaError if it is not one;
        sqlite3.Error if SQLite cannot read the file."""
        path = Path(path)
        if not path.is_file():
            raise SchemaError(f"{path}: no such file")
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True,
                               isolation_level=None, check_same_thread=False)
        try:
            _check_identity(conn, path, new_ok=False)
            if user_version(conn) != len(MIGRATIONS):
                raise SchemaError(f"{path}: event journal version {user_version(conn)} is not "
                                  f"this code's {len(MIGRATIONS)}")
            return cls(conn, path)
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _meta(self, name: str) -> str:
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        except sqlite3.DatabaseError as err:
            raise SchemaError(f"{self.path} is not a VitalBridge event journal: {err}") from None
        if row is None or not isinstance(row[0], str):
            raise SchemaError(f"{self.path} has no {name} recorded")
        return row[0]

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same state of the file."""
        with self._lock:
            if self._conn.in_transaction:  # inside the writer's batch: already one snapshot
                yield self._conn
                return
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    # -- reading ----------------------------------------------------------------------------

    def signers(self) -> list[chain.Signer]:
        rows = self._conn.execute("SELECT public_key, certificate FROM signers ORDER BY id")
        return [chain.Signer(bytes(pub), None if cert is None else bytes(cert))
                for pub, cert in rows]

    def checkpoints(self, first: int = 1, last: int | None = None) -> list[chain.Checkpoint]:
        """Checkpoints whose last seq is in first..last."""
        rows = self._conn.execute(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE last_seq BETWEEN ? AND ? "
            "ORDER BY last_seq", (first, chain.MAX_SEQ if last is None else last))
        return [_row_to_checkpoint(row) for row in rows]

    def entries(self, first: int = 1, last: int | None = None) -> Iterator[chain.Entry]:
        """Entries first..last in seq order; chain.FormatError for a row that is not one."""
        cursor = self._conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE seq BETWEEN ? AND ? ORDER BY seq",
            (first, chain.MAX_SEQ if last is None else last))
        for row in cursor:
            yield _row_to_entry(row)

    def head(self) -> tuple[int, bytes]:
        """(seq, hash) of the last entry; (0, genesis hash) when empty."""
        row = self._conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1"
                                 ).fetchone()
        return (0, chain.genesis_hash(self.gateway_id)) if row is None else (row[0], row[1])

    def stats(self) -> EventLogStats:
        with self._snapshot() as conn:
            last_seq = self.head()[0]
            row = conn.execute("SELECT last_seq, time FROM checkpoints ORDER BY last_seq DESC "
                               "LIMIT 1").fetchone()
            covered, cp_time = (0, None) if row is None else row
            oldest = conn.execute("SELECT time FROM entries WHERE seq = ?", (covered + 1,)
                                  ).fetchone()
        return EventLogStats(last_seq, covered, last_seq - covered,
                             None if oldest is None else oldest[0] / 1000,
                             None if cp_time is None else cp_time / 1000)

    # -- verification and export ---------------------------------------------------------

    def verify(self, public_keys: bytes | Iterable[bytes] | None = None) -> chain.Report:
        """Verify the whole file against `public_keys` (the gateway's Ed25519 public key,
        or several across key renewals). None uses the signers recorded in the file itself,
        which proves the file is consistent, not who wrote it."""
        with self._snapshot():
            if public_keys is None:
                keys: Iterable[bytes] = [s.public_key for s in self.signers()]
            elif isinstance(public_keys, bytes | bytearray):
                keys = [bytes(public_keys)]
            else:
                keys = list(public_keys)
            return chain.verify_chain(self.entries(), self.checkpoints(),
                                      gateway_id=self.gateway_id, trusted_keys=keys)

    def export(self, path: str | os.PathLike[str], since: float | datetime | None = None,
               until: float | datetime | None = None, format: str = "jsonl",
               now: float | None = None) -> ExportSummary:
        """Write entries (seconds or datetimes `since`..`until`, inclusive), the checkpoints
        that vouch for them and the signers' public keys and certificates, so an auditor
        can verify offline (chain.ExportReader). The slice is contiguous in seq: it starts
        at the first entry at or after `since` and ends at the last entry at or before
        `until`, extended to the end of the checkpoint covering it so it can be verified
        up to its last entry. Written to a temporary file and renamed into place."""
        if format != "jsonl":
            raise ValueError(f"unknown export format {format!r}: only 'jsonl'")
        since_ms, until_ms = _when_ms(since), _when_ms(until)
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with self._snapshot() as conn:
            first, last = self._select_range(conn, since_ms, until_ms)
            anchor = self._hash_before(first)
            header = chain.ExportHeader(self.gateway_id, first, anchor, tuple(self.signers()),
                                        to_ms(time.time() if now is None else now),
                                        since_ms, until_ms)
            checkpoints = self.checkpoints(first - 1, last) if last >= first - 1 else []
            count = 0
            with open(tmp, "w", encoding="utf-8") as out:
                out.write(chain.header_line(header) + "\n")
                for cp in checkpoints:
                    out.write(chain.checkpoint_line(cp) + "\n")
                for row in conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE seq "
                                        "BETWEEN ? AND ? ORDER BY seq", (first, last)):
                    out.write(_row_to_line(row) + "\n")
                    count += 1
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)
        return ExportSummary(path, first, first + count - 1, count, len(checkpoints))

    def _select_range(self, conn: sqlite3.Connection, since_ms: int | None,
                      until_ms: int | None) -> tuple[int, int]:
        head = self.head()[0]
        first = 1
        if since_ms is not None:
            row = conn.execute("SELECT min(seq) FROM entries WHERE time >= ?", (since_ms,)
                               ).fetchone()
            first = head + 1 if row[0] is None else row[0]
        last = head
        if until_ms is not None:
            row = conn.execute("SELECT max(seq) FROM entries WHERE time <= ?", (until_ms,)
                               ).fetchone()
            last = 0 if row[0] is None else row[0]
        if last < first:
            return first, first - 1
        covering = conn.execute("SELECT min(last_seq) FROM checkpoints WHERE last_seq >= ?",
                                (last,)).fetchone()[0]
        return first, last if covering is None else covering

    def _hash_before(self, seq: int) -> bytes:
        if seq <= 1:
            return chain.genesis_hash(self.gateway_id)
        row = self._conn.execute("SELECT hash FROM entries WHERE seq = ?", (seq - 1,)).fetchone()
        return bytes(row[0]) if row else chain.genesis_hash(self.gateway_id)


class EventLog(EventLogFile):
    """The writer: appends entries and signs checkpoints with the gateway's Ed25519 seed.

    A checkpoint is signed when `checkpoint_every` entries are uncovered, or when the oldest
    uncovered entry is `checkpoint_interval_s` old. That is checked after every append and by
    `maybe_checkpoint()`, which the agent calls from a timer so a quiet gateway still signs;
    `close()` signs a final one. `on_checkpoint(cp)` runs after the checkpoint is committed
    (the agent publishes it to the centre); its exceptions are logged, never raised, because
    the append that triggered it is already committed and must not look failed.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, seed: bytes, *,
                 checkpoint_every: int, checkpoint_interval_s: float,
                 clock: Callable[[], float],
                 on_checkpoint: Callable[[chain.Checkpoint], None] | None) -> None:
        super().__init__(conn, path)
        self._seed = seed
        self.public_key = crypto.ed25519_public_key(seed)
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self._clock = clock
        self._on_checkpoint = on_checkpoint
        self._signed: list[chain.Checkpoint] = []
        self._transactions = NestedTransactions(
            conn, before_commit=self._checkpoint_if_due, after_commit=self._publish_signed,
            after_rollback=self._signed.clear)
        self._closed = False

    @classmethod
    def open(cls, path: str | os.PathLike[str], gateway_id: str, seed: bytes, *,
             certificate: bytes | None = None, checkpoint_every: int = 1000,
             checkpoint_interval_s: float = 60.0, clock: Callable[[], float] = time.time,
             on_checkpoint: Callable[[chain.Checkpoint], None] | None = None,
             synchronous: str = "FULL") -> EventLog:
        """Open or create the journal of `gateway_id`, signing with `seed` (32 bytes).
        A new key (after a renewal) is recorded as a further signer; a file belonging to
        another gateway is refused (SchemaError)."""
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise ValueError("seed must be the gateway's 32-byte Ed25519 seed")
        kinds.IDENT.check(gateway_id)
        if checkpoint_every < 1 or checkpoint_interval_s <= 0:
            raise ValueError("checkpoint_every >= 1 and checkpoint_interval_s > 0")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        path = Path(path)
        conn = sqlite3.connect(path, isolation_level=None, timeout=10.0,
                               check_same_thread=False)
        try:
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise SchemaError(f"could not switch {path} to WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            if _check_identity(conn, path, new_ok=True):
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
            migrate(conn, MIGRATIONS)
            now = to_ms(clock())
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO meta (name, value) SELECT 'format', ? WHERE NOT EXISTS "
                         "(SELECT 1 FROM meta WHERE name = 'format')", (str(chain.FORMAT_VERSION),))
            conn.execute("INSERT INTO meta (name, value) SELECT 'gateway', ? WHERE NOT EXISTS "
                         "(SELECT 1 FROM meta WHERE name = 'gateway')", (gateway_id,))
            recorded = conn.execute("SELECT value FROM meta WHERE name = 'gateway'").fetchone()[0]
            if recorded != gateway_id:
                conn.execute("ROLLBACK")
                raise SchemaError(f"{path} is the event journal of gateway {recorded!r}, "
                                  f"not {gateway_id!r}")
            public_key = crypto.ed25519_public_key(seed)
            known = conn.execute("SELECT 1 FROM signers WHERE public_key = ? AND certificate IS ?",
                                 (public_key, certificate)).fetchone()
            if known is None:
                conn.execute("INSERT INTO signers (kid, public_key, certificate, added_at) "
                             "VALUES (?, ?, ?, ?)",
                             (cose.key_id(public_key), public_key, certificate, now))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise
        return cls(conn, path, seed, checkpoint_every=checkpoint_every,
                   checkpoint_interval_s=checkpoint_interval_s, clock=clock,
                   on_checkpoint=on_checkpoint)

    def close(self) -> None:
        """Sign what is uncovered, then close (graceful shutdown). Idempotent."""
        with self._lock:
            if self._closed:
                return
            if self._transactions.depth == 0:
                self.checkpoint()
            self._closed = True
            super().close()

    # -- writing ----------------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group appends into one transaction (one fsync). Nested batches join the outer one;
        an exception rolls the whole batch back."""
        with self._lock, self._transactions():
            yield

    def append(self, kind: str, actor: str, subject: str, details: Mapping[str, Any],
               at: float | None = None) -> chain.Entry:
        """Validate (kinds.py), chain and store one event; durable on return unless inside
        `batch()`. `at` (seconds) defaults to the clock. ValidationError for bad input."""
        kind, actor, subject, clean = kinds.validate(kind, actor, subject, details)
        time_ms = self._time_ms(at)
        with self.batch():
            seq, prev = self.head()
            entry, details_json = chain.stored_entry(bytes(prev), seq + 1, time_ms, kind,
                                                     actor, subject, clean)
            self._conn.execute(_INSERT_ENTRY, (entry.seq, entry.time, entry.kind, entry.actor,
                                               entry.subject, details_json, entry.prev,
                                               entry.hash))
        return entry

    def append_validated(self, events: Iterable[ValidatedEvent]) -> int:
        """Chain and store events that `kinds.validate` ALREADY ACCEPTED, in one
        transaction; returns the new head's seq. Only for EventRecorder, which validates
        each event on the event loop when it is recorded: this does not check the rule
        again. Everything else (CLI commands, tools) uses `append`, which does.
        One head lookup and one INSERT statement for the whole batch; an exception (a
        disk error, a time before 1970) rolls all of it back, so no partial chain is
        ever committed and the caller can retry the same events."""
        with self.batch():
            seq, prev = self.head()
            prev = bytes(prev)
            rows = []
            for kind, actor, subject, details, at in events:
                seq += 1
                time_ms = self._time_ms(at)
                digest, details_json, _ = chain.stored_hash(prev, seq, time_ms, kind, actor,
                                                            subject, details)
                rows.append((seq, time_ms, kind, actor, subject, details_json, prev, digest))
                prev = digest
            self._conn.executemany(_INSERT_ENTRY, rows)
        return seq

    def _time_ms(self, at: float | None) -> int:
        """An entry's time: `at` (seconds) or the clock, as POSIX ms."""
        time_ms = to_ms(self._clock() if at is None else at)
        if time_ms < 0:
            raise ValueError("time before 1970")
        return time_ms

    def checkpoint(self) -> chain.Checkpoint | None:
        """Sign the uncovered entries now; None when there are none."""
        with self.batch():
            cp = self._sign_uncovered()
        return cp

    def maybe_checkpoint(self) -> chain.Checkpoint | None:
        """Sign if due (count or age); the agent calls this from a timer."""
        with self.batch():
            cp = self._checkpoint_if_due()
        return cp

    def _checkpoint_if_due(self) -> chain.Checkpoint | None:
        head = self.head()[0]
        covered = self._covered_through()
        if head == covered:
            return None
        if head - covered < self.checkpoint_every:
            oldest = self._conn.execute("SELECT time FROM entries WHERE seq = ?",
                                        (covered + 1,)).fetchone()[0]
            if to_ms(self._clock()) - oldest < self.checkpoint_interval_s * 1000:
                return None
        return self._sign_uncovered()

    def _covered_through(self) -> int:
        return self._conn.execute("SELECT ifnull(max(last_seq), 0) FROM checkpoints"
                                  ).fetchone()[0]

    def _sign_uncovered(self) -> chain.Checkpoint | None:
        seq, head = self.head()
        covered = self._covered_through()
        if seq == covered:
            return None
        cp = chain.sign_checkpoint(self._seed, self.gateway_id, covered + 1, seq, bytes(head),
                                   to_ms(self._clock()))
        self._conn.execute(
            "INSERT INTO checkpoints (first_seq, last_seq, head, time, gateway, kid, cose) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (cp.first, cp.last, cp.head, cp.time, cp.gateway, cose.key_id(self.public_key),
             cp.cose))
        self._signed.append(cp)
        return cp

    def _publish_signed(self) -> None:
        signed, self._signed = self._signed, []
        if self._on_checkpoint is not None:
            for cp in signed:
                try:
                    self._on_checkpoint(cp)
                except Exception:
                    _log.exception("on_checkpoint failed for checkpoint %d..%d", cp.first,
                                   cp.last)


def _check_identity(conn: sqlite3.Connection, path: Path, new_ok: bool) -> bool:
    """True for a new, empty database (when `new_ok`); SchemaError for a file that is not an
    event journal (another application's SQLite file, or not SQLite at all)."""
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as err:
        raise SchemaError(f"{path} is not a VitalBridge event journal: {err}") from None
    if app_id == APPLICATION_ID:
        return False
    if new_ok and app_id == 0 and tables == 0:
        return True
    raise SchemaError(f"{path} is not a VitalBridge event journal (application id {app_id:#x})")


def _row_to_entry(row: tuple[Any, ...]) -> chain.Entry:
    seq, time_ms, kind, actor, subject, details, prev, hash_ = row
    return chain.entry_from_fields(seq, time_ms, kind, actor, subject,
                                   chain.details_from_json(details), _blob(prev), _blob(hash_))


def _row_to_line(row: tuple[Any, ...]) -> str:
    """An export line for a row. A row that does not parse is written as it is, so the
    auditor's verification reports it rather than the export hiding it."""
    try:
        return chain.entry_line(_row_to_entry(row))
    except chain.FormatError:
        names = ("seq", "time", "kind", "actor", "subject", "details", "prev", "hash")
        raw = {name: value.hex() if isinstance(value, bytes) else value
               for name, value in zip(names, row, strict=True)}
        return json.dumps({"type": "entry", **raw}, sort_keys=True, default=str)


def _row_to_checkpoint(row: tuple[Any, ...]) -> chain.Checkpoint:
    first, last, head, time_ms, gateway, signed = row
    return chain.Checkpoint(first, last, _blob(head), time_ms, gateway, _blob(signed))


def _blob(value: object) -> bytes:
    """A BLOB column as bytes; anything else (a tampered type) as its text bytes, which the
    verifier will then reject as the wrong size or hash."""
    if isinstance(value, bytes):
        return value
    return str(value).encode()
