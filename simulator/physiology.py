"""A seeded patient model: continuous vital signs, and what each kind of sensor reports.

Two layers (docs/physiology.md has the parameters and their sources):

* **Truth** (`PatientModel.vitals(t)`): heart rate, SpO2, core temperature, systolic /
  diastolic / mean pressure, respiratory rate and perfusion index at any instant.
  With a named scenario the truth inside the scenario's window [start, start + duration]
  follows the scenario's own clean readings (edge_agent.alarms.scenarios.build with the
  same seed and start): each quantity is a local linear fit over its nearest clean
  readings, interpolated between them, so artefacts never reach it. After the window the
  patient stays in the final state plus slow physiological variability (random-phase
  sinusoids, periods of 10-60 min) and the circadian temperature rhythm; both are zero
  at the window's end, so the truth is continuous. Without a scenario (`scenario=None`)
  the window is the instant `start` and the state is a healthy-adult baseline.
* **Sensors** (`PatientModel.observe(t, sensor)`): a sensor reports the value it measured
  at its latest sample instant (oximeter and strap every second, thermometer every 10 s,
  cuff on demand). Inside the window, where the scenario has a reading for that instant,
  the sensor reports exactly that reading (noise, motion artefacts, spikes and finger-off
  included, as the scenario generated them), so the scenario's expected alarm timeline
  holds by construction for any sampling at or above the scenario's rate. Everywhere
  else (quantities the scenario does not script, and every time after the window) the
  report is truth + Gaussian noise at the sensor's resolution, corrupted during the
  motion and sensor-off events the model draws (a Poisson process per kind; none inside
  the window, where the scenario decides).

Every random number comes from `random.Random` seeded with a string naming the seed, the
scenario and what is drawn (sensor and sample slot, event block, ...), so any instant can
be evaluated in any order and the same arguments always give the same values.

Adapters turn observations into what the simulated devices take: `ble_source(kind)` for
simulator.ble_devices (value sources of seconds since the device was attached),
`sim_hal_line(t)` for the firmware's simulated HAL signal feed (the truth: the firmware's
own simulated front end and algorithm are its measurement chain), `cms50_source()` for
a Contec CMS50 on a PTY (60 packets/s with a plethysmogram and beat beeps).
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.alarms import scenarios
from edge_agent.alarms.evaluator import EvaluatorConfig, Reading
from edge_agent.serial_ingest.drivers import Cms50Sample
from firmware.hal.sim_devices import Physiology, pulse_shape

# ---- sensors ------------------------------------------------------------------------------

PULSE_OXIMETER = "pulse-oximeter"
THERMOMETER = "thermometer"
BP_CUFF = "bp-cuff"
HEART_RATE_STRAP = "heart-rate-strap"
SENSOR_KINDS = (PULSE_OXIMETER, THERMOMETER, BP_CUFF, HEART_RATE_STRAP)

# Seconds between a sensor's sample instants, counted from the model's start. The cuff
# measures on demand (measurement_times gives the scenario's schedule).
SAMPLE_PERIOD = {PULSE_OXIMETER: 1.0, HEART_RATE_STRAP: 1.0, THERMOMETER: 10.0}
CUFF_INTERVAL_S = 30.0  # the cuff's schedule after a scenario's last scripted measurement

# Event kinds (ground truth of what corrupts a sensor's reports).
MOTION = "motion"
SENSOR_OFF = "sensor-off"  # finger out of the oximeter, strap without skin contact
SPIKE = "spike"  # a single implausible value (scripted by the motion-artefact scenario)


@dataclass(frozen=True, slots=True)
class HomeDevice:
    """One device of the simulated home the scenarios assume, and what it reports."""

    device: str  # the scenario's device id
    sensor: str  # one of SENSOR_KINDS
    quantities: tuple[str, ...]  # protocol.vitals names it reports to the rules


# The devices edge_agent.alarms.scenarios writes readings for. The chest band is a
# heart-rate strap whose respiration rate ("rr") is what the scenarios use.
HOME_DEVICES = (
    HomeDevice(scenarios.OXIMETER, PULSE_OXIMETER, ("spo2", "pr")),
    HomeDevice(scenarios.BAND, HEART_RATE_STRAP, ("rr",)),
    HomeDevice(scenarios.PATCH, THERMOMETER, ("temp",)),
    HomeDevice(scenarios.CUFF, BP_CUFF, ("sys", "dia")),
)
_SENSOR_OF_DEVICE = {d.device: d.sensor for d in HOME_DEVICES}

# ---- parameters (sources: docs/physiology.md) ------------------------------------------------

# Healthy resting adult: the state at `start` without a scenario.
BASELINE = {"hr": 72.0, "spo2": 97.5, "temp": 36.8, "sys": 122.0, "dia": 78.0, "rr": 15.0}
# Per-report measurement noise (SD, in the quantity's unit; "pi" is relative).
NOISE_SD = {"spo2": 0.7, "pr": 1.5, "hr": 1.0, "rr": 1.0, "temp": 0.05, "sys": 3.0,
            "dia": 2.5, "pi": 0.10}
# Slow physiological variability after the scenario window (SD; "pi" relative).
WANDER_SD = {"hr": 3.0, "spo2": 0.4, "rr": 1.0, "sys": 4.0, "dia": 3.0, "pi": 0.06}
WANDER_PERIOD_S = (600.0, 3600.0)
CIRCADIAN_AMPLITUDE_C = 0.25  # half the peak-to-trough swing of core temperature
CIRCADIAN_PEAK_HOUR = 17.0  # local time of the daily maximum
BEAT_RATE_SD = 0.05  # beat-to-beat variability: relative SD of the beat rate per second
# Resolution each sensor reports at (values are rounded to it).
_RESOLUTION = {"spo2": 1, "pr": 1, "hr": 1, "rr": 1, "temp": 0.1, "sys": 1, "dia": 1,
               "map": 1, "pi": 0.01}
_SIGNAL_QUALITY_OK = 88.0  # oximeter signal quality (0..100) on a still, perfused finger
_MIN_SIGNAL_QUALITY = EvaluatorConfig().min_signal_quality

_EVENT_BLOCK_S = 3600.0  # own events are drawn per block of this many seconds
_MAX_EVENT_S = 600.0  # no drawn event lasts longer (bounds the look-back across blocks)
_BEAT_BLOCK = 1024  # beat-rate noise is drawn per block of this many one-second slots


# ---- values ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Vitals:
    """The patient's true physiological state at `t` (no sensor involved)."""

    t: float
    hr: float  # heart rate, beat/min (the pulse rate too: no arrhythmia is modelled)
    spo2: float  # arterial oxygen saturation, %
    temp: float  # core temperature, Cel
    sys: float  # systolic pressure, mm[Hg]
    dia: float  # diastolic pressure, mm[Hg]
    map: float  # mean arterial pressure, mm[Hg] (dia + (sys - dia) / 3)
    rr: float  # respiratory rate, breaths/min (protocol quantity "rr")
    pi: float  # perfusion index at the fingertip, %


