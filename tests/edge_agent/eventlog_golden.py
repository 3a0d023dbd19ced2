"""A seeded sequence of event-journal entries of every kind, and the rows a journal holds
after writing it, for the golden test of the batch write path (test_eventlog_batch.py).

data/eventlog_golden.json was produced by `write_golden` with the per-entry code that came
before the batch path (EventLog.append inside EventLog.batch(), commit 41578f5): the rows a
journal written by today's code holds must be byte-identical to it. Never regenerate the
file from the code under test; a change of the format is a new FORMAT_VERSION, not a new
fixture.
"""

from __future__ import annotations

import enum
import json
import random
from pathlib import Path
from typing import Any

from edge_agent.eventlog import kinds

GATEWAY = "gw-0001"
SEED = bytes(range(32))
CHECKPOINT_EVERY = 7
CHECKPOINT_INTERVAL_S = 5.0
T0 = 1_700_000_000.0
FIXTURE = Path(__file__).parent / "data" / "eventlog_golden.json"

Event = tuple[str, str, str, dict[str, Any], float | None]
# The kinds at commit 41578f5, frozen: a kind added later must not shift the sequence.
GOLDEN_KINDS = (
    "agent.started", "agent.stopped", "alarm.acknowledged", "alarm.closed", "alarm.escalated",
    "alarm.notified", "alarm.raised", "alarm.recurred", "alarm.regraded", "alarm.resolved",
    "certificate.activated", "certificate.compromised", "certificate.expired",
    "certificate.issued", "certificate.renewal", "certificate.retired", "certificate.revoked",
    "config.changed", "key.activated", "key.compromised", "key.destroyed", "key.generated",
    "key.renewal", "key.resealed", "key.retired", "key.revoked", "limits.changed",
    "maintenance.cleared", "maintenance.fault", "reception.quarantined", "reception.received",
    "storage.deleted", "transmission.puback", "transmission.published", "transmission.receipt",
    "transmission.refused",
)


class Code(enum.IntEnum):
    """An int subclass, as a caller might pass a PUBACK reason code."""

    SUCCESS = 0
    NO_MATCHING_SUBSCRIBERS = 16


class Label(str):
    """A str subclass, as a caller might pass a device id."""


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


_TEXTS = ["broker unreachable", "Überlast am Port ✓", "x", "re-paired by technician t-7",
          "日本語のテキスト", "a" * 23, "b" * 24, "café au lait", "é" * 200, "z" * 200]
_IDENTS = ["ox-1", "bp-2", "gw-0001", "centre", "vb/v1/gw/gw-0001/up/readings/ox-1",
           "a.b_c:d/e@f-g", "Q" * 128, "0"]
_PSEUDONYMS = ["p-4f7a2c", "P0001", "patient.7"]
_INTS = [0, -1, 23, 24, -24, -25, 255, 256, 65535, 65536, 2**32, -2**63, 2**63 - 1]
_FLOATS = [0.0, -0.0, 0.5, 1.1, 1e300, 5e-324, 123.4, -17.25, 1.0e16, 65504.0, 3.4e38]
_COUNTS = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1]
_ACTORS = ["agent", "centre", "clinician:c-1234", "technician:t-7", "device:ox-1"]
_SUBJECTS = ["gateway:gw-0001", "device:ox-3", "alarm:a-17", "key:0011223344556677",
             "vb/v1/gw/gw-0001/up/readings/ox-1", "limits", "x" * 200]


