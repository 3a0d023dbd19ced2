"""The maintenance journal: faults a technician finds on inspection, and how each was closed.

One small SQLite file in the agent's data directory (`maintenance.sqlite3`, WAL, synchronous
FULL). A fault is opened once and closed once; its text is history. Triggers refuse DELETE,
any UPDATE other than closing an open fault, and a closing dated before the opening. Each
step is also journaled in the tamper-evident event journal by the caller
(edge_agent/commands/fault.py); the triggers stop careless tools, the event journal catches
the rest. Clocks are never read here: callers pass `at`.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from protocol.errors import ValidationError

FILE_NAME = "maintenance.sqlite3"
FAULT_KINDS = ("battery", "sensor", "cable", "connectivity", "enclosure", "tamper-seal",
               "calibration", "power", "storage", "clock", "display", "other")
SEVERITIES = ("info", "warning", "error", "critical")
MAX_NOTE = 2000
# Same shape as device and gateway ids (they become event-journal subjects).
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_ACTOR = re.compile(r"[\x20-\x7e]{1,100}\Z")

_V1 = (
    f"""
    CREATE TABLE faults (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        component   TEXT NOT NULL,                  -- "gateway", a part, or a device id
        device_id   TEXT,                           -- set when the component is a device
        kind        TEXT NOT NULL CHECK (kind IN {FAULT_KINDS!r}),
        severity    TEXT NOT NULL CHECK (severity IN {SEVERITIES!r}),
        note        TEXT NOT NULL CHECK (length(note) > 0),
        opened_at   INTEGER NOT NULL,
        opened_by   TEXT NOT NULL,
        closed_at   INTEGER,
        closed_by   TEXT,
        resolution  TEXT,
        CHECK ((closed_at IS NULL) = (closed_by IS NULL)
               AND (closed_at IS NULL) = (resolution IS NULL)),
        CHECK (closed_at IS NULL OR closed_at >= opened_at)
    )
    """,
    "CREATE INDEX faults_open ON faults (closed_at, opened_at)",
    """
    CREATE TRIGGER faults_close_only BEFORE UPDATE ON faults
    BEGIN
        SELECT RAISE(ABORT, 'a fault is closed once; its other fields are history')
         WHERE OLD.closed_at IS NOT NULL OR NEW.component IS NOT OLD.component
            OR NEW.device_id IS NOT OLD.device_id OR NEW.kind IS NOT OLD.kind
            OR NEW.severity IS NOT OLD.severity OR NEW.note IS NOT OLD.note
            OR NEW.opened_at IS NOT OLD.opened_at OR NEW.opened_by IS NOT OLD.opened_by;
    END
    """,
    "CREATE TRIGGER faults_no_delete BEFORE DELETE ON faults "
    "BEGIN SELECT RAISE(ABORT, 'faults are history: close them, never delete them'); END",
)
MIGRATIONS = (_V1,)


class MaintenanceError(ValidationError):
    """Input or state the maintenance journal refuses; `field` names it, the text says why."""


@dataclass(frozen=True, slots=True)
class Fault:
    id: int
    component: str
    device_id: str | None
    kind: str
    severity: str
    note: str
    opened_at: int
    opened_by: str
    closed_at: int | None
    closed_by: str | None
    resolution: str | None

    def open_at(self, at: int) -> bool:
        """Was the fault known and not yet closed at `at`?"""
        return self.opened_at <= at and (self.closed_at is None or self.closed_at > at)


_COLUMNS = ("id, component, device_id, kind, severity, note, opened_at, opened_by, closed_at, "
            "closed_by, resolution")


def _seconds(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MaintenanceError(name, "must be integer POSIX seconds (UTC)")
    return value


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NOTE \
            or not value.isprintable():
        raise MaintenanceError(name, f"must be 1..{MAX_NOTE} printable characters")
    return value.strip()


def _actor(value: object) -> str:
    if not isinstance(value, str) or not _ACTOR.match(value):
        raise MaintenanceError("actor", "must be 1..100 printable ASCII characters")
    return value


class MaintenanceLog:
    """The maintenance journal file. Use from one thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> MaintenanceLog:
        """Open (creating or migrating) the file; journal.schema.SchemaError for a file from
        a newer agent."""
        from edge_agent.journal import schema as journal_schema

        path = Path(path)
        conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        try:
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise journal_schema.SchemaError(f"could not switch {path} to WAL")
            conn.execute("PRAGMA synchronous = FULL")
            found = journal_schema.user_version(conn)
            if found > len(MIGRATIONS):
                raise journal_schema.SchemaError(
                    f"{path}: maintenance journal version {found} is newer than this agent's "
                    f"{len(MIGRATIONS)}; upgrade the agent")
            journal_schema.migrate(conn, MIGRATIONS)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    @classmethod
    def open_in(cls, data_dir: str | os.PathLike[str]) -> MaintenanceLog:
        return cls.open(Path(data_dir) / FILE_NAME)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> MaintenanceLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, component: str, kind: str, note: str, *, actor: str, at: int,
            severity: str = "warning", device_id: str | None = None) -> Fault:
        """Open a fault. `component` is "gateway", a part name, or the device's id."""
        if not isinstance(component, str) or not _COMPONENT.match(component):
            raise MaintenanceError("component", "must be 1..64 letters, digits and . _ -")
        if device_id is not None and device_id != component:
            raise MaintenanceError("device_id", "a device's fault has the device as component")
        if kind not in FAULT_KINDS:
            raise MaintenanceError("kind", "must be one of " + ", ".join(FAULT_KINDS))
        if severity not in SEVERITIES:
            raise MaintenanceError("severity", "must be one of " + ", ".join(SEVERITIES))
        cursor = self._conn.execute(
            "INSERT INTO faults (component, device_id, kind, severity, note, opened_at, "
            "opened_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (component, device_id, kind, severity, _text("note", note), _seconds("at", at),
             _actor(actor)))
        return self.get(int(cursor.lastrowid or 0))

    def close_fault(self, fault_id: int, resolution: str, *, actor: str, at: int) -> Fault:
        """Close an open fault, saying how it was resolved."""
        fault = self.get(fault_id)
        if fault.closed_at is not None:
            closed = datetime.fromtimestamp(fault.closed_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
            raise MaintenanceError("fault_id", f"fault {fault_id} was already closed on "
                                   f"{closed} by {fault.closed_by}: open a new fault if it "
                                   "came back")
        _seconds("at", at)
        if at < fault.opened_at:
            raise MaintenanceError("at", "a fault cannot be closed before it was opened; check "
                                   "the gateway clock")
        self._conn.execute(
            "UPDATE faults SET closed_at = ?, closed_by = ?, resolution = ? WHERE id = ?",
            (at, _actor(actor), _text("resolution", resolution), fault_id))
        return self.get(fault_id)

    def get(self, fault_id: int) -> Fault:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM faults WHERE id = ?",
                                 (fault_id,)).fetchone()
        if row is None:
            raise MaintenanceError("fault_id", f"no fault {fault_id}; list them with "
                                   "`vitalbridge fault list`")
        return Fault(*row)

    def faults(self, *, open_at: int | None = None, until: int | None = None,
               component: str | None = None) -> list[Fault]:
        """Faults opened up to `until` (all by default); with `open_at`, only those open
        then. Oldest first."""
        sql = f"SELECT {_COLUMNS} FROM faults WHERE 1 = 1"
        args: list[Any] = []
        if until is not None:
            sql += " AND opened_at <= ?"
            args.append(until)
        if component is not None:
            sql += " AND component = ?"
            args.append(component)
        found = [Fault(*row) for row in self._conn.execute(sql + " ORDER BY opened_at, id",
                                                           args)]
        if open_at is not None:
            found = [f for f in found if f.open_at(open_at)]
        return found