@dataclass(frozen=True, slots=True)
class Observation:
    """What one sensor reports at a query time.

    `t` is the sample instant the report belongs to (<= the query time). `values` maps
    protocol.vitals quantity names to numbers at the sensor's resolution: oximeter spo2,
    pr, pi; thermometer temp; cuff sys, dia, map, pr; strap hr, rr (respiration rate).
    It is empty while the sensor is off. `artefact` is ground truth: the values do not
    reflect the patient (motion, spike, sensor off); the sensor itself only shows it
    through signal_quality, finger_off, sensor_contact or body_movement.
    """

    sensor: str
    t: float
    values: dict[str, float]
    signal_quality: float | None = None  # oximeter, 0..100; None with the finger out
    finger_off: bool = False  # oximeter
    sensor_contact: bool | None = None  # strap
    rr_intervals: tuple[float, ...] = ()  # strap: beat-to-beat intervals ending in (t-1, t]
    body_movement: bool = False  # cuff: movement detected during the measurement
    artefact: bool = False
    scripted: bool = False  # the values come from the scenario's readings


@dataclass(frozen=True, slots=True)
class Event:
    """An interval [start, end) during which `sensors` report corrupted or no values."""

    kind: str  # MOTION, SENSOR_OFF or SPIKE
    start: float
    end: float
    sensors: frozenset[str]
    strength: float = 1.0  # motion: 0..1
    scripted: bool = False  # from the scenario (else drawn by the model)

    def covers(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True, slots=True)
