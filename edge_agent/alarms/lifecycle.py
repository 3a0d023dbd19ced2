"""The closed loop of every alarm, as pure state: raised -> notified -> acknowledged ->
resolved -> closed, each step with its actor and time.

An alarm's state is the fold of its append-only steps (`Alarm.apply`): the live lifecycle
and a restart that replays the steps from store.py build it with the same code, so what
survives a restart is exactly what was journaled.

Rules (reasons in docs/alarms.md):
- one alarm per (patient, condition key) until it is closed: a condition that re-occurs or
  worsens while its alarm is open adds a "recurred" or "regraded" step, never a duplicate;
  the grade of an open alarm never goes down;
- "resolved" means the condition has ended. A red alarm is latching: its signal stays
  active until acknowledged even when the condition has resolved, and an unacknowledged red
  alarm escalates every `escalate_after` seconds (level + 1, re-notify) up to
  `max_escalation_level`;
- a worsening (regraded) or a recurrence needs a new acknowledgement;
- closing needs both an acknowledgement and a resolved condition;
- alarm ids are deterministic: a digest of patient, key and the raise time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from edge_agent.alarms.evaluator import Condition
from edge_agent.alarms.grades import Grade

RAISED = "raised"
NOTIFIED = "notified"
ACKNOWLEDGED = "acknowledged"
ESCALATED = "escalated"
REGRADED = "regraded"
RECURRED = "recurred"
RESOLVED = "resolved"
CLOSED = "closed"
STEP_KINDS = (RAISED, NOTIFIED, ACKNOWLEDGED, ESCALATED, REGRADED, RECURRED, RESOLVED, CLOSED)
# Steps after which the patient's device and the monitoring centre must be (re-)notified.
NOTIFY_KINDS = frozenset({RAISED, REGRADED, RECURRED, ESCALATED})


class LifecycleError(ValueError):
    """A person asked for a transition the closed loop does not allow; the message says why."""


@dataclass(frozen=True, slots=True)
class Step:
    """One journaled transition. grade/level are the alarm's grade and escalation level
    after the step; seq numbers an alarm's steps from 0 without gaps."""

    alarm_id: str
    seq: int
    kind: str
    time: float
    actor: str
    grade: Grade
    level: int = 0
    value: float | str | bool | None = None
    detail: str = ""

    @property
    def needs_notification(self) -> bool:
        return self.kind in NOTIFY_KINDS


@dataclass(slots=True)
class Alarm:
    """Identity (fixed at raise) plus the state folded from its steps."""

    id: str
    patient: str | None
    key: str
    kind: str
    quantity: str | None
    device: str | None
    grade: Grade = Grade.BLUE
    raised_at: float = 0.0
    step_count: int = 0
    condition_active: bool = False
    value: float | str | bool | None = None
    detail: str = ""
    notified_at: float | None = None
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    resolved_at: float | None = None
    closed_at: float | None = None
    closed_by: str | None = None
    escalation_level: int = 0
    escalation_base: float | None = None  # when the current red episode started

    def apply(self, step: Step) -> None:
        """Fold one step into the state. Steps must come in seq order."""
        if step.alarm_id != self.id or step.seq != self.step_count:
            raise LifecycleError(f"step {step.seq} of {step.alarm_id} out of order for {self.id}")
        self.step_count += 1
        self.escalation_level = step.level
        kind = step.kind
        if kind in (RAISED, REGRADED, RECURRED):
            if kind == RAISED:
                self.raised_at = step.time
            self.condition_active = True
            self.resolved_at = None
            self.grade = step.grade
            self.value = step.value
            self.detail = step.detail
            if kind != RAISED:
                self.acknowledged_at = self.acknowledged_by = None
            self.escalation_base = step.time if step.grade is Grade.RED else None
        elif kind == NOTIFIED:
            if self.notified_at is None:
                self.notified_at = step.time
        elif kind == ACKNOWLEDGED:
            self.acknowledged_at = step.time
            self.acknowledged_by = step.actor
        elif kind == RESOLVED:
            self.condition_active = False
            self.resolved_at = step.time
        elif kind == CLOSED:
            self.closed_at = step.time
            self.closed_by = step.actor
        elif kind != ESCALATED:
            raise LifecycleError(f"unknown step kind {kind!r}")

    @property
    def state(self) -> str:
        """The furthest stage reached: raised, notified, acknowledged, resolved or closed."""
        if self.closed_at is not None:
            return CLOSED
        if self.resolved_at is not None:
            return RESOLVED
        if self.acknowledged_at is not None:
            return ACKNOWLEDGED
        return NOTIFIED if self.notified_at is not None else RAISED

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_at is not None

    @property
    def signal_active(self) -> bool:
        """The alarm still calls for attention: its condition holds, or it is a latching red
        alarm nobody has acknowledged yet."""
        if not self.is_open:
            return False
        return self.condition_active or (self.grade.latching and not self.acknowledged)

    def escalation_due(self, escalate_after: float, max_level: int) -> float | None:
        """When the next escalation is due (None: it will not escalate)."""
        if (self.grade is not Grade.RED or self.acknowledged or not self.is_open
                or self.escalation_base is None or self.escalation_level >= max_level):
            return None
        return self.escalation_base + (self.escalation_level + 1) * escalate_after


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    escalate_after: float = 120.0  # seconds an unacknowledged red alarm waits per level
    max_escalation_level: int = 3
    system_actor: str = "rules"  # the actor of steps the rules take by themselves

    def __post_init__(self) -> None:
        if not self.escalate_after > 0 or self.max_escalation_level < 0:
            raise ValueError("escalate_after must be > 0 and max_escalation_level >= 0")


