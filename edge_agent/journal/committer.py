"""The asyncio face of the journal: grouped, durable appends from a dedicated writer thread.

`await journal.append(message)` returns the row id only after the transaction containing the
message is committed (WAL fsynced), so the caller may then acknowledge the device. Concurrent
appends share one commit: a group is committed when `group_max` items are pending or
`group_linger_s` has passed since the first of them arrived. Alarms and critical readings
(priority >= `urgent_priority`) never wait for that window nor behind queued routine items:
the writer commits them next, in their own small transaction. The event loop never blocks on
SQLite or fsync; every store operation runs on the writer thread, which owns the connection.

Urgent hand-over: a consumer registered with `hand_over_urgent` (the uplink) receives every
urgent row right after the commit that made it durable, already claimed, so an alarm goes
out without a `next_batch` round trip that would queue behind the writer's other work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from edge_agent.journal.store import (
    BudgetOutcome,
    CheckResult,
    JournalStats,
    JournalStore,
    NewMessage,
    Priority,
    QuarantineEntry,
    ReceiptResult,
    StoredMessage,
)

T = TypeVar("T")
log = logging.getLogger("vitalbridge.journal")

DAY_S = 86400.0
# While committing a routine group, look for waiting urgent items every this many rows.
CUT_EVERY = 16


@dataclass(frozen=True, slots=True)
class JournalConfig:
    retention_s: float = 365 * DAY_S
    group_max: int = 256  # items per routine commit
    group_linger_s: float = 0.005  # longest a routine item waits for company
    urgent_priority: int = Priority.CRITICAL  # this priority and above commit at once
    purge_chunk: int = 1000  # rows per purge transaction (alarms interleave between chunks)
    budget_bytes: int | None = None  # None: no disk budget enforced
    budget_target_fraction: float = 0.9
    # Thinning keeps 1 block (~thin_block_bytes of consecutive messages) in every k.
    thin_keep_every: int = 2
    thin_block_bytes: int = 64 * 1024
    quarantine_max_bytes: int = 65536
    resend_sent_on_open: bool = True  # 'sent' rows without a receipt go out again after restart

    def __post_init__(self) -> None:
        if not (math.isfinite(self.retention_s) and self.retention_s > 0):
            raise ValueError("retention_s must be positive")
        if self.group_max < 1 or self.purge_chunk < 1:
            raise ValueError("group_max and purge_chunk must be >= 1")
        if not (math.isfinite(self.group_linger_s) and self.group_linger_s >= 0):
            raise ValueError("group_linger_s must be >= 0")
        if self.thin_keep_every < 2 or self.thin_block_bytes < 1:
            raise ValueError("thin_keep_every must be >= 2 and thin_block_bytes >= 1")
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise ValueError("budget_bytes must be positive or None")


class JournalClosedError(RuntimeError):
    """The journal is closed (or its writer died); nothing more can be journaled."""


@dataclass(slots=True, eq=False)
class _Job:
    """One unit of work for the writer: an item to journal, or a call on the store."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    item: NewMessage | QuarantineEntry | None = None
    call: Callable[[JournalStore], Any] | None = None


