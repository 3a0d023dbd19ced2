"""Readings, device state and people's actions in; alarm steps out: persisted, journaled at
alarm priority (so the uplink publishes them ahead of any backlog), mirrored in the
tamper-evident event journal.

Inputs are synchronous calls on the event loop (they only run the pure rules engine and the
lifecycle, edge_agent/alarms). The steps they produce are queued, in order, for one writer
task that for each group:

1. appends them to the AlarmStore (the lifecycle's own memory across restarts; on a worker
   thread, because it fsyncs) and, at the same time,
2. journals one `alarm` message per step (protocol.alarm_messages, priority 2) — if the
   journal refuses, the group is retried until it is taken: an alarm is never dropped;
3. records `alarm.<step>` entries (id, grade, condition, level: never the value).

The two writes run concurrently so an alarm waits for one fsync, not two. After a crash
between them: a step in the AlarmStore but not in the journal is journaled again at start-up
(`journal_open_alarms`; the payload bytes are deterministic, so the journal recognises a
step it already has by its digest); a step in the journal but not in the store has reached
(or will reach) the centre, and the restarted lifecycle does not know it — the condition,
if it still holds, raises a new alarm: a duplicate at worst, never a lost alarm.

Limit commands (down/limits) are verified with the organisation key, checked against the
replay guard, stored, applied and journaled (`limits.changed`, never the limits
themselves); refusals are journaled with their reason. Acknowledgements and closures
(down/alarm-ack) become lifecycle steps like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent.agent.durable import LimitCommandStore
from edge_agent.agent.reception import LinkRef
from edge_agent.agent.recorder import EventRecorder
from edge_agent.agent.signals import WorkSignal
from edge_agent.alarms.active_set import to_transition
from edge_agent.alarms.evaluator import Condition, DeviceStatus, Evaluator, GatewayStatus, Reading
from edge_agent.alarms.grades import Grade
from edge_agent.alarms.lifecycle import NOTIFIED, Alarm, AlarmLifecycle, LifecycleError, Step
from edge_agent.alarms.store import AlarmStore
from edge_agent.journal import Journal, NewMessage, Priority
from protocol import alarm_messages, crypto, messages, topics
from protocol import limits as wire_limits
from protocol.errors import ProtocolError

log = logging.getLogger("vitalbridge.agent.alarms")

_ACTOR = re.compile(r"[a-z][a-z0-9-]{0,31}(:[A-Za-z0-9][A-Za-z0-9._@-]{0,63})?\Z")
_PSEUDONYM = re.compile(r"(?=.*[0-9])[A-Za-z0-9][A-Za-z0-9._-]{3,63}\Z")
_RETRY_S = 0.5


def transition_message(step: Step, alarm: Alarm) -> bytes:
    """The `alarm` message for one lifecycle step (deterministic bytes: the same step always
    gives the same digest, which is how the journal recognises it again)."""
    return alarm_messages.encode_transition(to_transition(step, alarm))


class StepObserver(Protocol):
    """Told of steps once they are durable (the notification policy, the active set)."""

    def restored(self, alarm: Alarm, steps: list[Step]) -> None: ...

    def durable(self, steps: list[Step]) -> None: ...


@dataclass(frozen=True, slots=True)
class JournaledAlarm:
    """An alarm step durable in the reading journal; `received_at` is the wall time the
    reading behind it arrived (None for steps not caused by a reading)."""

    digest: bytes
    grade: str
    kind: str
    received_at: float | None


class AlarmPath:
    """See the module docstring. Inputs from the event loop; `start()` / `stop()`."""

    def __init__(self, *, evaluator: Evaluator, lifecycle: AlarmLifecycle, store: AlarmStore,
                 store_executor: ThreadPoolExecutor, journal: Journal,
                 recorder: EventRecorder, limit_store: LimitCommandStore,
                 organisation_keys: Callable[[], list[bytes]], critical_grade: Grade,
                 on_journaled: Callable[[JournaledAlarm], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.evaluator = evaluator
        self.lifecycle = lifecycle
        self.store = store
        self._executor = store_executor
        self.journal = journal
        self.recorder = recorder
        self.limit_store = limit_store
        self.guard = wire_limits.ReplayGuard()
        self._organisation_keys = organisation_keys
        self._critical = critical_grade
        self._on_journaled = on_journaled
        self._clock = clock
        self._queue: deque[tuple[list[Step], float | None]] = deque()
        self._signal = WorkSignal()
        self._task: asyncio.Task[None] | None = None
        self.steps_journaled = 0
        self.evaluation_errors = 0
        self.observer: StepObserver | None = None  # set by the service (alarms/dispatch.py)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, history: Iterable[Reading] = ()) -> None:
        """history: the readings journaled within the evaluator's rebuild window before this
        start (alarms/history.py), so persistence clocks and rate windows carry on where they
        were instead of starting again (Evaluator.rebuild)."""
        lost = self.evaluator.rebuild(history, self.lifecycle.active_conditions())
        self._task = asyncio.create_task(self._writer(), name="alarm-writer")
        if lost:
            log.warning("%d alarm conditions found active in the journaled readings but not "
                        "in the alarm store: raising them now", len(lost))
            self._apply(lost, None)

    async def drain(self) -> None:
        await self._signal.idle()

    async def stop(self) -> None:
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # -- inputs (synchronous, on the event loop) ------------------------------------------------

    def is_critical(self, reading: Reading) -> bool:
        """Priority 1 for a reading whose value the evaluator, in its state now, grades at
        least the configured grade (the verifier's `critical` callback): the limits come from
        `Evaluator.limits_for` (limits in force, SpO2 bands by the observed oxygen), and a
        value in another unit than its limits is not graded, as in `evaluate`. The artefact
        guards are not applied: an artefact may get priority 1, a real value is never
        denied it."""
        value = reading.value
        kind = type(value)
        if kind is not float and kind is not int and (
                isinstance(value, bool) or not isinstance(value, int | float)):
            return False
        limits = self.evaluator.limits_for(reading)  # cached per patient and oxygen state
        if limits is None or reading.unit != limits.unit:
            return False
        low, high = limits.grades(float(value))  # two comparisons for a calm value
        if low is None:
            return high is not None and high >= self._critical
        return (low if high is None else max(low, high)) >= self._critical

    def readings(self, readings: Iterable[Reading], received_at: float) -> None:
        conditions: list[Condition] = []
        for reading in readings:
            try:
                conditions.extend(self.evaluator.evaluate(reading))
            except Exception:  # a rules bug must not stop the others from being evaluated
                self.evaluation_errors += 1
                log.exception("rules failed on a %s reading of %s", reading.quantity,
                              reading.device)
        if conditions:
            self._apply(conditions, received_at)

    def external_conditions(self, conditions: Sequence[Condition]) -> None:
        """Conditions established outside the rules engine (a compromised device): into the
        lifecycle and the journal like the evaluator's own."""
        self._apply(conditions, None)

    def device_status(self, status: DeviceStatus) -> None:
        self._apply(self.evaluator.device_status(status), None)

    def gateway_status(self, status: GatewayStatus) -> None:
        self._apply(self.evaluator.gateway_status(status), None)

    def tick(self, now: float) -> None:
        """Offline devices (evaluator) and escalation of unacknowledged red alarms."""
        self._apply(self.evaluator.tick(now), None)
        self._submit(self.lifecycle.tick(now), None)

    def _apply(self, conditions: Sequence[Condition], received_at: float | None) -> None:
        if conditions:
            self._submit(self.lifecycle.apply_all(conditions), received_at)

    def _submit(self, steps: list[Step], received_at: float | None) -> None:
        if steps:
            self._queue.append((steps, received_at))
            self._signal.added()

    def notified(self, alarm_id: str, detail: str, time: float, actor: str) -> bool:
        """A notification decision as a "notified" step (False: the alarm closed meanwhile)."""
        try:
            step = self.lifecycle.notified(alarm_id, actor, time, detail)
        except LifecycleError:
            return False
        self._submit([step], None)
        return True

    # -- downlink ---------------------------------------------------------------------------

    def acknowledgement(self, payload: bytes) -> None:
        """An `alarm-ack` from the centre: acknowledge or close, as a person's step."""
        try:
            ack = alarm_messages.decode_ack(payload)
        except ProtocolError as exc:
            log.warning("alarm-ack refused: %s", exc)
            return
        when = ack.time_ms / 1000
        try:
            if ack.action == alarm_messages.ACK:
                steps = self.lifecycle.acknowledge(ack.alarm_id, ack.actor, when)
            else:
                steps = [self.lifecycle.close(ack.alarm_id, ack.actor, when, ack.detail or "")]
        except LifecycleError as exc:
            log.warning("alarm-ack %s for %s refused: %s", ack.action, ack.alarm_id, exc)
            self.recorder.record("maintenance.fault", "centre", f"alarm:{ack.alarm_id}", {
                "component": "alarms", "fault": f"{ack.action}-refused", "severity": "warning",
                "detail": str(exc)[:200]})
            return
        self._submit(steps, None)

    def limits_command(self, payload: bytes) -> None:
        """A signed limit command from `down/limits` (a `limits` envelope around COSE)."""
        now = self._clock()
        try:
            kind, body = messages.decode(payload)
            if kind != "limits" or not isinstance(body, bytes):
                raise ProtocolError(f"expected a limits envelope around COSE bytes, got {kind}")
            command = self._verified(body, int(now))
            self.guard.check(command)
        except ProtocolError as exc:
            self._limits_refused(str(exc))
            return
        self.limit_store.add(body, now)
        self.evaluator.limits.apply_command(command, now)
        self.guard.record(command)
        self._limits_changed(command, body, "applied")

    def restore_limits(self) -> int:
        """Apply the stored commands again, in order (start-up). Returns how many."""
        applied = 0
        for body, applied_at in self.limit_store.all():
            try:
                command = self._verified(body, None)
                self.guard.admit(command)
            except ProtocolError as exc:
                log.error("stored limit command no longer applies: %s", exc)
                continue
            self.evaluator.limits.apply_command(command, applied_at)
            applied += 1
        return applied

    def _verified(self, body: bytes, now: int | None) -> wire_limits.LimitsCommand:
        keys = self._organisation_keys()
        if not keys:
            raise ProtocolError("no organisation CA installed to verify limit commands with")
        problem: ProtocolError | None = None
        for key in keys:
            try:
                return wire_limits.verify_command(body, key, now)
            except ProtocolError as exc:
                problem = exc
        assert problem is not None
        raise problem

    def _limits_changed(self, command: wire_limits.LimitsCommand, body: bytes,
                        reason: str) -> None:
        names = sorted(command.limits) or [
            name for name, value in (("spo2-scale", command.spo2_scale),
                                     ("oxygen", command.oxygen)) if value is not None]
        details: dict[str, object] = {"digest": crypto.sha256(body).hex(),
                                      "quantities": names, "reason": reason}
        subject = "limits"
        if _PSEUDONYM.match(command.patient):
            details["patient"] = command.patient
            subject = f"patient:{command.patient}"
        self.recorder.record("limits.changed", "centre", subject, details)
        log.info("limit command applied for quantities %s", ", ".join(names))

    def _limits_refused(self, reason: str) -> None:
        log.warning("limit command refused: %s", reason)
        self.recorder.record("maintenance.fault", "centre", "limits", {
            "component": "limits", "fault": "command-refused", "severity": "warning",
            "detail": reason[:200]})

    # -- start-up ----------------------------------------------------------------------------

    async def journal_open_alarms(self) -> int:
        """Journal every step of every open alarm again (idempotent by digest): a step that
        reached the AlarmStore but not the journal before a crash goes out now."""
        count = 0
        for alarm in self.lifecycle.open_alarms():
            steps = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.store.steps, alarm.id)
            if steps:
                await self.journal.append_many([self._message(s, alarm) for s in steps])
                count += len(steps)
                if self.observer is not None:
                    self.observer.restored(alarm, steps)
        return count

    # -- the writer ---------------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            await self._signal.work(lambda: bool(self._queue))
            groups = list(self._queue)
            self._queue.clear()
            steps = [s for group, _ in groups for s in group]
            alarms = {s.alarm_id: self.lifecycle.alarm(s.alarm_id) for s in steps}
            # Both writes at once: the alarm must not wait for two fsyncs in a row.
            persisted = asyncio.ensure_future(self._persist(steps, alarms))
            await self._journal(groups, alarms)
            await persisted
            if self.observer is not None:
                try:
                    self.observer.durable(steps)
                except Exception:  # notification trouble must not stop the alarm writer
                    log.exception("alarm step observer failed")

    async def _persist(self, steps: list[Step], alarms: dict[str, Alarm]) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self.store.append, steps, alarms.__getitem__)
        except Exception as exc:  # the alarm still goes out: the centre must hear of it
            log.error("alarm store refused %d steps (%s: %s); publishing them anyway",
                      len(steps), type(exc).__name__, exc)

    def _message(self, step: Step, alarm: Alarm) -> NewMessage:
        return NewMessage(topics.UP_ALARM, alarm.device, transition_message(step, alarm),
                          Priority.ALARM, "attested", received_at=step.time)

    async def _journal(self, groups: list[tuple[list[Step], float | None]],
                       alarms: dict[str, Alarm]) -> None:
        batch = [(self._message(s, alarms[s.alarm_id]), s, received_at)
                 for steps, received_at in groups for s in steps]
        while True:
            try:
                await self.journal.append_many([message for message, _, _ in batch])
                break
            except Exception as exc:
                log.error("journal refused %d alarm steps (%s: %s); retrying", len(batch),
                          type(exc).__name__, exc)
                await asyncio.sleep(_RETRY_S)
        self.steps_journaled += len(batch)
        for message, step, received_at in batch:
            self._record(step, alarms[step.alarm_id])
            if self._on_journaled is not None:
                with contextlib.suppress(Exception):
                    self._on_journaled(JournaledAlarm(message.digest, step.grade.label,
                                                      step.kind, received_at))

    def _record(self, step: Step, alarm: Alarm) -> None:
        details: dict[str, object] = {"alarm_id": step.alarm_id, "grade": step.grade.label,
                                      "level": step.level}
        if _PSEUDONYM.match(alarm.patient or ""):
            details["patient"] = alarm.patient
        if alarm.device:
            details["device"] = alarm.device
        if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}", alarm.key):
            details["condition"] = alarm.key
        if step.kind == NOTIFIED and step.detail:
            details["reason"] = step.detail[:200]  # the recipient and the policy's decision
        actor = step.actor if _ACTOR.match(step.actor) else "centre"
        self.recorder.record(f"alarm.{step.kind}", actor, f"alarm:{step.alarm_id}", details)


class PatientDevices:
    """The dispatch's view of patient devices (alarms/dispatch.DeviceChannel) over the
    service's registry directory, session table and links."""

    def __init__(self, patient_at: Callable[[str, int], str | None],
                 current_session: Callable[[str], Any], links: dict[str, LinkRef],
                 online: dict[str, set[str]], reply: Callable[[LinkRef, bytes], None]) -> None:
        self._patient_at = patient_at
        self._current_session = current_session
        self._links = links  # device id -> its configured link
        self._online = online  # transport -> connected link names (the service's own sets)
        self._reply = reply

    def patient_devices(self, patient: str, now: float) -> list[str]:
        return sorted(d for d in self._links if self._patient_at(d, int(now)) == patient)

    def session(self, device_id: str) -> Any:
        return self._current_session(device_id)

    def send(self, device_id: str, payload: bytes) -> bool:
        link = self._links.get(device_id)
        if link is None or link.link not in self._online.get(link.transport, ()):
            return False
        try:
            self._reply(link, payload)
        except Exception as exc:  # the port closed under us: told again when it is back
            log.info("feedback to %s not sent: %s", device_id, type(exc).__name__)
            return False
        return True
