"""The gateway's active alarm set as the centre and a late subscriber see it (pure).

The set is every open alarm (not yet closed), each as its latest step, published retained
on up/alarms (protocol.alarm_messages "alarm-set"). `ActiveSet` follows the steps as they
become durable and says when the published form changes; the time in the body is when it
last changed, so an unchanged set re-published after a reconnect carries the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from edge_agent.alarms.lifecycle import CLOSED, Alarm, Step
from protocol import alarm_messages


def to_transition(step: Step, alarm: Alarm) -> alarm_messages.AlarmTransition:
    """One lifecycle step as its wire form (values the wire cannot carry are left out or
    shortened: a non-finite number, over-long text)."""
    value = step.value
    if isinstance(value, float) and not math.isfinite(value):
        value = None
    if isinstance(value, str):
        value = value[:alarm_messages.VALUE_TEXT_MAX]
    detail = step.detail[:alarm_messages.DETAIL_MAX] if step.detail else None
    return alarm_messages.AlarmTransition(
        step.alarm_id, step.seq, step.kind, step.grade.label, alarm.key,
        int(step.time * 1000), step.level, patient=alarm.patient, device=alarm.device,
        value=value, actor=step.actor[:alarm_messages.ACTOR_MAX], detail=detail)


class ActiveSet:
    """Latest step of each open alarm; `payload()` is the retained alarm-set message."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[Step, Alarm]] = {}
        self._changed_ms = 0
        self.truncated = 0  # open alarms left out of the last payload (over MAX_SET)

    def __len__(self) -> int:
        return len(self._latest)

    def ids(self) -> set[str]:
        return set(self._latest)

    def update(self, steps: Iterable[Step], alarm_of: Mapping[str, Alarm], now_ms: int) -> bool:
        """Fold durable steps in (`alarm_of` gives each step's alarm). True if the set's
        content changed; its change time becomes `now_ms`."""
        changed = False
        for step in steps:
            alarm = alarm_of.get(step.alarm_id)
            if step.kind == CLOSED or alarm is None or not alarm.is_open:
                changed |= self._latest.pop(step.alarm_id, None) is not None
                continue
            known = self._latest.get(step.alarm_id)
            if known is None or known[0].seq < step.seq:
                self._latest[step.alarm_id] = (step, alarm)
                changed = True
        if changed:
            self._changed_ms = max(self._changed_ms + 1, now_ms)
        return changed

    def payload(self) -> bytes:
        """The alarm-set message: most severe first, at most MAX_SET alarms."""
        ordered = sorted(self._latest.values(),
                         key=lambda item: (-item[1].grade, item[1].raised_at, item[1].id))
        self.truncated = max(0, len(ordered) - alarm_messages.MAX_SET)
        kept = ordered[:alarm_messages.MAX_SET]
        return alarm_messages.encode_alarm_set(
            self._changed_ms, [to_transition(step, alarm) for step, alarm in kept])