def _settle(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """Runs on the event loop: hand results to the awaiting coroutines."""
    for future, value, error in results:
        if future.done():  # the caller gave up (cancelled); the row is journaled anyway
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


class Journal:
    """Open with `await Journal.open(path)` (or `async with await Journal.open(...)`)."""

    def __init__(self, path: str | os.PathLike[str], config: JournalConfig | None = None) -> None:
        self.path = path
        self.config = config or JournalConfig()
        self._cond = threading.Condition()
        self._urgent: deque[_Job] = deque()
        self._routine: deque[_Job] = deque()
        self._calls: deque[_Job] = deque()
        self._routine_since = 0.0  # monotonic time the oldest pending routine item arrived
        self._closing = False
        self._dead: BaseException | None = None
        self._store: JournalStore | None = None
        self._thread: threading.Thread | None = None
        self._stored_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._urgent_consumer: Callable[[list[StoredMessage]], None] | None = None
        self._hand_over_missed = False
        self._urgent_committing = False  # the writer is committing urgent items
        self._hand_overs_posted = 0  # hand-overs posted to the loop, not yet run

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], config: JournalConfig | None = None
    ) -> Journal:
        journal = cls(path, config)
        await journal._start()
        return journal

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stored_event = asyncio.Event()
        opened: asyncio.Future[None] = loop.create_future()
        self._stopped = loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(loop, opened), name="journal-writer", daemon=True
        )
        self._thread.start()
        await opened

    async def close(self) -> None:
        """Commit everything already submitted, then close the file."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._stopped is not None:
            await asyncio.shield(self._stopped)

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- journaling -------------------------------------------------------------------------

    async def append(self, message: NewMessage) -> int:
        """Journal one message; returns its row id once it is durable on disk."""
        return await self._submit_item(message)

    async def append_many(self, messages: Sequence[NewMessage]) -> list[int]:
        """Journal several messages (committed together when they fit one group)."""
        futures = self._submit_items(messages)
        return list(await asyncio.gather(*futures))

    async def quarantine(self, entry: QuarantineEntry) -> int:
        """Keep invalid input as evidence (never forwarded); returns the quarantine row id."""
        return await self._submit_item(entry)

    async def _submit_item(self, item: NewMessage | QuarantineEntry) -> int:
        (future,) = self._submit_items([item])
        return await future

    def _submit_items(
        self, items: Sequence[NewMessage | QuarantineEntry]
    ) -> list[asyncio.Future[int]]:
        loop = asyncio.get_running_loop()
        for item in items:  # validated at construction; refuse anything else before queueing
            if not isinstance(item, NewMessage | QuarantineEntry):
                raise TypeError(f"cannot journal {type(item).__name__}")
        jobs = [_Job(loop, loop.create_future(), item=item) for item in items]
        with self._cond:
            self._check_open()
            wake = False
            for job in jobs:
                if self._is_urgent(job.item):
                    self._urgent.append(job)
                    wake = True
                else:
                    if not self._routine:
                        self._routine_since = time.monotonic()
                        wake = True  # the writer may be in an untimed wait
                    self._routine.append(job)
                    if len(self._routine) == self.config.group_max:
                        wake = True
            if wake:
                self._cond.notify()
        return [job.future for job in jobs]

    def _is_urgent(self, item: NewMessage | QuarantineEntry | None) -> bool:
        return isinstance(item, NewMessage) and item.priority >= self.config.urgent_priority

    def _check_open(self) -> None:
        if self._dead is not None:
            raise JournalClosedError("journal writer failed") from self._dead
        if self._closing or self._thread is None:
            raise JournalClosedError("journal is closed")

    async def _call(self, call: Callable[[JournalStore], T]) -> T:
        """Run `call(store)` on the writer thread, between commits."""
        return await self._call_soon(call)

    def _call_soon(self, call: Callable[[JournalStore], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        job = _Job(loop, loop.create_future(), call=call)
        with self._cond:
            self._check_open()
            self._calls.append(job)
            self._cond.notify()
        return job.future

    # -- delivery ---------------------------------------------------------------------------

    async def next_batch(
        self, limit: int = 256, max_bytes: int = 256 * 1024
    ) -> list[StoredMessage]:
        """Claim stored messages for publishing: alarms, then critical, then oldest first.
        Claimed rows stay in flight until mark_sent / mark_received / release."""
        # An urgent insert arriving meanwhile cuts the claim short (JournalStore.next_batch).
        claim = self._call_soon(
            lambda store: store.next_batch(limit, max_bytes, stop=self._urgent_waiting)
        )
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            # The claim happens on the writer anyway; give the rows back so they are not
            # stranded in flight until the next restart.
            claim.add_done_callback(self._release_abandoned)
            raise

    def _release_abandoned(self, claim: asyncio.Future[list[StoredMessage]]) -> None:
        if claim.cancelled() or claim.exception() is not None:
            return
        ids = [m.id for m in claim.result()]
        if ids:
            with contextlib.suppress(JournalClosedError):
                self._call_soon(lambda store: store.release(ids, failed=False))

    def hand_over_urgent(
        self, consumer: Callable[[list[StoredMessage]], None] | None
    ) -> None:
        """Register (or, with None, detach) the receiver of urgent rows: called on the event
        loop after each commit with the urgent rows it made durable that are `stored` and not
        yet claimed, claimed for it (give them back with `release`, like `next_batch` rows).
        Rows in transit when the consumer changes are released, never stranded."""
        self._urgent_consumer = consumer

    def take_missed_hand_over(self) -> bool:
        """True (once) if urgent rows were committed but could not be handed over: the
        consumer must then claim them with `next_batch`."""
        missed, self._hand_over_missed = self._hand_over_missed, False
        return missed

    def urgent_busy(self) -> bool:
        """True while an urgent item is on its way from `append` to the hand-over consumer:
        queued for the writer, being committed, or committed and waiting for the event loop.
        The uplink ends its routine slice early then, so the loop gets to the hand-over (and
        to the readings behind the next alarm) without waiting out the slice. Read without
        the lock: a stale answer costs one publish either way."""
        return bool(self._urgent) or self._urgent_committing or self._hand_overs_posted > 0

    def _urgent_waiting(self) -> bool:
        return bool(self._urgent)

    def _hand_over(self, store: JournalStore, rows: list[tuple[Any, ...]]) -> None:
        """Writer thread, after a commit: claim the committed urgent rows (as their inserts
        returned them, no read back) for the consumer."""
        consumer, loop = self._urgent_consumer, self._loop
        if consumer is None or loop is None:
            return
        try:
            claimed = store.claim_rows(rows)
        except Exception:  # the rows are durable: the consumer must look for them itself
            log.exception("urgent hand-over could not claim %d committed rows", len(rows))
            self._hand_over_missed = True
            return
        if claimed:
            with self._cond:
                self._hand_overs_posted += 1
            if not self._post_call(loop, lambda: self._deliver_urgent(consumer, claimed)):
                with self._cond:
                    self._hand_overs_posted -= 1

    def _deliver_urgent(
        self, consumer: Callable[[list[StoredMessage]], None], rows: list[StoredMessage]
    ) -> None:
        """Event loop: hand the rows over, or give them back if the consumer is gone."""
        with self._cond:
            self._hand_overs_posted -= 1
        if self._urgent_consumer is consumer:
            try:
                consumer(rows)
                return
            except Exception:
                log.exception("urgent hand-over failed; %d rows released", len(rows))
        ids = [row.id for row in rows]
        with contextlib.suppress(JournalClosedError):
            self._call_soon(lambda store: store.release(ids, failed=False))

    async def mark_sent(self, ids: Iterable[int], at: float | None = None) -> int:
        ids = list(ids)
        when = time.time() if at is None else at
        return await self._call(lambda store: store.mark_sent(ids, when))

    async def release(self, ids: Iterable[int], failed: bool = True) -> int:
        ids = list(ids)
        return await self._call(lambda store: store.release(ids, failed))

    async def mark_received(
        self, digests: Iterable[bytes], at: float | None = None
    ) -> ReceiptResult:
        digests = list(digests)
        when = time.time() if at is None else at
        return await self._call(lambda store: store.mark_received(digests, when))

    async def revert_unsent(self, sent_before: float | None = None) -> int:
        return await self._call(lambda store: store.revert_unsent(sent_before))

    async def wait_for_stored(self, timeout: float | None = None) -> bool:
        """Wait until some message was committed since the last call; False on timeout.
        Lets the uplink sleep instead of polling next_batch."""
        assert self._stored_event is not None
        try:
            await asyncio.wait_for(self._stored_event.wait(), timeout)
        except TimeoutError:
            return False
        self._stored_event.clear()
        return True

    # -- housekeeping and observation -------------------------------------------------------

    async def purge(self, now: float | None = None) -> int:
        """Delete every received message (and quarantined input) past retention, chunk by
        chunk so urgent commits slip in between. Returns the number of rows deleted."""
        when = time.time() if now is None else now
        total = 0
        while True:
            deleted = await self._call(
                lambda store: store.purge(when, self.config.retention_s, self.config.purge_chunk)
            )
            total += deleted
            if deleted < self.config.purge_chunk:
                return total

    async def enforce_budget(self, now: float | None = None) -> BudgetOutcome | None:
        """Apply the disk budget (None when no budget is configured). Raise a technical alarm
        for each returned action, and another when `over_budget` stays true."""
        budget = self.config.budget_bytes
        if budget is None:
            return None
        when = time.time() if now is None else now
        return await self._call(
            lambda store: store.enforce_budget(
                budget,
                when,
                keep_every=self.config.thin_keep_every,
                block_bytes=self.config.thin_block_bytes,
                target_fraction=self.config.budget_target_fraction,
            )
        )

    async def stats(self, now: float | None = None) -> JournalStats:
        when = time.time() if now is None else now
        return await self._call(lambda store: store.stats(when))

    async def check(self, full: bool = False) -> CheckResult:
        return await self._call(lambda store: store.check(full))

    @property
    def commits(self) -> int:
        """Write transactions committed since open."""
        return 0 if self._store is None else self._store.commits

    # -- the writer thread ------------------------------------------------------------------

    def _run(self, loop: asyncio.AbstractEventLoop, opened: asyncio.Future[None]) -> None:
        try:
            store = JournalStore.open(
                self.path, quarantine_max_bytes=self.config.quarantine_max_bytes
            )
            if self.config.resend_sent_on_open:
                store.revert_unsent()
        except BaseException as exc:
            with self._cond:
                self._dead = exc
            self._post(loop, [(opened, None, exc)])
            self._post(loop, [(self._stopped, None, None)])
            return
        self._store = store
        self._post(loop, [(opened, None, None)])
        try:
            while True:
                work = self._next_work()
                if work is None:
                    break
                kind, jobs = work
                if kind == "call":
                    self._run_call(store, jobs[0])
                elif kind == "urgent":
                    self._urgent_committing = True  # cleared by _commit, also on failure
                    self._commit(store, jobs)
                else:
                    self._commit(store, jobs, may_cut=True)
        except BaseException as exc:  # a bug or an unusable file: fail loudly, lose nothing
            with self._cond:
                self._dead = exc
                pending = [*self._urgent, *self._calls, *self._routine]
                self._urgent.clear()
                self._calls.clear()
                self._routine.clear()
            self._settle_jobs(pending, None, JournalClosedError("journal writer failed"))
        finally:
            store.close()
            self._post(loop, [(self._stopped, None, None)])

    def _next_work(self) -> tuple[str, list[_Job]] | None:
        """Block until there is something to do: urgent items first, then calls, then a
        routine group once it is full, has lingered long enough, or the journal closes."""
        cfg = self.config
        with self._cond:
            while True:
                if self._urgent:
                    return "urgent", _pop(self._urgent, cfg.group_max)
                if self._calls:
                    return "call", [self._calls.popleft()]
                if self._routine:
                    wait = self._routine_since + cfg.group_linger_s - time.monotonic()
                    if self._closing or len(self._routine) >= cfg.group_max or wait <= 0:
                        jobs = _pop(self._routine, cfg.group_max)
                        # Leftovers have already waited a whole commit: due at once.
                        self._routine_since = -math.inf
                        return "routine", jobs
                    self._cond.wait(wait)
                    continue
                if self._closing:
                    return None
                self._cond.wait()

    def _commit(self, store: JournalStore, jobs: list[_Job], may_cut: bool = False) -> None:
        """Commit `jobs` as one group. If urgent items arrive meanwhile and `may_cut`, the
        group is cut at the next CUT_EVERY boundary: they join its commit and the rest goes
        back to the head of the routine queue — an alarm waits for a few inserts, not for a
        whole group."""
        done: list[_Job] = []
        ids: list[int] = []
        leftover: list[_Job] = []
        urgent_rows: list[tuple[Any, ...]] = []  # as inserted, for the hand-over
        hand_over = self._urgent_consumer is not None
        try:
            with store.group() as add:

                def insert(item: NewMessage | QuarantineEntry) -> int:
                    if hand_over and self._is_urgent(item):
                        row = store.insert_row(item)  # type: ignore[arg-type]
                        urgent_rows.append(row)
                        return int(row[0])
                    return add(item)

                for n, job in enumerate(jobs, 1):
                    ids.append(insert(job.item))  # type: ignore[arg-type]
                    done.append(job)
                    if may_cut and n % CUT_EVERY == 0 and n < len(jobs) and self._urgent:
                        self._urgent_committing = True  # cleared once handed over, below
                        for urgent in self._take_urgent():
                            ids.append(insert(urgent.item))  # type: ignore[arg-type]
                            done.append(urgent)
                        leftover = jobs[n:]
                        break
        except Exception as exc:
            self._urgent_committing = False
            done_ids = {id(j) for j in done}
            involved = done + [j for j in jobs if id(j) not in done_ids]
            if len(involved) == 1:
                self._settle_jobs(involved, None, exc)
                return
            # One bad item must not sink its neighbours: retry each alone.
            for job in involved:
                self._commit(store, [job])
            return
        # The hand-over is posted before the results, and the "urgent under way" flag cleared
        # between the two: whoever sees an append's result sees the flag's final state.
        if urgent_rows:
            self._hand_over(store, urgent_rows)
        elif not hand_over and self._urgent_consumer is not None:
            if any(self._is_urgent(j.item) for j in done):  # registered during the commit
                self._hand_over_missed = True
        self._urgent_committing = False
        self._post_by_loop(done, [(j.future, i, None) for j, i in zip(done, ids, strict=True)])
        if leftover:
            with self._cond:
                self._routine.extendleft(reversed(leftover))
                self._routine_since = -math.inf  # they have waited already: due at once
        if any(isinstance(j.item, NewMessage) for j in done):
            loop, event = self._loop, self._stored_event
            if loop is not None and event is not None:
                self._post_call(loop, event.set)

    def _take_urgent(self) -> list[_Job]:
        with self._cond:
            return _pop(self._urgent, self.config.group_max)

    def _run_call(self, store: JournalStore, job: _Job) -> None:
        assert job.call is not None
        try:
            value = job.call(store)
        except Exception as exc:
            self._settle_jobs([job], None, exc)
            return
        self._settle_jobs([job], value, None)

    def _settle_jobs(self, jobs: list[_Job], value: Any, error: BaseException | None) -> None:
        self._post_by_loop(jobs, [(j.future, value, error) for j in jobs])

    def _post_by_loop(
        self,
        jobs: list[_Job],
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
    ) -> None:
        # One wake-up per event loop per group, not one per item.
        loop_of = {id(j.future): j.loop for j in jobs}
        by_loop: dict[int, tuple[asyncio.AbstractEventLoop, list[Any]]] = {}
        for result in results:
            loop = loop_of[id(result[0])]
            by_loop.setdefault(id(loop), (loop, []))[1].append(result)
        for loop, batch in by_loop.values():
            self._post(loop, batch)

    @staticmethod
    def _post(
        loop: asyncio.AbstractEventLoop,
        results: list[tuple[asyncio.Future[Any] | None, Any, BaseException | None]],
    ) -> None:
        Journal._post_call(loop, lambda: _settle([r for r in results if r[0] is not None]))

    @staticmethod
    def _post_call(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> bool:
        try:
            loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            return False
        return True


def _pop(queue: deque[_Job], n: int) -> list[_Job]:
    return [queue.popleft() for _ in range(min(n, len(queue)))]
