"""SQLite persistence of alarms and their steps, so an alarm survives an agent restart.

Two tables: `alarms` holds each alarm's identity (fixed at raise), `alarm_steps` its steps.
Both are append-only, enforced by triggers: a step is a fact about the past. Each step row
also stores a SHA-256 chain value over the previous step's chain value and this step's
content, so an edited or deleted step is detected by `verify()` even if someone bypasses
the triggers. State is never stored, only folded from the steps (lifecycle.Alarm.apply),
so a restarted agent sees exactly what was written. One transaction (one WAL fsync) per
`append` call, however many steps it carries.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from edge_agent.alarms.grades import Grade
from edge_agent.alarms.lifecycle import Alarm, Step
from edge_agent.sqlite_tx import immediate

SCHEMA_VERSION = 1

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS alarms (
        id        TEXT PRIMARY KEY,
        patient   TEXT,                 -- NULL for gateway-level technical alarms
        key       TEXT NOT NULL,        -- condition key, e.g. spo2:low, news2, offline:dev-1
        kind      TEXT NOT NULL,        -- threshold | news2 | rate | artefact | technical
        quantity  TEXT,
        device    TEXT,
        open      INTEGER NOT NULL DEFAULT 1  -- index only; set by the closing step's trigger
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS alarm_steps (
        alarm_id  TEXT NOT NULL REFERENCES alarms(id),
        seq       INTEGER NOT NULL,
        kind      TEXT NOT NULL,
        time      REAL NOT NULL,
        actor     TEXT NOT NULL,
        grade     TEXT NOT NULL,
        level     INTEGER NOT NULL,
        value     TEXT,                 -- JSON: number, text, bool or null
        detail    TEXT NOT NULL,
        chain     BLOB NOT NULL,        -- SHA-256(previous chain || canonical step)
        PRIMARY KEY (alarm_id, seq),
        CHECK (seq >= 0 AND level >= 0 AND length(chain) = 32)
    )
    """,
    "CREATE INDEX IF NOT EXISTS alarms_open ON alarms (open) WHERE open = 1",
    """
    CREATE TRIGGER IF NOT EXISTS alarm_steps_no_update BEFORE UPDATE ON alarm_steps
    BEGIN SELECT RAISE(ABORT, 'alarm steps are append-only'); END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS alarm_steps_no_delete BEFORE DELETE ON alarm_steps
    BEGIN SELECT RAISE(ABORT, 'alarm steps are append-only'); END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS alarms_no_delete BEFORE DELETE ON alarms
    BEGIN SELECT RAISE(ABORT, 'alarms are append-only'); END
    """,
    # Only the open flag may change, and only from 1 to 0 when the closing step lands.
    """
    CREATE TRIGGER IF NOT EXISTS alarms_identity_fixed BEFORE UPDATE ON alarms
    WHEN NEW.id IS NOT OLD.id OR NEW.patient IS NOT OLD.patient OR NEW.key IS NOT OLD.key
      OR NEW.kind IS NOT OLD.kind OR NEW.quantity IS NOT OLD.quantity
      OR NEW.device IS NOT OLD.device OR NOT (OLD.open = 1 AND NEW.open = 0)
    BEGIN SELECT RAISE(ABORT, 'alarm identity is fixed'); END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS alarm_closed AFTER INSERT ON alarm_steps
    WHEN NEW.kind = 'closed'
    BEGIN UPDATE alarms SET open = 0 WHERE id = NEW.alarm_id; END
    """,
)

_GENESIS = bytes(32)


class StoreError(RuntimeError):
    """The alarm store is inconsistent (broken chain, missing steps) or was misused."""


def _canonical(step: Step) -> bytes:
    fields = [step.alarm_id, step.seq, step.kind, repr(float(step.time)), step.actor,
              step.grade.label, step.level, step.value, step.detail]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


def _chain(previous: bytes, step: Step) -> bytes:
    return hashlib.sha256(previous + _canonical(step)).digest()


