"""The readings journaled shortly before a restart, for Evaluator.rebuild (I/O).

The reading journal is the single source of truth for what the rules saw: every reading the
live path evaluated was journaled (verified or attested first), with the wall time it arrived.
Rebuilding the rules' time-built state from it needs no extra write per reading, and gives the
same state the live evaluator had (same readings, same order, same times).

Two halves, because they run on different threads: `journaled_batches` reads and decodes the
journal file (read-only SQLite connection, safe on a worker thread while the journal writes);
`rule_readings_of` maps the batches to the rules' readings with the device directory, on the
event loop like the live path (pipeline/verifier.rule_readings, the same function).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.alarms.evaluator import Reading
from edge_agent.export.source import decode_message
from edge_agent.pipeline.directory import DeviceDirectory
from edge_agent.pipeline.verifier import rule_readings
from protocol import senml, topics
from protocol.errors import ProtocolError

log = logging.getLogger("vitalbridge.agent.alarms")

MANUAL_VERDICT = "manual"  # pipeline/attest.MANUAL: values a person entered


@dataclass(frozen=True, slots=True)
class JournaledBatch:
    device_id: str
    manual: bool
    readings: tuple[senml.Reading, ...]


def journaled_batches(journal_path: Path, since: float) -> list[JournaledBatch]:
    """Reading messages received at or after `since` (gateway wall time), in journal order.
    A row that cannot be decoded is logged and left out (it was quarantine-worthy bytes the
    live path could not have evaluated either)."""
    if not journal_path.is_file():
        return []
    conn = sqlite3.connect(journal_path.resolve().as_uri() + "?mode=ro", uri=True,
                           isolation_level=None)
    batches: list[JournaledBatch] = []
    skipped: list[int] = []
    first_reason = ""
    try:
        rows = conn.execute(
            "SELECT id, device_id, payload, verdict FROM messages "
            "WHERE kind = ? AND received_at >= ? ORDER BY id", (topics.UP_READINGS, since))
        for row_id, device_id, payload, verdict in rows:
            try:
                claimed, decoded = decode_message(bytes(payload))
            except ProtocolError as exc:
                skipped.append(row_id)
                first_reason = first_reason or str(exc)
                continue
            batches.append(JournaledBatch(device_id or claimed, verdict == MANUAL_VERDICT,
                                          tuple(decoded)))
    finally:
        conn.close()
    if skipped:  # one line, not one per row: a long backlog must not flood the log at start
        log.warning("%d journal rows (ids %d..%d) not used to rebuild the rules; first: %s",
                    len(skipped), skipped[0], skipped[-1], first_reason)
    return batches


def rule_readings_of(batches: Iterable[JournaledBatch], directory: DeviceDirectory
                     ) -> list[Reading]:
    """The rules' readings of the batches, bound to the patient at each reading's time."""
    out: list[Reading] = []
    for batch in batches:
        readings, _ = rule_readings(directory, batch.device_id, batch.readings,
                                    manual=batch.manual)
        out.extend(readings)
    return out
