"""The delivery loop: journal rows out over MQTT, PUBACKs and receipts back into the journal.

    stored ─next_batch─▶ claimed ─publish─▶ in flight ─PUBACK ok─▶ sent ─receipt─▶ received
                           │                    ├─ PUBACK refused: stream paused, alarm, released
                           │                    └─ link down: released (re-sent after reconnect)
                           └─ stream paused / rejected by the centre: parked (claimed, not sent)
    sent ──no receipt within receipt_timeout_s──▶ stored again (at-least-once; centre dedups)

Window. At most `max_in_flight` messages (and `max_in_flight_bytes`) await a PUBACK, never more
than the broker's Receive Maximum allows. `urgent_reserve` of those slots are reserved for
priority >= 1 (critical readings, alarms): routine rows never fill them, so an alarm committed
while a backlog drains is published at once instead of waiting for a routine PUBACK. Rows are
claimed ahead (`prefetch`) into two ready lanes, urgent and routine, so a freed slot is refilled
from memory. A newly committed urgent row is handed over by the journal itself, already claimed
(`Journal.hand_over_urgent`), so it skips the claim round trip; small urgent claims remain for
rows that become eligible again (releases, reconnects, receipt timeouts). Routine publishing may
use at most `routine_cpu_share` of the event loop's time, so a drain leaves room for ingest and
alarms. At most `max_unconfirmed` routine messages may await their receipt (end-to-end flow
control).

Journal writes are batched: PUBACKs, releases and receipts are buffered and written by one
flusher task (one transaction per kind per flush), never one fsync per message.

Everything here runs on the event loop; the link's events arrive through `_on_events`.
docs/uplink.md has the full policy and every PUBACK reason code.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from edge_agent.journal import (
    Journal,
    JournalClosedError,
    Priority,
    QuarantineEntry,
    StoredMessage,
)
from edge_agent.uplink.mqtt_link import (
    ConnectFailed,
    Inbound,
    LinkDown,
    LinkEvent,
    LinkProblem,
    LinkUp,
    PubAck,
    PubackOutcome,
    Queued,
    classify_puback,
)
from protocol import topics, uplink
from protocol.errors import ProtocolError

log = logging.getLogger("vitalbridge.uplink.delivery")


class Link(Protocol):
    """What the delivery loop needs from a connection (MqttLink, or a fake in tests)."""

    receipt_topic: str

    def start(self, handler: Callable[[list[LinkEvent]], None]) -> None: ...

    def publish(
        self,
        topic: str,
        payload: bytes,
        correlation: bytes | None = None,
        response_topic: str | None = None,
    ) -> Queued: ...

    async def close(self, timeout: float = 5.0) -> None: ...


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    gateway_id: str
    max_in_flight: int = 64
    max_in_flight_bytes: int = 1 << 20
    urgent_reserve: int = 8  # window slots only priority >= 1 may use
    # Rows claimed ahead of the window, so a freed slot is refilled without a journal round
    # trip (which may wait behind a commit's fsync).
    prefetch: int = 256
    prefetch_bytes: int = 1 << 20
    # Rows per routine claim: each claim is one job on the journal's writer thread, and an
    # alarm's commit waits for the job in progress, so claims are kept short.
    claim_chunk: int = 64
    # End-to-end flow control: routine messages sent but not yet confirmed by a receipt. A
    # centre slower than the gateway then slows the gateway down instead of filling the
    # broker's queue for it (mosquitto drops QoS 1 messages past max_queued_messages, after
    # having PUBACKed them). Urgent messages ignore the limit.
    max_unconfirmed: int = 4096
    flush_interval_s: float = 0.02  # longest a PUBACK/receipt waits to be journaled...
    flush_threshold: int = 256  # ...unless this many are waiting
    receipt_timeout_s: float = 300.0  # a sent row without receipt after this goes out again
    sweep_interval_s: float = 30.0
    refusal_retry_s: float = 300.0  # paused stream retried after a lasting refusal (0x87...)
    transient_retry_s: float = 5.0  # ...after a transient one (quota exceeded...)
    urgent_retry_s: float = 5.0  # alarms and critical streams are retried at least this often
    stop_timeout_s: float = 5.0
    # CPU share: routine publishing (paho's publish, the observers) may use at most this
    # fraction of the event loop's time, measured, so a backlog drain leaves the loop free
    # for ingest, rules and alarms (which are never limited). 1.0 = no limit.
    routine_cpu_share: float = 0.35
    routine_burst_s: float = 0.003  # loop time routine publishing may use in one go

    def __post_init__(self) -> None:
        topics.check_id("gateway_id", self.gateway_id)
        for name in (
            "max_in_flight", "max_in_flight_bytes", "prefetch", "prefetch_bytes",
            "claim_chunk", "max_unconfirmed", "flush_threshold",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 <= self.urgent_reserve < self.max_in_flight:
            raise ValueError("urgent_reserve must be in [0, max_in_flight)")
        if not (math.isfinite(self.routine_cpu_share) and 0 < self.routine_cpu_share <= 1):
            raise ValueError("routine_cpu_share must be in (0, 1]")
        if not (math.isfinite(self.routine_burst_s) and self.routine_burst_s > 0):
            raise ValueError("routine_burst_s must be a finite number > 0")
        for name in (
            "flush_interval_s", "receipt_timeout_s", "sweep_interval_s", "refusal_retry_s",
            "transient_retry_s", "urgent_retry_s", "stop_timeout_s",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0")


@dataclass(frozen=True, slots=True)
class TechnicalAlarm:
    """A condition for the alarm component to raise as a technical (blue) alarm."""

    # publish-refused | receipt-rejected | link-problem | journal-error | corrupt-row
    condition: str
    text: str
    topic: str | None = None
    reason_code: int | None = None
    digest: bytes | None = None


# -- latency statistics (plain data for the metrics module) ------------------------------------

LATENCY_BUCKETS_S = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    buckets: tuple[tuple[float, int], ...]  # (upper bound s, cumulative count); last is +inf
    count: int
    sum_s: float
    # the most recent samples, oldest first (exact recent quantiles)
    recent: tuple[float, ...] = field(repr=False)

    def quantile(self, q: float) -> float | None:
        """Exact quantile of the recent samples (nearest rank), None without samples."""
        if not self.recent:
            return None
        ordered = sorted(self.recent)
        rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        return ordered[rank]


class LatencyHistogram:
    def __init__(self, bounds: Iterable[float] = LATENCY_BUCKETS_S, recent: int = 2048) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._recent: deque[float] = deque(maxlen=recent)

    def observe(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self._sum += seconds
        self._recent.append(seconds)

    def snapshot(self) -> HistogramSnapshot:
        cumulative, running = [], 0
        for bound, n in zip((*self.bounds, math.inf), self._counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return HistogramSnapshot(tuple(cumulative), running, self._sum, tuple(self._recent))


@dataclass(frozen=True, slots=True)
class DeliveryCounters:
    connected: bool
    in_flight: int  # published, awaiting PUBACK
    in_flight_bytes: int
    unconfirmed: int  # PUBACKed, awaiting the centre's receipt (tracked in this run)
    ready: int  # claimed from the journal, waiting for a window slot
    published: int  # publish calls (including re-sends)
    sent: int  # PUBACK success or "no matching subscribers"
    no_subscribers: int  # ...of which 0x10
    refused: int  # PUBACK with a refusal code: never marked sent
    released: int  # in-flight rows given back to the journal (link lost, stop)
    received: int  # receipts that confirmed a row now
    receipts_already: int  # repeated receipts
    receipts_unknown: int  # receipts for digests the journal does not have
    receipts_invalid: int  # undecodable receipts, or correlation data != body digest
    receipts_rejected: int  # centre said "rejected"
    receipt_timeouts: int  # sent rows reverted to stored because no receipt came
    reconnects: int
    disconnects: int
    connect_failures: int
    unknown_pubacks: int
    paused_streams: tuple[str, ...]
    parked: int  # rows of paused streams held back
    held: int  # rows the centre rejected (or that fail their digest), not re-sent this run
    # By priority. Delivery lag: the row's received_at (gateway wall clock) -> each publish;
    # for a re-send it includes the outage. Then publish -> PUBACK and publish -> receipt.
    delivery_lag: dict[int, HistogramSnapshot] = field(repr=False)
    puback_latency: dict[int, HistogramSnapshot] = field(repr=False)
    receipt_latency: dict[int, HistogramSnapshot] = field(repr=False)


@dataclass(slots=True)
class _InFlight:
    row_id: int
    digest: bytes
    topic: str
    priority: int
    size: int
    published_at: float
    receipted: bool = False  # the receipt overtook the PUBACK


@dataclass(slots=True)
class _Pending:
    """Journal writes waiting for the next flush."""

    sent: list[int] = field(default_factory=list)
    release_failed: list[int] = field(default_factory=list)
    release_clean: list[int] = field(default_factory=list)
    receipts: list[bytes] = field(default_factory=list)
    rejections: list[QuarantineEntry] = field(default_factory=list)

    def size(self) -> int:
        return (
            len(self.sent) + len(self.release_failed) + len(self.release_clean)
            + len(self.receipts) + len(self.rejections)
        )


_COUNTERS = (
    "published", "sent", "no_subscribers", "refused", "released", "received",
    "receipts_already", "receipts_unknown", "receipts_invalid", "receipts_rejected",
    "receipt_timeouts", "reconnects", "disconnects", "connect_failures", "unknown_pubacks",
)


class Delivery:
    """`await start()`, then it runs until `await stop()`. `counters()` at any time."""

    def __init__(
        self,
        journal: Journal,
        link: Link,
        config: DeliveryConfig,
        on_alarm: Callable[[TechnicalAlarm], None] | None = None,
        on_downlink: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.journal = journal
        self.link = link
        self.config = config
        self._on_alarm = on_alarm
        self._on_downlink = on_downlink
        self._topics: dict[tuple[str, str | None], str] = {}
        # Claimed rows waiting for a window slot, one lane per class: urgent rows may take any
        # free slot, routine rows only the unreserved ones.
        self._ready_urgent: deque[StoredMessage] = deque()
        self._ready_routine: deque[StoredMessage] = deque()
        self._window: dict[int, _InFlight] = {}  # mid -> message awaiting its PUBACK
        self._window_digests: dict[bytes, int] = {}
        self._window_bytes = 0
        self._window_routine = 0
        self._capacity = config.max_in_flight
        self._reserve = config.urgent_reserve
        self._link_up = False
        self._ever_up = False
        self._more = True  # the journal may hold unclaimed stored rows
        self._urgent_hint = True  # something was committed: maybe an alarm
        self._awaiting: dict[bytes, tuple[float, int]] = {}  # digest -> (published at, prio)
        self._paused: dict[str, asyncio.TimerHandle] = {}
        self._parked: dict[str, list[int]] = {}
        self._held: set[int] = set()
        self._rejected: set[bytes] = set()
        self._pending = _Pending()
        self._stopping = False
        self._wake = asyncio.Event()
        self._flush_due = asyncio.Event()
        self._flush_lock = asyncio.Lock()  # one journal write sequence at a time
        self._window_empty = asyncio.Event()
        self._window_empty.set()
        self._chunk = min(config.claim_chunk, max(1, config.prefetch // 2))  # smallest claim
        # Loop time (s) routine publishing may still use; refilled at routine_cpu_share.
        self._budget = config.routine_burst_s
        self._budget_at = time.perf_counter()
        self._budget_resume: asyncio.Handle | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._n = dict.fromkeys(_COUNTERS, 0)
        self._delivery_lag = {int(p): LatencyHistogram() for p in Priority}
        self._puback_latency = {int(p): LatencyHistogram() for p in Priority}
        self._receipt_latency = {int(p): LatencyHistogram() for p in Priority}

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.link.start(self._on_events)
        # Urgent rows come straight from the commit that made them durable (no claim round
        # trip through the journal's writer, which a drain keeps busy).
        self.journal.hand_over_urgent(self._take_urgent)
        self._pump_task = asyncio.create_task(self._pump())
        for coro in (self._watch_journal(), self._flusher(), self._sweeper()):
            self._tasks.append(asyncio.create_task(coro))

    async def stop(self, timeout: float | None = None) -> None:
        """Stop publishing, wait up to `timeout` for outstanding PUBACKs, journal what came
        back, give every unconfirmed claim back to the journal and close the link."""
        if self._stopping:
            return
        self._stopping = True
        self.journal.hand_over_urgent(None)  # rows still in transit are released by the journal
        self._wake.set()
        if self._pump_task is not None:  # it finishes the fetch in hand, then returns
            await asyncio.gather(self._pump_task, return_exceptions=True)
        wait = self.config.stop_timeout_s if timeout is None else timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._window_empty.wait(), wait)
        for handle in self._paused.values():
            handle.cancel()
        self._paused.clear()
        if self._budget_resume is not None:
            self._budget_resume.cancel()
            self._budget_resume = None
        self._release_all_claims()
        await self._flush()
        await self.link.close(timeout=max(wait, 1.0))
        async with self._flush_lock:  # never cancel the flusher in the middle of a write
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._flush()

    def _release_all_claims(self) -> None:
        release = self._pending.release_clean
        release.extend(entry.row_id for entry in self._window.values())
        self._n["released"] += len(self._window)
        self._window.clear()
        self._window_digests.clear()
        self._window_bytes = self._window_routine = 0
        self._window_empty.set()
        for lane in (self._ready_urgent, self._ready_routine):
            release.extend(row.id for row in lane)
            lane.clear()
        for ids in self._parked.values():
            release.extend(ids)
        self._parked.clear()
        release.extend(self._held)
        self._held.clear()

    # -- observation --------------------------------------------------------------------------

    def counters(self) -> DeliveryCounters:
        return DeliveryCounters(
            connected=self._link_up,
            in_flight=len(self._window),
            in_flight_bytes=self._window_bytes,
            unconfirmed=len(self._awaiting),
            ready=len(self._ready_urgent) + len(self._ready_routine),
            paused_streams=tuple(sorted(self._paused)),
            parked=sum(len(ids) for ids in self._parked.values()),
            held=len(self._held),
            delivery_lag={p: h.snapshot() for p, h in self._delivery_lag.items()},
            puback_latency={p: h.snapshot() for p, h in self._puback_latency.items()},
            receipt_latency={p: h.snapshot() for p, h in self._receipt_latency.items()},
            **self._n,
        )

    def resume(self, topic: str) -> None:
        """Retry a paused stream now (e.g. after an operator fixed the broker ACL)."""
        handle = self._paused.pop(topic, None)
        if handle is not None:
            handle.cancel()
        ids = self._parked.pop(topic, [])
        if ids:
            self._pending.release_clean.extend(ids)
            self._flush_due.set()
        self._wake.set()

    # -- claiming and publishing --------------------------------------------------------------

    async def _pump(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                progressed = self._link_up and await self._refill()
            except JournalClosedError:
                log.error("journal closed under the delivery loop; publishing stops")
                return
            except Exception as exc:  # e.g. an I/O error: keep the loop alive, retry soon
                log.exception("claiming rows from the journal failed")
                self._alarm(TechnicalAlarm("journal-error", f"cannot read the journal: {exc}"))
                await asyncio.sleep(1.0)
                continue
            if not progressed:
                await self._wake.wait()

    async def _refill(self) -> bool:
        """Claim rows so free window slots can be filled without waiting for the journal.
        True if rows were claimed."""
        if self._urgent_hint:
            self._urgent_hint = False
            rows = await self._claim_urgent()
        else:
            ready_room = self.config.prefetch - len(self._ready_routine)
            # Claim in chunks: few journal round trips, none of them long (claim_chunk).
            if not (self._more and ready_room >= self._chunk):
                return False
            self._more = False  # set again by any commit meanwhile
            limit = min(ready_room, self.config.claim_chunk)
            rows = await self.journal.next_batch(
                limit=limit, max_bytes=self.config.prefetch_bytes
            )
            if len(rows) == limit:
                self._more = True
        if self._stopping:  # stop() began while we waited for the journal
            await self.journal.release([r.id for r in rows], failed=False)
            return False
        for row in rows:
            lane = self._ready_urgent if row.priority >= Priority.CRITICAL else self._ready_routine
            lane.append(row)
        self._drain_ready()
        return bool(rows)

    async def _claim_urgent(self) -> list[StoredMessage]:
        """Rows may have become eligible (released, reverted, reconnected, a missed
        hand-over): claim urgent rows one at a time (the journal returns the
        highest priority first, so each small claim returns quickly) until a routine row shows
        up. That row is kept if the routine lane has room, else given back."""
        urgent: list[StoredMessage] = []
        while len(urgent) < self.config.max_in_flight:
            rows = await self.journal.next_batch(limit=1, max_bytes=1 << 30)
            if not rows:
                return urgent
            if rows[0].priority >= Priority.CRITICAL:
                urgent.extend(rows)
                continue
            if len(self._ready_routine) < self.config.prefetch:
                self._more = True
                return urgent + rows
            await self.journal.release([rows[0].id], failed=False)
            return urgent
        self._urgent_hint = True  # there may be more
        return urgent

    def _take_urgent(self, rows: list[StoredMessage]) -> None:
        """The journal's hand-over: urgent rows just committed, already claimed for us."""
        if self._stopping:
            self._pending.release_clean.extend(row.id for row in rows)
            self._flush_due.set()
            return
        self._ready_urgent.extend(rows)
        self._drain_ready()

    def _drain_ready(self) -> None:
        """Publish ready rows into free window slots: urgent first, into any free slot;
        routine only into unreserved slots and within the byte budget."""
        if self._stopping or not self._link_up:
            return
        while self._ready_urgent and len(self._window) < self._capacity:
            self._publish(self._ready_urgent.popleft())
        routine_slots = self._capacity - self._reserve
        unconfirmed_room = self.config.max_unconfirmed - len(self._awaiting)
        limited = self.config.routine_cpu_share < 1.0
        clock = time.perf_counter
        urgent_busy = self.journal.urgent_busy
        while (
            self._ready_routine
            and self._window_routine < min(routine_slots, unconfirmed_room)
            and len(self._window) < self._capacity
            and self._window_bytes < self.config.max_in_flight_bytes
        ):
            if limited and not self._routine_budget_left():
                break
            alarm_waiting = urgent_busy()
            started = clock()
            self._publish(self._ready_routine.popleft())
            self._budget -= clock() - started
            if alarm_waiting:
                # An alarm is between its append and its hand-over: end the slice after
                # this row so the loop reaches the hand-over (and the readings) sooner.
                self._yield_soon()
                break
        if self.config.prefetch - len(self._ready_routine) >= self._chunk:
            self._wake.set()  # time to claim more

    def _routine_budget_left(self) -> bool:
        """Refill the routine CPU budget; if it is spent, resume when it has recovered."""
        cfg = self.config
        now = time.perf_counter()
        self._budget = min(
            cfg.routine_burst_s, self._budget + (now - self._budget_at) * cfg.routine_cpu_share
        )
        self._budget_at = now
        if self._budget > 0:
            return True
        if self._budget_resume is None:
            delay = (cfg.routine_burst_s / 2 - self._budget) / cfg.routine_cpu_share
            self._budget_resume = asyncio.get_running_loop().call_later(delay, self._resume)
        return False

    def _resume(self) -> None:
        self._budget_resume = None
        self._drain_ready()

    def _yield_soon(self) -> None:
        """Go on publishing after whatever the loop has ready (the urgent hand-over among
        it); the CPU budget still applies when the slice resumes."""
        if self._budget_resume is None:
            self._budget_resume = asyncio.get_running_loop().call_soon(self._resume)

    def _topic_for(self, row: StoredMessage) -> str:
        key = (row.kind, row.device_id)
        topic = self._topics.get(key)
        if topic is None:
            device = row.device_id if row.kind in topics.PER_DEVICE_KINDS else None
            topic = self._topics[key] = topics.up(self.config.gateway_id, row.kind, device)
        return topic

    def _publish(self, row: StoredMessage) -> None:
        try:
            topic = self._topic_for(row)
        except ProtocolError as exc:
            self._hold(row, f"row {row.id} has no valid topic: {exc}")
            return
        if topic in self._paused:
            self._parked.setdefault(topic, []).append(row.id)
            return
        if row.digest in self._rejected:
            self._held.add(row.id)
            return
        if uplink.digest(row.payload) != row.digest:  # bit rot: never publish altered data
            self._hold(row, f"row {row.id} payload does not match its digest")
            return
        queued = self.link.publish(topic, row.payload, row.digest, self.link.receipt_topic)
        self._n["published"] += 1
        if not queued.accepted or queued.mid in self._window:
            log.error("paho did not queue row %d (mid %d)", row.id, queued.mid)
            self._pending.release_failed.append(row.id)
            self._flush_due.set()
            return
        size = len(row.payload)
        self._window[queued.mid] = _InFlight(
            row.id, row.digest, topic, int(row.priority), size, time.monotonic()
        )
        self._delivery_lag[int(row.priority)].observe(max(0.0, time.time() - row.received_at))
        self._window_digests[row.digest] = queued.mid
        self._window_bytes += size
        if row.priority < Priority.CRITICAL:
            self._window_routine += 1
        self._window_empty.clear()

    def _hold(self, row: StoredMessage, text: str) -> None:
        self._held.add(row.id)
        self._alarm(TechnicalAlarm("corrupt-row", text, digest=row.digest))

    # -- events from the link -----------------------------------------------------------------

    def _on_events(self, events: list[LinkEvent]) -> None:
        for event in events:
            try:
                self._dispatch(event)
            except Exception:  # one bad event must not lose the others
                log.exception("uplink event %s failed", type(event).__name__)
        self._drain_ready()

    def _dispatch(self, event: LinkEvent) -> None:
        if isinstance(event, PubAck):
            self._on_puback(event)
        elif isinstance(event, Inbound):
            self._on_inbound(event)
        elif isinstance(event, LinkUp):
            self._on_link_up(event)
        elif isinstance(event, LinkDown):
            self._on_link_down(event)
        elif isinstance(event, ConnectFailed):
            self._n["connect_failures"] += 1
        elif isinstance(event, LinkProblem):
            self._alarm(TechnicalAlarm("link-problem", event.text))

    def _on_link_up(self, event: LinkUp) -> None:
        self._link_up = True
        if self._ever_up:
            self._n["reconnects"] += 1
        self._ever_up = True
        # One slot of the broker's Receive Maximum is kept for our retained status.
        self._capacity = max(1, min(self.config.max_in_flight, event.receive_maximum - 1))
        self._reserve = min(self.config.urgent_reserve, self._capacity - 1)
        self._urgent_hint = self._more = True
        self._wake.set()

    def _on_link_down(self, event: LinkDown) -> None:
        if not self._link_up:  # lost before CONNACK (e.g. TLS 1.3 client cert refused)
            self._n["connect_failures"] += 1
        elif not self._stopping:
            self._n["disconnects"] += 1
            log.warning("broker connection lost: %s", event.reason)
        self._link_up = False
        for mid in event.dropped:
            entry = self._take(mid)
            if entry is not None:
                self._pending.release_failed.append(entry.row_id)
                self._n["released"] += 1
        self._flush_due.set()

    def _take(self, mid: int) -> _InFlight | None:
        entry = self._window.pop(mid, None)
        if entry is None:
            return None
        self._window_digests.pop(entry.digest, None)
        self._window_bytes -= entry.size
        if entry.priority < Priority.CRITICAL:
            self._window_routine -= 1
        if not self._window:
            self._window_empty.set()
        return entry

    def _on_puback(self, event: PubAck) -> None:
        entry = self._take(event.mid)
        if entry is None:
            self._n["unknown_pubacks"] += 1
            return
        outcome = classify_puback(event.reason_code)
        if outcome.delivered:
            self._pending.sent.append(entry.row_id)
            self._n["sent"] += 1
            if outcome.code == 0x10:
                self._n["no_subscribers"] += 1
            self._puback_latency[entry.priority].observe(event.at - entry.published_at)
            if not entry.receipted:
                self._awaiting[entry.digest] = (entry.published_at, entry.priority)
        else:
            self._n["refused"] += 1
            self._pending.release_failed.append(entry.row_id)
            self._pause(entry, outcome)
        self._flush_due.set()

    def _pause(self, entry: _InFlight, outcome: PubackOutcome) -> None:
        """Stop publishing on a topic the broker refused; retry it later. The refused row and
        everything after it on that topic stay in the journal, unsent."""
        if entry.topic in self._paused:
            return
        cfg = self.config
        delay = cfg.transient_retry_s if outcome.transient else cfg.refusal_retry_s
        if entry.priority >= Priority.CRITICAL:
            delay = min(delay, cfg.urgent_retry_s)
        loop = asyncio.get_running_loop()
        self._paused[entry.topic] = loop.call_later(delay, self.resume, entry.topic)
        text = (
            f"broker refused a publish on {entry.topic}: 0x{outcome.code:02x} {outcome.name}; "
            f"stream paused, retry in {delay:g} s"
        )
        log.error(text)
        self._alarm(
            TechnicalAlarm("publish-refused", text, topic=entry.topic, reason_code=outcome.code)
        )

    # -- receipts and other downlink messages -------------------------------------------------

    def _on_inbound(self, event: Inbound) -> None:
        try:
            gateway, direction, kind, _ = topics.parse(event.topic)
        except ProtocolError:
            gateway = direction = kind = ""
        if gateway != self.config.gateway_id or direction != "down":
            log.warning("message on unexpected topic %r ignored", event.topic)
        elif kind == topics.DOWN_RECEIPT:
            self._on_receipt(event)
        elif self._on_downlink is not None:
            try:
                self._on_downlink(kind, event.payload)
            except Exception:
                log.exception("downlink handler failed for %s", kind)

    def _on_receipt(self, event: Inbound) -> None:
        try:
            digest, status, reason = uplink.decode_receipt(event.payload)
        except ProtocolError as exc:
            self._n["receipts_invalid"] += 1
            log.warning("undecodable receipt ignored: %s", exc)
            return
        if event.correlation is not None and event.correlation != digest:
            self._n["receipts_invalid"] += 1
            log.warning("receipt whose correlation data differs from its digest ignored")
            return
        self._observe_receipt(digest, event.at)
        if status == "stored":
            self._pending.receipts.append(digest)
        else:
            self._n["receipts_rejected"] += 1
            self._rejected.add(digest)
            text = f"centre rejected message {digest.hex()[:16]}: {reason or 'no reason given'}"
            self._pending.rejections.append(
                QuarantineEntry(raw=event.payload, reason=text, source="centre-receipt")
            )
            self._alarm(TechnicalAlarm("receipt-rejected", text, digest=digest))
        self._flush_due.set()

    def _observe_receipt(self, digest: bytes, at: float) -> None:
        awaited = self._awaiting.pop(digest, None)
        if awaited is not None:
            published_at, priority = awaited
        else:
            mid = self._window_digests.get(digest)
            if mid is None:
                return
            entry = self._window[mid]
            entry.receipted = True
            published_at, priority = entry.published_at, entry.priority
        self._receipt_latency[priority].observe(at - published_at)

    # -- journal writes -----------------------------------------------------------------------

    async def _flusher(self) -> None:
        cfg = self.config
        while True:
            await self._flush_due.wait()
            if self._pending.size() < cfg.flush_threshold:
                await asyncio.sleep(cfg.flush_interval_s)  # let more updates share the commit
            self._flush_due.clear()
            await self._flush()

    async def _flush(self) -> None:
        async with self._flush_lock:
            pending, self._pending = self._pending, _Pending()
            try:
                await self._write(pending)
                return
            except JournalClosedError:
                log.error("journal closed: %d delivery updates not recorded", pending.size())
                return
            except Exception as exc:  # disk full, I/O error: keep the updates, try again
                log.exception("journal write failed")
                self._alarm(
                    TechnicalAlarm("journal-error", f"delivery updates not journaled: {exc}")
                )
                self._requeue(pending)
        await asyncio.sleep(0.5)
        self._flush_due.set()

    async def _write(self, pending: _Pending) -> None:
        """Each step clears its list once journaled, so a failure re-queues only the rest."""
        journal = self.journal
        if pending.sent:
            await journal.mark_sent(pending.sent)
            pending.sent = []
        for failed, ids in ((True, pending.release_failed), (False, pending.release_clean)):
            if ids:
                await journal.release(ids, failed=failed)
                ids.clear()
                self._more = self._urgent_hint = True  # eligible again (alarms among them?)
                self._wake.set()
        if pending.receipts:
            result = await journal.mark_received(pending.receipts)
            self._n["received"] += result.matched
            self._n["receipts_already"] += result.already
            self._n["receipts_unknown"] += len(result.unknown)
            pending.receipts = []
        while pending.rejections:
            await journal.quarantine(pending.rejections[0])
            pending.rejections.pop(0)

    def _requeue(self, failed: _Pending) -> None:
        current = self._pending
        current.sent[:0] = failed.sent
        current.release_failed[:0] = failed.release_failed
        current.release_clean[:0] = failed.release_clean
        current.receipts[:0] = failed.receipts
        current.rejections[:0] = failed.rejections

    # -- background duties --------------------------------------------------------------------

    async def _watch_journal(self) -> None:
        """Wake the pump whenever something was committed. Urgent rows arrive by hand-over
        (`_take_urgent`); only if the journal could not hand some over must we look."""
        # A journal configured to commit only alarms at once hands over only those: then
        # critical readings are still looked for after every commit.
        partial = self.journal.config.urgent_priority > Priority.CRITICAL
        while True:
            await self.journal.wait_for_stored()
            self._more = True
            if self.journal.take_missed_hand_over() or partial:
                self._urgent_hint = True
            self._wake.set()

    async def _sweeper(self) -> None:
        """Sent rows whose receipt is overdue go out again (the centre dedups by digest)."""
        cfg = self.config
        while True:
            await asyncio.sleep(cfg.sweep_interval_s)
            try:
                reverted = await self.journal.revert_unsent(
                    sent_before=time.time() - cfg.receipt_timeout_s
                )
            except JournalClosedError:
                return
            except Exception:
                log.exception("receipt sweep failed")
                continue
            if reverted:
                self._n["receipt_timeouts"] += reverted
                log.warning("%d sent messages had no receipt in time: re-sending", reverted)
                self._more = self._urgent_hint = True
                self._wake.set()
            horizon = time.monotonic() - cfg.receipt_timeout_s
            for digest in [d for d, (t, _) in self._awaiting.items() if t < horizon]:
                del self._awaiting[digest]
            self._drain_ready()  # overdue receipts no longer hold back routine messages

    def _alarm(self, alarm: TechnicalAlarm) -> None:
        if self._on_alarm is None:
            return
        try:
            self._on_alarm(alarm)
        except Exception:
            log.exception("technical alarm callback failed")
