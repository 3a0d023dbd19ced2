"""The monitoring centre's SQLite store: everything it received, decided and sent.

One file, WAL, synchronous=FULL: a receipt tells the gateway it may eventually delete its
copy, so a row must survive a power cut once the receipt has gone out. Callers group many
messages per transaction (`transaction()`), so FULL costs one fsync per group. Several
centre instances may share the file (each with its own Store); writes take the database
lock at BEGIN (IMMEDIATE), so a read-then-write decision is never raced by another instance.

Idempotency: a message is stored once per digest (messages.digest is the key), a reading
once per (device, session, seq) (the key of readings). Everything else keys on what the
gateway's own ids make unique (alarm id + step seq, certificate digest).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from protocol import alarm_messages
from simulator.centre import verifier as v

SCHEMA_VERSION = 2
# readings.received_at is when paho handed the message over (before any queueing in the
# centre); stored_at is when the transaction that wrote the row committed (stamped as that
# transaction's last statement), i.e. when the reading became durable at the centre. NULL
# only inside the writing transaction; the partial index finds those rows cheaply.
_STORED_AT = (
    "ALTER TABLE readings ADD COLUMN stored_at REAL",
    "CREATE INDEX readings_unstamped ON readings (device) WHERE stored_at IS NULL",
)
# Version 1 -> 2: rows stored before the column existed keep their arrival time.
_MIGRATE_1_TO_2 = (*_STORED_AT, "UPDATE readings SET stored_at = received_at")
_SCHEMA = (
    # Every message received, by digest; the payload is kept as evidence and so that a
    # batch can be re-verified when its gateway's key is learned later.
    """CREATE TABLE messages (
        digest BLOB PRIMARY KEY, gateway TEXT NOT NULL, kind TEXT NOT NULL, device TEXT,
        payload BLOB NOT NULL, status TEXT NOT NULL CHECK (status IN ('stored', 'rejected')),
        reason TEXT NOT NULL DEFAULT '', received_at REAL NOT NULL,
        copies INTEGER NOT NULL DEFAULT 1) WITHOUT ROWID""",
    """CREATE TABLE readings (
        device TEXT NOT NULL, session TEXT NOT NULL, seq INTEGER NOT NULL,
        gateway TEXT NOT NULL, quantity TEXT NOT NULL, value, unit TEXT NOT NULL,
        time REAL NOT NULL, verdict TEXT NOT NULL, kind TEXT NOT NULL,
        gateway_verdict TEXT NOT NULL, flags TEXT NOT NULL DEFAULT '', tag BLOB NOT NULL,
        digest BLOB NOT NULL, received_at REAL NOT NULL,
        PRIMARY KEY (device, session, seq)) WITHOUT ROWID""",
    "CREATE INDEX readings_verdict ON readings (gateway, verdict)",
    *_STORED_AT,
    # Second copies of a seq with another tag: evidence of a forgery or a replayed session.
    """CREATE TABLE conflicts (
        device TEXT NOT NULL, session TEXT NOT NULL, seq INTEGER NOT NULL, tag BLOB NOT NULL,
        digest BLOB NOT NULL, received_at REAL NOT NULL,
        PRIMARY KEY (device, session, seq, tag)) WITHOUT ROWID""",
    """CREATE TABLE device_counts (
        device TEXT PRIMARY KEY, gateway TEXT NOT NULL, received INTEGER NOT NULL DEFAULT 0,
        duplicates INTEGER NOT NULL DEFAULT 0, conflicts INTEGER NOT NULL DEFAULT 0,
        rejected INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE receipts (
        id INTEGER PRIMARY KEY, digest BLOB NOT NULL, gateway TEXT NOT NULL,
        status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', topic TEXT NOT NULL,
        correlation BLOB, sent_at REAL NOT NULL)""",
    """CREATE TABLE checkpoints (
        digest BLOB PRIMARY KEY, gateway TEXT NOT NULL, device TEXT NOT NULL,
        session TEXT NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
        kid BLOB, time INTEGER NOT NULL, head BLOB NOT NULL, prev BLOB NOT NULL,
        starts_session INTEGER NOT NULL, cose BLOB NOT NULL, status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '', flags TEXT NOT NULL DEFAULT '',
        missing TEXT NOT NULL DEFAULT '', received_at REAL NOT NULL, deadline REAL NOT NULL,
        decided_at REAL) WITHOUT ROWID""",
    "CREATE INDEX checkpoints_open ON checkpoints (status, device, session)",
    """CREATE TABLE losses (
        device TEXT NOT NULL, session TEXT NOT NULL, seq INTEGER NOT NULL,
        checkpoint BLOB NOT NULL, decided_at REAL NOT NULL,
        PRIMARY KEY (device, session, seq)) WITHOUT ROWID""",
    "CREATE INDEX losses_checkpoint ON losses (checkpoint)",
    """CREATE TABLE trusted_keys (
        role TEXT NOT NULL, owner TEXT NOT NULL, kid BLOB NOT NULL, public_key BLOB NOT NULL,
        issuer TEXT NOT NULL, not_before INTEGER, expires INTEGER, certificate BLOB,
        learned_at REAL NOT NULL, PRIMARY KEY (role, owner, kid)) WITHOUT ROWID""",
    """CREATE TABLE certificates (
        digest BLOB PRIMARY KEY, gateway TEXT NOT NULL, kind TEXT NOT NULL, raw BLOB NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('trusted', 'waiting', 'refused')),
        reason TEXT NOT NULL DEFAULT '', received_at REAL NOT NULL, decided_at REAL)
        WITHOUT ROWID""",
    """CREATE TABLE eventlog_checkpoints (
        gateway TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,
        head BLOB NOT NULL, time_ms INTEGER NOT NULL, status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '', cose BLOB NOT NULL, received_at REAL NOT NULL,
        PRIMARY KEY (gateway, first, last, head)) WITHOUT ROWID""",
    """CREATE TABLE alarm_steps (
        alarm_id TEXT NOT NULL, seq INTEGER NOT NULL, gateway TEXT NOT NULL,
        kind TEXT NOT NULL, grade TEXT NOT NULL, key TEXT NOT NULL, level INTEGER NOT NULL,
        time_ms INTEGER NOT NULL, patient TEXT, device TEXT, value, actor TEXT, detail TEXT,
        received_at REAL NOT NULL, PRIMARY KEY (alarm_id, seq)) WITHOUT ROWID""",
    # The alarms' state, folded from their steps (fold_steps) whenever a step arrives.
    """CREATE TABLE alarms (
        id TEXT PRIMARY KEY, gateway TEXT NOT NULL, patient TEXT, key TEXT NOT NULL,
        device TEXT, grade TEXT NOT NULL, level INTEGER NOT NULL, state TEXT NOT NULL,
        condition_active INTEGER NOT NULL, acknowledged_by TEXT, is_open INTEGER NOT NULL,
        raised_ms INTEGER, first_received_at REAL NOT NULL, updated_at REAL NOT NULL,
        steps INTEGER NOT NULL, missing_steps INTEGER NOT NULL) WITHOUT ROWID""",
    "CREATE INDEX alarms_open ON alarms (gateway, is_open)",
    """CREATE TABLE alarm_sets (
        gateway TEXT PRIMARY KEY, time_ms INTEGER NOT NULL, alarm_ids TEXT NOT NULL,
        received_at REAL NOT NULL)""",
    """CREATE TABLE gateway_status (
        gateway TEXT PRIMARY KEY, online INTEGER, body TEXT NOT NULL,
        received_at REAL NOT NULL)""",
    # Commands the centre sent: alarm acknowledgements/closures and limit commands.
    """CREATE TABLE commands (
        id INTEGER PRIMARY KEY, gateway TEXT NOT NULL, kind TEXT NOT NULL,
        subject TEXT NOT NULL, action TEXT NOT NULL, actor TEXT NOT NULL,
        payload BLOB NOT NULL, sent_at REAL NOT NULL)""",
)


class StoreError(RuntimeError):
    """The store file is not a centre store this code can use."""


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    digest: bytes
    gateway: str
    claim: v.CheckpointClaim
    cose: bytes
    status: str
    reason: str
    deadline: float


@dataclass(frozen=True, slots=True)
class AlarmView:
    """An alarm as the centre knows it from the steps it received."""

    id: str
    gateway: str
    patient: str | None
    key: str
    device: str | None
    grade: str
    level: int
    state: str  # raised | notified | acknowledged | resolved | closed (furthest reached)
    condition_active: bool
    acknowledged_by: str | None
    is_open: bool
    raised_ms: int | None
    steps: int
    missing_steps: int  # step seqs below the highest one received that have not arrived

    @property
    def signal_active(self) -> bool:
        """Calls for attention: its condition holds, or it is red and unacknowledged."""
        if not self.is_open:
            return False
        return self.condition_active or (self.grade == "red"
                                         and self.acknowledged_by is None)


def fold_steps(gateway: str, steps: Sequence[alarm_messages.AlarmTransition]) -> AlarmView:
    """An alarm's state from its steps in seq order (the lifecycle's own folding rules:
    a worsening or recurrence clears the acknowledgement; closed is final)."""
    ordered = sorted(steps, key=lambda s: s.seq)
    first = ordered[0]
    condition_active = False
    acknowledged_by = None
    notified = resolved = closed = False
    raised_ms = None
    for step in ordered:
        if step.kind in ("raised", "regraded", "recurred"):
            condition_active, resolved = True, False
            if step.kind == "raised":
                raised_ms = step.time_ms
            else:
                acknowledged_by = None
        elif step.kind == "notified":
            notified = True
        elif step.kind == "acknowledged":
            acknowledged_by = step.actor or "unknown"
        elif step.kind == "resolved":
            condition_active, resolved = False, True
        elif step.kind == "closed":
            closed = True
    last = ordered[-1]
    if closed:
        state = "closed"
    elif resolved:
        state = "resolved"
    elif acknowledged_by is not None:
        state = "acknowledged"
    else:
        state = "notified" if notified else "raised"
    seqs = {s.seq for s in ordered}
    return AlarmView(first.alarm_id, gateway, first.patient, first.key, first.device,
                     last.grade, last.level, state, condition_active, acknowledged_by,
                     not closed, raised_ms, len(seqs), max(seqs) + 1 - len(seqs))


def _key_from_row(row: sqlite3.Row) -> v.TrustedKey:
    return v.TrustedKey(row["owner"], row["role"], row["public_key"], row["kid"],
                        row["issuer"], row["not_before"], row["expires"], row["certificate"])


def _runs_text(runs: Iterable[tuple[int, int]]) -> str:
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


class Store:
    """One connection to the centre's database, usable from several threads (a lock)."""

    def __init__(self, path: str | Path, synchronous: str = "FULL",
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock  # stamps readings.stored_at at commit
        # Held by every call and for a whole transaction; hold it to read in-memory state
        # that changes only inside transactions (Ingest.stats).
        self.lock = self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=30,
                                     check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode = WAL")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self._conn.execute(f"PRAGMA synchronous = {synchronous}")
        self._migrate()

    def _migrate(self) -> None:
        with self.transaction():
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA:
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version == 1:
                for statement in _MIGRATE_1_TO_2:
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {version}, this code knows "
                                 f"{SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing, holding the database write lock from the start. The readings it
        wrote get their stored_at just before COMMIT."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._conn.execute("UPDATE readings SET stored_at = ? WHERE stored_at IS NULL",
                                   (self.clock(),))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside a transaction: undo only this block's writes if it raises."""
        with self._lock:
            self._conn.execute("SAVEPOINT one_message")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK TO one_message")
                self._conn.execute("RELEASE one_message")
                raise
            self._conn.execute("RELEASE one_message")

    def _all(self, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def _one(self, sql: str, args: Sequence[object] = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._conn.execute(sql, args).fetchone()

    def _run(self, sql: str, args: Sequence[object] = ()) -> int:
        with self._lock:
            return self._conn.execute(sql, args).rowcount

    # ------------------------------------------------------------ messages and receipts

    def message(self, digest: bytes) -> sqlite3.Row | None:
        return self._one("SELECT * FROM messages WHERE digest = ?", (digest,))

    def add_message(self, digest: bytes, gateway: str, kind: str, device: str | None,
                    payload: bytes, received_at: float, status: str = "stored",
                    reason: str = "") -> bool:
        """Record a message; False (and one more copy counted) if its digest is known."""
        added = self._run(
            "INSERT OR IGNORE INTO messages (digest, gateway, kind, device, payload, status, "
            "reason, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (digest, gateway, kind, device, payload, status, reason, received_at))
        if not added:
            self._run("UPDATE messages SET copies = copies + 1 WHERE digest = ?", (digest,))
        return bool(added)

    def add_receipt(self, digest: bytes, gateway: str, status: str, reason: str, topic: str,
                    correlation: bytes | None, sent_at: float) -> None:
        self._run("INSERT INTO receipts (digest, gateway, status, reason, topic, correlation, "
                  "sent_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (digest, gateway, status, reason, topic, correlation, sent_at))

    def receipts(self, digest: bytes | None = None) -> list[sqlite3.Row]:
        if digest is None:
            return self._all("SELECT * FROM receipts ORDER BY id")
        return self._all("SELECT * FROM receipts WHERE digest = ? ORDER BY id", (digest,))

    def count(self, table: str) -> int:
        if table not in ("messages", "readings", "receipts", "checkpoints", "losses",
                         "conflicts", "alarm_steps", "commands", "certificates"):
            raise ValueError(f"unknown table {table}")
        row = self._one(f"SELECT COUNT(*) FROM {table}")
        return int(row[0]) if row else 0

    # ------------------------------------------------------------ readings and counters

    def stored_tags(self, device: str, session: str, first: int, last: int) -> dict[int, bytes]:
        rows = self._all("SELECT seq, tag FROM readings WHERE device = ? AND session = ? "
                         "AND seq BETWEEN ? AND ?", (device, session, first, last))
        return {row["seq"]: row["tag"] for row in rows}

    def sealed_tags(self, gateway: str, device: str, session: str, first: int, last: int
                    ) -> dict[int, bytes]:
        """Tags of the device-sealed readings a gateway relayed in a range: what its
        checkpoint is checked on."""
        rows = self._all("SELECT seq, tag FROM readings WHERE device = ? AND session = ? "
                         "AND gateway = ? AND kind = 'sealed' AND seq BETWEEN ? AND ?",
                         (device, session, gateway, first, last))
        return {row["seq"]: row["tag"] for row in rows}

    def add_readings(self, gateway: str, batch: v.Batch, seqs: Iterable[int], digest: bytes,
                     received_at: float) -> int:
        wanted = set(seqs)
        rows = [(batch.device, batch.session, r.seq, gateway, r.quantity, r.value, r.unit,
                 float(r.time), batch.verdict, batch.kind, batch.gateway_verdict,
                 " ".join(batch.flags), batch.tag, digest, received_at)
                for r in batch.readings if r.seq in wanted]
        with self._lock:
            self._conn.executemany(
                "INSERT INTO readings (device, session, seq, gateway, quantity, value, unit, "
                "time, verdict, kind, gateway_verdict, flags, tag, digest, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def add_conflicts(self, batch: v.Batch, seqs: Iterable[int], digest: bytes,
                      received_at: float) -> None:
        with self._lock:
            self._conn.executemany(
                "INSERT OR IGNORE INTO conflicts (device, session, seq, tag, digest, "
                "received_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(batch.device, batch.session, s, batch.tag, digest, received_at)
                 for s in seqs])

    def count_device(self, device: str, gateway: str, received: int = 0, duplicates: int = 0,
                     conflicts: int = 0, rejected: int = 0) -> None:
        self._run("INSERT INTO device_counts (device, gateway, received, duplicates, "
                  "conflicts, rejected) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device) DO "
                  "UPDATE SET received = received + excluded.received, duplicates = "
                  "duplicates + excluded.duplicates, conflicts = conflicts + "
                  "excluded.conflicts, rejected = rejected + excluded.rejected",
                  (device, gateway, received, duplicates, conflicts, rejected))

    def device_counts(self) -> dict[str, sqlite3.Row]:
        return {row["device"]: row for row in self._all("SELECT * FROM device_counts")}

    def readings(self, device: str | None = None) -> list[sqlite3.Row]:
        if device is None:
            return self._all("SELECT * FROM readings ORDER BY device, session, seq")
        return self._all("SELECT * FROM readings WHERE device = ? ORDER BY session, seq",
                         (device,))

    def set_verdicts(self, gateway: str, device: str, session: str, first: int, last: int,
                     verdict: str) -> int:
        """Verdict of the sealed readings a gateway relayed in a range (only a checkpoint
        decides these)."""
        return self._run("UPDATE readings SET verdict = ? WHERE device = ? AND session = ? "
                         "AND gateway = ? AND kind = 'sealed' AND seq BETWEEN ? AND ?",
                         (verdict, device, session, gateway, first, last))

    def unverified_batches(self, gateway: str) -> list[sqlite3.Row]:
        """Messages of gateway-signed readings still waiting for a trusted gateway key."""
        return self._all("SELECT DISTINCT m.digest, m.device, m.payload FROM readings r "
                         "JOIN messages m ON m.digest = r.digest WHERE r.gateway = ? AND "
                         "r.verdict = ?", (gateway, v.UNVERIFIED))

    def set_batch_verdict(self, digest: bytes, verdict: str) -> None:
        self._run("UPDATE readings SET verdict = ? WHERE digest = ? AND verdict = ?",
                  (verdict, digest, v.UNVERIFIED))

    def verdict_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for row in self._all("SELECT device, verdict, COUNT(*) AS n FROM readings "
                             "GROUP BY device, verdict"):
            out.setdefault(row["device"], {})[row["verdict"]] = row["n"]
        return out

    def session_spans(self) -> list[sqlite3.Row]:
        """Per (device, session) of sealed readings: lowest and highest seq and count."""
        return self._all("SELECT device, session, MIN(seq) AS lo, MAX(seq) AS hi, "
                         "COUNT(*) AS n FROM readings WHERE kind = 'sealed' "
                         "GROUP BY device, session")

    def reading_delays(self) -> list[float]:
        """Seconds from each reading's own time to its arrival at the centre."""
        return [row[0] for row in self._all("SELECT received_at - time FROM readings")]

    # ------------------------------------------------------------ checkpoints and losses

    def add_checkpoint(self, digest: bytes, gateway: str, claim: v.CheckpointClaim,
                       cose: bytes, received_at: float, deadline: float) -> None:
        self._run(
            "INSERT INTO checkpoints (digest, gateway, device, session, first_seq, last_seq, "
            "kid, time, head, prev, starts_session, cose, status, received_at, deadline) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (digest, gateway, claim.device, claim.session, claim.first_seq, claim.last_seq,
             claim.kid, claim.time, claim.head, claim.prev, int(claim.starts_session), cose,
             v.CP_GAP, received_at, deadline))

    def _stored_checkpoint(self, row: sqlite3.Row) -> StoredCheckpoint:
        claim = v.CheckpointClaim(row["device"], row["session"], row["first_seq"],
                                  row["last_seq"], row["kid"], row["time"], row["head"],
                                  row["prev"], bool(row["starts_session"]))
        return StoredCheckpoint(row["digest"], row["gateway"], claim, row["cose"],
                                row["status"], row["reason"], row["deadline"])

    def reopenable_checkpoints(self, device: str, session: str | None = None
                               ) -> list[StoredCheckpoint]:
        marks = ",".join("?" * len(v.CP_REOPENABLE))
        sql = f"SELECT * FROM checkpoints WHERE status IN ({marks}) AND device = ?"
        args: list[object] = [*v.CP_REOPENABLE, device]
        if session is not None:
            sql += " AND session = ?"
            args.append(session)
        return [self._stored_checkpoint(r) for r in self._all(sql + " ORDER BY first_seq",
                                                              args)]

    def due_checkpoints(self, now: float) -> list[StoredCheckpoint]:
        """Checkpoints still waiting whose deadline has passed."""
        marks = ",".join("?" * len(v.CP_WAITING))
        return [self._stored_checkpoint(r) for r in self._all(
            f"SELECT * FROM checkpoints WHERE status IN ({marks}) AND deadline <= ? "
            "ORDER BY device, session, first_seq", (*v.CP_WAITING, now))]

    def previous_head(self, device: str, session: str, first_seq: int) -> bytes | None:
        row = self._one("SELECT head FROM checkpoints WHERE device = ? AND session = ? AND "
                        "last_seq = ? AND status = ?",
                        (device, session, first_seq - 1, v.CP_VERIFIED))
        return None if row is None else row["head"]

    def decide_checkpoint(self, stored: StoredCheckpoint, judgement: v.CheckpointJudgement,
                          now: float) -> None:
        """Record a judgement, the verdict of the readings it covers and its losses."""
        claim = stored.claim
        self._run("UPDATE checkpoints SET status = ?, reason = ?, flags = ?, missing = ?, "
                  "decided_at = ? WHERE digest = ?",
                  (judgement.status, judgement.reason, " ".join(judgement.flags),
                   _runs_text(judgement.missing), now, stored.digest))
        self._run("DELETE FROM losses WHERE checkpoint = ?", (stored.digest,))
        verdict = judgement.reading_verdict
        if verdict is not None:
            self.set_verdicts(stored.gateway, claim.device, claim.session, claim.first_seq,
                              claim.last_seq, verdict)
        if judgement.status == v.CP_LOST:
            with self._lock:
                self._conn.executemany(
                    "INSERT OR IGNORE INTO losses (device, session, seq, checkpoint, "
                    "decided_at) VALUES (?, ?, ?, ?, ?)",
                    [(claim.device, claim.session, s, stored.digest, now)
                     for s in judgement.missing_seqs])

    def checkpoints(self, device: str | None = None) -> list[sqlite3.Row]:
        if device is None:
            return self._all("SELECT * FROM checkpoints ORDER BY device, session, first_seq")
        return self._all("SELECT * FROM checkpoints WHERE device = ? ORDER BY session, "
                         "first_seq", (device,))

    def checkpoint_counts(self) -> dict[str, int]:
        return {row["status"]: row["n"] for row in self._all(
            "SELECT status, COUNT(*) AS n FROM checkpoints GROUP BY status")}

    def losses(self) -> dict[str, int]:
        return {row["device"]: row["n"] for row in self._all(
            "SELECT device, COUNT(*) AS n FROM losses GROUP BY device")}

    # ------------------------------------------------------------ keys and certificates

    def add_key(self, key: v.TrustedKey, learned_at: float) -> bool:
        return bool(self._run(
            "INSERT OR IGNORE INTO trusted_keys (role, owner, kid, public_key, issuer, "
            "not_before, expires, certificate, learned_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key.role, key.owner, key.kid, key.public_key, key.issuer, key.not_before,
             key.expires, key.certificate, learned_at)))

    def keys(self, role: str, owner: str) -> list[v.TrustedKey]:
        return [_key_from_row(r) for r in self._all(
            "SELECT * FROM trusted_keys WHERE role = ? AND owner = ?", (role, owner))]

    def add_certificate(self, digest: bytes, gateway: str, kind: str, raw: bytes,
                        status: str, reason: str, now: float) -> None:
        self._run("INSERT INTO certificates (digest, gateway, kind, raw, status, reason, "
                  "received_at, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
                  "(digest) DO UPDATE SET status = excluded.status, reason = excluded.reason, "
                  "decided_at = excluded.decided_at",
                  (digest, gateway, kind, raw, status, reason, now, now))

    def waiting_certificates(self, gateway: str) -> list[sqlite3.Row]:
        return self._all("SELECT * FROM certificates WHERE gateway = ? AND status = 'waiting' "
                         "ORDER BY received_at", (gateway,))

    def certificates(self) -> list[sqlite3.Row]:
        return self._all("SELECT * FROM certificates ORDER BY received_at")

    def add_eventlog_checkpoint(self, checkpoint: v.EventlogCheckpoint, cose: bytes,
                                received_at: float) -> None:
        self._run("INSERT OR IGNORE INTO eventlog_checkpoints (gateway, first, last, head, "
                  "time_ms, status, reason, cose, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, "
                  "?, ?)", (checkpoint.gateway, checkpoint.first, checkpoint.last,
                            checkpoint.head, checkpoint.time_ms, checkpoint.status,
                            checkpoint.reason, cose, received_at))

    def eventlog_checkpoints(self, gateway: str) -> list[sqlite3.Row]:
        return self._all("SELECT * FROM eventlog_checkpoints WHERE gateway = ? ORDER BY last",
                         (gateway,))

    # ------------------------------------------------------------ alarms

    def add_alarm_step(self, gateway: str, step: alarm_messages.AlarmTransition,
                       received_at: float) -> AlarmView | None:
        """Store a step (once per alarm id and seq) and refold its alarm -> the new view,
        or None when the step was already known."""
        added = self._run(
            "INSERT OR IGNORE INTO alarm_steps (alarm_id, seq, gateway, kind, grade, key, "
            "level, time_ms, patient, device, value, actor, detail, received_at) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (step.alarm_id, step.seq, gateway, step.kind, step.grade, step.key, step.level,
             step.time_ms, step.patient, step.device, step.value, step.actor, step.detail,
             received_at))
        if not added:
            return None
        view = fold_steps(gateway, self.alarm_steps(step.alarm_id))
        first_received = self._one("SELECT MIN(received_at) FROM alarm_steps WHERE "
                                   "alarm_id = ?", (step.alarm_id,))[0]
        self._run(
            "INSERT OR REPLACE INTO alarms (id, gateway, patient, key, device, grade, level, "
            "state, condition_active, acknowledged_by, is_open, raised_ms, first_received_at, "
            "updated_at, steps, missing_steps) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?, ?)",
            (view.id, gateway, view.patient, view.key, view.device, view.grade, view.level,
             view.state, int(view.condition_active), view.acknowledged_by, int(view.is_open),
             view.raised_ms, first_received, received_at, view.steps, view.missing_steps))
        return view

    def alarm_steps(self, alarm_id: str) -> list[alarm_messages.AlarmTransition]:
        return [alarm_messages.AlarmTransition(
            r["alarm_id"], r["seq"], r["kind"], r["grade"], r["key"], r["time_ms"], r["level"],
            r["patient"], r["device"], r["value"], r["actor"], r["detail"])
            for r in self._all("SELECT * FROM alarm_steps WHERE alarm_id = ? ORDER BY seq",
                               (alarm_id,))]

    def _alarm_view(self, row: sqlite3.Row) -> AlarmView:
        return AlarmView(row["id"], row["gateway"], row["patient"], row["key"], row["device"],
                         row["grade"], row["level"], row["state"],
                         bool(row["condition_active"]), row["acknowledged_by"],
                         bool(row["is_open"]), row["raised_ms"], row["steps"],
                         row["missing_steps"])

    def alarm(self, alarm_id: str) -> AlarmView | None:
        row = self._one("SELECT * FROM alarms WHERE id = ?", (alarm_id,))
        return None if row is None else self._alarm_view(row)

    def open_alarms(self, gateway: str | None = None) -> list[AlarmView]:
        sql, args = "SELECT * FROM alarms WHERE is_open = 1", []
        if gateway is not None:
            sql, args = sql + " AND gateway = ?", [gateway]
        return [self._alarm_view(r) for r in self._all(sql + " ORDER BY raised_ms, id", args)]

    def alarm_delays(self) -> list[float]:
        """Seconds from each alarm's raise (gateway time) to the centre receiving it."""
        return [row[0] for row in self._all(
            "SELECT received_at - time_ms / 1000.0 FROM alarm_steps WHERE kind = 'raised'")]

    def raised_alarms(self) -> list[sqlite3.Row]:
        return self._all("SELECT a.*, s.received_at AS raised_received_at FROM alarms a "
                         "LEFT JOIN alarm_steps s ON s.alarm_id = a.id AND s.kind = 'raised' "
                         "ORDER BY a.raised_ms, a.id")

    def set_alarm_set(self, gateway: str, time_ms: int, alarm_ids: Sequence[str],
                      received_at: float) -> None:
        self._run("INSERT INTO alarm_sets (gateway, time_ms, alarm_ids, received_at) VALUES "
                  "(?, ?, ?, ?) ON CONFLICT (gateway) DO UPDATE SET time_ms = excluded.time_ms,"
                  " alarm_ids = excluded.alarm_ids, received_at = excluded.received_at "
                  "WHERE excluded.time_ms >= alarm_sets.time_ms",
                  (gateway, time_ms, " ".join(alarm_ids), received_at))

    def alarm_set(self, gateway: str) -> list[str] | None:
        row = self._one("SELECT alarm_ids FROM alarm_sets WHERE gateway = ?", (gateway,))
        return None if row is None else row["alarm_ids"].split()

    # ------------------------------------------------------------ gateways and commands

    def set_status(self, gateway: str, online: bool | None, body: str, received_at: float
                   ) -> None:
        self._run("INSERT OR REPLACE INTO gateway_status (gateway, online, body, received_at) "
                  "VALUES (?, ?, ?, ?)",
                  (gateway, None if online is None else int(online), body, received_at))

    def status(self, gateway: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM gateway_status WHERE gateway = ?", (gateway,))

    def add_command(self, gateway: str, kind: str, subject: str, action: str, actor: str,
                    payload: bytes, sent_at: float) -> None:
        self._run("INSERT INTO commands (gateway, kind, subject, action, actor, payload, "
                  "sent_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (gateway, kind, subject, action, actor, payload, sent_at))

    def commands(self) -> list[sqlite3.Row]:
        return self._all("SELECT * FROM commands ORDER BY id")
