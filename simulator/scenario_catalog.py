"""The named clinical scenarios as the simulator runs them: what each is, how long it
lasts, the alarms it must raise, and which devices a simulated home needs for it.

Everything clinical comes from edge_agent.alarms.scenarios (the readings and the expected
timeline for a seed); this module only adds what a runner needs to set up a home:
the devices the scenario's readings come from, the quantities each must report, how
often, and which simulated devices can carry them (and the simulator.physiology adapter
that feeds each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_agent.alarms import scenarios
from simulator import physiology

NAMES = scenarios.NAMES

# Simulated devices that can carry a sensor's quantities, with the physiology adapter
# that feeds them. No standard Bluetooth profile carries a respiration rate, so only a
# device speaking the VitalBridge service (firmware link) delivers "rr".
TRANSPORTS: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    physiology.PULSE_OXIMETER: {
        "ble:pulse_oximeter": (("spo2", "pr", "pi"), "ble_source('pulse_oximeter')"),
        "serial:contec-cms50": (("spo2", "pr"), "cms50_source()"),
        "firmware:max30102": (("spo2", "pr", "pi"), "sim_hal_line(t)"),
        "ble:vitalbridge": (("spo2", "pr", "pi"), "observe(t, 'pulse-oximeter')"),
    },
    physiology.THERMOMETER: {
        "ble:thermometer": (("temp",), "ble_source('thermometer')"),
        "firmware:max30205": (("temp",), "sim_hal_line(t)"),
        "ble:vitalbridge": (("temp",), "observe(t, 'thermometer')"),
    },
    physiology.BP_CUFF: {
        "ble:blood_pressure": (("sys", "dia", "map", "pr"), "ble_source('blood_pressure')"),
        "firmware:bp-uart": (("sys", "dia", "pr"), "sim_hal_line(t, measure_bp=True)"),
        "ble:vitalbridge": (("sys", "dia", "map", "pr"), "observe(t, 'bp-cuff')"),
    },
    physiology.HEART_RATE_STRAP: {
        "ble:heart_rate": (("hr",), "ble_source('heart_rate')"),
        "ble:vitalbridge": (("hr", "rr"), "observe(t, 'heart-rate-strap')"),
    },
}


@dataclass(frozen=True, slots=True)
class DeviceNeed:
    """One device the scenario's readings come from."""

    device: str  # the scenario's device id (its readings carry it)
    sensor: str  # simulator.physiology sensor kind
    quantities: tuple[str, ...]  # what it must report, protocol.vitals names
    period_s: float | None  # seconds between reports; None: on demand (cuff schedule)
    transports: dict[str, str]  # simulated devices that carry all of them -> adapter


@dataclass(frozen=True, slots=True)
class ScenarioEntry:
    name: str
    description: str
    duration: float  # seconds
    seed: int
    expected: tuple[scenarios.ExpectedAlarm, ...]  # offsets from the start, as scenarios.py
    devices: tuple[DeviceNeed, ...]

    @property
    def clinical(self) -> bool:
        """True if the scenario must raise a clinical (non-blue) alarm."""
        return any(e.grade.clinical for e in self.expected)

    def timeline(self) -> list[dict[str, Any]]:
        """The expected alarms for a run report: grade label, condition key, expected_at
        (seconds from the start)."""
        return [{"grade": e.grade.label, "key": e.key, "expected_at": e.at}
                for e in self.expected]

    def model(self, start: float = 0.0, **options: Any) -> physiology.PatientModel:
        """The patient model that plays this scenario from `start` (same seed)."""
        return physiology.PatientModel(self.name, seed=self.seed, start=start, **options)


def _needs(scenario: scenarios.Scenario) -> tuple[DeviceNeed, ...]:
    reported: dict[str, list[str]] = {}
    for reading in scenario.readings:
        quantities = reported.setdefault(reading.device, [])
        if reading.quantity not in quantities:
            quantities.append(reading.quantity)
    needs = []
    for home in physiology.HOME_DEVICES:
        if home.device not in reported:
            continue
        quantities = tuple(reported.pop(home.device))
        carriers = {name: adapter
                    for name, (carried, adapter) in TRANSPORTS[home.sensor].items()
                    if set(quantities) <= set(carried)}
        needs.append(DeviceNeed(home.device, home.sensor, quantities,
                                physiology.SAMPLE_PERIOD.get(home.sensor), carriers))
    if reported:
        raise ValueError(f"scenario {scenario.name!r} uses unknown devices {sorted(reported)}")
    return tuple(needs)


def entry(name: str, seed: int = 0) -> ScenarioEntry:
    """The catalog entry of scenario `name` for `seed` (ValueError if unknown). The
    expected times are offsets from the start, so they do not depend on it."""
    scenario = scenarios.build(name, seed=seed)
    return ScenarioEntry(name, scenario.description, scenario.duration, seed,
                         scenario.expected, _needs(scenario))


def catalog(seed: int = 0) -> dict[str, ScenarioEntry]:
    """Every named scenario's entry, in scenarios.NAMES order."""
    return {name: entry(name, seed) for name in NAMES}
