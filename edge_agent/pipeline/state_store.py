"""The verifier's own durable state: device sessions, their replay trackers, and the
sequence numbers the gateway hands out to readings it attests.

One small SQLite file (WAL, synchronous=FULL), separate from the reading journal: it holds
session MAC keys, so it is created with mode 0600 and keys are wiped (secure_delete, WAL
truncated) as soon as a session ends. A session row outlives its keys as a tombstone, so a
batch under a withdrawn session is quarantined with the reason rather than "unknown".

Why keys are persisted at all: a device re-sends unacknowledged batches from its outbox
under the session they were sealed in, also after the gateway restarted. Without the key
the gateway could only quarantine them; with it, replay protection and delivery both
survive a restart. docs/verification.md discusses the trade-off.

Threads: the replay progress saved after each journal commit is written on the reception's
store thread (`deferring_progress` + `write_progress`), so its fsync does not stall the event
loop; the rare writes (hellos, attestation seqs, session ends) stay on the event loop. A lock
keeps every transaction on the one connection whole.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.ca.keyfiles import ensure_private_dir
from edge_agent.sqlite_tx import immediate

SCHEMA_VERSION = 1
MEMORY = ":memory:"
_SEQ_LIMIT = 1 << 32  # protocol.senml.SEQ_LIMIT

_DDL = """
CREATE TABLE sessions (
    kid              BLOB PRIMARY KEY CHECK (length(kid) = 8),
    device_id        TEXT NOT NULL,
    created_at       REAL NOT NULL,
    device_mac_key   BLOB,
    gateway_mac_key  BLOB,
    certificate      BLOB NOT NULL,
    tracker          BLOB NOT NULL,
    confirmed        INTEGER NOT NULL DEFAULT 0,
    first_seq        INTEGER,
    durable_upto     INTEGER,
    checkpoint_upto  INTEGER,
    checkpoint_head  BLOB,
    ended_reason     TEXT,
    ended_at         REAL,
    CHECK ((ended_reason IS NULL) = (device_mac_key IS NOT NULL))
) WITHOUT ROWID;
CREATE INDEX sessions_device ON sessions (device_id);
CREATE TABLE attest_seqs (
    source    TEXT PRIMARY KEY,
    reserved  INTEGER NOT NULL CHECK (reserved >= 0)
) WITHOUT ROWID;
"""

_COLUMNS = ("kid, device_id, created_at, device_mac_key, gateway_mac_key, certificate, "
            "tracker, confirmed, first_seq, durable_upto, checkpoint_upto, checkpoint_head, "
            "ended_reason, ended_at")


class StateStoreError(Exception):
    """The state file is unusable (newer schema, exhausted seqs)."""


@dataclass(slots=True)
class SessionRow:
    """One session as stored. Keys are None once the session ended."""

    kid: bytes
    device_id: str
    created_at: float
    device_mac_key: bytes | None = field(repr=False)
    gateway_mac_key: bytes | None = field(repr=False)
    certificate: bytes = field(repr=False)
    tracker: bytes = field(repr=False)
    confirmed: bool = False
    first_seq: int | None = None
    durable_upto: int | None = None
    checkpoint_upto: int | None = None
    checkpoint_head: bytes | None = None
    ended_reason: str | None = None
    ended_at: float | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    """What became durable for one session: saved after the journal commit."""

    kid: bytes
    tracker: bytes
    confirmed: bool
    first_seq: int | None
    durable_upto: int | None
    checkpoint_upto: int | None
    checkpoint_head: bytes | None


class StateStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()  # one transaction (or read) at a time on _conn
        self._deferred: list[Progress] | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> StateStore:
        """Open (creating with mode 0600) the state file; MEMORY for a throw-away store."""
        target = str(path)
        if target != MEMORY:
            # The file holds session MAC keys: owner-only file in an owner-only directory.
            ensure_private_dir(Path(target).parent)
            os.close(os.open(target, os.O_CREAT | os.O_RDWR, 0o600))
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        try:
            if target != MEMORY:
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA secure_delete = ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateStoreError(f"{target}: schema {version} is newer than this agent "
                                      f"({SCHEMA_VERSION})")
            if version == 0:
                # One script, one transaction: the schema and its version appear together.
                conn.executescript(f"BEGIN IMMEDIATE; {_DDL} "
                                   f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        except BaseException:
            conn.close()
            raise
        return cls(conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, immediate(self._conn) as conn:
            yield conn

    # -- sessions -----------------------------------------------------------------------

    def put_session(self, row: SessionRow) -> None:
        """Insert a new session (durable when this returns)."""
        with self._transaction() as conn:
            conn.execute(
                f"INSERT INTO sessions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (row.kid, row.device_id, row.created_at, row.device_mac_key,
                 row.gateway_mac_key, row.certificate, row.tracker, int(row.confirmed),
                 row.first_seq, row.durable_upto, row.checkpoint_upto, row.checkpoint_head,
                 row.ended_reason, row.ended_at))

    def sessions(self) -> list[SessionRow]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM sessions ORDER BY created_at, kid").fetchall()
        return [SessionRow(kid, device, created, dkey, gkey, cert, tracker, bool(confirmed),
                           first, upto, cp_upto, cp_head, reason, ended)
                for (kid, device, created, dkey, gkey, cert, tracker, confirmed, first, upto,
                     cp_upto, cp_head, reason, ended) in rows]

    def save_progress(self, items: Iterable[Progress]) -> None:
        """Replay trackers and acknowledgement marks of live sessions, in one transaction;
        inside `deferring_progress` they are only collected (the caller writes them)."""
        if self._deferred is not None:
            self._deferred.extend(items)
            return
        self.write_progress(items)

    @contextmanager
    def deferring_progress(self) -> Iterator[list[Progress]]:
        """Collect what `save_progress` is given inside the block instead of writing it.
        The caller writes the list with `write_progress` (any thread) and must not report
        anything that depends on it (a device-ack) before that returned. Event loop only."""
        if self._deferred is not None:
            raise RuntimeError("deferring_progress blocks do not nest")
        collected: list[Progress] = []
        self._deferred = collected
        try:
            yield collected
        finally:
            self._deferred = None

    def write_progress(self, items: Iterable[Progress]) -> None:
        """save_progress's transaction (durable when this returns); safe from any thread."""
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE sessions SET tracker = ?, confirmed = ?, first_seq = ?, "
                "durable_upto = ?, checkpoint_upto = ?, checkpoint_head = ? "
                "WHERE kid = ? AND ended_reason IS NULL",
                [(p.tracker, int(p.confirmed), p.first_seq, p.durable_upto, p.checkpoint_upto,
                  p.checkpoint_head, p.kid) for p in items])

    def end_sessions(self, kids: Iterable[bytes], reason: str, at: float) -> None:
        """Wipe the keys of these sessions and keep them as tombstones with the reason."""
        kids = list(kids)
        if not kids:
            return
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE sessions SET device_mac_key = NULL, gateway_mac_key = NULL, "
                "ended_reason = ?, ended_at = ? WHERE kid = ? AND ended_reason IS NULL",
                [(reason, at, kid) for kid in kids])
        self._flush_wal()

    def forget_ended(self, before: float) -> int:
        """Delete tombstones of sessions that ended before `before`."""
        with self._transaction() as conn:
            cur = conn.execute("DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?",
                               (before,))
        return cur.rowcount

    def _flush_wal(self) -> None:
        # Old page images holding the wiped keys live on in the WAL until it is truncated.
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- sequence numbers of attested readings -----------------------------------------

    def reserve_seqs(self, source: str, count: int) -> int:
        """Reserve `count` consecutive seqs for `source` -> the first. Reserved seqs are never
        handed out again, even if the agent dies before using them (they become a gap)."""
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._transaction() as conn:
            row = conn.execute("SELECT reserved FROM attest_seqs WHERE source = ?",
                               (source,)).fetchone()
            first = 0 if row is None else row[0]
            if first + count > _SEQ_LIMIT:
                raise StateStoreError(f"sequence numbers of {source!r} are exhausted")
            conn.execute("INSERT INTO attest_seqs (source, reserved) VALUES (?, ?) "
                         "ON CONFLICT (source) DO UPDATE SET reserved = excluded.reserved",
                         (source, first + count))
        return first
