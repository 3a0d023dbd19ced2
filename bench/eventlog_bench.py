"""Micro-benchmark: what the tamper-evident event journal costs the agent per entry.

Two sides, as the agent pays them (edge_agent/agent/recorder.py):
- loop:   EventRecorder.record() on the event loop (kinds.validate, then queue);
- thread: EventRecorder._write() on the "eventlog" worker thread (chain, JSON, SQLite),
          which holds the GIL for most of its work and so takes the CPU from the loop.

OLD is a frozen copy of the code before the batch path (commit 41578f5), kept only here;
NEW is the package. Both run in this process, interleaved (order alternating), on their own
SQLite files in a temp dir, over the same entries: the shapes the agent records per sealed
batch (reception.received, transmission.published, transmission.puback), plus an alarm step
every 50 batches. The two files must end up with identical rows (checked), and both verify.

    .venv/bin/python bench/eventlog_bench.py [--entries 6000] [--rounds 7] [--batch 300]
                                             [--synchronous NORMAL|FULL] [--json FILE]

Prints the median us/entry per side (wall, and thread CPU for the thread side) and the
OLD/NEW ratio. synchronous=NORMAL by default: an fsync is not GIL time, and only adds noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.agent.recorder import EventRecorder  # noqa: E402
from edge_agent.eventlog import EventLog, EventLogFile, chain, kinds  # noqa: E402
from edge_agent.eventlog.store import _ENTRY_COLUMNS, to_ms  # noqa: E402
from protocol import cbor, crypto  # noqa: E402
from protocol.errors import ValidationError  # noqa: E402

GATEWAY = "gw-0001"
T0 = 1_700_000_000.0

# ============================================================ FROZEN BASELINE (OLD)
# Copied from commit 41578f5 (edge_agent/eventlog/kinds.py, chain.py, store.py and
# edge_agent/agent/recorder.py) before the batch path; never imported by the package.

_OLD_B64_RUN = re.compile(r"[A-Za-z0-9+/_=-]{43,}")
_OLD_HEX_RUN = re.compile(r"[0-9a-fA-F]{64,}")


def old_looks_like_blob(text: str) -> bool:
    if _OLD_HEX_RUN.search(text):
        return True
    for run in _OLD_B64_RUN.findall(text):
        if (re.search(r"[A-Z]", run) and re.search(r"[a-z]", run)
                and re.search(r"[0-9]", run)):
            return True
    return False


def old_check_blob(name: str, value: object) -> None:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, str) and old_looks_like_blob(item):
            raise ValidationError(name, "looks like a 32+ byte blob (key material?)")


def old_field_type(kind: kinds.Kind, name: str) -> kinds.FieldType | None:
    return kind.required.get(name) or kind.optional.get(name)


def old_validate_details(kind_name: object, details: object) -> dict[str, Any]:
    if not isinstance(kind_name, str) or kind_name not in kinds.KINDS:
        raise ValidationError("kind", f"unknown event kind {kind_name!r}")
    kind = kinds.KINDS[kind_name]
    if not isinstance(details, Mapping):
        raise ValidationError("details", "must be a mapping of field name to value")
    clean: dict[str, Any] = {}
    for name, value in details.items():
        if not isinstance(name, str):
            raise ValidationError("details", f"field name {name!r} is not text")
        declared = old_field_type(kind, name)
        reason = kinds._refusal(name, None) if declared is None else None
        if reason:
            raise ValidationError(name, reason)
        if isinstance(value, bytes | bytearray | memoryview):
            raise ValidationError(name, "byte strings are not journaled")
        if declared is None:
            raise ValidationError(name, f"not a field of {kind_name} (fields: "
                                        + ", ".join([*kind.required, *kind.optional]) + ")")
        try:
            value = declared.check(value)
        except ValueError as err:
            raise ValidationError(name, str(err)) from None
        if not declared.public_blob:
            old_check_blob(name, value)
        clean[name] = value
    missing = [name for name in kind.required if name not in clean]
    if missing:
        raise ValidationError(missing[0], f"required by {kind_name}")
    return clean


_old_passed_actors: set[str] = set()
_old_passed_subjects: set[str] = set()


def old_validate(kind: Any, actor: Any, subject: Any, details: Any) -> tuple[Any, ...]:
    clean = old_validate_details(kind, details)
    if not (type(actor) is str and actor in _old_passed_actors):
        if not isinstance(actor, str) or not kinds._ACTOR.match(actor):
            raise ValidationError("actor", "bad actor")
        old_check_blob("actor", actor)
        _old_passed_actors.add(actor)
    if not (type(subject) is str and subject in _old_passed_subjects):
        if not isinstance(subject, str) or not kinds._SUBJECT.match(subject):
            raise ValidationError("subject", "bad subject")
        old_check_blob("subject", subject)
        _old_passed_subjects.add(subject)
    return kind, actor, subject, clean


def old_entry_body(seq: int, time_ms: int, kind: str, actor: str, subject: str,
                   details: Mapping[str, Any]) -> bytes:
    return cbor.dumps({"seq": seq, "time": time_ms, "kind": kind, "actor": actor,
                       "subject": subject, "details": dict(details)})


def old_make_entry(prev: bytes, seq: int, time_ms: int, kind: str, actor: str, subject: str,
                   details: Mapping[str, Any]) -> chain.Entry:
    details = dict(details)
    body = old_entry_body(seq, time_ms, kind, actor, subject, details)
    return chain.Entry(seq, time_ms, kind, actor, subject, details, prev,
                       crypto.sha256(prev + body))


def old_dump(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def old_details_from_json(text: str) -> dict[str, Any]:
    details = json.loads(text, object_pairs_hook=chain._no_duplicate_keys,
                         parse_constant=chain._no_constants)
    chain._check_value(details)
    return details


def old_append(log: EventLog, kind: str, actor: str, subject: str, details: Mapping[str, Any],
               at: float | None = None) -> chain.Entry:
    kind, actor, subject, clean = old_validate(kind, actor, subject, details)
    clean = old_details_from_json(old_dump(clean))
    time_ms = to_ms(log._clock() if at is None else at)
    if time_ms < 0:
        raise ValueError("time before 1970")
    with log.batch():
        seq, prev = log.head()
        entry = old_make_entry(bytes(prev), seq + 1, time_ms, kind, actor, subject, clean)
        log._conn.execute(
            f"INSERT INTO entries ({_ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (entry.seq, entry.time, entry.kind, entry.actor, entry.subject,
             old_dump(entry.details), entry.prev, entry.hash))
    return entry


class OldRecorder:
    """EventRecorder.record and ._write as they were (queueing without the flusher)."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._pending: list[tuple[Any, ...]] = []
        self._wake = asyncio.Event()
        self._closed = False
        self.refused = 0

    def record(self, kind: str, actor: str, subject: str, details: Mapping[str, Any],
               at: float | None = None) -> bool:
        if self._closed:
            return False
        try:
            kind, actor, subject, clean = old_validate(kind, actor, subject, details)
        except ValidationError:
            self.refused += 1
            return False
        self._pending.append((kind, actor, subject, clean, at))
        self._wake.set()
        return True

    def _write(self, batch: list[tuple[Any, ...]]) -> None:
        with self._log.batch():
            for kind, actor, subject, details, at in batch:
                old_append(self._log, kind, actor, subject, details, at=at)

