"""The re-seal table: `reseal.sqlite3` in the agent's data directory, append-only.

One row per statement (protocol.reseal): which item (`ref`), its digest, the retired key's
kid, the verdict, when, and the signed statement itself (the only evidence; the other
columns are a readable copy that verification compares with it). Triggers refuse UPDATE and
DELETE, which stops bugs and careless tools, not someone who can write the file — the
statements' signatures are what an auditor relies on.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from edge_agent.reseal.plan import Statement

FILE_NAME = "reseal.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reseals (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT    NOT NULL,
    ref          TEXT    NOT NULL,
    digest       BLOB    NOT NULL CHECK (length(digest) = 32),
    original_kid BLOB    NOT NULL,
    verdict      TEXT    NOT NULL CHECK (verdict IN ('valid', 'invalid', 'key-wiped')),
    at           INTEGER NOT NULL,
    signer_kid   BLOB    NOT NULL,
    statement    BLOB    NOT NULL,
    UNIQUE (kind, digest, original_kid)
);
CREATE TRIGGER IF NOT EXISTS reseals_no_update BEFORE UPDATE ON reseals
BEGIN SELECT RAISE(ABORT, 're-seal statements are append-only'); END;
CREATE TRIGGER IF NOT EXISTS reseals_no_delete BEFORE DELETE ON reseals
BEGIN SELECT RAISE(ABORT, 're-seal statements are append-only'); END;
"""
_COLUMNS = "kind, ref, digest, original_kid, verdict, at, signer_kid, statement"


class ResealStore:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open_in(cls, data_dir: str | os.PathLike[str]) -> ResealStore:
        path = Path(data_dir) / FILE_NAME
        conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript(_SCHEMA)
        return cls(conn, path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResealStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, statements: Iterable[Statement]) -> int:
        """Store statements in one transaction (all or none); returns how many."""
        rows = [(s.kind, s.ref, s.digest, s.original_kid, s.verdict, s.at, s.signer_kid,
                 s.statement) for s in statements]
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany(f"INSERT INTO reseals ({_COLUMNS}) VALUES "
                                   "(?, ?, ?, ?, ?, ?, ?, ?)", rows)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        return len(rows)

    def statements(self, original_kid: bytes | None = None) -> list[Statement]:
        where, args = ("", ()) if original_kid is None else (" WHERE original_kid = ?",
                                                              (original_kid,))
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM reseals{where} ORDER BY id", args)
        return [Statement(k, r, bytes(d), bytes(o), v, a, bytes(s), bytes(st))
                for k, r, d, o, v, a, s, st in rows]

    def done(self, original_kid: bytes) -> set[tuple[str, bytes, bytes]]:
        return {(s.kind, s.digest, s.original_kid) for s in self.statements(original_kid)}