class SensorEffects:
    """How noisy the sensors are and how often the model draws events of its own.

    Rates are per hour; durations (low, high) seconds, drawn uniformly. Inside a
    scenario's window only the scenario's own artefacts happen.
    """

    noise_scale: float = 1.0  # multiplies NOISE_SD; 0 = reports are rounded truth
    motion_per_hour: float = 4.0
    motion_s: tuple[float, float] = (5.0, 40.0)
    finger_off_per_hour: float = 1.0
    finger_off_s: tuple[float, float] = (10.0, 90.0)
    strap_off_per_hour: float = 0.5
    strap_off_s: tuple[float, float] = (5.0, 60.0)

    def __post_init__(self) -> None:
        for name in ("noise_scale", "motion_per_hour", "finger_off_per_hour",
                     "strap_off_per_hour"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        for name in ("motion_s", "finger_off_s", "strap_off_s"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= _MAX_EVENT_S:
                raise ValueError(f"{name} must be 0 < low <= high <= {_MAX_EVENT_S:g} s")

    @classmethod
    def quiet(cls, noise_scale: float = 1.0) -> SensorEffects:
        """No drawn events at all (only a scenario's own artefacts)."""
        return cls(noise_scale=noise_scale, motion_per_hour=0.0, finger_off_per_hour=0.0,
                   strap_off_per_hour=0.0)


# ---- building blocks --------------------------------------------------------------------------


def _quantize(value: float, step: float) -> float:
    if step == 1:
        return int(round(value))
    return round(round(value / step) * step, 2)


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


class _Track:
    """A quantity's true trajectory through a scenario: a local linear fit over the `k`
    nearest clean readings on each side of every reading, joined linearly, held flat
    before the first and after the last."""

    def __init__(self, samples: list[tuple[float, float]], k: int) -> None:
        times = [t for t, _ in samples]
        values = [v for _, v in samples]
        self.times = times
        self.nodes = [_local_linear(times, values, i, k) for i in range(len(times))]

    def at(self, t: float) -> float:
        times, nodes = self.times, self.nodes
        i = bisect.bisect_right(times, t)
        if i == 0:
            return nodes[0]
        if i == len(times):
            return nodes[-1]
        t0, t1 = times[i - 1], times[i]
        return nodes[i - 1] + (nodes[i] - nodes[i - 1]) * (t - t0) / (t1 - t0)


def _local_linear(times: list[float], values: list[float], i: int, k: int) -> float:
    lo, hi = max(0, i - k), min(len(times), i + k + 1)
    ts, vs = times[lo:hi], values[lo:hi]
    mean_t, mean_v = sum(ts) / len(ts), sum(vs) / len(vs)
    sxx = sum((x - mean_t) ** 2 for x in ts)
    if sxx == 0:
        return mean_v
    slope = sum((x - mean_t) * (y - mean_v) for x, y in zip(ts, vs, strict=True)) / sxx
    return mean_v + slope * (times[i] - mean_t)


class _Wander:
    """Slow variability: three sinusoids with seeded periods and phases, SD `sd`."""

    def __init__(self, rng: random.Random, sd: float) -> None:
        amplitude = sd * math.sqrt(2.0 / 3.0)  # three sinusoids: variance 3 * a**2 / 2
        self.terms = [(amplitude, 2 * math.pi / rng.uniform(*WANDER_PERIOD_S),
                       rng.uniform(0, 2 * math.pi)) for _ in range(3)]

    def __call__(self, x: float) -> float:
        return sum(a * math.sin(w * x + phase) for a, w, phase in self.terms)


def _circadian(t: float, utc_offset_h: float) -> float:
    hour = ((t / 3600.0 + utc_offset_h) % 24.0)
    return CIRCADIAN_AMPLITUDE_C * math.cos(2 * math.pi * (hour - CIRCADIAN_PEAK_HOUR) / 24.0)


@functools.lru_cache(maxsize=64)
def _scenario(name: str, start: float, seed: int) -> scenarios.Scenario:
    return scenarios.build(name, start=start, seed=seed)


class _Script:
    """A scenario's readings indexed by sensor and sample slot, its clean trajectories
    and its artefacts as events."""

    # Fit half-width in readings: about +-6 s for 1-Hz quantities, +-20 s for the patch,
    # +-20..30 s for the cuff.
    _FIT_READINGS = {"spo2": 6, "pr": 6, "rr": 6, "temp": 2, "sys": 1, "dia": 1}
    _TRUTH_OF = {"pr": "hr"}  # reading quantity -> Vitals field

    def __init__(self, scenario: scenarios.Scenario) -> None:
        self.scenario = scenario
        self.start, self.end = scenario.start, scenario.start + scenario.duration
        self.slots: dict[tuple[str, int], list[tuple[int, Reading]]] = {}
        self.cuff: list[tuple[float, list[tuple[int, Reading]]]] = []
        clean: dict[str, list[tuple[float, float]]] = {}
        for index, reading in enumerate(scenario.readings):
            sensor = _SENSOR_OF_DEVICE.get(reading.device)
            if sensor is None:
                raise ValueError(f"scenario device {reading.device!r} has no sensor kind")
            if sensor == BP_CUFF:
                if not self.cuff or self.cuff[-1][0] != reading.time:
                    self.cuff.append((reading.time, []))
                self.cuff[-1][1].append((index, reading))
            else:
                slot = round((reading.time - self.start) / SAMPLE_PERIOD[sensor])
                self.slots.setdefault((sensor, slot), []).append((index, reading))
            if self.is_clean(index, reading):
                field_name = self._TRUTH_OF.get(reading.quantity, reading.quantity)
                clean.setdefault(field_name, []).append((reading.time, float(reading.value)))
        self.tracks = {name: _Track(samples, self._FIT_READINGS.get(name, 6))
                       for name, samples in clean.items()}
        self.cuff_times = [t for t, _ in self.cuff]
        self.events = self._events()

    def is_clean(self, index: int, reading: Reading) -> bool:
        low = reading.signal_quality is not None and reading.signal_quality < _MIN_SIGNAL_QUALITY
        return not (index in self.scenario.artefacts or reading.finger_off
                    or reading.sensor_off or low)

    def cuff_at(self, t: float) -> tuple[float, list[tuple[int, Reading]]] | None:
        """The scripted cuff measurement whose instant lies in (t - 1, t], if any."""
        i = bisect.bisect_right(self.cuff_times, t)
        if i and self.cuff_times[i - 1] > t - 1.0:
            return self.cuff[i - 1]
        return None

    def _events(self) -> list[Event]:
        """Runs of consecutive corrupted slots per sensor and kind, as events."""
        runs: dict[tuple[str, str], list[tuple[float, float | None]]] = {}
        for (sensor, _slot), rows in self.slots.items():
            kind = self._corruption(rows)
            if kind is not None:
                quality = rows[0][1].signal_quality
                runs.setdefault((sensor, kind), []).append((rows[0][1].time, quality))
        events = []
        for (sensor, kind), slots in runs.items():
            period = SAMPLE_PERIOD[sensor]
            group: list[tuple[float, float | None]] = []
            for t, quality in sorted(slots, key=lambda s: s[0]):
                if group and t - group[-1][0] > period:
                    events.append(self._event(kind, sensor, group, period))
                    group = []
                group.append((t, quality))
            events.append(self._event(kind, sensor, group, period))
        return sorted(events, key=lambda e: (e.start, e.kind))

    def _corruption(self, rows: list[tuple[int, Reading]]) -> str | None:
        if any(r.finger_off or r.sensor_off for _, r in rows):
            return SENSOR_OFF
        if all(self.is_clean(i, r) for i, r in rows):
            return None
        if any(r.signal_quality is not None and r.signal_quality < _MIN_SIGNAL_QUALITY
               for _, r in rows):
            return MOTION
        return SPIKE

    @staticmethod
    def _event(kind: str, sensor: str, group: list[tuple[float, float | None]],
               period: float) -> Event:
        strength = 1.0
        if kind == MOTION:
            qualities = [q for _, q in group if q is not None]
            strength = round(1.0 - sum(qualities) / len(qualities) / 100.0, 2)
        return Event(kind, group[0][0], group[-1][0] + period, frozenset({sensor}), strength,
                     scripted=True)


# ---- the model ----------------------------------------------------------------------------


class PatientModel:
    """One simulated patient; see the module docstring. Times are absolute seconds on the
    scenario's clock (its readings are at start + offset) and must be >= start."""

    def __init__(self, scenario: str | None = "stable", seed: int = 0, start: float = 0.0, *,
                 patient: str = scenarios.PATIENT, effects: SensorEffects | None = None,
                 utc_offset_h: float = 0.0, cuff_interval: float = CUFF_INTERVAL_S) -> None:
        if not math.isfinite(start):
            raise ValueError("start must be a finite number of seconds")
        if not (math.isfinite(cuff_interval) and cuff_interval > 0):
            raise ValueError("cuff_interval must be a positive number of seconds")
        self.scenario_name = scenario
        self.seed = seed
        self.start = float(start)
        self.patient = patient
        self.effects = effects or SensorEffects()
        self.utc_offset_h = utc_offset_h
        self.cuff_interval = cuff_interval
        self._tag = f"{seed}/{scenario}"
        self._script = _Script(_scenario(scenario, self.start, seed)) if scenario else None
        self.end = self._script.end if self._script else self.start
        self._wander = {name: _Wander(self._rng("wander", name), sd)
                        for name, sd in WANDER_SD.items()}
        self._pi_base = self._rng("perfusion").uniform(1.5, 4.0)
        sys0, dia0 = self._level("sys", self.start), self._level("dia", self.start)
        self._map_start = dia0 + (sys0 - dia0) / 3.0
        self._phase: list[float] = [self._rng("beats").random()]  # beat phase at each slot
        self._beat_noise: dict[int, list[float]] = {}
        self._event_blocks: dict[int, list[Event]] = {}

    def _rng(self, *what: object) -> random.Random:
        return random.Random("/".join([self._tag, *map(str, what)]))

    def _check_time(self, t: float) -> None:
        if not isinstance(t, int | float) or not math.isfinite(t):
            raise ValueError(f"time must be a finite number, not {t!r}")
        if t < self.start:
            raise ValueError(f"time {t} is before the model's start {self.start}")

    @property
    def scenario(self) -> scenarios.Scenario | None:
        """The scenario being played (its readings and expected timeline), if any."""
        return self._script.scenario if self._script else None

    @property
    def expected(self) -> tuple[scenarios.ExpectedAlarm, ...]:
        """The scenario's expected alarm timeline (empty without a scenario)."""
        return self._script.scenario.expected if self._script else ()

    # ---- truth ----------------------------------------------------------------------------
    def _level(self, name: str, anchor: float) -> float:
        track = self._script.tracks.get(name) if self._script else None
        return track.at(anchor) if track is not None else BASELINE[name]

    def _drift(self, name: str, t: float, anchor: float) -> float:
        wander = self._wander[name]
        return wander(t - self.start) - wander(anchor - self.start)

    def _true(self, name: str, t: float) -> float:
        anchor = min(t, self.end)
        return self._level(name, anchor) + self._drift(name, t, anchor)

    def vitals(self, t: float) -> Vitals:
        """The true state at `t`."""
        self._check_time(t)
        anchor = min(t, self.end)
        value = {name: self._true(name, t) for name in ("hr", "spo2", "rr", "sys", "dia")}
        value["dia"] = min(value["dia"], value["sys"] - 10.0)  # independent drifts must not cross
        temp = self._level("temp", anchor) + (_circadian(t, self.utc_offset_h)
                                              - _circadian(anchor, self.utc_offset_h))
        mean = value["dia"] + (value["sys"] - value["dia"]) / 3.0
        # Perfusion follows the mean pressure (vasoconstriction as it falls): a rough
        # proportional coupling, see docs/physiology.md.
        pi = self._pi_base * mean / self._map_start * (1.0 + self._drift("pi", t, anchor))
        return Vitals(t, hr=max(value["hr"], 20.0), spo2=_clamp(value["spo2"], 50.0, 100.0),
                      temp=temp, sys=value["sys"], dia=value["dia"], map=mean,
                      rr=max(value["rr"], 4.0), pi=_clamp(pi, 0.05, 20.0))

    # ---- heart beats ----------------------------------------------------------------------
    def _beat_rate_noise(self, slot: int) -> float:
        block = slot // _BEAT_BLOCK
        noise = self._beat_noise.get(block)
        if noise is None:
            rng = self._rng("beat-rate", block)
            noise = self._beat_noise[block] = [rng.gauss(0.0, BEAT_RATE_SD)
                                               for _ in range(_BEAT_BLOCK)]
        return noise[slot % _BEAT_BLOCK]

    def _extend_phase(self, slot: int) -> None:
        """Cumulative beat phase up to the end of one-second `slot`: the beat rate is
        constant within a slot (true heart rate at its middle, times 1 + noise)."""
        phase = self._phase
        while len(phase) <= slot + 1:
            k = len(phase) - 1
            rate = max(self._true("hr", self.start + k + 0.5), 20.0) / 60.0
            phase.append(phase[-1] + max(rate * (1.0 + self._beat_rate_noise(k)), 0.2))

    def beat_phase(self, t: float) -> float:
        """Cardiac cycles since the start (fraction 0 = the beat): increases with t."""
        self._check_time(t)
        offset = t - self.start
        slot = int(offset)
        self._extend_phase(slot + 1)  # one slot beyond, for _beat_time at the edge
        p0, p1 = self._phase[slot], self._phase[slot + 1]
        return p0 + (p1 - p0) * (offset - slot)

    def _beat_time(self, n: int) -> float:
        slot = bisect.bisect_right(self._phase, n) - 1
        p0, p1 = self._phase[slot], self._phase[slot + 1]
        return self.start + slot + (n - p0) / (p1 - p0)

    def beats(self, t0: float, t1: float) -> list[float]:
        """Times of the heart beats in (t0, t1]."""
        first, last = math.floor(self.beat_phase(t0)) + 1, math.floor(self.beat_phase(t1))
        return [self._beat_time(n) for n in range(first, last + 1)]

    def _rr_intervals(self, tau: float) -> tuple[float, ...]:
        lower = max(tau - 1.0, self.start)
        first, last = math.floor(self.beat_phase(lower)) + 1, math.floor(self.beat_phase(tau))
        earliest = math.ceil(self._phase[0])  # the first beat after the start
        return tuple(round(self._beat_time(n) - self._beat_time(n - 1), 4)
                     for n in range(max(first, earliest + 1), last + 1))

    # ---- events ---------------------------------------------------------------------------
    def _drawn(self, block: int) -> list[Event]:
        cached = self._event_blocks.get(block)
        if cached is not None:
            return cached
        fx = self.effects
        block_start = self.start + block * _EVENT_BLOCK_S
        kinds = (
            (MOTION, fx.motion_per_hour, fx.motion_s,
             frozenset({PULSE_OXIMETER, HEART_RATE_STRAP, BP_CUFF})),
            (SENSOR_OFF, fx.finger_off_per_hour, fx.finger_off_s, frozenset({PULSE_OXIMETER})),
            (SENSOR_OFF, fx.strap_off_per_hour, fx.strap_off_s, frozenset({HEART_RATE_STRAP})),
        )
        events = []
        for number, (kind, per_hour, (low, high), sensors) in enumerate(kinds):
            if per_hour <= 0:
                continue
            rng = self._rng("events", block, number)
            at = block_start + rng.expovariate(per_hour / 3600.0)
            while at < block_start + _EVENT_BLOCK_S:
                duration = rng.uniform(low, high)
                strength = round(rng.uniform(0.6, 1.0), 2) if kind == MOTION else 1.0
                if at >= self.end:  # the scenario decides inside its window
                    events.append(Event(kind, at, at + duration, sensors, strength))
                at += rng.expovariate(per_hour / 3600.0)
        self._event_blocks[block] = events
        return events

    def _near(self, t0: float, t1: float) -> Iterable[Event]:
        """Every event that may overlap [t0, t1]: the scenario's and the drawn ones of the
        blocks concerned."""
        yield from self._script.events if self._script else ()
        first = max(0, math.floor((t0 - self.start - _MAX_EVENT_S) / _EVENT_BLOCK_S))
        last = math.floor((t1 - self.start) / _EVENT_BLOCK_S)
        for block in range(first, last + 1):
            yield from self._drawn(block)

    def events(self, t0: float, t1: float) -> list[Event]:
        """Ground truth: every event overlapping [t0, t1), the scenario's and the drawn."""
        if not t1 >= t0:
            raise ValueError("events(t0, t1) needs t0 <= t1")
        found = [e for e in self._near(t0, t1) if e.start < t1 and e.end > t0]
        return sorted(found, key=lambda e: (e.start, e.kind))

    def _active(self, t: float, sensor: str) -> list[Event]:
        return [e for e in self._near(t, t) if sensor in e.sensors and e.covers(t)]

    # ---- sensors --------------------------------------------------------------------------
    def sample_instant(self, t: float, sensor: str) -> float:
        """The instant of the sample a periodic sensor reports at query time `t`."""
        period = SAMPLE_PERIOD[sensor]
        return self.start + math.floor((t - self.start) / period + 1e-9) * period

    def measurement_times(self, sensor: str, t0: float, t1: float) -> list[float]:
        """Sample instants of `sensor` in [t0, t1]: its grid, or for the cuff the
        scenario's measurements and then one every `cuff_interval` seconds."""
        _check_sensor(sensor)
        t0 = max(t0, self.start)
        if sensor != BP_CUFF:
            period = SAMPLE_PERIOD[sensor]
            first = math.ceil((t0 - self.start) / period - 1e-9)
            last = math.floor((t1 - self.start) / period + 1e-9)
            return [self.start + k * period for k in range(first, last + 1)]
        scripted = self._script.cuff_times if self._script else []
        times = [t for t in scripted if t0 <= t <= t1]
        after = scripted[-1] if scripted else self.start - self.cuff_interval
        k = max(1, math.ceil((t0 - after) / self.cuff_interval - 1e-9))
        while after + k * self.cuff_interval <= t1:
            times.append(after + k * self.cuff_interval)
            k += 1
        return times

    def observe(self, t: float, sensor: str) -> Observation:
        """What `sensor` reports at query time `t` (see the module docstring)."""
        self._check_time(t)
        _check_sensor(sensor)
        if sensor == BP_CUFF:
            measured = self._script.cuff_at(t) if self._script else None
            tau = measured[0] if measured else t
            rows = measured[1] if measured else []
            observation = self._measure(sensor, tau, math.floor(tau - self.start))
        else:
            tau = self.sample_instant(t, sensor)
            slot = round((tau - self.start) / SAMPLE_PERIOD[sensor])
            rows = self._script.slots.get((sensor, slot), []) if self._script else []
            observation = self._measure(sensor, tau, slot)
        return self._scripted(observation, rows) if rows else observation

    def _measure(self, sensor: str, tau: float, key: int) -> Observation:
        """The model's own report: truth + noise, corrupted by active events."""
        truth = self.vitals(tau)
        rng = self._rng("sample", sensor, key)
        scale = self.effects.noise_scale
        active = self._active(tau, sensor)
        off = any(e.kind == SENSOR_OFF for e in active)
        motion = max((e.strength for e in active if e.kind == MOTION), default=0.0)

        def noisy(name: str, value: float) -> float:
            return value + rng.gauss(0.0, NOISE_SD[name] * scale)

        if sensor == PULSE_OXIMETER:
            if off:
                return Observation(sensor, tau, {}, None, finger_off=True, artefact=True)
            spo2, pr = noisy("spo2", truth.spo2), noisy("pr", truth.hr)
            pi = truth.pi * (1.0 + rng.gauss(0.0, NOISE_SD["pi"] * scale))
            quality = _SIGNAL_QUALITY_OK + rng.gauss(0.0, 3.0)
            if motion:
                # Motion adds a venous-like pulsation: SpO2 reads falsely low, the pulse
                # rate erratic, and the oximeter's signal quality collapses.
                spo2 -= motion * rng.uniform(0.0, 15.0) + rng.gauss(0.0, 2.0 * motion)
                pr += rng.gauss(0.0, 25.0 * motion)
                pi *= rng.uniform(0.3, 3.0)
                quality = 40.0 - 35.0 * motion + rng.uniform(-5.0, 5.0)
            values = {"spo2": _quantize(_clamp(spo2, 0, 100), 1),
                      "pr": _quantize(_clamp(pr, 0, 250), 1),
                      "pi": _quantize(_clamp(pi, 0.02, 20.0), 0.01)}
            return Observation(sensor, tau, values, round(_clamp(quality, 0.0, 100.0), 1),
                               artefact=bool(motion))
        if sensor == THERMOMETER:
            return Observation(sensor, tau, {"temp": _quantize(noisy("temp", truth.temp), 0.1)})
        if sensor == BP_CUFF:
            sys, dia = noisy("sys", truth.sys), noisy("dia", truth.dia)
            if motion:  # oscillometry misreads the pressure pulses when the arm moves
                sys += rng.gauss(0.0, 8.0 * motion)
                dia += rng.gauss(0.0, 6.0 * motion)
            sys = _quantize(_clamp(sys, 40, 280), 1)
            dia = _quantize(_clamp(dia, 20, sys - 5), 1)
            values = {"sys": sys, "dia": dia, "map": _quantize(dia + (sys - dia) / 3, 1),
                      "pr": _quantize(noisy("pr", truth.hr), 1)}
            return Observation(sensor, tau, values, body_movement=bool(motion),
                               artefact=bool(motion))
        # heart-rate strap (chest band): ECG beats, respiration from the chest movement
        if off:
            return Observation(sensor, tau, {}, sensor_contact=False, artefact=True)
        hr = noisy("hr", truth.hr) + rng.gauss(0.0, 4.0 * motion)
        values = {"hr": _quantize(_clamp(hr, 20, 250), 1),
                  "rr": _quantize(_clamp(noisy("rr", truth.rr), 0, 60), 1)}
        return Observation(sensor, tau, values, sensor_contact=True,
                           rr_intervals=self._rr_intervals(tau), artefact=bool(motion))

    def _scripted(self, own: Observation, rows: list[tuple[int, Reading]]) -> Observation:
        """The scenario's readings for this sample, completed with the model's own values
        for the quantities the scenario does not script."""
        values = dict(own.values)
        off = any(r.finger_off or r.sensor_off for _, r in rows)
        artefact = off or any(not self._script.is_clean(i, r) for i, r in rows)
        if off:
            values = {}
        else:
            for _, reading in rows:
                values[reading.quantity] = reading.value
        quality = own.signal_quality
        if own.sensor == PULSE_OXIMETER:
            # The scenario gives every reading of one sample the same quality.
            qualities = [r.signal_quality for _, r in rows if r.signal_quality is not None]
            quality = None if off or not qualities else min(qualities)
        elif own.sensor == BP_CUFF and not off:
            values["map"] = _quantize(values["dia"] + (values["sys"] - values["dia"]) / 3, 1)
        return Observation(
            own.sensor, rows[0][1].time, values, quality,
            finger_off=off and own.sensor == PULSE_OXIMETER,
            sensor_contact=(not off) if own.sensor == HEART_RATE_STRAP else None,
            rr_intervals=() if off else own.rr_intervals,
            body_movement=own.body_movement, artefact=artefact, scripted=True)

    def readings(self, t0: float, t1: float, *, delay: float = 0.0) -> list[Reading]:
        """The evaluator Readings the home's devices (HOME_DEVICES) report for their sample
        instants in [t0, t1], each queried `delay` seconds after its instant and stamped
        with the query time (as a gateway stamps live values when they arrive)."""
        if not 0.0 <= delay < 1.0:
            raise ValueError("delay must be within [0, 1) s: later queries see the next sample")
        rows = []
        for rank, home in enumerate(HOME_DEVICES):
            for tau in self.measurement_times(home.sensor, t0, t1):
                at = tau + delay
                observation = self.observe(at, home.sensor)
                for reading in to_readings(observation, home.device, home.quantities,
                                           self.patient, at):
                    rows.append((reading.time, rank, reading))
        rows.sort(key=lambda row: (row[0], row[1]))
        return [reading for _, _, reading in rows]

    # ---- adapters -------------------------------------------------------------------------
    def ble_source(self, kind: str, offset: float = 0.0) -> Callable[[float], dict[str, Any]]:
        """A simulator.ble_devices value source for device `kind` ("pulse_oximeter",
        "thermometer", "blood_pressure", "heart_rate"): it maps the seconds since the
        device was attached to the fields of one measurement, at model time
        start + offset + elapsed."""
        try:
            sensor, fields = _BLE_FIELDS[kind]
        except KeyError:
            raise ValueError(f"no physiology source for BLE device kind {kind!r}") from None

        def source(elapsed: float) -> dict[str, Any]:
            return fields(self.observe(self.start + offset + elapsed, sensor))

        return source

    def sim_hal_line(self, t: float, *, measure_bp: bool = False) -> str:
        """One line of the firmware sim HAL's signal feed (firmware/hal/sim.py), newline
        included: the true state and the oximeter's conditions (finger, motion), since the
        firmware's simulated sensors and algorithm add their own measurement. With
        `measure_bp`, the cuff also finishes a measurement with the cuff's report at t."""
        truth = self.vitals(t)
        active = self._active(t, PULSE_OXIMETER)
        motion = max((e.strength for e in active if e.kind == MOTION), default=0.0)
        signals: dict[str, Any] = {
            "t": round(t - self.start, 3),
            "hr": round(truth.hr, 1),
            "spo2": round(truth.spo2, 1),
            "temp": round(truth.temp, 2),
            "resp": round(truth.rr, 1),
            "pi": round(_clamp(truth.pi, 0.02, 20.0), 2),
            "sys": round(truth.sys),
            "dia": round(truth.dia),
            "bp_pulse": round(truth.hr),
            "finger": not any(e.kind == SENSOR_OFF for e in active),
            "motion": round(motion, 2),
        }
        line = {key: _clamp(value, *Physiology.RANGES[key]) if key in Physiology.RANGES
                else value for key, value in signals.items()}
        if measure_bp:
            cuff = self.observe(t, BP_CUFF).values
            line["bp"] = {"sys": cuff["sys"], "dia": cuff["dia"], "pulse": cuff["pr"]}
        return json.dumps(line, separators=(",", ":")) + "\n"

    def cms50_source(self, offset: float = 0.0) -> Cms50Source:
        """Contec CMS50 live packets (60/s) for simulator.serial_devices.send_cms50."""
        return Cms50Source(self, offset)


def _check_sensor(sensor: str) -> None:
    if sensor not in SENSOR_KINDS:
        raise ValueError(f"unknown sensor kind {sensor!r} (known: {', '.join(SENSOR_KINDS)})")


def to_readings(observation: Observation, device: str, quantities: Iterable[str],
                patient: str, time: float | None = None) -> list[Reading]:
    """An observation as evaluator Readings of `quantities`, stamped `time` (default the
    sample instant). A sensor that is off reports each quantity as a flagged placeholder
    0 (the convention of edge_agent.alarms.scenarios); a quantity the sensor did not
    report is left out."""
    at = observation.t if time is None else time
    off = observation.finger_off or observation.sensor_contact is False
    out = []
    for quantity in quantities:
        if quantity in observation.values:
            out.append(Reading(patient, device, quantity, observation.values[quantity], at,
                               signal_quality=observation.signal_quality))
        elif off:
            out.append(Reading(patient, device, quantity, 0, at,
                               finger_off=observation.finger_off,
                               sensor_off=observation.sensor_contact is False))
    return out


# ---- BLE fields ---------------------------------------------------------------------------------

_PLX_MEASUREMENT_UNAVAILABLE = 1 << 13  # PLX Measurement Status bit 13
_PLX_POOR_SIGNAL = 1 << 4  # PLX Device and Sensor Status bit 4
_PLX_SENSOR_UNCONNECTED = 1 << 11  # ... bit 11: sensor unconnected to user
_BPM_BODY_MOVEMENT = 1 << 0  # Blood Pressure Measurement Status bit 0


def _plx_fields(o: Observation) -> dict[str, Any]:
    if o.finger_off:
        return {"spo2": "nan", "pr": "nan", "pi": None,
                "measurement_status": _PLX_MEASUREMENT_UNAVAILABLE,
                "device_sensor_status": _PLX_SENSOR_UNCONNECTED}
    poor = o.signal_quality is not None and o.signal_quality < _MIN_SIGNAL_QUALITY
    return {"spo2": o.values["spo2"], "pr": o.values["pr"], "pi": o.values.get("pi"),
            "measurement_status": 0, "device_sensor_status": _PLX_POOR_SIGNAL if poor else 0}


def _thermometer_fields(o: Observation) -> dict[str, Any]:
    return {"temp": o.values["temp"], "fahrenheit": False}


def _cuff_fields(o: Observation) -> dict[str, Any]:
    v = o.values
    return {"sys": v["sys"], "dia": v["dia"], "map": v["map"], "pr": v["pr"], "kpa": False,
            "measurement_status": _BPM_BODY_MOVEMENT if o.body_movement else 0}


def _heart_rate_fields(o: Observation) -> dict[str, Any]:
    return {"hr": o.values.get("hr", 0), "sensor_contact": bool(o.sensor_contact),
            "rr_intervals_s": list(o.rr_intervals) or None}


_BLE_FIELDS: Mapping[str, tuple[str, Callable[[Observation], dict[str, Any]]]] = {
    "pulse_oximeter": (PULSE_OXIMETER, _plx_fields),
    "thermometer": (THERMOMETER, _thermometer_fields),
    "blood_pressure": (BP_CUFF, _cuff_fields),
    "heart_rate": (HEART_RATE_STRAP, _heart_rate_fields),
}
BLE_KINDS = tuple(_BLE_FIELDS)


# ---- CMS50 ---------------------------------------------------------------------------------

CMS50_RATE_HZ = 60


class Cms50Source:
    """CMS50 live-data samples at model time start + offset + elapsed: the displayed
    SpO2 and pulse rate are the oximeter's report, the plethysmogram follows the beat
    phase (its height the perfusion index), the beep marks each beat."""

    def __init__(self, model: PatientModel, offset: float = 0.0) -> None:
        self.model = model
        self.offset = offset

    def __call__(self, elapsed: float) -> Cms50Sample:
        model = self.model
        t = model.start + self.offset + elapsed
        report = model.observe(t, PULSE_OXIMETER)
        if report.finger_off:
            return Cms50Sample(signal_strength=0, searching_too_long=False, spo2_dropping=False,
                               beep=False, pleth=0, bar=0, probe_error=True, searching=False,
                               pulse_rate=0, spo2=0)
        phase = model.beat_phase(t)
        beep = t - 1.0 / CMS50_RATE_HZ >= model.start and math.floor(phase) > math.floor(
            model.beat_phase(t - 1.0 / CMS50_RATE_HZ))
        quality = report.signal_quality if report.signal_quality is not None else 0.0
        if quality < _MIN_SIGNAL_QUALITY:  # motion: the waveform is noise
            packet = round((t - model.start) * CMS50_RATE_HZ)
            pleth = model._rng("cms50-pleth", packet).randrange(128)
        else:
            height = _clamp(report.values.get("pi", 2.0) / 5.0, 0.15, 1.0)
            pleth = round(10 + 100 * height * pulse_shape(phase % 1.0))
        return Cms50Sample(
            signal_strength=round(_clamp(quality, 0.0, 100.0) * 8 / 100),
            searching_too_long=False, spo2_dropping=False, beep=beep, pleth=pleth,
            bar=pleth // 8, probe_error=False, searching=False,
            pulse_rate=int(_clamp(report.values["pr"], 0, 254)),
            spo2=int(_clamp(report.values["spo2"], 0, 100)))

    def samples(self, elapsed: float, count: int) -> list[Cms50Sample]:
        """`count` consecutive packets from `elapsed` on (60 per second)."""
        return [self(elapsed + i / CMS50_RATE_HZ) for i in range(count)]