# ============================================================ END OF FROZEN BASELINE


def agent_entries(count: int) -> list[tuple[str, str, str, dict[str, Any], float | None]]:
    """What the agent records per sealed batch (edge_agent/service.py: _reception_entry,
    published, acknowledged; agent/alarm_path.py: _record), `count` entries in all."""
    subject = f"gateway:{GATEWAY}"
    out: list[tuple[str, str, str, dict[str, Any], float | None]] = []
    i = 0
    while len(out) < count:
        digest = crypto.sha256(i.to_bytes(8, "big")).hex()
        device = f"ox-{i % 8}"
        mid = i % 65535 + 1
        out.append(("reception.received", f"device:{device}", f"device:{device}",
                    {"device": device, "transport": "serial", "verdict": "sealed", "count": 10,
                     "digest": digest, "first_seq": 10 * i, "last_seq": 10 * i + 9,
                     "session": "0011223344556677"}, T0 + i * 0.004))
        out.append(("transmission.published", "agent", subject,
                    {"topic": f"vb/v1/gw/{GATEWAY}/up/readings/{device}", "message_id": mid,
                     "digest": digest}, None))
        out.append(("transmission.puback", "agent", subject,
                    {"digest": digest, "message_id": mid, "reason_code": 0}, None))
        if i % 50 == 0:
            out.append(("alarm.raised", "agent", f"alarm:a-{i}",
                        {"alarm_id": f"a-{i}", "grade": "red", "level": 3,
                         "patient": "p-4f7a2c", "device": device, "condition": "spo2.low"},
                        None))
        i += 1
    return out[:count]


class FixedClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def open_log(path: Path, synchronous: str, clock: FixedClock) -> EventLog:
    return EventLog.open(path, GATEWAY, bytes(range(32)), checkpoint_every=1000,
                         checkpoint_interval_s=60.0, clock=clock, synchronous=synchronous)


def timed_loop_side(record: Callable[..., bool], entries: list[tuple[Any, ...]]) -> float:
    start = time.perf_counter()
    for kind, actor, subject, details, at in entries:
        record(kind, actor, subject, details, at)
    return time.perf_counter() - start


def timed_thread_side(write: Callable[[list[Any]], None], pending: list[tuple[Any, ...]],
                      batch: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    for start in range(0, len(pending), batch):
        write(pending[start:start + batch])
    return time.perf_counter() - wall, time.thread_time() - cpu


def rows(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries ORDER BY seq").fetchall()
    finally:
        conn.close()


def run(entries_n: int, rounds: int, batch: int, synchronous: str) -> dict[str, Any]:
    entries = agent_entries(entries_n)
    samples: dict[str, list[float]] = {f"{side}_{which}": [] for side in
                                       ("loop", "thread", "thread_cpu") for which in ("old", "new")}
    with tempfile.TemporaryDirectory() as tmp:
        clocks = {"old": FixedClock(), "new": FixedClock()}
        logs = {which: open_log(Path(tmp) / f"{which}.db", synchronous, clocks[which])
                for which in ("old", "new")}
        loop = asyncio.new_event_loop()  # the recorders' asyncio.Event wants one to exist
        asyncio.set_event_loop(loop)
        old = OldRecorder(logs["old"])
        new = EventRecorder(None, logs["new"])  # type: ignore[arg-type]
        for round_no in range(rounds):
            order = ("old", "new") if round_no % 2 == 0 else ("new", "old")
            for which in order:
                recorder: Any = old if which == "old" else new
                clocks[which].now = T0 + round_no
                recorder._pending = []
                loop_s = timed_loop_side(recorder.record, entries)
                pending, recorder._pending = recorder._pending, []
                if len(pending) != len(entries):
                    raise SystemExit(f"{which}: the rule refused an entry the agent writes")
                wall_s, cpu_s = timed_thread_side(recorder._write, pending, batch)
                samples[f"loop_{which}"].append(loop_s / len(entries) * 1e6)
                samples[f"thread_{which}"].append(wall_s / len(entries) * 1e6)
                samples[f"thread_cpu_{which}"].append(cpu_s / len(entries) * 1e6)
        for log in logs.values():
            log.close()
        loop.close()
        if rows(Path(tmp) / "old.db") != rows(Path(tmp) / "new.db"):
            raise SystemExit("OLD and NEW wrote different rows: the NEW path is wrong")
        for which in ("old", "new"):
            reader = EventLogFile.open_readonly(Path(tmp) / f"{which}.db")
            report = reader.verify()
            reader.close()
            if not report.ok or report.entries != rounds * len(entries):
                raise SystemExit(f"{which} journal does not verify: {report}")
    result: dict[str, Any] = {"entries": entries_n, "rounds": rounds, "batch": batch,
                              "synchronous": synchronous}
    for name, values in samples.items():
        result[name + "_us"] = round(statistics.median(values), 2)
    for side in ("loop", "thread", "thread_cpu"):
        result[side + "_ratio"] = round(result[f"{side}_old_us"] / result[f"{side}_new_us"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=300,
                        help="entries per _write call (the recorder's flush, ~50 ms of load)")
    parser.add_argument("--synchronous", choices=("NORMAL", "FULL"), default="NORMAL")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.entries, args.rounds, args.batch, args.synchronous)
    print(f"{args.entries} entries x {args.rounds} rounds, batches of {args.batch}, "
          f"synchronous={args.synchronous}; median us/entry, OLD vs NEW (identical rows)")
    for side, label in (("loop", "loop   record()   wall"), ("thread", "thread _write()   wall"),
                        ("thread_cpu", "thread _write()   cpu ")):
        print(f"  {label}: OLD {result[side + '_old_us']:7.2f}  NEW {result[side + '_new_us']:7.2f}"
              f"  ratio {result[side + '_ratio']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
