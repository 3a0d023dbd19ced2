"""Key and certificate lifecycle: the state as a pure function of recorded facts and `now`.

A key (or certificate) has a validity window (not_before, expires) and at most one journal
step of each kind: created, activated, retired, revoked, compromised, destroyed. Only steps
recorded at or before `now` count, so the same facts answer "what is it now?", "what was it
then?" and "what will it be at the technician's next visit?".

Precedence, most decisive first:
    destroyed > compromised > revoked > retired            (recorded facts)
    > expired > pending (not activated, or before nbf)
    > expiring (<= 30 days left) > renewal-due (>= 2/3 of lifetime) > active
The time part is protocol.cwt.validity_state, so the agent and the wire agree on it.

No I/O, no clock: callers pass `now` (integer POSIX seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from protocol import cwt
from protocol.errors import ValidationError

DAY = cwt.DAY
# Retired (or withdrawn) keys must be destroyed within this window: the rule of the brief.
DESTRUCTION_WINDOW = 10 * DAY
# Calibration and regulatory registration are flagged this long before they lapse.
CURRENCY_NOTICE = 30 * DAY

PENDING = "pending"
ACTIVE = "active"
RENEWAL_DUE = "renewal-due"
EXPIRING = "expiring"
EXPIRED = "expired"
REVOKED = "revoked"
COMPROMISED = "compromised"
RETIRED = "retired"
DESTROYED = "destroyed"
STATES = (PENDING, ACTIVE, RENEWAL_DUE, EXPIRING, EXPIRED, REVOKED, COMPROMISED, RETIRED,
          DESTROYED)
# States in which a key may seal or sign something the gateway accepts.
USABLE = frozenset({ACTIVE, RENEWAL_DUE, EXPIRING})

CREATED = "created"
ACTIVATED = "activated"
STEPS = (CREATED, ACTIVATED, RETIRED, REVOKED, COMPROMISED, DESTROYED)
# Steps that end a key's use; the earliest starts the destruction window.
END_STEPS = (RETIRED, REVOKED, COMPROMISED)

_TIME_STATES = {
    cwt.VALID: ACTIVE,
    cwt.RENEWAL_DUE: RENEWAL_DUE,
    cwt.EXPIRING: EXPIRING,
}


class TransitionError(ValidationError):
    """A lifecycle step that the key's recorded facts forbid. `field` is "step" or "at"."""


