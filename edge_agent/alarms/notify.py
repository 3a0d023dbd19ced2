"""Who hears of an alarm, and when: the notification policy (pure; docs/alarms.md).

Recipients: the monitoring centre (every transition, always: it documents the closed loop),
the patient's own device (a feedback pattern, firmware/feedback.py) and the gateway's local
notification sink (a structured log event and an optional command). Each grade routes to a
set of recipients; quiet hours (a local time-of-day window, crossing midnight allowed) defer
the *patient-facing* recipients for the low grades only. Red and orange are never deferred:
IEC 60601-1-8 high and medium priority call for a prompt response, and a remote patient has
nobody else at the bedside; a configuration asking otherwise is refused, not trimmed.

A deferred notification is delivered when quiet hours end if its alarm still calls for
attention (`Alarm.signal_active`); otherwise it lapses. Every decision, delivered or
deferred, becomes a "notified" step (actor "policy", the recipient in the detail).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from edge_agent.alarms.grades import Grade
from edge_agent.alarms.lifecycle import Alarm

CENTRE = "centre"
DEVICE = "device"
LOCAL = "local"
RECIPIENTS = (CENTRE, DEVICE, LOCAL)
PATIENT_FACING = frozenset({DEVICE, LOCAL})
POLICY_ACTOR = "policy"  # the actor of every notified step the policy takes
OFF = "off"  # the feedback pattern when nothing calls for attention (firmware/feedback.py)
DEFERRABLE = frozenset({Grade.YELLOW, Grade.BLUE})
MINUTES_PER_DAY = 24 * 60


class PolicyError(ValueError):
    """A policy setting is unacceptable; `key` names the setting (relative to the policy)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def parse_clock(key: str, text: object) -> int:
    """"HH:MM" (24 h) -> minutes after midnight."""
    if not isinstance(text, str) or len(text) != 5 or text[2] != ":" \
            or not (text[:2] + text[3:]).isdigit():
        raise PolicyError(key, f"must be a time of day \"HH:MM\", got {text!r}")
    hours, minutes = int(text[:2]), int(text[3:])
    if hours > 23 or minutes > 59:
        raise PolicyError(key, f"must be a time of day 00:00..23:59, got {text!r}")
    return hours * 60 + minutes


def minute_of_day(local: datetime) -> int:
    return local.hour * 60 + local.minute


@dataclass(frozen=True, slots=True)
class QuietHours:
    """[start, end) in local minutes after midnight; start > end crosses midnight."""

    start: int
    end: int
    grades: frozenset[Grade] = DEFERRABLE

    def __post_init__(self) -> None:
        for key, minute in (("start", self.start), ("end", self.end)):
            if not isinstance(minute, int) or not 0 <= minute < MINUTES_PER_DAY:
                raise PolicyError(key, "must be a minute of the day 0..1439")
        if self.start == self.end:
            raise PolicyError("end", "must differ from start (an empty or all-day window "
                                     "is ambiguous)")
        refused = sorted(g.label for g in self.grades if g not in DEFERRABLE)
        if refused:
            raise PolicyError("grades", f"{', '.join(refused)} alarms are never deferred by "
                                        "quiet hours (only yellow and blue may be)")
        if not self.grades:
            raise PolicyError("grades", "name at least one grade (yellow, blue)")

    @classmethod
    def parse(cls, start: object, end: object,
              grades: Iterable[str] = ("yellow", "blue")) -> QuietHours:
        labels = list(grades)
        parsed = []
        for label in labels:
            try:
                parsed.append(Grade.from_label(label))
            except (ValueError, AttributeError):
                raise PolicyError("grades", f"unknown grade {label!r}") from None
        return cls(parse_clock("start", start), parse_clock("end", end), frozenset(parsed))

    def active(self, minute: int) -> bool:
        """Is `minute` (after local midnight) inside the window?"""
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def defers(self, grade: Grade, minute: int) -> bool:
        return grade in self.grades and self.active(minute)

    def ends_after(self, local: datetime) -> datetime:
        """The next end of the window strictly after `local` (wall-clock arithmetic)."""
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        end = midnight + timedelta(minutes=self.end)
        return end if end > local else end + timedelta(days=1)

    def describe(self) -> str:
        return (f"{self.start // 60:02d}:{self.start % 60:02d}-"
                f"{self.end // 60:02d}:{self.end % 60:02d}")


def _default_routes() -> dict[Grade, frozenset[str]]:
    return {grade: frozenset(RECIPIENTS) for grade in Grade}


