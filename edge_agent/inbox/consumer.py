"""The running agent's side of the inbox: poll, hand each entry to its kind's handler, record
the outcome exactly once (store.py says how a kill -9 is survived).

A handler has two steps:
  prepare(entry, body) -> prepared work (JSON-able) or Refused(reason)   [event loop, sync]
  apply(entry, body, prepared) -> note                                  [async, idempotent]
`prepare` runs once per entry (its result is stored before anything else happens); `apply`
may run again after a crash, with the same prepared work. A refusal (`Refused`, or a
ValidationError raised by prepare) is an outcome; any other exception is a failure of the
gateway itself (journal, registry): logged, and the entry is tried again at the next poll,
so nothing accepted is lost while the agent runs degraded.

The SQLite connection lives on one worker thread: the event loop never waits on a commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from edge_agent.inbox import entries
from edge_agent.inbox.store import ACCEPTED, REFUSED, Entry, InboxStore
from edge_agent.logging_setup import redact
from protocol.errors import ValidationError

log = logging.getLogger("vitalbridge.inbox")

POLL_S = 0.2
HEARTBEAT_S = 5.0
RETRY_LOG_S = 60.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


class Handler(Protocol):
    def prepare(self, entry: Entry, body: dict[str, Any]) -> Any:
        """The work to make durable (JSON-able), or Refused(reason)."""
        ...

    def apply(self, entry: Entry, body: dict[str, Any], prepared: Any) -> Awaitable[str]:
        """Do the prepared work (idempotently) -> a short note for the outcome."""
        ...


class InboxConsumer:
    def __init__(self, data_dir: Path, handlers: dict[str, Handler], *, poll_s: float = POLL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.data_dir = data_dir
        self.handlers = handlers
        self.poll_s = poll_s
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inbox")
        self._store: InboxStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._beat_at = float("-inf")
        self._failing: dict[str, float] = {}  # entry id -> when its failure was last logged
        self.processed = 0

    async def _call(self, call: Callable[[InboxStore], T]) -> T:
        store = self._store
        assert store is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, store)

    async def start(self) -> None:
        """Open the inbox and process what waits in it (entries written while the agent
        was stopped) before returning; then poll every `poll_s`."""
        loop = asyncio.get_running_loop()
        self._store = await loop.run_in_executor(self._executor, InboxStore.open, self.data_dir)
        await self.run_once()
        self._task = asyncio.create_task(self._poll(), name="inbox")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._store is not None:
            await self._call(InboxStore.close)
            self._store = None
        self._executor.shutdown(wait=True)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("inbox poll failed; trying again")
                await asyncio.sleep(1.0)

    async def run_once(self) -> int:
        """Process every open entry once -> how many got their outcome."""
        now = self._clock()
        if now - self._beat_at >= HEARTBEAT_S:
            self._beat_at = now
            await self._call(lambda store: store.heartbeat(now))
        done = 0
        for entry in await self._call(InboxStore.open_entries):
            try:
                if await self._process(entry):
                    done += 1
            except Exception as exc:  # the gateway failed, not the entry: retry later
                last = self._failing.get(entry.id)
                if last is None or self._clock() - last >= RETRY_LOG_S:
                    self._failing[entry.id] = self._clock()
                    log.error("inbox entry %s (%s) not processed yet: %s: %s", entry.id,
                              entry.kind, type(exc).__name__, redact(str(exc)))
        self.processed += done
        return done

    async def _process(self, entry: Entry) -> bool:
        handler = self.handlers.get(entry.kind)
        if handler is None:
            return await self._finish(entry, REFUSED, f"unknown kind {entry.kind!r}")
        try:
            body = entries.validate(entry.kind, entry.body)
        except ValidationError as exc:
            return await self._finish(entry, REFUSED, f"{exc.field}: {exc.reason}")
        prepared = entry.prepared
        if prepared is None:
            try:
                result = handler.prepare(entry, body)
            except ValidationError as exc:
                result = Refused(f"{exc.field}: {exc.reason}")
            if isinstance(result, Refused):
                return await self._finish(entry, REFUSED, result.reason)
            stored = await self._call(lambda store: store.prepare(entry.id, result))
            prepared = stored.prepared
        note = await handler.apply(entry, body, prepared)
        return await self._finish(entry, ACCEPTED, note)

    async def _finish(self, entry: Entry, outcome: str, reason: str) -> bool:
        at = self._clock()
        recorded = await self._call(lambda store: store.finish(entry.id, outcome, reason, at))
        self._failing.pop(entry.id, None)
        level = logging.INFO if outcome == ACCEPTED else logging.WARNING
        log.log(level, "inbox entry %s (%s by %s) %s: %s", entry.id, entry.kind,
                redact(entry.actor), outcome, redact(reason))
        return recorded
