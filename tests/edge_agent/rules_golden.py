"""Golden trace of the rules engine: seeded input streams and every decision on them.

The fixture `data/rules_golden.json.gz` was recorded with the evaluator as it was BEFORE the
performance pass of session 3 (commit 41578f5) plus one deliberate change of behaviour made
on that old code (a finger-off or sensor-off flag raises `sensor-off:<device>` at once, the
detail naming the cause; docs/alarms.md), never with the optimised code.
test_rules_golden.py replays its inputs through the current code and compares decision
by decision. Re-recording it with new code would make the comparison circular: only do it
for a deliberate, documented change of the rules' behaviour, on the old code, never to make
the test pass.

    .venv/bin/python tests/edge_agent/rules_golden.py --rewrite  # (re)writes the fixture

Streams (each with a fresh LimitsBook and Evaluator):
- every named scenario (edge_agent.alarms.scenarios), plus one with limit overrides whose
  validity periods start and end mid-stream;
- simulator.physiology readings beyond a scenario's window (noise, motion, sensor-off);
- random hostile streams: several patients and devices (two oximeters on one patient, a
  device moving to another patient), times that repeat, go backwards or jump past the NEWS2
  freshness, NaN and infinities and impossible values, invalid readings the Reading type
  must refuse, signal quality and finger/sensor flags, units that do not match the limits,
  manual entries (ACVPU, oxygen), limit and setting overrides set mid-stream (CLI and
  command, with older set_at times too), device and gateway status, clock ticks, and a
  second evaluator configuration (other persistence, clear_after, several rate rules).

An event is a JSON list; its decision is the list of conditions it produced (or the
error it raised), encoded by `encode_conditions`.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge_agent.alarms import scenarios
from edge_agent.alarms.evaluator import (
    Condition,
    DeviceStatus,
    Evaluator,
    EvaluatorConfig,
    GatewayStatus,
    RateRule,
    Reading,
)
from edge_agent.alarms.grades import Grade
from edge_agent.alarms.limits import (
    LimitOverride,
    LimitsBook,
    Provenance,
    QuantityLimits,
    SettingOverride,
    Validity,
)
from protocol.errors import ValidationError

# gzip-compressed JSON (2 MB of text otherwise); gzip with mtime 0, so a rewrite of the same
# decisions gives the same bytes.
FIXTURE = Path(__file__).resolve().parent / "data" / "rules_golden.json.gz"

Event = list[Any]


def config_named(name: str) -> EvaluatorConfig:
    if name == "default":
        return EvaluatorConfig()
    if name == "alt":
        return EvaluatorConfig(
            persistence={Grade.RED: 0.0, Grade.ORANGE: 4.0, Grade.YELLOW: 12.0, Grade.BLUE: 2.0},
            clear_after=3.0, news2_freshness=120.0, min_signal_quality=55.0,
            jump_confirm_after=3.0,
            rate_rules=(RateRule("spo2", "fall", 4.0, 20.0, Grade.ORANGE),
                        RateRule("spo2", "fall", 8.0, 60.0, Grade.RED),
                        RateRule("pr", "rise", 25.0, 30.0, Grade.YELLOW),
                        RateRule("rr", "rise", 6.0, 45.0, Grade.ORANGE)),
            offline_after=20.0)
    raise ValueError(name)


def _continuous_link(name: str):  # noqa: ANN202 - a Callable or None
    if name == "default":
        return None
    return lambda device: not device.startswith("cuff")


# ---------------------------------------------------------------------- events


def reading_event(r: Reading) -> Event:
    return ["r", r.patient, r.device, r.quantity, r.value, r.time, r.unit, r.signal_quality,
            r.finger_off, r.sensor_off, r.manual]


def _reading(event: Event) -> Reading:
    _, patient, device, quantity, value, t, unit, sq, finger_off, sensor_off, manual = event
    return Reading(patient, device, quantity, value, t, unit=unit, signal_quality=sq,
                   finger_off=finger_off, sensor_off=sensor_off, manual=manual)


def _provenance(method: str, actor: str, set_at: float) -> Provenance:
    command_id = f"c0ffee{int(set_at) % 65536:04x}" if method == "command" else None
    return Provenance(method, actor, set_at, command_id)


def apply_event(evaluator: Evaluator, event: Event) -> list[Condition]:
    """Feed one event; the conditions it produced."""
    kind = event[0]
    if kind == "r":
        return evaluator.evaluate(_reading(event))
    if kind == "limits":
        _, patient, quantity, unit, bands, valid_from, valid_until, method, actor, set_at = event
        limits = QuantityLimits.build(quantity, unit, [tuple(band) for band in bands])
        evaluator.limits.set_limits(LimitOverride(
            patient, limits, Validity(valid_from, valid_until), _provenance(method, actor, set_at)))
        return []
    if kind == "setting":
        _, patient, setting, value, valid_from, valid_until, method, actor, set_at = event
        evaluator.limits.set_setting(SettingOverride(
            patient, setting, value, Validity(valid_from, valid_until),
            _provenance(method, actor, set_at)))
        return []
    if kind == "device":
        _, device, patient, t, last_seen, battery, sensor_off, certificate, calibration = event
        return evaluator.device_status(DeviceStatus(device, patient, t, last_seen, battery,
                                                    sensor_off, certificate, calibration))
    if kind == "gateway":
        _, t, refusing, used, budget = event
        return evaluator.gateway_status(GatewayStatus(t, refusing, used, budget))
    if kind == "tick":
        return evaluator.tick(event[1])
    raise ValueError(f"unknown event kind {kind!r}")


def encode_conditions(conditions: Iterable[Condition]) -> list[list[Any]]:
    return [[c.key, c.kind, None if c.grade is None else int(c.grade), c.time, c.patient,
             c.device, c.quantity, c.value, c.detail] for c in conditions]


def decide(evaluator: Evaluator, event: Event) -> list[Any]:
    """The decision on one event: ["ok", conditions] or ["error", type, field]."""
    try:
        return ["ok", encode_conditions(apply_event(evaluator, event))]
    except ValidationError as exc:
        return ["error", "ValidationError", exc.field]
    except Exception as exc:  # noqa: BLE001 - a crash is a decision too, and must not change
        return ["error", type(exc).__name__, str(exc)]


def replay(stream: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """(decision per event as canonical JSON text, final active conditions) of a stream."""
    evaluator = Evaluator(LimitsBook(), config_named(stream["config"]),
                          _continuous_link(stream["config"]))
    decisions = [canonical(decide(evaluator, event)) for event in stream["events"]]
    active = sorted(([patient, key, int(grade)]
                     for (patient, key), grade in evaluator.active_conditions().items()),
                    key=canonical)
    return decisions, active


def canonical(value: Any) -> str:
    """Exact text (floats by repr, so 97 and 97.0 and NaN all stay distinct and comparable)."""
    return json.dumps(value, separators=(",", ":"))


# ---------------------------------------------------------------------- streams


def _scenario_streams() -> list[dict[str, Any]]:
    streams = []
    for name in scenarios.NAMES:
        scenario = scenarios.build(name, start=1_700_000_000.0)
        events = [reading_event(r) for r in scenario.readings]
        streams.append({"name": f"scenario:{name}", "config": "default", "events": events})
    # Limits whose validity starts and ends inside the stream, set before and during it.
    scenario = scenarios.build("gradual-desaturation", start=1_700_000_000.0, seed=11)
    t0 = scenario.start
    events: list[Event] = []
    overrides: list[tuple[float, Event]] = [
        (t0 - 1, ["limits", scenario.patient, "spo2", None, [["red", 97, None]],
                  t0 + 40, t0 + 70, "cli", "nurse", t0 - 1]),
        (t0 + 50, ["limits", scenario.patient, "pr", None,
                   [["red", 40, 120], ["orange", 50, 100], ["yellow", 55, 80]],
                   t0 + 50, None, "command", "centre", t0 + 50]),
        (t0 + 90, ["setting", scenario.patient, "spo2_scale", 2, t0 + 100, t0 + 200, "cli",
                   "doctor", t0 + 90]),
        (t0 + 120, ["setting", scenario.patient, "oxygen", True, t0 + 120, t0 + 160, "command",
                    "centre", t0 + 120]),
        (t0 + 130, ["limits", scenario.patient, "rr", None, [["orange", 10, 18]],
                    t0 + 130, t0 + 131, "cli", "nurse", t0 + 130]),
        (t0 + 200, ["limits", scenario.patient, "spo2", None, [["yellow", 90, None]],
                    t0 - 100, None, "cli", "nurse", t0 - 50]),  # older set_at: loses to none
    ]
    pending = sorted(overrides, key=lambda item: item[0])
    for r in scenario.readings:
        while pending and pending[0][0] <= r.time:
            events.append(pending.pop(0)[1])
        events.append(reading_event(r))
        if int(r.time) % 17 == 0 and r.quantity == "rr":
            events.append(["tick", r.time + 0.5])
    streams.append({"name": "scenario:limits-mid-stream", "config": "default", "events": events})
    return streams


def _physiology_streams() -> list[dict[str, Any]]:
    from simulator.physiology import PatientModel

    streams = []
    for name, seed, config in (("sudden-desaturation", 5, "default"), ("fever", 9, "alt")):
        model = PatientModel(name, seed=seed, start=1_600_000_000.0, patient=f"P-PHY-{seed}")
        t1 = model.end + 300.0
        events = [reading_event(r) for r in model.readings(model.start, t1, delay=0.25)]
        streams.append({"name": f"physiology:{name}:{seed}", "config": config, "events": events})
    return streams


_CANONICAL_RANGES = {"spo2": (97, 3, 60, 100), "pr": (75, 8, 20, 220), "hr": (75, 8, 20, 220),
                     "rr": (16, 3, 2, 50), "temp": (37.0, 0.5, 32, 42), "sys": (120, 15, 50, 240),
                     "dia": (75, 10, 30, 150), "map": (90, 10, 40, 170),
                     "glucose": (6.0, 2.0, 1.0, 30.0), "bat": (60, 30, 0, 100),
                     "pi": (3, 1, 0.1, 15), "weight": (70, 5, 40, 150)}
_DEVICES = {"ox-a": ("spo2", "pr"), "ox-b": ("spo2", "pr"), "band": ("rr", "hr"),
            "patch": ("temp",), "cuff": ("sys", "dia", "map"), "meter": ("glucose",),
            "scale": ("weight", "bat"), "nurse": ()}
_SPECIAL_VALUES = (math.nan, math.inf, -math.inf, -1.0, 0, 1e9, 400, 100.5, -0.0)


def _hostile_value(rng: random.Random, quantity: str, level: dict[str, float]) -> Any:
    centre, spread, low, high = _CANONICAL_RANGES[quantity]
    roll = rng.random()
    if roll < 0.03:
        return rng.choice(_SPECIAL_VALUES)
    if roll < 0.035:
        return rng.choice((True, "97", None))  # refused by Reading
    if roll < 0.08:  # a spike
        return round(rng.uniform(low, high), 1)
    current = level.get(quantity, centre)
    current = min(high, max(low, current + rng.gauss(0, spread * 0.3) + (centre - current) * 0.05))
    level[quantity] = current
    if rng.random() < 0.5:
        return int(round(current))
    return round(current, 1)


def _random_bands(rng: random.Random, quantity: str) -> list[list[Any]]:
    centre, spread, _, _ = _CANONICAL_RANGES[quantity]
    grades = rng.sample(["red", "orange", "yellow"], rng.randint(1, 3))
    grades.sort(key=["red", "orange", "yellow"].index)
    bands = []
    width = spread * rng.uniform(0.5, 1.5)
    for index, grade in enumerate(grades):
        w = width * (len(grades) - index)
        low = round(centre - w, 1) if rng.random() < 0.8 else None
        high = round(centre + w, 1) if (low is None or rng.random() < 0.7) else None
        bands.append([grade, low, high])
    return bands


def _hostile_stream(seed: int, config: str, length: int) -> dict[str, Any]:
    rng = random.Random(seed)
    patients = [f"P-{seed}-{i}" for i in range(3)]
    owner = {device: rng.choice(patients[:2]) for device in _DEVICES}
    owner["ox-b"] = owner["ox-a"]  # two oximeters on one patient
    level: dict[str, float] = {}
    t = 1_650_000_000.0 + seed * 1000
    events: list[Event] = []
    for _ in range(length):
        roll = rng.random()
        step = rng.random()
        if step < 0.05:
            t -= rng.uniform(0.5, 60)  # late / out of order
        elif step < 0.07:
            t += rng.uniform(200, 1200)  # gap, may outlive NEWS2 freshness
        elif step < 0.35:
            pass  # the same instant again
        else:
            t += rng.choice((0.25, 0.5, 1.0, 1.0, 2.0, 3.5))
        t = round(t, 3)
        if roll < 0.02:
            device = rng.choice(list(_DEVICES))
            owner[device] = rng.choice(patients)  # re-bound to another patient
            continue
        if roll < 0.045:
            patient = rng.choice(patients)
            quantity = rng.choice(("spo2", "pr", "hr", "rr", "temp", "sys", "glucose"))
            unit = "mg/dL" if quantity == "glucose" and rng.random() < 0.5 else None
            bands = _random_bands(rng, quantity)
            if unit == "mg/dL":
                bands = [[g, None if lo is None else round(lo * 18, 0),
                          None if hi is None else round(hi * 18, 0)] for g, lo, hi in bands]
            start = t + rng.choice((-500, -5, 0, 3, 20, 60))
            until = None if rng.random() < 0.4 else start + rng.choice((0.5, 10, 45, 300))
            set_at = t + rng.choice((0, 0, -1000, 5))
            events.append(["limits", patient, quantity, unit, bands, start, until,
                           rng.choice(("cli", "command")), rng.choice(("nurse", "centre")),
                           set_at])
            continue
        if roll < 0.06:
            patient = rng.choice(patients)
            setting, value = rng.choice((("spo2_scale", 2), ("spo2_scale", 1), ("oxygen", True),
                                         ("oxygen", False)))
            start = t + rng.choice((-100, 0, 4, 30))
            until = None if rng.random() < 0.5 else start + rng.choice((2, 30, 200))
            events.append(["setting", patient, setting, value, start, until,
                           rng.choice(("cli", "command")), "doctor", t])
            continue
        if roll < 0.075:
            device = rng.choice(list(_DEVICES))
            events.append(["device", device, rng.choice((None, owner[device])), t,
                           rng.choice((None, t - rng.uniform(0, 200))),
                           rng.choice((None, 5.0, 50.0, 20.0)), rng.choice((None, True, False)),
                           rng.choice((None, "valid", "expiring", "expired")),
                           rng.choice((None, t + 86400 * rng.uniform(-5, 60)))])
            continue
        if roll < 0.08:
            events.append(["gateway", t, rng.choice((None, True, False)),
                           rng.choice((None, 10, 95)), rng.choice((None, 0, 100))])
            continue
        if roll < 0.095:
            events.append(["tick", t + rng.uniform(0, 120)])
            continue
        device = rng.choice(("ox-a", "ox-a", "ox-a", "ox-b", "band", "band", "patch", "cuff",
                             "meter", "scale", "nurse"))
        patient = owner[device]
        if device == "nurse":
            choice = rng.random()
            if choice < 0.4:
                events.append(["r", patient, device, "acvpu", rng.choice("AACVPU"), t, None, None,
                               False, False, True])
            elif choice < 0.7:
                events.append(["r", patient, device, "o2", rng.random() < 0.5, t, None, None,
                               False, False, rng.random() < 0.9])
            else:
                quantity = rng.choice(("spo2", "rr", "sys", "temp", "pr"))
                events.append(["r", patient, device, quantity,
                               _hostile_value(rng, quantity, level), t, None, None, False, False,
                               True])
            continue
        quantities = _DEVICES[device]
        sq = None
        finger_off = sensor_off = False
        if device.startswith("ox"):
            sq = rng.choice((90.0, 90.0, 85, 70.0, 45.0, 30.0, 0, 100))
            finger_off = rng.random() < 0.03
        elif rng.random() < 0.02:
            sq = rng.choice((math.nan, 101, -1))  # refused
        sensor_off = rng.random() < 0.02
        for quantity in quantities:
            unit = None
            if quantity == "glucose" and rng.random() < 0.4:
                unit = "mg/dL"
            elif rng.random() < 0.005:
                unit = "furlong"  # refused
            value = 0 if finger_off else _hostile_value(rng, quantity, level)
            if unit == "mg/dL" and isinstance(value, float):
                value = round(value * 18, 0)
            events.append(["r", patient, device, quantity, value, t, unit, sq, finger_off,
                           sensor_off, False])
    return {"name": f"hostile:{seed}:{config}", "config": config, "events": events}


def build_streams() -> list[dict[str, Any]]:
    streams = _scenario_streams() + _physiology_streams()
    for seed in range(4):
        streams.append(_hostile_stream(seed, "default", 1500))
    for seed in range(4, 6):
        streams.append(_hostile_stream(seed, "alt", 1500))
    return streams


def record() -> dict[str, Any]:
    streams = build_streams()
    for stream in streams:
        decisions, active = replay(stream)
        # sparse: most events decide nothing; keep the index of each that does
        stream["decisions"] = {str(i): json.loads(text) for i, text in enumerate(decisions)
                               if text != canonical(["ok", []])}
        stream["active"] = active
    return {"about": "see tests/edge_agent/rules_golden.py", "streams": streams}


if __name__ == "__main__":
    if FIXTURE.exists() and "--rewrite" not in sys.argv:
        sys.exit(f"{FIXTURE} exists: it records the OLD engine's decisions (see the docstring); "
                 "pass --rewrite only for a deliberate change of the rules' behaviour")
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    data = record()
    text = json.dumps(data, separators=(",", ":")) + "\n"
    FIXTURE.write_bytes(gzip.compress(text.encode(), mtime=0))
    total = sum(len(s["events"]) for s in data["streams"])
    decided = sum(len(s["decisions"]) for s in data["streams"])
    print(f"{FIXTURE}: {len(data['streams'])} streams, {total} events, {decided} with decisions")