def _check_seconds(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValidationError(name, "must be integer POSIX seconds >= 0")
    return value


@dataclass(frozen=True, slots=True)
class Facts:
    """What the journal knows about one key or certificate: its window and step instants."""

    not_before: int
    expires: int
    created: int | None = None
    activated: int | None = None
    retired: int | None = None
    revoked: int | None = None
    compromised: int | None = None
    destroyed: int | None = None

    def __post_init__(self) -> None:
        _check_seconds("not_before", self.not_before)
        _check_seconds("expires", self.expires)
        if self.not_before >= self.expires:
            raise ValidationError("expires", "must be after not_before")
        for step in STEPS:
            value = getattr(self, step)
            if value is not None:
                _check_seconds(step, value)

    def step_times(self) -> dict[str, int]:
        """The recorded steps, step name -> instant."""
        return {s: getattr(self, s) for s in STEPS if getattr(self, s) is not None}

    def as_of(self, now: int) -> Facts:
        """These facts as they stood at `now`: steps recorded later are not known yet."""
        later = {s: None for s, at in self.step_times().items() if at > now}
        return replace(self, **later) if later else self


def time_state(facts: Facts, now: int) -> str:
    """protocol.cwt.validity_state of the window (Facts has the attributes it reads)."""
    return cwt.validity_state(facts, now)


def state(facts: Facts, now: int) -> str:
    """The lifecycle state at `now` (see the module docstring for the precedence)."""
    known = facts.as_of(_check_seconds("now", now))
    if known.destroyed is not None:
        return DESTROYED
    if known.compromised is not None:
        return COMPROMISED
    if known.revoked is not None:
        return REVOKED
    if known.retired is not None:
        return RETIRED
    in_time = time_state(known, now)
    if in_time == cwt.EXPIRED:
        return EXPIRED
    if known.activated is None or in_time == cwt.NOT_YET_VALID:
        return PENDING
    return _TIME_STATES[in_time]


def usable(facts: Facts, now: int) -> bool:
    return state(facts, now) in USABLE


def ended_at(facts: Facts) -> int | None:
    """When the key stopped being usable by decision (retired, revoked or compromised)."""
    ends = [at for step, at in facts.step_times().items() if step in END_STEPS]
    return min(ends) if ends else None


def destruction_deadline(facts: Facts) -> int | None:
    """The last instant by which the key must be destroyed, or None if its use never ended."""
    end = ended_at(facts)
    return None if end is None else end + DESTRUCTION_WINDOW


def renewal_due_at(facts: Facts) -> int:
    return cwt.renewal_due_at(facts)


def expiring_at(facts: Facts) -> int:
    return cwt.expiring_at(facts)


def next_change(facts: Facts, now: int) -> int | None:
    """The earliest instant after `now` at which state() may differ from state(facts, now),
    or None if nothing recorded or scheduled can change it. A scheduler that sleeps until
    this instant never misses a transition (the state is constant on [now, result))."""
    _check_seconds("now", now)
    if facts.destroyed is not None and facts.destroyed <= now:
        return None
    candidates = [at for at in facts.step_times().values() if at > now]
    known = facts.as_of(now)
    # Once a decision ended the key, only later recorded steps can change its state.
    if ended_at(known) is None:
        candidates += [facts.not_before, renewal_due_at(facts), expiring_at(facts),
                       facts.expires]
    later = [at for at in candidates if at > now]
    return min(later) if later else None


def check_step(facts: Facts, step: str, at: int) -> None:
    """Raise TransitionError unless `step` may be recorded at `at`, saying what to do."""
    _check_seconds("at", at)
    if step not in STEPS:
        raise TransitionError("step", f"unknown step {step!r} (one of {', '.join(STEPS)})")
    recorded = facts.step_times()
    if step in recorded:
        raise TransitionError("step", f"already {step} at {recorded[step]}; a step is "
                              "recorded once")
    last = max(recorded.values(), default=at)
    if at < last:
        raise TransitionError("at", f"{at} is before the last recorded step ({last}): the "
                              "journal only moves forward, check the clock")
    if facts.destroyed is not None:
        raise TransitionError("step", f"the key was destroyed at {facts.destroyed}; "
                              "nothing can follow")
    if step == CREATED:
        if recorded:
            raise TransitionError("step", "created must be the first step")
        return
    if facts.created is None:
        raise TransitionError("step", "record the key as created first")
    if step == ACTIVATED:
        ended = ended_at(facts)
        if ended is not None:
            raise TransitionError("step", f"its use already ended at {ended}; enroll a "
                                  "new key")
        if time_state(facts, at) == cwt.EXPIRED:
            raise TransitionError("step", f"the key expired at {facts.expires}; an expired "
                                  "key cannot be activated, issue a new one")
    elif step == REVOKED and facts.compromised is not None:
        raise TransitionError("step", "already compromised, which includes revocation")
    elif step == DESTROYED and ended_at(facts) is None:
        raise TransitionError("step", "still in use: retire, revoke or declare it "
                              "compromised before destroying it")


def apply_step(facts: Facts, step: str, at: int) -> Facts:
    """The facts after recording `step` at `at` (checked by check_step)."""
    check_step(facts, step, at)
    return replace(facts, **{step: at})


def allowed_steps(facts: Facts, at: int) -> tuple[str, ...]:
    """The steps check_step would accept at `at`, in STEPS order."""
    allowed = []
    for step in STEPS:
        try:
            check_step(facts, step, at)
        except TransitionError:
            continue
        allowed.append(step)
    return tuple(allowed)


def device_currency_flags(now: int, registration_number: str | None,
                          registration_valid_until: int | None,
                          calibration_due: int | None) -> tuple[str, ...]:
    """Flags for a medical device whose regulatory registration or calibration is not
    current: its readings are kept and flagged with these, never dropped or silently trusted."""
    _check_seconds("now", now)
    flags = []
    if not registration_number:
        flags.append("registration-missing")
    flags += _deadline_flags("registration", registration_valid_until, now, "expired")
    flags += _deadline_flags("calibration", calibration_due, now, "overdue")
    return tuple(flags)


def _deadline_flags(what: str, deadline: int | None, now: int, past: str) -> list[str]:
    if deadline is None:
        return [f"{what}-unknown"]
    if now >= deadline:
        return [f"{what}-{past}"]
    if deadline - now <= CURRENCY_NOTICE:
        return [f"{what}-due-soon"]
    return []


