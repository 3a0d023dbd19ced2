"""The agent's inbox file: commands (CLI) enqueue entries, the running agent consumes them.

One SQLite file (`inbox.sqlite3`, WAL, created 0600) in the agent's data directory. Why not
a socket: docs/manual-entry.md. An entry is (id, kind, body, actor, created_at); the agent
records exactly one outcome per entry — accepted, or refused with a reason — and when.

Exactly once across a kill -9: the agent first stores what it will make durable elsewhere
(`prepare`: e.g. the signed reading messages, built once), then applies it idempotently (the
reading journal keeps one row per payload digest), then records the outcome. A restart finds
a prepared entry without an outcome and applies the same prepared work again, never a newly
built one. Triggers make `prepared` and the outcome write-once.

Used from one thread per connection (the CLI's, or the agent's inbox thread).
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.inbox import entries
from edge_agent.journal import schema as journal_schema
from protocol.errors import ValidationError

FILE_NAME = "inbox.sqlite3"
ACCEPTED = "accepted"
REFUSED = "refused"
MAX_REASON = 500

_V1 = (
    f"""
    CREATE TABLE entries (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,   -- processing order
        id           TEXT NOT NULL UNIQUE CHECK (length(id) = 32),
        kind         TEXT NOT NULL,
        body         TEXT NOT NULL,                       -- JSON of plain values
        actor        TEXT NOT NULL CHECK (length(actor) > 0),
        created_at   REAL NOT NULL,
        prepared     TEXT,                                -- JSON, written once by the agent
        outcome      TEXT CHECK (outcome IN ('{ACCEPTED}', '{REFUSED}')),
        reason       TEXT NOT NULL DEFAULT '',
        processed_at REAL,
        CHECK ((outcome IS NULL) = (processed_at IS NULL))
    )
    """,
    "CREATE INDEX entries_open ON entries (seq) WHERE outcome IS NULL",
    """
    CREATE TRIGGER entries_write_once BEFORE UPDATE ON entries
    BEGIN
        SELECT RAISE(ABORT, 'inbox entries are write-once: request, prepared work, outcome')
         WHERE OLD.outcome IS NOT NULL OR NEW.id IS NOT OLD.id OR NEW.kind IS NOT OLD.kind
            OR NEW.body IS NOT OLD.body OR NEW.actor IS NOT OLD.actor
            OR NEW.created_at IS NOT OLD.created_at
            OR (OLD.prepared IS NOT NULL AND NEW.prepared IS NOT OLD.prepared);
    END
    """,
    # The consumer's heartbeat: lets a command tell "agent busy" from "agent not running".
    """
    CREATE TABLE consumer (
        one       INTEGER PRIMARY KEY CHECK (one = 1),
        pid       INTEGER NOT NULL,
        polled_at REAL NOT NULL
    )
    """,
)
MIGRATIONS = (_V1,)


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    kind: str
    body: Any  # decoded JSON; validated by the consumer before use
    actor: str
    created_at: float
    prepared: Any | None
    outcome: str | None
    reason: str
    processed_at: float | None

    @property
    def done(self) -> bool:
        return self.outcome is not None


_COLUMNS = "id, kind, body, actor, created_at, prepared, outcome, reason, processed_at"


class InboxStore:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str]) -> InboxStore:
        """Open (creating 0600, or migrating) the inbox in `data_dir`, which must exist."""
        path = Path(data_dir) / FILE_NAME
        # Create it private before SQLite does (its default follows the umask); its -wal
        # and -shm files take the database file's permissions.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        conn = sqlite3.connect(path, isolation_level=None, timeout=5.0,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            if journal_schema.user_version(conn) > len(MIGRATIONS):
                raise ValidationError("inbox", f"{path} was written by a newer agent")
            journal_schema.migrate(conn, MIGRATIONS)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> InboxStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the command side -------------------------------------------------------------------

    def enqueue(self, kind: str, body: Any, actor: str, now: float) -> Entry:
        """Store a new entry (validated first) and return it; durable when this returns."""
        normal = entries.validate(kind, body)
        text = entries.encode_body(normal)
        if not isinstance(actor, str) or not actor or len(actor) > 100 \
                or not actor.isprintable():
            raise ValidationError("actor", "must be 1..100 printable characters")
        entry_id = uuid.uuid4().hex
        self._conn.execute(f"INSERT INTO entries ({_COLUMNS}) VALUES "
                           "(?, ?, ?, ?, ?, NULL, NULL, '', NULL)",
                           (entry_id, kind, text, actor, float(now)))
        return self.get(entry_id)

    def get(self, entry_id: str) -> Entry:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM entries WHERE id = ?",
                                 (entry_id,)).fetchone()
        if row is None:
            raise ValidationError("id", f"no inbox entry {entry_id!r}")
        return _entry(row)

    def consumer_polled_at(self) -> float | None:
        """When a running agent last looked at the inbox (None: never)."""
        row = self._conn.execute("SELECT polled_at FROM consumer").fetchone()
        return None if row is None else float(row[0])

    # -- the agent side ---------------------------------------------------------------------

    def heartbeat(self, now: float) -> None:
        self._conn.execute("INSERT INTO consumer (one, pid, polled_at) VALUES (1, ?, ?) "
                           "ON CONFLICT (one) DO UPDATE SET pid = excluded.pid, "
                           "polled_at = excluded.polled_at", (os.getpid(), float(now)))

    def open_entries(self, limit: int = 50) -> list[Entry]:
        """Entries without an outcome, oldest first."""
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM entries WHERE outcome IS NULL "
                                  "ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [_entry(row) for row in rows]

    def prepare(self, entry_id: str, prepared: Any) -> Entry:
        """Record the entry's prepared work once; a second call keeps the first (returned)."""
        text = json.dumps(prepared, separators=(",", ":"), sort_keys=True, allow_nan=False)
        self._conn.execute("UPDATE entries SET prepared = ? WHERE id = ? AND prepared IS NULL "
                           "AND outcome IS NULL", (text, entry_id))
        return self.get(entry_id)

    def finish(self, entry_id: str, outcome: str, reason: str, at: float) -> bool:
        """Record the outcome; True if this call recorded it, False if one already was."""
        if outcome not in (ACCEPTED, REFUSED):
            raise ValidationError("outcome", f"must be {ACCEPTED} or {REFUSED}")
        cursor = self._conn.execute(
            "UPDATE entries SET outcome = ?, reason = ?, processed_at = ? "
            "WHERE id = ? AND outcome IS NULL", (outcome, reason[:MAX_REASON], float(at),
                                                 entry_id))
        return cursor.rowcount == 1


def _entry(row: tuple[Any, ...]) -> Entry:
    """A row as an Entry. An unreadable body or prepared text is kept as the raw text: the
    consumer refuses the entry instead of failing on it."""
    try:
        body = entries.decode_body(row[2])
    except ValidationError:
        body = row[2]
    try:
        prepared = None if row[5] is None else json.loads(row[5])
    except ValueError:
        prepared = row[5]
    return Entry(row[0], row[1], body, row[3], row[4], prepared, row[6], row[7], row[8])