def alarm_id(patient: str | None, key: str, raised_at: float, attempt: int = 0) -> str:
    """Deterministic id: 16 hex digits of SHA-256 over patient, key, raise time (ms)."""
    text = f"{patient or ''}\x1f{key}\x1f{round(raised_at * 1000)}\x1f{attempt}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class AlarmLifecycle:
    """Every alarm of the gateway and the steps that move them. Methods return the new
    steps, which the caller journals (store.py) and notifies on (Step.needs_notification)."""

    def __init__(self, config: LifecycleConfig | None = None,
                 restored: Iterable[Alarm] = ()) -> None:
        self.config = config or LifecycleConfig()
        self._alarms: dict[str, Alarm] = {}
        self._open: dict[tuple[str | None, str], str] = {}
        for alarm in restored:
            self._alarms[alarm.id] = alarm
            if alarm.is_open:
                self._open[(alarm.patient, alarm.key)] = alarm.id

    # ------------------------------------------------------------------ conditions

    def apply(self, condition: Condition) -> list[Step]:
        """Fold one evaluator condition change into the alarms."""
        alarm = self.find(condition.patient, condition.key)
        grade = condition.grade
        if grade is None:
            if alarm is None or not alarm.condition_active:
                return []
            return [self._step(alarm, RESOLVED, condition.time, value=condition.value,
                               detail=condition.detail)]
        if alarm is None:
            alarm = self._create(condition)
            return [self._step(alarm, RAISED, condition.time, grade=grade,
                               value=condition.value, detail=condition.detail)]
        if not alarm.condition_active:
            return [self._step(alarm, RECURRED, condition.time, grade=max(grade, alarm.grade),
                               value=condition.value, detail=condition.detail, level=0)]
        if grade > alarm.grade:
            return [self._step(alarm, REGRADED, condition.time, grade=grade,
                               value=condition.value, detail=condition.detail, level=0)]
        return []

    def apply_all(self, conditions: Iterable[Condition]) -> list[Step]:
        steps: list[Step] = []
        for condition in conditions:
            steps.extend(self.apply(condition))
        return steps

    # ------------------------------------------------------------------ people and channels

    def notified(self, alarm_id: str, actor: str, time: float, detail: str = "") -> Step:
        """Record that a notification of the alarm reached `actor` (a channel or person)."""
        alarm = self._open_alarm(alarm_id)
        return self._step(alarm, NOTIFIED, time, actor=_actor(actor), detail=detail)

    def acknowledge(self, alarm_id: str, actor: str, time: float) -> list[Step]:
        """A person acknowledges the alarm (idempotent while acknowledged)."""
        alarm = self._open_alarm(alarm_id)
        if alarm.acknowledged:
            return []
        return [self._step(alarm, ACKNOWLEDGED, time, actor=_actor(actor))]

    def close(self, alarm_id: str, actor: str, time: float, detail: str = "") -> Step:
        """A person closes the loop; the alarm must be acknowledged and resolved."""
        alarm = self._open_alarm(alarm_id)
        if not alarm.acknowledged:
            raise LifecycleError(f"alarm {alarm_id} is not acknowledged")
        if alarm.condition_active:
            raise LifecycleError(f"alarm {alarm_id}: its condition is still active")
        step = self._step(alarm, CLOSED, time, actor=_actor(actor), detail=detail)
        del self._open[(alarm.patient, alarm.key)]
        return step

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> list[Step]:
        """Escalate every unacknowledged red alarm whose next escalation is due."""
        steps = []
        for alarm_id in list(self._open.values()):
            alarm = self._alarms[alarm_id]
            due = alarm.escalation_due(self.config.escalate_after,
                                       self.config.max_escalation_level)
            if due is not None and now >= due:
                waited = now - (alarm.escalation_base or now)
                steps.append(self._step(alarm, ESCALATED, now, level=alarm.escalation_level + 1,
                                        detail=f"unacknowledged for {waited:.0f} s"))
        return steps

    # ------------------------------------------------------------------ queries

    def alarm(self, alarm_id: str) -> Alarm:
        try:
            return self._alarms[alarm_id]
        except KeyError:
            raise LifecycleError(f"no alarm {alarm_id}") from None

    def find(self, patient: str | None, key: str) -> Alarm | None:
        """The open alarm of (patient, key), if any."""
        alarm_id = self._open.get((patient, key))
        return None if alarm_id is None else self._alarms[alarm_id]

    def open_alarms(self, patient: str | None = None) -> list[Alarm]:
        """Open alarms (the active set the centre and the device mirror), most severe first."""
        alarms = [self._alarms[i] for i in self._open.values()]
        if patient is not None:
            alarms = [a for a in alarms if a.patient == patient]
        return sorted(alarms, key=lambda a: (-a.grade, a.raised_at, a.id))

    def active_conditions(self) -> list[tuple[str | None, str, Grade]]:
        """(patient, key, grade) of open alarms whose condition holds: Evaluator.resume input."""
        return [(a.patient, a.key, a.grade) for a in self.open_alarms() if a.condition_active]

    # ------------------------------------------------------------------ plumbing

    def _open_alarm(self, alarm_id: str) -> Alarm:
        alarm = self.alarm(alarm_id)
        if not alarm.is_open:
            raise LifecycleError(f"alarm {alarm_id} is closed")
        return alarm

    def _create(self, condition: Condition) -> Alarm:
        attempt = 0
        new_id = alarm_id(condition.patient, condition.key, condition.time)
        while new_id in self._alarms:  # same key re-raised in the millisecond it was closed
            attempt += 1
            new_id = alarm_id(condition.patient, condition.key, condition.time, attempt)
        alarm = Alarm(new_id, condition.patient, condition.key, condition.kind,
                      condition.quantity, condition.device)
        self._alarms[new_id] = alarm
        self._open[(alarm.patient, alarm.key)] = new_id
        return alarm

    def _step(self, alarm: Alarm, kind: str, time: float, actor: str | None = None,
              grade: Grade | None = None, level: int | None = None,
              value: float | str | bool | None = None, detail: str = "") -> Step:
        step = Step(alarm.id, alarm.step_count, kind, time, actor or self.config.system_actor,
                    alarm.grade if grade is None else grade,
                    alarm.escalation_level if level is None else level, value, detail)
        alarm.apply(step)
        return step


def _actor(actor: str) -> str:
    if not isinstance(actor, str) or not actor.strip():
        raise LifecycleError("a person or channel must be named as the actor")
    return actor
