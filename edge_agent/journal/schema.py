"""Journal schema: the DDL and its migrations, versioned by SQLite's `PRAGMA user_version`.

Each migration runs in its own transaction together with the `user_version` bump, so a crash in
the middle of one leaves the file at the previous version, never half-migrated. A file written by
a newer agent (higher version than this code knows) is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

# Message states, in the order a row moves through them (revert_unsent may move sent -> stored).
STORED = "stored"
SENT = "sent"
RECEIVED = "received"
STATES = (STORED, SENT, RECEIVED)

_V1 = (
    # One row per sealed message (a batch of readings, a checkpoint, an alarm transition or an
    # event) that the gateway must deliver to the monitoring centre.
    """
    CREATE TABLE messages (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after deletes
        kind        TEXT    NOT NULL,                   -- upstream topic kind: readings, alarm...
        device_id   TEXT,                               -- NULL for gateway-originated messages
        session     BLOB,                               -- session key id (kid), NULL if none
        first_seq   INTEGER,
        last_seq    INTEGER,
        count       INTEGER NOT NULL DEFAULT 0,         -- readings carried by the message
        priority    INTEGER NOT NULL,                   -- 0 routine, 1 critical reading, 2 alarm
        payload     BLOB    NOT NULL,                   -- exact bytes to publish
        digest      BLOB    NOT NULL,                   -- SHA-256(payload): MQTT correlation data
        verdict     TEXT    NOT NULL,                   -- sealed | attested | manual
        flags       TEXT    NOT NULL DEFAULT '',        -- space-separated reasons, '' when clean
        received_at REAL    NOT NULL,                   -- gateway wall time, seconds
        state       TEXT    NOT NULL DEFAULT 'stored',
        sent_at     REAL,                               -- last PUBACK
        acked_at    REAL,                               -- centre's application receipt
        attempts    INTEGER NOT NULL DEFAULT 0,         -- publish attempts that ended
        CHECK (priority IN (0, 1, 2)),
        CHECK (state IN ('stored', 'sent', 'received')),
        CHECK (length(digest) = 32),
        CHECK (count >= 0 AND attempts >= 0),
        CHECK ((first_seq IS NULL) = (last_seq IS NULL)),
        CHECK (first_seq IS NULL OR (first_seq >= 0 AND last_seq >= first_seq))
    )
    """,
    # Receipts are matched by digest; a second identical payload is the same message.
    "CREATE UNIQUE INDEX messages_digest ON messages (digest)",
    # Delivery order (priority desc, then arrival) and per-state counting.
    "CREATE INDEX messages_delivery ON messages (state, priority DESC, id)",
    # Retention purge, oldest-unsent age and budget deletion of received rows.
    "CREATE INDEX messages_age ON messages (state, received_at)",
    # Invalid input: kept as evidence, never forwarded.
    """
    CREATE TABLE quarantine (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id   TEXT,                               -- as claimed, if known (not trusted)
        source      TEXT,                               -- link it came from: serial:/dev/ttyS0
        reason      TEXT    NOT NULL,
        raw         BLOB    NOT NULL,                   -- possibly truncated, see raw_len
        raw_len     INTEGER NOT NULL,                   -- length as received
        received_at REAL    NOT NULL
    )
    """,
    "CREATE INDEX quarantine_age ON quarantine (received_at)",
    # The journal's own record of every deletion: retention purges and disk-budget acts.
    """
    CREATE TABLE deletions (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        at      REAL    NOT NULL,
        action  TEXT    NOT NULL,
        rows    INTEGER NOT NULL,
        bytes   INTEGER NOT NULL,
        detail  TEXT    NOT NULL
    )
    """,
    "CREATE INDEX deletions_age ON deletions (at)",
)

# MIGRATIONS[i] brings a file from user_version i to i + 1. Append only; never edit a shipped one.
MIGRATIONS: tuple[Sequence[str], ...] = (_V1,)
LATEST_VERSION = len(MIGRATIONS)


class SchemaError(RuntimeError):
    """The journal file has a schema this code cannot use."""


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Bring the schema up to `len(migrations)`; return the number of migrations applied.

    `conn` must be in autocommit mode (isolation_level=None): each step is its own
    BEGIN IMMEDIATE ... COMMIT, including the user_version bump.
    """
    current = user_version(conn)
    target = len(migrations)
    if current > target:
        raise SchemaError(
            f"journal schema version {current} is newer than this agent's {target}: "
            "refusing to open it"
        )
    for version in range(current, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in migrations[version]:
                conn.execute(statement)
            # PRAGMA does not take parameters; the value is our own integer.
            conn.execute(f"PRAGMA user_version = {version + 1:d}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return target - current
