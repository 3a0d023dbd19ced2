"""Device messages in: verify, journal, acknowledge only after the commit, hand on.

Ingest callbacks (serial supervisor, BLE manager) run on the event loop and must not block:
they `submit()` an `Inbound` item and return. Items wait in one queue per link; one task
takes them in small groups, round robin over the links (a device flooding its link never
delays another device's message by more than one group), verifies each (`Verifier.handle`
for firmware messages, `Attestor.attest` for values of devices that cannot seal), sends a
handshake's accept at once (it needs no durability), hands each verified outcome to
`on_verified` (the rules engine: see below) and starts a commit task per group:

    journal.append_many + journal.quarantine   (one group commit, one fsync)
    -> verifier.committed_many                  (trackers updated, device-acks built)
    -> state-store write on the store thread    (trackers persisted, one fsync)
    -> device-acks sent back over the link the message came in on (each distinct ack
       once per pass: identical acks of one session say the same; see _acknowledge)
    -> on_durable(outcomes)                     (event journal, metrics: the service)

Rules before the commit (decision, docs/agent.md): readings go to the rules engine as soon as
they are verified, in arrival order, while their commit runs. An alarm then waits for one
journal commit (its own step, priority 2) instead of two in a row. The acknowledgement still
waits for the reading's commit. If that commit fails, the device re-sends the batch and the
rules see it a second time (same times, same values: no new condition).

Verification of the next group overlaps the commit of the previous ones; when
`max_commits` commits are outstanding, verification waits for one (back-pressure from the
disk to the verifier, so verified-but-unjournaled work stays bounded). Groups holding a
critical reading are committed on their own, so they never wait for a routine group.
Whatever commits finished by the time the acknowledging task runs is acknowledged together:
one `committed_many`, one state-store transaction. That transaction runs on the store
thread (its fsync would otherwise stall the event loop for milliseconds per pass); the
acknowledgements wait for it. If a commit fails, its verdicts are abandoned
(`Verifier.abandoned`): nothing is acknowledged and the device re-sends.

Load shedding: firmware messages beyond `max_pending` waiting items are shed
*unacknowledged* (counted, logged): the device keeps them in its outbox and re-sends. Values
of standard devices, quarantine evidence and barriers are never shed: those devices do not
re-send.

A barrier item (`submit_barrier`) runs its callback once everything submitted before it is
durable: the BLE glucose cursor advances only behind its readings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from edge_agent.agent.signals import WorkSignal
from edge_agent.journal import Journal, Priority, QuarantineEntry
from edge_agent.pipeline import Attested, Attestor, Observation, StateStore, Verdict, Verifier

log = logging.getLogger("vitalbridge.agent.reception")


@dataclass(frozen=True, slots=True)
class LinkRef:
    """Where a message came from: the transport, the configured link name (serial port or
    BLE device) and the registry device the link belongs to."""

    transport: str  # "serial" | "ble"
    link: str
    device_id: str


@dataclass(slots=True)
class Inbound:
    """One unit of work: a firmware message, values to attest, or evidence to quarantine."""

    link: LinkRef
    received_at: float
    message: bytes | None = None
    observations: tuple[Observation, ...] = ()
    flags: tuple[str, ...] = ()
    quarantine: QuarantineEntry | None = None
    barrier: Callable[[], None] | None = None


@dataclass(slots=True)
class Outcome:
    """What became of one item once durable (exactly one of the three is set)."""

    link: LinkRef
    received_at: float
    verdict: Verdict | None = None
    attested: Attested | None = None
    quarantine: QuarantineEntry | None = None
    acked: bool = False

    @property
    def urgent(self) -> bool:
        messages = (self.verdict.journal if self.verdict is not None else
                    self.attested.journal if self.attested is not None else ())
        return any(m.priority >= Priority.CRITICAL for m in messages)


@dataclass(slots=True)
class ReceptionCounters:
    received: int = 0
    shed: int = 0
    failed: int = 0  # items the gateway could not process (directory or state store down)
    commits: int = 0
    commit_failures: int = 0
    acks_sent: int = 0  # device-ack writes: one per distinct ack and link per pass
    ack_failures: int = 0
    replies: int = 0
    pending: int = 0
    by_outcome: dict[str, int] = field(default_factory=lambda: defaultdict(int))


Reply = Callable[[LinkRef, bytes], None]


class Reception:
    """See the module docstring. `start()`, `submit()` from ingest callbacks, `stop()`."""

    def __init__(self, verifier: Verifier, attestor: Attestor, journal: Journal, *,
                 reply: Reply, on_durable: Callable[[list[Outcome]], None],
                 on_verified: Callable[[Outcome], None] | None = None,
                 group_max: int = 32, link_quantum: int = 8, max_commits: int = 8,
                 max_pending: int = 20_000, state_store: StateStore | None = None) -> None:
        self.verifier = verifier
        # The store the verifier's session table saves its progress in (the default).
        self._state_store = state_store if state_store is not None else verifier.sessions.store
        self._store_thread: ThreadPoolExecutor | None = None
        self.attestor = attestor
        self.journal = journal
        self._reply = reply
        self._on_durable = on_durable
        self._on_verified = on_verified
        self._group_max = group_max
        self._quantum = link_quantum
        self._max_commits = max_commits
        self._max_pending = max_pending
        self._queues: dict[LinkRef, deque[Inbound]] = {}
        self._turns: deque[LinkRef] = deque()  # links with waiting items, in turn order
        self._queued = 0
        self._firmware_pending = 0
        self._durable: list[list[Outcome]] = []  # committed groups awaiting acknowledgement
        self._durable_wake = asyncio.Event()
        self._acknowledging = False
        self._signal = WorkSignal()
        self._commits: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._ack_task: asyncio.Task[None] | None = None
        self._last_shed_log = 0.0
        self.counters = ReceptionCounters()

    # -- intake (synchronous, from ingest callbacks) ---------------------------------------------

    def submit(self, item: Inbound) -> bool:
        """Queue an item; False when a firmware message was shed (not acknowledged)."""
        if item.message is not None:
            if self._firmware_pending >= self._max_pending:
                self.counters.shed += 1
                now = time.monotonic()
                if now - self._last_shed_log >= 10.0:
                    self._last_shed_log = now
                    log.warning("ingest overloaded: %d messages waiting; shedding (not "
                                "acknowledging) firmware messages, devices will re-send "
                                "(%d shed so far)", self._firmware_pending, self.counters.shed)
                return False
            self._firmware_pending += 1
        self.counters.received += 1
        queue = self._queues.get(item.link)
        if queue is None:
            queue = self._queues[item.link] = deque()
        if not queue:
            self._turns.append(item.link)
        queue.append(item)
        self._queued += 1
        self._signal.added()
        return True

    def submit_barrier(self, link: LinkRef, callback: Callable[[], None]) -> None:
        self.submit(Inbound(link, time.time(), barrier=callback))

    @property
    def pending(self) -> int:
        return self._queued

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="state-store")
        self._task = asyncio.create_task(self._run(), name="reception")
        self._ack_task = asyncio.create_task(self._acknowledger(), name="reception-acks")

    async def drain(self) -> None:
        """Wait until everything submitted so far is verified, committed and acknowledged."""
        while True:
            await self._signal.idle()
            if self._commits:
                await asyncio.gather(*list(self._commits), return_exceptions=True)
            elif self._durable or self._acknowledging:
                await asyncio.sleep(0.001)
            else:
                return

    async def stop(self) -> None:
        """Process what is queued (ingest must be stopped first), then end."""
        await self.drain()
        for task in (self._task, self._ack_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._ack_task = None
        if self._store_thread is not None:
            self._store_thread.shutdown(wait=True)
            self._store_thread = None

    # -- the verification task -----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._signal.work(lambda: bool(self._turns))
            while len(self._commits) >= self._max_commits:  # the disk sets the pace
                await asyncio.wait(list(self._commits), return_when=asyncio.FIRST_COMPLETED)
            items = self._take_group()
            self._firmware_pending -= sum(1 for item in items if item.message is not None)
            try:
                self._process(items)
            except Exception:  # a bug here must not stop ingest for good
                log.exception("reception failed on a group of %d items", len(items))
                self.counters.failed += len(items)
            await asyncio.sleep(0)  # let ingest and the uplink run between groups

    def _take_group(self) -> list[Inbound]:
        """Up to `group_max` items, at most `link_quantum` per link per turn, round robin."""
        items: list[Inbound] = []
        while self._turns and len(items) < self._group_max:
            link = self._turns.popleft()
            queue = self._queues[link]
            for _ in range(min(self._quantum, len(queue), self._group_max - len(items))):
                items.append(queue.popleft())
            if queue:
                self._turns.append(link)
        self._queued -= len(items)
        return items

    def _process(self, items: list[Inbound]) -> None:
        outcomes: list[Outcome] = []
        observations: dict[tuple[LinkRef, tuple[str, ...]], list[Inbound]] = {}
        for item in items:
            if item.barrier is not None:
                self._flush(outcomes, observations)
                outcomes, observations = [], {}
                self._schedule_barrier(item.barrier)
            elif item.message is not None:
                outcome = self._verify(item)
                if outcome is not None:
                    outcomes.append(outcome)
            elif item.observations:
                observations.setdefault((item.link, item.flags), []).append(item)
            elif item.quarantine is not None:
                outcomes.append(Outcome(item.link, item.received_at, quarantine=item.quarantine))
        self._flush(outcomes, observations)

    def _verify(self, item: Inbound) -> Outcome | None:
        assert item.message is not None
        try:
            verdict = self.verifier.handle(item.message, received_at=item.received_at,
                                           link_device=item.link.device_id,
                                           source=f"{item.link.transport}:{item.link.link}")
        except Exception as exc:  # the gateway's own storage failed: the device re-sends
            self.counters.failed += 1
            log.error("cannot verify a message from %s now (%s: %s); not acknowledged",
                      item.link.link, type(exc).__name__, exc)
            return None
        self.counters.by_outcome[verdict.outcome] += 1
        if verdict.reply is not None:
            self._send(item.link, verdict.reply)
            self.counters.replies += 1
        return Outcome(item.link, item.received_at, verdict=verdict)

    def _attest(self, link: LinkRef, flags: tuple[str, ...], items: list[Inbound]
                ) -> Outcome | None:
        values = [obs for item in items for obs in item.observations]
        try:
            attested = self.attestor.attest(link.device_id, values,
                                            received_at=items[0].received_at, flags=flags)
        except Exception as exc:
            self.counters.failed += len(items)
            log.error("cannot attest %d values from %s (%s: %s); they are lost",
                      len(values), link.link, type(exc).__name__, exc)
            return None
        return Outcome(link, items[0].received_at, attested=attested)

    def _flush(self, outcomes: list[Outcome],
               observations: dict[tuple[LinkRef, tuple[str, ...]], list[Inbound]]) -> None:
        for (link, flags), items in observations.items():
            outcome = self._attest(link, flags, items)
            if outcome is not None:
                outcomes.append(outcome)
        if self._on_verified is not None:
            for outcome in outcomes:
                try:
                    self._on_verified(outcome)
                except Exception:
                    log.exception("handing on a verified outcome failed")
        urgent: list[Outcome] = []
        routine: list[Outcome] = []
        for outcome in outcomes:
            (urgent if outcome.urgent else routine).append(outcome)
        for group in (urgent, routine):
            if group:
                task = asyncio.create_task(self._commit(group))
                self._commits.add(task)
                task.add_done_callback(self._commits.discard)

    def _schedule_barrier(self, callback: Callable[[], None]) -> None:
        before = list(self._commits)

        async def after() -> None:
            await asyncio.gather(*before, return_exceptions=True)
            try:
                callback()
            except Exception:
                log.exception("a reception barrier failed")

        task = asyncio.create_task(after())
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)

    # -- commits ---------------------------------------------------------------------------

    async def _commit(self, outcomes: list[Outcome]) -> None:
        messages = [m for o in outcomes for m in (
            o.verdict.journal if o.verdict is not None else
            o.attested.journal if o.attested is not None else ())]
        evidence = [q for o in outcomes for q in (
            o.verdict.quarantine if o.verdict is not None else
            o.attested.quarantine if o.attested is not None else
            (o.quarantine,) if o.quarantine is not None else ())]
        try:
            writes = [self.journal.quarantine(entry) for entry in evidence]
            if messages:
                writes.append(self.journal.append_many(messages))
            if writes:
                await asyncio.gather(*writes)
        except Exception as exc:
            self.counters.commit_failures += 1
            for outcome in outcomes:
                if outcome.verdict is not None:
                    self.verifier.abandoned(outcome.verdict)
            log.error("journal refused %d messages (%s: %s); nothing acknowledged",
                      len(outcomes), type(exc).__name__, exc)
            return
        self.counters.commits += 1
        self._durable.append(outcomes)
        self._durable_wake.set()

    async def _acknowledger(self) -> None:
        """Acknowledge every group committed so far at once (one state-store transaction),
        then hand the groups on."""
        while True:
            await self._durable_wake.wait()
            self._durable_wake.clear()
            groups, self._durable = self._durable, []
            self._acknowledging = True
            try:
                await self._acknowledge([o for group in groups for o in group])
            except Exception:  # the state store failed: the devices re-send, nothing is lost
                log.exception("acknowledging %d committed groups failed", len(groups))
            for outcomes in groups:
                try:
                    self._on_durable(outcomes)
                except Exception:
                    log.exception("handing on %d durable outcomes failed", len(outcomes))
            self._acknowledging = False

    async def _acknowledge(self, outcomes: Sequence[Outcome]) -> None:
        firmware = [o for o in outcomes if o.verdict is not None]
        if not firmware:
            return
        with self._state_store.deferring_progress() as progress:
            acks = self.verifier.committed_many([o.verdict for o in firmware if o.verdict])
        if progress:  # durable before acknowledged: the acks wait for this write
            await asyncio.get_running_loop().run_in_executor(
                self._store_thread, self._state_store.write_progress, progress)
        sessions = self.verifier.sessions
        # One write per distinct ack and link. committed_many builds every ack of a session
        # after the whole pass is recorded, so they share upto and checkpoints_upto and
        # differ only in a batch's own range (until the device's first checkpoint, or
        # behind a gap): byte-identical acks say the same, and the device applies each
        # cumulatively (firmware/outbox.py AckState.apply), so one copy acknowledges every
        # batch it was built for; distinct acks all go out. (Each write costs the device
        # an HMAC check; a steady device sees one ack per pass instead of one per batch.)
        written: dict[tuple[LinkRef, bytes], bool] = {}
        for outcome, ack in zip(firmware, acks, strict=True):
            if ack is None:
                continue
            plan = outcome.verdict.ack if outcome.verdict is not None else None
            if plan is not None and sessions.current(plan.device_id) is None:
                # Withdrawn during the write: committed_many would now build no ack.
                continue
            key = (outcome.link, ack)
            acked = written.get(key)
            if acked is None:
                acked = written[key] = self._send(outcome.link, ack)
                self.counters.acks_sent += acked
            outcome.acked = acked

    def _send(self, link: LinkRef, payload: bytes) -> bool:
        try:
            self._reply(link, payload)
            return True
        except Exception as exc:  # link gone: the device re-sends and is acknowledged then
            self.counters.ack_failures += 1
            log.info("cannot answer %s over %s: %s", link.device_id, link.link, exc)
            return False