class AlarmStore:
    """Alarms and steps in one SQLite file (WAL, synchronous=FULL), used from one thread."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"alarm store version {version} is newer than this agent")
        with self._transaction():
            for ddl in _SCHEMA:
                self._db.execute(ddl)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AlarmStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate(self._db)

    def append(self, steps: Sequence[Step], alarm_of: Callable[[str], Alarm]) -> None:
        """Write `steps` (in order) in one transaction; new alarms' identities come from
        `alarm_of(alarm_id)` (e.g. AlarmLifecycle.alarm). A seq that is already stored or
        leaves a gap is refused (StoreError) and nothing of the call is written."""
        if not steps:
            return
        try:
            with self._transaction():
                tails: dict[str, tuple[int, bytes]] = {}
                for step in steps:
                    tail = tails.get(step.alarm_id) or self._tail(step.alarm_id, alarm_of)
                    if step.seq != tail[0] + 1:
                        raise StoreError(
                            f"step {step.seq} of alarm {step.alarm_id} does not follow {tail[0]}")
                    chain = _chain(tail[1], step)
                    self._db.execute(
                        "INSERT INTO alarm_steps (alarm_id, seq, kind, time, actor, grade, level,"
                        " value, detail, chain) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (step.alarm_id, step.seq, step.kind, step.time, step.actor,
                         step.grade.label, step.level, json.dumps(step.value), step.detail,
                         chain))
                    tails[step.alarm_id] = (step.seq, chain)
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"refused: {exc}") from None

    def _tail(self, alarm_id: str, alarm_of: Callable[[str], Alarm]) -> tuple[int, bytes]:
        row = self._db.execute(
            "SELECT seq, chain FROM alarm_steps WHERE alarm_id = ? ORDER BY seq DESC LIMIT 1",
            (alarm_id,)).fetchone()
        if row is not None:
            return row[0], row[1]
        known = self._db.execute("SELECT 1 FROM alarms WHERE id = ?", (alarm_id,)).fetchone()
        if known is None:
            alarm = alarm_of(alarm_id)
            self._db.execute(
                "INSERT INTO alarms (id, patient, key, kind, quantity, device)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (alarm.id, alarm.patient, alarm.key, alarm.kind, alarm.quantity, alarm.device))
        return -1, _GENESIS

    def steps(self, alarm_id: str) -> list[Step]:
        rows = self._db.execute(
            "SELECT alarm_id, seq, kind, time, actor, grade, level, value, detail"
            " FROM alarm_steps WHERE alarm_id = ? ORDER BY seq", (alarm_id,)).fetchall()
        return [_step(row) for row in rows]

    def load(self, alarm_id: str) -> Alarm | None:
        """One alarm, folded from its stored steps (None if unknown)."""
        row = self._db.execute(
            "SELECT id, patient, key, kind, quantity, device FROM alarms WHERE id = ?",
            (alarm_id,)).fetchone()
        return None if row is None else self._fold(row)

    def load_open(self) -> list[Alarm]:
        """Every alarm not yet closed, ready for AlarmLifecycle(restored=...)."""
        rows = self._db.execute(
            "SELECT id, patient, key, kind, quantity, device FROM alarms WHERE open = 1"
            " ORDER BY rowid").fetchall()
        return [self._fold(row) for row in rows]

    def _fold(self, row: tuple) -> Alarm:
        alarm = Alarm(*row)
        for step in self.steps(alarm.id):
            alarm.apply(step)
        if alarm.step_count == 0:
            raise StoreError(f"alarm {alarm.id} has no steps")
        return alarm

    def verify(self) -> list[str]:
        """Problems found by re-computing every chain value (empty list: intact)."""
        problems = []
        previous: dict[str, tuple[int, bytes]] = {}
        rows = self._db.execute(
            "SELECT alarm_id, seq, kind, time, actor, grade, level, value, detail, chain"
            " FROM alarm_steps ORDER BY alarm_id, seq").fetchall()
        for row in rows:
            step = _step(row[:9])
            seq, chain = previous.get(step.alarm_id, (-1, _GENESIS))
            if step.seq != seq + 1:
                problems.append(f"alarm {step.alarm_id}: step {seq + 1} missing")
            expected = _chain(chain, step)
            if expected != row[9]:
                problems.append(f"alarm {step.alarm_id}: step {step.seq} altered")
            previous[step.alarm_id] = (step.seq, row[9])
        return problems


def _step(row: Iterable) -> Step:
    alarm_id, seq, kind, time, actor, grade, level, value, detail = row
    return Step(alarm_id, seq, kind, time, actor, Grade.from_label(grade), level,
                json.loads(value) if value is not None else None, detail)