def _value(rng: random.Random, ftype: kinds.FieldType) -> Any:
    if ftype.choices:
        return rng.choice(ftype.choices)
    if ftype is kinds.TEXT:
        return rng.choice(_TEXTS)
    if ftype is kinds.IDENT:
        return Label(rng.choice(_IDENTS)) if rng.random() < 0.1 else rng.choice(_IDENTS)
    if ftype is kinds.PSEUDONYM:
        return rng.choice(_PSEUDONYMS)
    if ftype is kinds.COUNT:
        return rng.choice(_COUNTS)
    if ftype is kinds.BYTE:
        return rng.choice([0, 16, 23, 24, 128, 255, Code.NO_MATCHING_SUBSCRIBERS])
    if ftype is kinds.NUMBER:
        return rng.choice(_FLOATS if rng.random() < 0.6 else _INTS)
    if ftype is kinds.NAMES:
        names = rng.sample(_IDENTS, rng.randint(1, 4))
        return tuple(names) if rng.random() < 0.3 else names
    if ftype in (kinds.DIGEST, kinds.PUBLIC_KEY):
        return rng.randbytes(32).hex()
    if ftype is kinds.KID:
        return rng.randbytes(8).hex()
    raise AssertionError(f"no generator for field type {ftype.name}")


def golden_events(count: int = 200, seed: int = 20240611) -> list[Event]:
    """`count` valid events cycling through every kind, optional fields at random, keys in
    random order, times given (`at`, fractional seconds) or left to the clock (None)."""
    rng = random.Random(seed)
    names = GOLDEN_KINDS
    events: list[Event] = []
    for index in range(count):
        kind = kinds.KINDS[names[index % len(names)]]
        fields = {name: _value(rng, ftype) for name, ftype in kind.required.items()}
        for name, ftype in kind.optional.items():
            if ftype is kinds.NUMBER or rng.random() < 0.6:
                fields[name] = _value(rng, ftype)
        order = list(fields)
        rng.shuffle(order)
        details = {name: fields[name] for name in order}
        at = None if rng.random() < 0.5 else T0 + index + rng.choice([0.0, 0.0004, 0.0005,
                                                                       0.0015, 0.9996])
        events.append((kind.name, rng.choice(_ACTORS), rng.choice(_SUBJECTS), details, at))
    return events


def golden_batches(events: list[Event], seed: int = 7) -> list[list[Event]]:
    """The events split into batches of 1..20, as the recorder hands them to its thread."""
    rng = random.Random(seed)
    batches, start = [], 0
    while start < len(events):
        size = rng.choice([1, 1, 2, 3, 5, 8, 13, 20])
        batches.append(events[start:start + size])
        start += size
    return batches


def journal_rows(path: Path) -> dict[str, list[list[Any]]]:
    """Every entry and checkpoint row of a journal file, blobs as hex, in key order."""
    import sqlite3

    def plain(value: Any) -> Any:
        return value.hex() if isinstance(value, bytes) else value

    conn = sqlite3.connect(path)
    try:
        entries = conn.execute("SELECT seq, time, kind, actor, subject, details, prev, hash "
                               "FROM entries ORDER BY seq").fetchall()
        checkpoints = conn.execute("SELECT first_seq, last_seq, head, time, gateway, kid, cose "
                                   "FROM checkpoints ORDER BY last_seq").fetchall()
    finally:
        conn.close()
    return {"entries": [[plain(v) for v in row] for row in entries],
            "checkpoints": [[plain(v) for v in row] for row in checkpoints]}


def write_golden(path: Path, write_batch: Any) -> None:
    """Write the golden sequence batch by batch with `write_batch(log, batch)`, the clock
    advancing 0.75 s between batches (so checkpoints fall due by count and by age)."""
    from edge_agent.eventlog import EventLog

    clock = FakeClock()
    log = EventLog.open(path, GATEWAY, SEED, checkpoint_every=CHECKPOINT_EVERY,
                        checkpoint_interval_s=CHECKPOINT_INTERVAL_S, clock=clock)
    try:
        for batch in golden_batches(golden_events()):
            clock.now += 0.75
            write_batch(log, batch)
    finally:
        log.close()


def save_fixture(rows: dict[str, list[list[Any]]], path: Path = FIXTURE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["{"]
    for table, items in rows.items():
        lines.append(f"{json.dumps(table)}: [")
        lines.append(",\n".join(json.dumps(row, ensure_ascii=False) for row in items))
        lines.append("]," if table != list(rows)[-1] else "]")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def load_fixture(path: Path = FIXTURE) -> dict[str, list[list[Any]]]:
    return json.loads(path.read_text(encoding="utf-8"))
