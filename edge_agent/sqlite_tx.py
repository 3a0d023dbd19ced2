"""Write transactions for the agent's SQLite files, written once.

Every store opens its connection with isolation_level=None (autocommit) and takes writes in
explicit `BEGIN IMMEDIATE` transactions: the write lock is taken up front, so a transaction
never fails half-way on a lock upgrade, and COMMIT is where the (grouped) fsync happens.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (which propagates)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class NestedTransactions:
    """Nested write blocks on one connection: inner blocks join the outermost, which alone
    commits or rolls back. Hooks let a store act at the outermost boundary (e.g. sign a
    checkpoint inside the transaction, publish it after the commit)."""

    def __init__(self, conn: sqlite3.Connection,
                 before_commit: Callable[[], None] | None = None,
                 after_commit: Callable[[], None] | None = None,
                 after_rollback: Callable[[], None] | None = None) -> None:
        self._conn = conn
        self._before_commit = before_commit
        self._after_commit = after_commit
        self._after_rollback = after_rollback
        self.depth = 0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if self.depth == 0:
            self._conn.execute("BEGIN IMMEDIATE")
        self.depth += 1
        try:
            yield
        except BaseException:
            self.depth -= 1
            if self.depth == 0:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if self._after_rollback:
                    self._after_rollback()
            raise
        self.depth -= 1
        if self.depth == 0:
            if self._before_commit:
                self._before_commit()
            self._conn.execute("COMMIT")
            if self._after_commit:
                self._after_commit()
