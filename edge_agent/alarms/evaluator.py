"""The rules engine: readings and device state in, alarm-condition changes out. Pure logic.

`Evaluator.evaluate(reading)` runs on every reading, in this order:

1. artefact guards: a value outside what a body or sensor can produce, a finger-off or
   sensor-off flag, a signal quality below `min_signal_quality`, or a physiologically
   implausible jump from the last accepted value suppress the reading for every clinical
   rule and feed a blue technical condition instead (a jump is accepted as real once the
   new level has held, self-consistently, for `jump_confirm_after` seconds);
2. single-parameter thresholds against the patient's limits in force (limits.py), one
   condition per quantity and side ("spo2:low", "pr:high");
3. rate-of-change rules ("spo2:fall": a drop of >= delta within window seconds), with a
   window per device: the patient's condition holds while any of its devices shows the
   change (two oximeters on one patient are never compared with each other);
4. the NEWS2 aggregate ("news2") when all five measured vitals are fresh.

Persistence: a condition's raw grade must hold on every accepted reading for the grade's
persistence time before it fires (red: at once). Spot measurements (blood pressure) and
manual entries are deliberate single observations and fire and clear at once; so do
device-state conditions (already timed by their source). Rate rules fire at once (their
window is the persistence) but clear only after `clear_after`, like measured thresholds.
An active condition follows a lower raw grade down at once, rises only after the higher
grade's persistence, and clears after `clear_after` seconds of normal readings.

The output is a list of `Condition` changes (raised, regraded or cleared = grade None) that
lifecycle.AlarmLifecycle turns into alarms. Nothing here does I/O or reads a clock: time is
the reading's time, so a replayed stream gives the same conditions.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields

from edge_agent.alarms import news2
from edge_agent.alarms.grades import Grade, grade_for_risk
from edge_agent.alarms.limits import LimitsBook, QuantityLimits, ResolvedLimits
from protocol import vitals
from protocol.errors import ValidationError

THRESHOLD = "threshold"
NEWS2 = "news2"
RATE = "rate"
ARTEFACT = "artefact"
TECHNICAL = "technical"
KINDS = (THRESHOLD, NEWS2, RATE, ARTEFACT, TECHNICAL)

# Artefact and technical condition names; keys are "<name>:<device>".
LOW_SIGNAL = "low-signal"
FINGER_OFF = "finger-off"  # a cause of sensor-off (named in the detail), never a condition key
SENSOR_OFF = "sensor-off"
IMPLAUSIBLE = "implausible"
UNIT_MISMATCH = "unit-mismatch"
OFFLINE = "offline"
BATTERY_LOW = "battery-low"
CERTIFICATE = "certificate"
CALIBRATION = "calibration"
BROKER_REFUSING = "broker-refusing"
DISK_BUDGET = "disk-budget"

DAY = 86400.0

# (quantity, unit as given) -> the unit vitals.check_unit returned for it: Reading's fast
# path. Only pairs check_unit accepted (a vitals quantity, None or an allowed unit) enter.
_CHECKED_UNITS: dict[tuple[str, str | None], str] = {}


@dataclass(frozen=True, slots=True)
class Reading:
    """One observation as the rules see it. Validated on construction (ValidationError).

    value: a number for vitals quantities (NaN or an impossible value is accepted here and
    treated as an artefact by the evaluator); one of news2.ACVPU_LEVELS for "acvpu"
    (manual only); a bool for "o2" (True = on supplemental oxygen). unit None = canonical.
    signal_quality: 0..100 as reported by the sensor, None when it reports none.
    """

    patient: str
    device: str
    quantity: str
    value: float | str | bool
    time: float
    unit: str | None = None
    signal_quality: float | None = None
    finger_off: bool = False
    sensor_off: bool = False
    manual: bool = False

    def __post_init__(self) -> None:
        unit = _usual_vitals_unit(self.patient, self.device, self.quantity, self.value,
                                  self.time, self.unit, self.signal_quality)
        if unit is not None and type(self.finger_off) is bool \
                and type(self.sensor_off) is bool and type(self.manual) is bool:
            if self.unit is None:
                object.__setattr__(self, "unit", unit)
            return
        self._check()

    @staticmethod
    def checked(patient: str, device: str, quantity: str, value: float | str | bool,
                time: float, unit: str | None = None, signal_quality: float | None = None,
                manual: bool = False) -> Reading:
        """`Reading(patient, device, quantity, value, time, unit, signal_quality,
        manual=manual)`: the same checks, refusals and result, about three times cheaper for
        the usual vitals reading (built without the dataclass __init__). The verifier makes
        ten per sealed batch (pipeline/verifier.rule_readings)."""
        canonical = _usual_vitals_unit(patient, device, quantity, value, time, unit,
                                       signal_quality)
        if canonical is None or type(manual) is not bool:
            return Reading(patient, device, quantity, value, time, unit, signal_quality,
                           manual=manual)  # the full checks: their refusal, or the reading
        reading = _new_object(Reading)
        set_patient, set_device, set_quantity, set_value, set_time, set_unit, set_quality, \
            set_finger_off, set_sensor_off, set_manual = _SLOT_SETTERS
        set_patient(reading, patient)
        set_device(reading, device)
        set_quantity(reading, quantity)
        set_value(reading, value)
        set_time(reading, time)
        set_unit(reading, canonical if unit is None else unit)
        set_quality(reading, signal_quality)
        set_finger_off(reading, False)
        set_sensor_off(reading, False)
        set_manual(reading, manual)
        return reading

    def _check(self) -> None:
        """The full validation (ValidationError naming the first field that fails)."""
        for name in ("patient", "device"):
            text = getattr(self, name)
            if not isinstance(text, str) or not text:
                raise ValidationError(name, "must be non-empty text")
        if not vitals.is_finite(self.time):
            raise ValidationError("time", "must be a finite number of seconds")
        if self.quantity == news2.CONSCIOUSNESS:
            if self.value not in news2.ACVPU_LEVELS or not isinstance(self.value, str):
                raise ValidationError("v", "consciousness must be one of A, C, V, P, U")
            if not self.manual:
                raise ValidationError("manual", "consciousness is assessed by a person only")
        elif self.quantity == news2.OXYGEN:
            if not isinstance(self.value, bool):
                raise ValidationError("v", "oxygen must be true (oxygen) or false (air)")
        else:
            unit = vitals.check_unit(self.quantity, self.unit)
            if type(self.quantity) is str and (self.unit is None or type(self.unit) is str):
                _CHECKED_UNITS[(self.quantity, self.unit)] = unit  # bounded: valid pairs only
            object.__setattr__(self, "unit", unit)
            if not vitals.is_number(self.value):
                raise ValidationError("v", "value must be a number")
        sq = self.signal_quality
        if sq is not None and (not vitals.is_finite(sq) or not 0 <= sq <= 100):
            raise ValidationError("signal_quality", "must be 0..100 or None")
        for flag in ("finger_off", "sensor_off", "manual"):
            if not isinstance(getattr(self, flag), bool):
                raise ValidationError(flag, "must be a bool")


_new_object = object.__new__
# The slots' own setters, in field order (Reading.checked; a frozen dataclass refuses
# setattr, its slots do not)
_SLOT_SETTERS = tuple(Reading.__dict__[name].__set__ for name in Reading.__slots__)
assert Reading.__slots__ == tuple(f.name for f in fields(Reading))


def _usual_vitals_unit(patient: object, device: object, quantity: object, value: object,
                       time: object, unit: object, signal_quality: object) -> str | None:
    """The unit Reading's checks would set, when these fields are a usual vitals reading
    (exact str/int/float types, a (quantity, unit) pair checked before, finite time,
    signal quality None or 0..100); None otherwise (the full checks then decide). Accepts
    only what the full checks accept (tests/edge_agent/test_reading_checks.py)."""
    if type(quantity) is not str or (unit is not None and type(unit) is not str):
        return None
    checked = _CHECKED_UNITS.get((quantity, unit))
    kind, time_kind = type(value), type(time)
    if checked is None or (kind is not float and kind is not int) \
            or (time_kind is not float and time_kind is not int) or time - time != 0 \
            or type(patient) is not str or not patient or type(device) is not str \
            or not device:
        return None
    if signal_quality is not None:
        sq_kind = type(signal_quality)
        if (sq_kind is not float and sq_kind is not int) or not 0 <= signal_quality <= 100:
            return None
    return checked


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """What the registry knows about a device at `time` (None: unknown, left as it was)."""

    device: str
    patient: str | None
    time: float
    last_seen: float | None = None
    battery: float | None = None  # percent
    sensor_off: bool | None = None
    certificate_state: str | None = None  # protocol.cwt.validity_state()
    calibration_due: float | None = None  # POSIX seconds


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    time: float
    broker_refusing: bool | None = None  # the broker refuses our connection or publishes
    disk_used: int | None = None  # bytes the journal uses
    disk_budget: int | None = None  # bytes it may use


@dataclass(frozen=True, slots=True)
class Condition:
    """A change of one alarm condition: raised/regraded (grade set) or cleared (None)."""

    key: str
    kind: str
    grade: Grade | None
    time: float
    patient: str | None
    device: str | None = None
    quantity: str | None = None
    value: float | str | bool | None = None
    detail: str = ""

    @property
    def active(self) -> bool:
        return self.grade is not None


@dataclass(frozen=True, slots=True)
class RateRule:
    """Fire `grade` when `quantity` moved by >= delta in `direction` ("fall" or "rise")
    within the last `window` seconds (compared with the extreme value in that window)."""

    quantity: str
    direction: str
    delta: float
    window: float
    grade: Grade

    @property
    def key(self) -> str:
        return f"{self.quantity}:{self.direction}"


@dataclass(frozen=True, slots=True)
class JumpGuard:
    """A change larger than floor + per_second * dt from the last accepted value is not
    physiological for this quantity (oximeter averaging and body physiology bound it)."""

    floor: float
    per_second: float

    def allows(self, delta: float, dt: float) -> bool:
        return abs(delta) <= self.floor + self.per_second * max(dt, 0.0)


def _default_persistence() -> dict[Grade, float]:
    return {Grade.RED: 0.0, Grade.ORANGE: 10.0, Grade.YELLOW: 30.0, Grade.BLUE: 5.0}


def _default_jump_guards() -> dict[str, JumpGuard]:
    return {
        "spo2": JumpGuard(4.0, 2.0),
        "pr": JumpGuard(20.0, 30.0),
        "hr": JumpGuard(20.0, 30.0),
        "rr": JumpGuard(8.0, 4.0),
        "temp": JumpGuard(1.0, 0.1),
    }


@dataclass(frozen=True, slots=True)
class EvaluatorConfig:
    persistence: dict[Grade, float] = field(default_factory=_default_persistence)
    clear_after: float = 5.0
    spot_quantities: frozenset[str] = frozenset({"sys", "dia", "map"})
    news2_freshness: float = 900.0
    min_signal_quality: float = 40.0
    jump_guards: dict[str, JumpGuard] = field(default_factory=_default_jump_guards)
    jump_confirm_after: float = 5.0
    rate_rules: tuple[RateRule, ...] = (RateRule("spo2", "fall", 5.0, 30.0, Grade.ORANGE),)
    offline_after: float = 60.0
    battery_low: float = 20.0
    alarming_certificate_states: frozenset[str] = frozenset(
        {"expiring", "expired", "not-yet-valid"})
    calibration_warning: float = 30 * DAY
    disk_budget_fraction: float = 0.9

    @property
    def rebuild_window(self) -> float:
        """Seconds of history that determine every time-built state after a restart."""
        return max(self.news2_freshness,
                   max(self.persistence.values()) + self.clear_after,
                   self.jump_confirm_after,
                   max((rule.window for rule in self.rate_rules), default=0.0))

    def __post_init__(self) -> None:
        if set(self.persistence) != set(Grade) or any(
                not math.isfinite(p) or p < 0 for p in self.persistence.values()):
            raise ValidationError("persistence", "needs a finite time >= 0 for every grade")
        if self.persistence[Grade.RED] != 0:
            raise ValidationError("persistence", "red fires at once (persistence 0)")
        for rule in self.rate_rules:
            if rule.direction not in ("fall", "rise") or rule.delta <= 0 or rule.window <= 0:
                raise ValidationError("rate_rules", f"bad rule {rule!r}")


# The grades a condition climbs through: technical conditions only know blue; a clinical
# condition never reports blue on its way up to yellow.
_LADDERS = {True: (Grade.BLUE,), False: (Grade.YELLOW, Grade.ORANGE, Grade.RED)}


class _Track:
    """Debounces one condition: persistence before firing, hysteresis before clearing."""

    __slots__ = ("since", "active", "normal_since")

    def __init__(self) -> None:
        self.since: dict[Grade, float] = {}
        self.active: Grade | None = None
        self.normal_since: float | None = None

    def step(self, t: float, raw: Grade | None, persistence: dict[Grade, float],
             clear_after: float, immediate: bool) -> bool:
        """Feed one observation's raw grade; True if the reported grade changed.

        immediate: fire without persistence. clear_after: seconds of normal observations
        before an active condition clears (0: at the first normal one)."""
        since = self.since
        if raw is None:
            since.clear()
            if self.active is None:
                return False
            if self.normal_since is None:
                self.normal_since = t
            if t - self.normal_since >= clear_after:
                self.active = None
                self.normal_since = None
                return True
            return False
        self.normal_since = None
        for grade in list(since):
            if grade > raw:
                del since[grade]
        fired: Grade | None = None
        for grade in _LADDERS[raw is Grade.BLUE]:
            if grade > raw:
                break
            start = since.setdefault(grade, t)
            if immediate or t - start >= persistence[grade]:
                fired = grade
        if self.active is not None:
            held = min(self.active, raw)
            fired = held if fired is None else max(fired, held)
        if fired != self.active:
            self.active = fired
            return True
        return False


@dataclass(slots=True)
class _AcceptedValue:
    value: float
    time: float
    pending: tuple[float, float, float] | None = None  # (first time, last value, last time)


class _RateHistory:
    """One patient's recent values of one quantity, for its rate rules: the extreme value
    of each rule's window in O(1) amortised per reading.

    `raw` keeps the readings in arrival order, trimmed to the longest rule window (what the
    rules are defined on). While their times never go backwards, each rule also keeps a
    monotonic deque (the candidates for its window's max or min), so no window is scanned;
    a late reading (an earlier time than the one before it) makes the order unusable, and
    until it has aged out of `raw` the windows are scanned instead (rare: a backlog)."""

    __slots__ = ("raw", "descents", "synced", "_rules", "_extremes", "_span")

    def __init__(self, span: float, rules: tuple[RateRule, ...]) -> None:
        self.raw: deque[tuple[float, float]] = deque()
        self.descents = 0  # adjacent pairs in raw whose time goes backwards
        self.synced = True  # the monotonic deques describe raw
        self._rules = rules
        self._extremes: list[deque[tuple[float, float]]] = [deque() for _ in rules]
        self._span = span

    def add(self, t: float, value: float) -> list[float]:
        """Record a reading; the change each rule sees (same order as the rules)."""
        raw = self.raw
        if raw and t < raw[-1][0]:
            self.descents += 1
        raw.append((t, value))
        while raw[0][0] < t - self._span:
            gone = raw.popleft()
            if raw[0][0] < gone[0]:
                self.descents -= 1
        if self.descents:
            self.synced = False
            return [self._scanned(rule, t, value) for rule in self._rules]
        if self.synced:  # the common case: push, trim and read each rule's deque at once
            changes = []
            for rule, extreme in zip(self._rules, self._extremes, strict=True):
                falling = rule.direction == "fall"
                _push(extreme, falling, t, value)
                while extreme[0][0] < t - rule.window:
                    extreme.popleft()
                best = extreme[0][1]
                changes.append(best - value if falling else value - best)
            return changes
        else:
            for rule, extreme in zip(self._rules, self._extremes, strict=True):
                extreme.clear()
                for entry in raw:
                    _push(extreme, rule.direction == "fall", *entry)
            self.synced = True
        changes = []
        for rule, extreme in zip(self._rules, self._extremes, strict=True):
            while extreme[0][0] < t - rule.window:
                extreme.popleft()
            best = extreme[0][1]
            changes.append(best - value if rule.direction == "fall" else value - best)
        return changes

    def _scanned(self, rule: RateRule, t: float, value: float) -> float:
        window = [v for ht, v in self.raw if ht >= t - rule.window]
        return max(window) - value if rule.direction == "fall" else value - min(window)


def _push(extreme: deque[tuple[float, float]], highest: bool, t: float, value: float) -> None:
    """Append to a monotonic deque: older entries the new value dominates can never be the
    window's extreme again (they leave the window first)."""
    if highest:
        while extreme and extreme[-1][1] <= value:
            extreme.pop()
    else:
        while extreme and extreme[-1][1] >= value:
            extreme.pop()
    extreme.append((t, value))


class _News2Parts:
    """news2.aggregate's total and risk, re-scoring only the parameters whose value (or, for
    SpO2, scale or oxygen) changed since the last aggregate: most readings move one vital."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int, bool, int]] = {}  # (value, scale, o2, score)

    def total_and_risk(self, values: Sequence[float], consciousness: str, on_oxygen: bool,
                       scale: int) -> tuple[int, str]:
        """(total, risk) of news2.aggregate(*values, consciousness, on_oxygen, scale)."""
        last = self._last
        oxygen_part = news2.oxygen_score(on_oxygen)
        consciousness_part = news2.consciousness_score(consciousness)
        total = oxygen_part + consciousness_part
        any_three = oxygen_part == 3 or consciousness_part == 3
        for name, value in zip(news2.MEASURED, values, strict=True):
            memo = last.get(name)
            if memo is not None and memo[0] == value and memo[1] == scale and (
                    memo[2] == on_oxygen):
                part = memo[3]
            else:
                part = (news2.score(name, value, scale, on_oxygen) if name == "spo2"
                        else news2.score(name, value))
                last[name] = (value, scale, on_oxygen, part)
            total += part
            any_three = any_three or part == 3
        return total, news2.clinical_risk(total, any_three)


@dataclass(slots=True)
class _PatientVitals:
    latest: dict[str, tuple[float, float]] = field(default_factory=dict)  # parameter -> (v, t)
    consciousness: tuple[str, float] | None = None
    oxygen: tuple[bool, float] | None = None
    scores: _News2Parts = field(default_factory=_News2Parts)


class _DeviceRates:
    """One quantity's rate state for one patient, kept per device: each device's own window
    (`_RateHistory`) and its latest reading's time, value and change per rule.

    Why per device: two devices measuring one quantity for one patient (a sealing oximeter
    and a BLE one) disagree by a few points all the time; in one shared window one device's
    value is compared with the other's maximum and a "fall" appears and vanishes with every
    reading. A device's verdict counts for the patient until it is older than the rule's
    window, so a device that stopped sending does not hold the condition for ever."""

    __slots__ = ("histories", "verdicts", "_rules", "_span")

    def __init__(self, span: float, rules: tuple[RateRule, ...]) -> None:
        self.histories: dict[str, _RateHistory] = {}
        self.verdicts: dict[str, tuple[float, float, list[float]]] = {}  # (t, value, changes)
        self._rules = rules
        self._span = span

    def add(self, device: str, t: float, value: float) -> list[tuple[float, str, float]]:
        """Record one device's reading; per rule, the largest change that any device's
        latest reading within the rule's window shows, with that device and its value
        (ties: this reading)."""
        history = self.histories.get(device)
        if history is None:
            history = self.histories[device] = _RateHistory(self._span, self._rules)
        changes = history.add(t, value)
        self.verdicts[device] = (t, value, changes)
        shown = []
        for index, rule in enumerate(self._rules):
            best = (changes[index], device, value)
            for other, (seen, latest, others) in self.verdicts.items():
                if other != device and seen >= t - rule.window and others[index] > best[0]:
                    best = (others[index], other, latest)
            shown.append(best)
        return shown


class _DeviceKeys:
    """The condition keys of one device, built once instead of formatted per reading."""

    __slots__ = ("device", "offline", "sensor_off", "low_signal", "implausible",
                 "unit_mismatch")

    def __init__(self, device: str) -> None:
        self.device = device
        self.offline = f"{OFFLINE}:{device}"
        self.sensor_off = f"{SENSOR_OFF}:{device}"
        self.low_signal = f"{LOW_SIGNAL}:{device}"
        self.implausible = f"{IMPLAUSIBLE}:{device}"
        self.unit_mismatch: dict[str, str] = {}  # quantity -> key

    def mismatch(self, quantity: str) -> str:
        key = self.unit_mismatch.get(quantity)
        if key is None:
            key = self.unit_mismatch[quantity] = f"{UNIT_MISMATCH}:{quantity}:{self.device}"
        return key


class _QuantityRules:
    """What the rules need to know about one measured quantity, looked up once."""

    __slots__ = ("low", "high", "spot", "guard", "rate_rules", "rate_keys", "parameter")

    def __init__(self, quantity: str, config: EvaluatorConfig,
                 rate_rules: tuple[RateRule, ...] | None) -> None:
        self.low = f"{quantity}:low"
        self.high = f"{quantity}:high"
        self.spot = quantity in config.spot_quantities
        self.guard = config.jump_guards.get(quantity)
        self.rate_rules = rate_rules
        self.rate_keys = tuple(rule.key for rule in rate_rules or ())
        self.parameter = news2.QUANTITY_PARAMETER.get(quantity)


class Evaluator:
    """Turns readings and device/gateway state into alarm-condition changes.

    Speed (docs/alarms.md, "Performance"): most readings change nothing, so the reading path
    looks up a condition's track only to find there is none, formats keys once per device
    and quantity, and formats detail text only for a condition it reports. A track that
    holds nothing (inactive, no grade building up) is dropped: it is indistinguishable from
    a missing one."""

    def __init__(self, limits: LimitsBook, config: EvaluatorConfig | None = None,
                 continuous_link: Callable[[str], bool] | None = None) -> None:
        """continuous_link(device): whether the device keeps a link that should carry data
        all the time, so that silence means it is offline (default: every device). Manual
        entries (readings marked manual) are never offline-tracked: nobody is expected to
        enter values every minute."""
        self.limits = limits
        self.config = config or EvaluatorConfig()
        self._continuous_link = continuous_link
        self._tracked_devices: dict[str, bool] = {}  # continuous_link's answers, per device
        self._tracks: dict[tuple[str | None, str], _Track] = {}
        self._accepted: dict[tuple[str, str], _AcceptedValue] = {}  # (device, quantity)
        self._patients: dict[str, _PatientVitals] = {}
        self._rate_state: dict[tuple[str, str], _DeviceRates] = {}  # (patient, quantity)
        self._device_patient: dict[str, str | None] = {}
        self._last_seen: dict[str, float] = {}
        self._max_rate_window = max((r.window for r in self.config.rate_rules), default=0.0)
        self._rules_by_quantity: dict[str, tuple[RateRule, ...]] = {}
        for rule in self.config.rate_rules:
            self._rules_by_quantity[rule.quantity] = (
                *self._rules_by_quantity.get(rule.quantity, ()), rule)
        self._device_keys: dict[str, _DeviceKeys] = {}
        self._quantity_rules: dict[str, _QuantityRules] = {}
        self._ranges: dict[tuple[str, str | None], tuple[float, float]] = {}  # possible values

    # ------------------------------------------------------------------ readings

    def evaluate(self, reading: Reading) -> list[Condition]:
        """All condition changes this reading causes (usually none)."""
        out: list[Condition] = []
        patient, device, t = reading.patient, reading.device, reading.time
        tracks = self._tracks
        keys = self._device_keys.get(device)
        if keys is None:
            keys = self._device_keys[device] = _DeviceKeys(device)
        self._device_patient[device] = patient
        if not reading.manual:
            tracked = self._tracked_devices.get(device)
            if tracked is None:
                tracked = self._offline_tracked(device)
            if tracked:
                if t > self._last_seen.get(device, -math.inf):
                    self._last_seen[device] = t
                if (patient, keys.offline) in tracks:
                    self._technical(out, patient, device, OFFLINE, None, t, "")
        quantity = reading.quantity
        if quantity == news2.CONSCIOUSNESS:
            self._consciousness(out, reading)
            return out
        if quantity == news2.OXYGEN:
            self._observe(out, reading, news2.OXYGEN)
            return out
        rules = self._quantity_rules.get(quantity)
        if rules is None:
            rules = self._quantity_rules[quantity] = _QuantityRules(
                quantity, self.config, self._rules_by_quantity.get(quantity))
        if not self._passes_artefact_guards(out, reading, keys, rules):
            return out
        if quantity == "bat":
            low = reading.value <= self.config.battery_low
            self._technical(out, patient, device, BATTERY_LOW, Grade.BLUE if low else None,
                            t, f"battery {reading.value:g} %", value=reading.value)
            return out
        resolved = self.limits.resolve(patient, t)
        limits = self.limits_for(reading, resolved)
        immediate = reading.manual or rules.spot
        if limits is not None:
            self._thresholds(out, reading, keys, rules, limits, resolved, immediate)
        if rules.rate_rules:
            self._rates(out, reading, rules.rate_rules, rules.rate_keys)
        if rules.parameter is not None:
            self._observe(out, reading, rules.parameter, immediate)
        return out

    def limits_for(self, reading: Reading,
                   resolved: ResolvedLimits | None = None) -> QuantityLimits | None:
        """The limits `evaluate` grades this reading's value with, given the state now: the
        patient's limits in force at the reading's time, with the SpO2 bands chosen by an
        `o2` observation within `news2_freshness` of it (else the prescribed oxygen state).
        None: the quantity has no limits. resolved: `limits.resolve(patient, time)`, when
        the caller has it already. `evaluate` and AlarmPath.is_critical both ask here."""
        patient, t = reading.patient, reading.time
        if resolved is None:
            resolved = self.limits.resolve(patient, t)
        state = self._patients.get(patient)
        if state is None or state.oxygen is None:  # the usual case, without a call
            return resolved.for_quantity(reading.quantity)
        return resolved.for_quantity(reading.quantity, self._fresh_oxygen(state, t))

    def _passes_artefact_guards(self, out: list[Condition], reading: Reading, keys: _DeviceKeys,
                                rules: _QuantityRules) -> bool:
        patient, device, t, value = reading.patient, reading.device, reading.time, reading.value
        tracks = self._tracks
        finger_off, sensor_off = reading.finger_off, reading.sensor_off
        # One condition, sensor-off (the technical alarm, and what a device's sensor-off
        # event raises); a finger taken off is one cause of it, named in the detail. Raised at
        # once like that event: the device's own statement that nothing is measured is not a
        # noisy value for persistence to confirm.
        off = finger_off or sensor_off
        if off or (patient, keys.sensor_off) in tracks:
            cause = FINGER_OFF if finger_off else SENSOR_OFF
            self._artefact(out, patient, device, SENSOR_OFF, keys.sensor_off, off, t,
                           f"{cause} reported by sensor", immediate=True)
        clean = not off
        sq = reading.signal_quality
        if sq is not None:
            low = sq < self.config.min_signal_quality
            if low or (patient, keys.low_signal) in tracks:
                self._artefact(
                    out, patient, device, LOW_SIGNAL, keys.low_signal, low, t,
                    f"signal quality {sq:g} below {self.config.min_signal_quality:g}" if low
                    else "")
            clean = clean and not low
        if not clean:
            return False
        # vitals.check_value, with the possible range looked up once per quantity and unit
        quantity, unit = reading.quantity, reading.unit
        possible = self._ranges.get((quantity, unit))
        kind = type(value)
        if possible is None or (kind is not float and kind is not int) or not (
                possible[0] <= value <= possible[1]):  # NaN and the infinities fail this too
            try:
                vitals.check_value(quantity, value, unit)
            except ValidationError as exc:
                self._artefact(out, patient, device, IMPLAUSIBLE, keys.implausible, True, t,
                               f"{quantity}: {exc.reason}")
                return False
            if possible is None:
                entry = vitals.quantity(quantity)["limits"][vitals.check_unit(quantity, unit)]
                self._ranges[(quantity, unit)] = (entry[0], entry[1])
        jump = self._implausible_jump(reading, rules.guard)
        if jump is not None or (patient, keys.implausible) in tracks:
            self._artefact(out, patient, device, IMPLAUSIBLE, keys.implausible,
                           jump is not None, t, jump or "")
        return jump is None

    def _implausible_jump(self, reading: Reading, guard: JumpGuard | None) -> str | None:
        """None if the value is plausible (and now accepted), else why it is not."""
        key = (reading.device, reading.quantity)
        value, t = float(reading.value), reading.time
        last = self._accepted.get(key)
        if last is None:
            self._accepted[key] = _AcceptedValue(value, t)
            return None
        if guard is None or reading.manual or guard.allows(value - last.value, t - last.time):
            last.value, last.time, last.pending = value, t, None
            return None
        pending = last.pending
        if pending is not None and guard.allows(value - pending[1], t - pending[2]):
            if t - pending[0] >= self.config.jump_confirm_after:
                last.value, last.time, last.pending = value, t, None  # the new level is real
                return None
            last.pending = (pending[0], value, t)
        else:
            last.pending = (t, value, t)
        return (f"{reading.quantity} jumped {last.value:g} -> {value:g} "
                f"in {t - last.time:g} s (implausible)")

    def _thresholds(self, out: list[Condition], reading: Reading, keys: _DeviceKeys,
                    rules: _QuantityRules, limits: QuantityLimits, resolved: ResolvedLimits,
                    immediate: bool) -> None:
        q, patient, t = reading.quantity, reading.patient, reading.time
        tracks = self._tracks
        mismatch = reading.unit != limits.unit
        if mismatch or (patient, keys.mismatch(q)) in tracks:
            self._technical(out, patient, reading.device, f"{UNIT_MISMATCH}:{q}",
                            Grade.BLUE if mismatch else None, t,
                            f"{q} in {reading.unit} but limits are in {limits.unit}")
        if mismatch:
            return  # never compare numbers in different units
        value = float(reading.value)
        low_grade, high_grade = limits.grades(value)
        for side, key, raw in (("low", rules.low, low_grade), ("high", rules.high, high_grade)):
            if raw is None and (patient, key) not in tracks:
                continue  # nothing to clear, nothing building up
            track = self._step(patient, key, raw, t, immediate)
            if track is not None:
                out.append(Condition(
                    key, THRESHOLD, track.active, t, patient, reading.device, q, reading.value,
                    f"{q} {value:g} {limits.unit} ({side}); limits: "
                    f"{resolved.provenance(q).describe()}"))

    def _rates(self, out: list[Condition], reading: Reading, rules: tuple[RateRule, ...],
               keys: tuple[str, ...]) -> None:
        state = self._rate_state.get((reading.patient, reading.quantity))
        if state is None:
            state = self._rate_state[(reading.patient, reading.quantity)] = _DeviceRates(
                self._max_rate_window, rules)
        t = reading.time
        shown = state.add(reading.device, t, float(reading.value))
        tracks = self._tracks
        for rule, key, (change, device, value) in zip(rules, keys, shown, strict=True):
            raw = rule.grade if change >= rule.delta else None
            if raw is None and (reading.patient, key) not in tracks:
                continue
            # fires at once (the window is its persistence), clears after clear_after
            if self._step(reading.patient, key, raw, t, True,
                          self.config.clear_after) is not None:
                out.append(Condition(
                    key, RATE, raw, t, reading.patient, device, reading.quantity, value,
                    f"{reading.quantity} {rule.direction} of {change:g} within "
                    f"{rule.window:g} s on {device} (rule: >= {rule.delta:g})"))

    def _consciousness(self, out: list[Condition], reading: Reading) -> None:
        raw = Grade.RED if news2.consciousness_score(str(reading.value)) else None
        if self._step(reading.patient, news2.CONSCIOUSNESS, raw, reading.time, True) is not None:
            out.append(Condition(news2.CONSCIOUSNESS, THRESHOLD, raw, reading.time,
                                 reading.patient, reading.device, news2.CONSCIOUSNESS,
                                 reading.value, f"ACVPU {reading.value} (manual)"))
        self._observe(out, reading, news2.CONSCIOUSNESS, True)

    def _observe(self, out: list[Condition], reading: Reading, parameter: str,
                 immediate: bool = True) -> None:
        """Record a NEWS2 input and re-score the aggregate if every vital is fresh."""
        state = self._patients.get(reading.patient)
        if state is None:
            state = self._patients[reading.patient] = _PatientVitals()
        t = reading.time
        if parameter == news2.CONSCIOUSNESS:
            state.consciousness = (str(reading.value), t)
        elif parameter == news2.OXYGEN:
            state.oxygen = (bool(reading.value), t)
        else:
            state.latest[parameter] = (float(reading.value), t)
        fresh_after = t - self.config.news2_freshness
        latest = state.latest
        values = []
        for name in news2.MEASURED:
            entry = latest.get(name)
            if entry is None or entry[1] < fresh_after:
                return
            values.append(entry[0])
        resolved = self.limits.resolve(reading.patient, t)
        oxygen = self._fresh_oxygen(state, t)
        consciousness = state.consciousness
        level = "A" if consciousness is None or consciousness[1] < fresh_after else consciousness[0]
        total, risk = state.scores.total_and_risk(
            values, level, resolved.on_oxygen if oxygen is None else oxygen, resolved.spo2_scale)
        raw = grade_for_risk(risk)
        if raw is None and (reading.patient, NEWS2) not in self._tracks:
            return
        track = self._step(reading.patient, NEWS2, raw, t, immediate)
        if track is not None:
            assessed = "" if consciousness is not None and consciousness[1] >= fresh_after else (
                "; consciousness not assessed, alert assumed")
            out.append(Condition(
                NEWS2, NEWS2, track.active, t, reading.patient, reading.device, None, total,
                f"NEWS2 {total} ({risk} risk){assessed}"))

    def _fresh_oxygen(self, state: _PatientVitals | None, t: float) -> bool | None:
        if state is None or state.oxygen is None:
            return None
        value, seen = state.oxygen
        return value if seen >= t - self.config.news2_freshness else None

    # ------------------------------------------------------------------ device state

    def device_status(self, status: DeviceStatus) -> list[Condition]:
        """Technical conditions from the registry's view of one device."""
        out: list[Condition] = []
        device, patient, t = status.device, status.patient, status.time
        if patient is not None:
            self._device_patient[device] = patient
        patient = self._device_patient.get(device)
        if status.last_seen is not None and self._offline_tracked(device) and (
                status.last_seen > self._last_seen.get(device, -math.inf)):
            self._last_seen[device] = status.last_seen
            self._offline(out, device, t)
        if status.battery is not None:
            low = status.battery <= self.config.battery_low
            self._technical(out, patient, device, BATTERY_LOW, Grade.BLUE if low else None, t,
                            f"battery {status.battery:g} %", value=status.battery)
        if status.sensor_off is not None:
            self._technical(out, patient, device, SENSOR_OFF,
                            Grade.BLUE if status.sensor_off else None, t, "sensor off")
        if status.certificate_state is not None:
            state = status.certificate_state
            bad = state in self.config.alarming_certificate_states
            self._technical(out, patient, device, CERTIFICATE, Grade.BLUE if bad else None, t,
                            f"certificate {state}", value=state)
        if status.calibration_due is not None:
            left = status.calibration_due - t
            due = left <= self.config.calibration_warning
            what = "overdue" if left < 0 else f"due in {left / DAY:.0f} days"
            self._technical(out, patient, device, CALIBRATION, Grade.BLUE if due else None, t,
                            f"calibration {what}")
        return out

    def gateway_status(self, status: GatewayStatus) -> list[Condition]:
        """Technical conditions of the gateway itself (patient None)."""
        out: list[Condition] = []
        if status.broker_refusing is not None:
            self._technical(out, None, None, BROKER_REFUSING,
                            Grade.BLUE if status.broker_refusing else None, status.time,
                            "broker refuses the gateway")
        if status.disk_used is not None and status.disk_budget:
            fraction = status.disk_used / status.disk_budget
            full = fraction >= self.config.disk_budget_fraction
            self._technical(out, None, None, DISK_BUDGET, Grade.BLUE if full else None,
                            status.time, f"journal uses {fraction:.0%} of its disk budget",
                            value=fraction)
        return out

    def tick(self, now: float) -> list[Condition]:
        """Time-driven conditions: devices that stopped reporting go offline."""
        out: list[Condition] = []
        for device in list(self._last_seen):
            self._offline(out, device, now)
        return out

    def _offline_tracked(self, device: str) -> bool:
        tracked = self._tracked_devices.get(device)
        if tracked is None:
            tracked = self._continuous_link is None or bool(self._continuous_link(device))
            self._tracked_devices[device] = tracked
        return tracked

    def _offline(self, out: list[Condition], device: str, now: float) -> None:
        silent = now - self._last_seen[device]
        raw = Grade.BLUE if silent > self.config.offline_after else None
        self._technical(out, self._device_patient.get(device), device, OFFLINE, raw, now,
                        f"no data for {silent:.0f} s")

    # ------------------------------------------------------------------ plumbing

    def _step(self, patient: str | None, key: str, raw: Grade | None, t: float,
              immediate: bool, clear_after: float | None = None) -> _Track | None:
        """Debounce one condition: its track if the reported grade changed, else None.
        clear_after None: an immediate condition clears at the first normal observation,
        the others after config.clear_after."""
        tracks = self._tracks
        track = tracks.get((patient, key))
        if track is None:
            if raw is None:
                return None  # nothing to clear, no state worth keeping
            track = tracks[(patient, key)] = _Track()
        if clear_after is None:
            clear_after = 0.0 if immediate else self.config.clear_after
        changed = track.step(t, raw, self.config.persistence, clear_after, immediate)
        if raw is None and track.active is None:
            del tracks[(patient, key)]  # holds nothing now: the same as no track at all
        return track if changed else None

    def _artefact(self, out: list[Condition], patient: str, device: str, name: str, key: str,
                  flagged: bool, t: float, detail: str, immediate: bool = False) -> None:
        """detail: why, when flagged (unused otherwise: a cleared condition says it ended)."""
        track = self._step(patient, key, Grade.BLUE if flagged else None, t, immediate)
        if track is not None:
            grade = track.active
            out.append(Condition(key, ARTEFACT, grade, t, patient, device,
                                 detail=detail if grade is not None else f"{name} ended"))

    def _technical(self, out: list[Condition], patient: str | None, device: str | None,
                   name: str, raw: Grade | None, t: float, detail: str,
                   value: float | str | None = None) -> None:
        key = name if device is None else f"{name}:{device}"
        if self._step(patient, key, raw, t, True) is not None:
            out.append(Condition(key, TECHNICAL, raw, t, patient, device, value=value,
                                 detail=detail if raw is not None else f"{name} ended"))

    def rebuild(self, history: Iterable[Reading],
                active: Iterable[tuple[str | None, str, Grade]]) -> list[Condition]:
        """Restart: rebuild the state the rules build up over time (persistence clocks,
        hysteresis, rate windows, NEWS2 inputs, artefact guards) by evaluating the readings
        journaled within `config.rebuild_window` before the restart, in arrival order; then
        seed the conditions of the restored alarms (`resume`).

        A condition that was still building up fires at the time it would have without the
        restart. Returns the conditions the history shows active that no restored alarm holds
        at that grade (the alarm step was lost in the crash): the caller applies them.
        Devices seen in the history are not offline-tracked until they send again (a long
        downtime would otherwise report every device offline at start-up)."""
        last_seen = dict(self._last_seen)
        latest: dict[tuple[str | None, str], Condition] = {}
        for reading in history:
            for condition in self.evaluate(reading):
                latest[(condition.patient, condition.key)] = condition
        self._last_seen = last_seen
        restored = {(patient, key): grade for patient, key, grade in active}
        self.resume((patient, key, grade) for (patient, key), grade in restored.items())
        return [c for key, c in latest.items() if c.grade is not None and (
            key not in restored or c.grade > restored[key])]

    def resume(self, active: Iterable[tuple[str | None, str, Grade]]) -> None:
        """Seed conditions that were active before a restart ((patient, key, grade), e.g.
        AlarmLifecycle.active_conditions()), so that normal readings clear them again
        instead of leaving their alarms active for ever."""
        for patient, key, grade in active:
            track = self._tracks.setdefault((patient, key), _Track())
            track.active = grade

    def active_conditions(self) -> dict[tuple[str | None, str], Grade]:
        """(patient, key) -> grade of every condition currently reported active."""
        return {k: track.active for k, track in self._tracks.items() if track.active is not None}
