"""Named clinical scenarios: deterministic, seeded reading series for one simulated patient,
each with the alarm timeline the default limits imply. Tests and the simulator share them.

A scenario knows its ground truth: the readings it injected as artefacts (motion spikes)
are listed in `artefacts`, and sensors report finger-off and signal quality themselves.
`expected_timeline` derives the alarms from that truth with a deliberately plain batch
reading of the rules (default NEWS2 limits, default persistence, the SpO2-fall rule with a
window per device): for every condition key, the first time each grade has held on
consecutive clean readings for its persistence time; only rises above the grade already
expected count, because an open alarm is regraded, never duplicated. The evaluator must
reproduce it reading by reading.

Devices: pulse oximeter "sim-ox-1" (spo2, pr, with signal quality, 1 Hz), chest band
"sim-band-1" (rr, 1 Hz), temperature patch "sim-temp-1" (every 10 s), cuff "sim-cuff-1"
(sys/dia spot measurements every 20-30 s).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from edge_agent.alarms import news2
from edge_agent.alarms.evaluator import SENSOR_OFF, EvaluatorConfig, Reading
from edge_agent.alarms.grades import Grade, grade_for_risk
from edge_agent.alarms.limits import news2_default

OXIMETER = "sim-ox-1"
BAND = "sim-band-1"
PATCH = "sim-temp-1"
CUFF = "sim-cuff-1"
PATIENT = "P-SIM-1"

NAMES = ("stable", "gradual-desaturation", "sudden-desaturation", "fever", "hypotension",
         "motion-artefact")


@dataclass(frozen=True, slots=True)
class ExpectedAlarm:
    grade: Grade
    key: str  # condition key: "spo2:low", "spo2:fall", "news2", "low-signal:sim-ox-1", ...
    at: float  # seconds after the scenario start


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    patient: str
    start: float
    duration: float
    readings: tuple[Reading, ...]  # in time order; times are start + offset
    artefacts: frozenset[int]  # indices of readings injected as artefacts
    expected: tuple[ExpectedAlarm, ...]


Profile = Callable[[float], float]


def _ramp(t0: float, v0: float, t1: float, v1: float) -> Profile:
    """v0 until t0, linear to v1 at t1, v1 after."""
    def value(t: float) -> float:
        if t <= t0:
            return v0
        if t >= t1:
            return v1
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return value


def _const(v: float) -> Profile:
    return lambda t: v


class _Series:
    """Collects readings with bounded (clipped Gaussian) noise from one seeded generator."""

    def __init__(self, patient: str, start: float, seed: int) -> None:
        self.patient, self.start = patient, start
        self.rng = random.Random(seed)
        self.rows: list[tuple[float, int, Reading, bool]] = []  # offset, order, reading, artefact

    def noise(self, sigma: float) -> float:
        return max(-2.5 * sigma, min(2.5 * sigma, self.rng.gauss(0.0, sigma)))

    def add(self, offset: float, device: str, quantity: str, value: float, *,
            artefact: bool = False, **flags: object) -> None:
        reading = Reading(self.patient, device, quantity, value, self.start + offset, **flags)
        self.rows.append((offset, len(self.rows), reading, artefact))

    def vitals(self, duration: float, spo2: Profile, pr: Profile, rr: Profile, temp: Profile,
               sys: Profile, cuff_every: int = 30, skip: Callable[[int], bool] = lambda s: False,
               sq: Callable[[int], float] = lambda s: 90.0) -> None:
        for s in range(int(duration) + 1):
            if not skip(s):
                quality = sq(s)
                self.add(s, OXIMETER, "spo2", min(100, round(spo2(s) + self.noise(0.4))),
                         signal_quality=quality)
                self.add(s, OXIMETER, "pr", round(pr(s) + self.noise(1.5)), signal_quality=quality)
            self.add(s, BAND, "rr", round(rr(s) + self.noise(0.5)))
            if s % 10 == 0:
                self.add(s, PATCH, "temp", round(temp(s) + self.noise(0.04), 1))
            if s % cuff_every == 0:
                systolic = round(sys(s) + self.noise(2.0))
                self.add(s, CUFF, "sys", systolic)
                self.add(s, CUFF, "dia", round(systolic * 0.62))

    def scenario(self, name: str, description: str, duration: float,
                 config: EvaluatorConfig | None) -> Scenario:
        self.rows.sort(key=lambda row: (row[0], row[1]))
        readings = tuple(row[2] for row in self.rows)
        artefacts = frozenset(i for i, row in enumerate(self.rows) if row[3])
        expected = expected_timeline(readings, artefacts, self.start, config)
        return Scenario(name, description, self.patient, self.start, duration, readings,
                        artefacts, expected)


def _stable(series: _Series) -> float:
    series.vitals(120, _const(97.2), _const(72), _const(15), _const(36.8), _const(124))
    return 120


def _gradual_desaturation(series: _Series) -> float:
    series.vitals(300, _ramp(20, 97.2, 280, 87.0), _ramp(20, 74, 280, 97), _ramp(20, 16, 280, 22.4),
                  _const(37.0), _const(122))
    return 300


def _sudden_desaturation(series: _Series) -> float:
    series.vitals(120, _ramp(30, 97.2, 40, 82.5), _ramp(30, 76, 50, 99), _ramp(30, 16, 60, 20),
                  _const(36.9), _const(126), cuff_every=20)
    return 120


def _fever(series: _Series) -> float:
    series.vitals(300, _const(97.2), _ramp(0, 82, 300, 114), _ramp(0, 17, 300, 23),
                  _ramp(0, 37.3, 300, 39.6), _const(118))
    return 300


def _hypotension(series: _Series) -> float:
    series.vitals(240, _const(97.2), _ramp(0, 80, 240, 122), _ramp(0, 16, 240, 21),
                  _const(36.7), _ramp(0, 122, 240, 82), cuff_every=20)
    return 240


_MOTION = ((30, 50), (70, 84))
_FINGER_OFF = (100, 110)
_SPIKES = {60: ("spo2", 79), 90: ("pr", 150)}  # single clean-looking readings, not physiology


def _motion_artefact(series: _Series) -> float:
    def moving(s: int) -> bool:
        return any(a <= s < b for a, b in _MOTION)

    def finger_off(s: int) -> bool:
        return _FINGER_OFF[0] <= s < _FINGER_OFF[1]

    def special(s: int) -> bool:
        return moving(s) or finger_off(s) or s in _SPIKES

    series.vitals(120, _const(97.2), _const(74), _const(15), _const(36.8), _const(124),
                  skip=special)
    rng = series.rng
    for s in range(121):
        if moving(s):
            quality = rng.uniform(5, 30)
            series.add(s, OXIMETER, "spo2", rng.randint(70, 99), artefact=True,
                       signal_quality=quality)
            series.add(s, OXIMETER, "pr", rng.randint(40, 170), artefact=True,
                       signal_quality=quality)
        elif finger_off(s):
            series.add(s, OXIMETER, "spo2", 0, artefact=True, finger_off=True)
            series.add(s, OXIMETER, "pr", 0, artefact=True, finger_off=True)
        elif s in _SPIKES:
            quantity, value = _SPIKES[s]
            other = "pr" if quantity == "spo2" else "spo2"
            normal = {"spo2": 97, "pr": 74}
            series.add(s, OXIMETER, quantity, value, artefact=True, signal_quality=85.0)
            series.add(s, OXIMETER, other, normal[other], signal_quality=85.0)
    return 120


_BUILDERS: dict[str, tuple[Callable[[_Series], float], str]] = {
    "stable": (_stable, "normal vitals with sensor noise: no alarm"),
    "gradual-desaturation": (
        _gradual_desaturation,
        "SpO2 97 -> 87 % over 260 s with rising pulse and respiration rate"),
    "sudden-desaturation": (
        _sudden_desaturation, "SpO2 falls 97 -> 82 % in 10 s at t = 30 s and stays low"),
    "fever": (_fever, "temperature 37.3 -> 39.6 Cel over 300 s with rising pulse and rate"),
    "hypotension": (_hypotension, "systolic pressure 122 -> 82 mmHg with compensatory pulse"),
    "motion-artefact": (
        _motion_artefact,
        "normal patient; motion (low signal quality), two isolated spikes and a finger-off: "
        "technical alarms only"),
}


def build(name: str, start: float = 0.0, seed: int | None = None, patient: str = PATIENT,
          config: EvaluatorConfig | None = None) -> Scenario:
    """The scenario `name` (one of NAMES); the same arguments give the same readings."""
    try:
        builder, description = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r} (known: {', '.join(NAMES)})") from None
    series = _Series(patient, start, zlib.crc32(name.encode()) if seed is None else seed)
    duration = builder(series)
    return series.scenario(name, description, duration, config)


# ---------------------------------------------------------------------- expectations


def _first_rises(samples: Iterable[tuple[float, Grade | None, bool]],
                 persistence: dict[Grade, float]) -> list[tuple[float, Grade]]:
    """(time, grade) whenever the most severe grade that has held on consecutive samples
    for its persistence (or at once when the sample is immediate) exceeds all before it."""
    run_start: dict[Grade, float] = {}
    highest: Grade | None = None
    rises = []
    for t, raw, immediate in samples:
        fired = None
        for grade in Grade:
            if raw is None or grade > raw or (grade is Grade.BLUE) != (raw is Grade.BLUE):
                run_start.pop(grade, None)
                continue
            start = run_start.setdefault(grade, t)
            if immediate or t - start >= persistence[grade]:
                fired = grade
        if fired is not None and (highest is None or fired > highest):
            highest = fired
            rises.append((t, fired))
    return rises


def expected_timeline(readings: Sequence[Reading], artefacts: frozenset[int], start: float,
                      config: EvaluatorConfig | None = None) -> tuple[ExpectedAlarm, ...]:
    """The alarms the default limits imply for a series (see the module docstring)."""
    config = config or EvaluatorConfig()
    samples: dict[str, list[tuple[float, Grade | None, bool]]] = {}

    def sample(key: str, t: float, raw: Grade | None, immediate: bool) -> None:
        samples.setdefault(key, []).append((t - start, raw, immediate))

    clean = []
    for index, r in enumerate(readings):
        if r.signal_quality is not None:
            low = r.signal_quality < config.min_signal_quality
            sample(f"low-signal:{r.device}", r.time, Grade.BLUE if low else None, False)
        off_key = f"{SENSOR_OFF}:{r.device}"  # a finger taken off is a cause of sensor-off
        if r.finger_off or r.sensor_off or off_key in samples:
            sample(off_key, r.time, Grade.BLUE if r.finger_off or r.sensor_off else None, True)
        suppressed = r.finger_off or r.sensor_off or (
            r.signal_quality is not None and r.signal_quality < config.min_signal_quality)
        if not suppressed and index not in artefacts:
            clean.append(r)

    latest: dict[str, tuple[float, float]] = {}
    falls = [rule for rule in config.rate_rules if rule.direction == "fall"]
    falling: dict[tuple[str, str], tuple[float, bool]] = {}  # (key, device) -> latest verdict
    for r in clean:
        immediate = r.quantity in config.spot_quantities or r.manual
        limits = news2_default(r.quantity)
        if limits is not None:
            sample(f"{r.quantity}:low", r.time, limits.grade_low(r.value), immediate)
            sample(f"{r.quantity}:high", r.time, limits.grade_high(r.value), immediate)
        for rule in falls:
            if rule.quantity == r.quantity:
                # each device against its own window; the patient has the fall while any
                # device's latest reading (within the window) shows it
                window = [c.value for c in clean if c.quantity == r.quantity
                          and c.device == r.device and r.time - rule.window <= c.time <= r.time]
                falling[(rule.key, r.device)] = (r.time, max(window) - r.value >= rule.delta)
                dropped = any(shows and seen >= r.time - rule.window
                              for (key, _), (seen, shows) in falling.items() if key == rule.key)
                sample(rule.key, r.time, rule.grade if dropped else None, True)
        parameter = news2.QUANTITY_PARAMETER.get(r.quantity)
        if parameter is None:
            continue
        latest[parameter] = (r.value, r.time)
        if all(p in latest and latest[p][1] >= r.time - config.news2_freshness
               for p in news2.MEASURED):
            score = news2.aggregate(*(latest[p][0] for p in news2.MEASURED))
            sample("news2", r.time, grade_for_risk(score.risk), immediate)

    expected = [ExpectedAlarm(grade, key, t)
                for key, series in samples.items()
                for t, grade in _first_rises(series, config.persistence)]
    return tuple(sorted(expected, key=lambda e: (e.at, e.key)))
