"""The tamper-evident event journal (edge_agent.eventlog) as the event loop uses it.

`EventLog.append` is one SQLite transaction with an fsync: called on the event loop for every
transmission it would stall ingest. `EventRecorder.record()` therefore only validates the
entry (kinds.py: a bug that would put a key or a patient value into the journal is refused
here, in the caller's frame) and queues it; a flusher task hands the queue to one worker
thread that writes it as one `batch()` — one transaction, one fsync for many entries.

Ordering: entries are written in the order they were recorded. Durability: an entry is
durable once the batch holding it is committed (at most `flush_interval_s` plus a commit
later); a crash loses at most that window of *audit* entries, never a reading (those are in
the reading journal, committed before any acknowledgement). `close()` writes what is queued
and signs the tail (EventLog.close), so a graceful stop leaves everything covered.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from edge_agent.eventlog import Checkpoint, EventLog, EventLogStats
from edge_agent.eventlog import kinds as event_kinds
from edge_agent.eventlog.store import ValidatedEvent, to_ms
from protocol.errors import ValidationError

log = logging.getLogger("vitalbridge.agent.eventlog")
_TIME_LIMIT_MS = 1 << 53
# A float time in [0, this) always passes _check_time: round(at * 1000) < 2**53 ms.
_PLAIN_TIME_LIMIT_S = 9.0e12


def _check_time(at: object) -> None:
    """An entry's time must be one the journal can hold and read back (chain.py: integer ms
    in 0..2**53-1): refused here, an entry the batch write cannot take would fail every
    retry of its batch and hold up every entry recorded after it."""
    if (isinstance(at, bool) or not isinstance(at, int | float)
            or (isinstance(at, float) and not math.isfinite(at))
            # outside these bounds to_ms is out of range anyway (or overflows, 1e306)
            or not -1 <= at <= _TIME_LIMIT_MS
            or not 0 <= to_ms(at) < _TIME_LIMIT_MS):
        raise ValidationError("at", f"time {at!r} is not seconds since 1970 the journal holds")


class EventRecorder:
    """Queue in front of an EventLog; `await EventRecorder.open(...)`, `record()`, `close()`."""

    def __init__(self, executor: ThreadPoolExecutor, event_log: EventLog, *,
                 flush_interval_s: float = 0.05, max_batch: int = 1024) -> None:
        self._executor = executor
        self._log = event_log
        self._flush_interval_s = flush_interval_s
        self._max_batch = max_batch
        self._pending: list[ValidatedEvent] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._closing = False  # close() asks the flusher to finish instead of cancelling it
        self.written = 0
        self.refused = 0

    @classmethod
    async def open(cls, path: Path, gateway_id: str, seed: bytes, *, checkpoint_every: int,
                   checkpoint_interval_s: float,
                   on_checkpoint: Callable[[Checkpoint], None] | None = None,
                   flush_interval_s: float = 0.05) -> EventRecorder:
        """Open (or create) the event journal on its own worker thread. `on_checkpoint`
        runs on that thread after each checkpoint is committed: hand it to the loop."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventlog")
        loop = asyncio.get_running_loop()
        try:
            event_log = await loop.run_in_executor(executor, lambda: EventLog.open(
                path, gateway_id, seed, checkpoint_every=checkpoint_every,
                checkpoint_interval_s=checkpoint_interval_s, on_checkpoint=on_checkpoint))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        recorder = cls(executor, event_log, flush_interval_s=flush_interval_s)
        recorder._task = asyncio.create_task(recorder._flusher(), name="eventlog-flusher")
        return recorder

    def record(self, kind: str, actor: str, subject: str, details: Mapping[str, Any],
               at: float | None = None) -> bool:
        """Queue one entry; False (and an error log) when the rule refuses it."""
        if self._closed:
            log.error("event %s recorded after the event journal was closed", kind)
            return False
        try:
            kind, actor, subject, clean = event_kinds.validate(kind, actor, subject, details)
            if at is not None and not (type(at) is float and 0.0 <= at < _PLAIN_TIME_LIMIT_S):
                _check_time(at)  # the full test for all but a plain float seconds value
        except ValidationError as exc:
            self.refused += 1
            log.error("event %s refused by the event journal's rule: %s", kind, exc)
            return False
        self._pending.append((kind, actor, subject, clean, at))
        self._wake.set()
        return True

    async def _flusher(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            if not self._closing:
                await asyncio.sleep(self._flush_interval_s)  # let a burst share one commit
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued so far (one transaction per `max_batch` entries)."""
        while self._pending:
            batch, self._pending = self._pending[:self._max_batch], self._pending[self._max_batch:]
            try:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._write,
                                                                 batch)
            except Exception:
                log.exception("event journal write failed; %d entries kept for a retry",
                              len(batch))
                self._pending[:0] = batch
                return
            self.written += len(batch)

    def _write(self, batch: list[ValidatedEvent]) -> None:
        # record() validated every entry: the trusted batch path does not check them again.
        self._log.append_validated(batch)

    async def _call(self, call: Callable[[EventLog], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, self._log)

    async def maybe_checkpoint(self) -> Checkpoint | None:
        """Sign the uncovered entries if due by count or age (called from a timer)."""
        await self.flush()
        return await self._call(lambda event_log: event_log.maybe_checkpoint())

    async def stats(self) -> EventLogStats:
        return await self._call(lambda event_log: event_log.stats())

    async def latest_checkpoint(self) -> Checkpoint | None:
        """The newest signed checkpoint in the file (republished at start-up)."""
        def newest(event_log: EventLog) -> Checkpoint | None:
            covered = event_log.stats().covered_through
            found = event_log.checkpoints(covered, covered) if covered else []
            return found[-1] if found else None
        return await self._call(newest)

    async def close(self) -> None:
        """Write what is queued, sign the tail and close the file."""
        if self._closed:
            return
        # Never cancel the flusher: cancelled while it waits for the worker thread, the batch
        # it took from the queue is neither written (the job is dropped) nor queued again.
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()
        self._closed = True
        try:
            await self._call(lambda event_log: event_log.close())
        finally:
            self._executor.shutdown(wait=True)