@dataclass(frozen=True, slots=True)
class NotificationPolicy:
    """Routes per grade, optional quiet hours, the local sink's optional command (argv)."""

    routes: Mapping[Grade, frozenset[str]] = field(default_factory=_default_routes)
    quiet_hours: QuietHours | None = None
    notify_command: tuple[str, ...] = ()
    timezone: str | None = None  # IANA name; None: the system's local time

    def __post_init__(self) -> None:
        routes = {}
        for grade in Grade:
            given = frozenset(self.routes.get(grade, ()))
            unknown = sorted(given - set(RECIPIENTS))
            if unknown:
                raise PolicyError(grade.label, f"unknown recipient {unknown[0]!r} (known: "
                                               f"{', '.join(RECIPIENTS)})")
            if grade is Grade.RED and DEVICE not in given:
                raise PolicyError(grade.label, "red alarms must reach the patient's device")
            # The centre hears every transition whatever the route says: it is the record.
            routes[grade] = given | {CENTRE}
        object.__setattr__(self, "routes", routes)
        command = tuple(self.notify_command)
        if any(not isinstance(arg, str) or not arg or "\x00" in arg for arg in command):
            raise PolicyError("notify_command", "must be a list of non-empty strings (argv)")
        object.__setattr__(self, "notify_command", command)

    def recipients(self, grade: Grade) -> frozenset[str]:
        return self.routes[grade]

    def deferred(self, grade: Grade, recipient: str, minute: int) -> bool:
        """Does quiet hours hold back this recipient's notification of `grade` now?"""
        return (recipient in PATIENT_FACING and self.quiet_hours is not None
                and self.quiet_hours.defers(grade, minute))


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy does with one recipient of one alarm notification."""

    alarm_id: str
    recipient: str
    grade: Grade
    deliver: bool  # False: deferred until quiet hours end

    @property
    def detail(self) -> str:
        """The notified step's detail (recipient first, so it can be parsed back)."""
        if self.deliver:
            return self.recipient
        return f"{self.recipient} deferred: quiet hours"


def decide(policy: NotificationPolicy, alarm_id: str, grade: Grade,
           minute: int) -> list[Decision]:
    """The decisions for one notification of an alarm at `grade`, at local `minute`, in
    the fixed recipient order (centre, device, local)."""
    routed = policy.recipients(grade)
    return [Decision(alarm_id, recipient, grade,
                     not policy.deferred(grade, recipient, minute))
            for recipient in RECIPIENTS if recipient in routed]


def device_pattern(policy: NotificationPolicy, alarms: Iterable[Alarm], minute: int) -> str:
    """The feedback pattern a patient's devices should show: the highest grade among the
    patient's alarms that call for attention, route to the device and are not held back
    by quiet hours; OFF when there is none."""
    grades = [a.grade for a in alarms
              if a.signal_active and DEVICE in policy.recipients(a.grade)
              and not policy.deferred(a.grade, DEVICE, minute)]
    return max(grades).label if grades else OFF


class Deferrals:
    """Notifications held back by quiet hours: (alarm id, recipient) -> grade. Pure state:
    `due` says which to deliver now and which lapsed."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], Grade] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, decision: Decision) -> None:
        self._held[(decision.alarm_id, decision.recipient)] = decision.grade

    def discard(self, alarm_id: str, recipient: str) -> None:
        """A later notification reached the recipient: the held one is spent."""
        self._held.pop((alarm_id, recipient), None)

    def restore(self, alarm_id: str, notified_details: Iterable[str], grade: Grade) -> None:
        """After a restart: the latest notified detail per recipient says whether it was
        still held back (the steps are the only memory)."""
        last: dict[str, str] = {}
        for detail in notified_details:
            recipient = detail.split(" ", 1)[0]
            if recipient in PATIENT_FACING:
                last[recipient] = detail
        for recipient, detail in last.items():
            if detail.endswith("deferred: quiet hours"):
                self._held[(alarm_id, recipient)] = grade

    def due(self, policy: NotificationPolicy, alarm_of: Mapping[str, Alarm] | None,
            minute: int) -> tuple[list[Decision], list[tuple[str, str]]]:
        """-> (decisions to deliver now, (alarm id, recipient) that lapsed because the
        alarm no longer calls for attention). Both leave the held set."""
        deliver: list[Decision] = []
        lapsed: list[tuple[str, str]] = []
        for alarm_id, recipient in list(self._held):
            alarm = alarm_of.get(alarm_id) if alarm_of is not None else None
            if alarm is None or not alarm.signal_active:
                lapsed.append((alarm_id, recipient))
            elif not policy.deferred(alarm.grade, recipient, minute):
                deliver.append(Decision(alarm_id, recipient, alarm.grade, True))
            else:
                continue
            del self._held[(alarm_id, recipient)]
        return deliver, lapsed
