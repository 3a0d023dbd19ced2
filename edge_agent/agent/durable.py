"""Small durable state of the agent service that no library component keeps.

* `LimitCommandStore`: the signed limit commands the gateway applied, as received (the COSE
  bytes) with the instant they were applied. At start-up they are verified again with the
  organisation key and replayed in order into a fresh `LimitsBook` and `ReplayGuard`, so a
  restart neither forgets a patient's limits nor accepts a replayed command. The signature
  is the evidence; nothing is stored that the command itself does not say.
* `CursorFile`: the last glucose-record sequence number fetched per BLE meter (the BLE
  ingest's CursorStore). It is written only after the readings handed over before it are
  durable in the reading journal (the service orders that), atomically (write, fsync, rename).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from edge_agent.ca import keyfiles
from edge_agent.sqlite_tx import immediate

_LIMITS_DDL = """
CREATE TABLE IF NOT EXISTS limit_commands (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    command     BLOB NOT NULL UNIQUE,   -- COSE_Sign1 bytes as received
    applied_at  REAL NOT NULL
)
"""


class LimitCommandStore:
    """Applied limit commands in one SQLite file (WAL, synchronous=FULL, mode 0600: limits
    are clinical data). Used from one thread."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_LIMITS_DDL)

    def close(self) -> None:
        self._db.close()

    def add(self, command: bytes, applied_at: float) -> None:
        with immediate(self._db):
            self._db.execute("INSERT OR IGNORE INTO limit_commands (command, applied_at) "
                             "VALUES (?, ?)", (command, applied_at))

    def all(self) -> list[tuple[bytes, float]]:
        """(command bytes, applied at) in the order they were applied."""
        return [(bytes(c), a) for c, a in self._db.execute(
            "SELECT command, applied_at FROM limit_commands ORDER BY id")]


class CursorFile:
    """A CursorStore (edge_agent.ble_ingest) kept in a small JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            loaded = json.loads(path.read_text())
        except FileNotFoundError:
            loaded = {}
        except (OSError, ValueError):
            loaded = {}  # a damaged file only costs a re-fetch (duplicates, not loss)
        self._cursors: dict[str, int] = {
            k: v for k, v in loaded.items() if isinstance(k, str) and type(v) is int
        } if isinstance(loaded, dict) else {}

    def get(self, device: str) -> int | None:
        return self._cursors.get(device)

    def set(self, device: str, sequence_number: int) -> None:
        self._cursors[device] = sequence_number
        keyfiles.write_public(self.path, json.dumps(self._cursors, sort_keys=True).encode())
