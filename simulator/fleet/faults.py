"""Fault names and the fault schedule of a fleet run: pure, seeded, no I/O.

`parse_faults("agent-kill,garbage")` checks a --faults argument; `plan_faults(...)` turns the
chosen names into timed `PlannedFault`s spread over the run, keeping a quiet lead-in (the
agents start and the devices shake hands) and a quiet tail (the drain starts clean);
`check_plan(...)` validates an explicit schedule (FleetOptions.plan).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

FAULT_NAMES = (
    "broker-restart", "broker-outage", "agent-kill", "serial-unplug", "garbage",
    "device-reboot", "clock-skew", "disk-full", "slow-consumer", "ble-disconnect",
)
# Named in the interface but not built (docs/fleet.md): asked for explicitly, it is refused;
# `all` leaves it out. Every fault is built now.
NOT_BUILT: frozenset[str] = frozenset()
BLE_DISCONNECT_MODES = ("terminate", "out-of-range")
BROKER_FAULTS = frozenset({"broker-restart", "broker-outage"})
GATEWAY_FAULTS = frozenset({"agent-kill", "disk-full"})


class FaultSpecError(ValueError):
    """A --faults value that names no fault, or one that is not built."""


@dataclass(frozen=True)
class PlannedFault:
    """One fault of a schedule: the seeded planner's, or a caller's (FleetOptions.plan)."""

    name: str
    at: float  # seconds from run start
    duration_s: float  # how long the fault lasts (0: instantaneous)
    target: str  # "broker", "centre", a gateway id or a device id
    mode: str = ""  # ble-disconnect: one of BLE_DISCONNECT_MODES
    jump_s: float = 0.0  # clock-skew: the signed clock jump (+ forward, - back), never 0


DEVICE_FAULTS = frozenset({"serial-unplug", "garbage", "device-reboot", "clock-skew"})


def check_plan(plan: list[PlannedFault], gateways: list[str], serial_devices: list[str],
               ble_devices: list[str]) -> None:
    """Refuse (FaultSpecError, naming the fault) a schedule the runner cannot carry out as
    written: an unknown name or target, a BLE mode or clock jump missing, a negative time."""
    for fault in plan:
        where = f"planned fault {fault.name!r} at {fault.at} s"
        if fault.name not in FAULT_NAMES:
            raise FaultSpecError(f"{where}: unknown (valid: {', '.join(FAULT_NAMES)})")
        if fault.at < 0 or fault.duration_s < 0:
            raise FaultSpecError(f"{where}: time and duration must be >= 0")
        valid = (["broker"] if fault.name in BROKER_FAULTS
                 else ["centre"] if fault.name == "slow-consumer"
                 else gateways if fault.name in GATEWAY_FAULTS
                 else ble_devices if fault.name == "ble-disconnect" else serial_devices)
        if fault.target not in valid:
            raise FaultSpecError(f"{where}: target {fault.target!r} is not one of "
                                 f"{', '.join(valid) or '(none)'}")
        if fault.name == "ble-disconnect" and fault.mode not in BLE_DISCONNECT_MODES:
            raise FaultSpecError(f"{where}: mode must be one of "
                                 f"{', '.join(BLE_DISCONNECT_MODES)}")
        if fault.name == "clock-skew" and fault.jump_s == 0:
            raise FaultSpecError(f"{where}: jump_s must be non-zero (+ forward, - back)")


def parse_faults(text: str) -> tuple[str, ...]:
    """Comma-separated fault names or `all` -> the names, in FAULT_NAMES order."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise FaultSpecError("--faults is empty (give `all` or names from: "
                             f"{', '.join(FAULT_NAMES)})")
    if names == ["all"]:
        return tuple(name for name in FAULT_NAMES if name not in NOT_BUILT)
    for name in names:
        if name not in FAULT_NAMES:
            raise FaultSpecError(f"unknown fault {name!r} (valid: all, {', '.join(FAULT_NAMES)})")
        if name in NOT_BUILT:
            raise FaultSpecError(f"fault {name!r} is not built yet (docs/fleet.md); valid: all, "
                                 + ", ".join(n for n in FAULT_NAMES if n not in NOT_BUILT))
    return tuple(name for name in FAULT_NAMES if name in names)


@dataclass(frozen=True)
class FaultTiming:
    lead_in_s: float = 6.0  # no fault before this: agents start, devices shake hands
    tail_s: float = 4.0  # no fault starts after duration - tail
    outage_s: float = 10.0  # broker-outage length (shortened to fit short runs)
    kill_every_s: float = 12.0  # agent-kill: one kill per this many seconds of run
    restart_after_s: float = 1.0  # agent-kill: SIGKILL -> restart
    unplug_s: float = 1.5
    skew_s: float = 120.0  # clock-skew jump size (forward or back)
    skew_for_s: float = 5.0
    slow_for_s: float = 5.0
    slow_delay_s: float = 0.02  # slow-consumer: the centre pauses this long per message
    storm_size: int = 4  # ble-disconnect: forced disconnects per storm
    storm_gap_s: tuple[float, float] = (1.0, 2.0)  # between two disconnects of a storm
    out_of_range_s: float = 2.0  # an out-of-range disconnect: no radio path this long


def plan_faults(names: tuple[str, ...], duration_s: float, gateways: list[str],
                devices: list[str], rng: random.Random, timing: FaultTiming = FaultTiming(),
                skew_devices: list[str] | None = None,
                ble_devices: list[str] | None = None) -> list[PlannedFault]:
    """When and where each fault strikes. Every named fault happens at least once (the
    BLE one when there are BLE devices); the broker faults never overlap each other and
    disk-full never overlaps a broker fault (its budget is sized from rows the centre has
    receipted, docs/fleet.md)."""
    start, end = timing.lead_in_s, max(timing.lead_in_s + 1.0, duration_s - timing.tail_s)
    window = end - start
    outage = min(timing.outage_s, max(2.0, window / 4))
    plan: list[PlannedFault] = []
    # Broker faults and disk-full each get a slot of their own, in separate thirds.
    slots = {"broker-outage": (0.0, 1 / 3), "broker-restart": (2 / 3, 1.0),
             "disk-full": (0.40, 0.55)}
    for name in ("broker-outage", "broker-restart"):
        if name in names:
            lo, hi = slots[name]
            length = outage if name == "broker-outage" else 0.0
            at = start + rng.uniform(lo * window, max(lo * window, hi * window - length))
            plan.append(PlannedFault(name, at, length, "broker"))
    if "disk-full" in names:
        lo, hi = slots["disk-full"]
        plan.append(PlannedFault("disk-full", start + rng.uniform(lo, hi) * window, 0.0,
                                 rng.choice(gateways)))
    if "agent-kill" in names:
        kills = max(2, int(duration_s // timing.kill_every_s))
        for _ in range(kills):
            plan.append(PlannedFault("agent-kill", start + rng.uniform(
                0, window - timing.restart_after_s),
                                     timing.restart_after_s, rng.choice(gateways)))
    per_device = (("serial-unplug", timing.unplug_s), ("garbage", 0.0),
                  ("device-reboot", 0.0), ("clock-skew", timing.skew_for_s))
    for name, length in per_device:
        if name not in names:
            continue
        pool = skew_devices if name == "clock-skew" and skew_devices else devices
        for _ in range(max(1, len(pool) // 3)):
            plan.append(PlannedFault(name, start + rng.uniform(0, window - length), length,
                                     rng.choice(pool)))
    if "ble-disconnect" in names and ble_devices:
        plan += _storms(ble_devices, start, window, rng, timing)
    if "slow-consumer" in names:
        plan.append(PlannedFault("slow-consumer", start + rng.uniform(0, window
                                                                       - timing.slow_for_s),
                                 timing.slow_for_s, "centre"))
    plan.sort(key=lambda fault: (fault.at, fault.name, fault.target))
    # Each jump's sign is drawn last, in schedule order: the rest of a seed's plan is what
    # it was when the runner drew the signs itself.
    return [replace(fault, jump_s=timing.skew_s * rng.choice((1, -1)))
            if fault.name == "clock-skew" else fault for fault in plan]


def _storms(ble_devices: list[str], start: float, window: float, rng: random.Random,
            timing: FaultTiming) -> list[PlannedFault]:
    """Storms of forced disconnects: `storm_size` at one device, each `storm_gap_s` after
    the device is back in range, modes alternating from a random first one; one storm per
    two BLE devices (at least one), each at a different device."""
    plan = []
    low, high = timing.storm_gap_s
    longest = (timing.storm_size - 1) * high + timing.storm_size * timing.out_of_range_s
    for target in rng.sample(ble_devices, max(1, (len(ble_devices) + 1) // 2)):
        at = start + rng.uniform(0, max(0.0, window - longest))
        first_mode = rng.randrange(len(BLE_DISCONNECT_MODES))
        for index in range(timing.storm_size):
            mode = BLE_DISCONNECT_MODES[(first_mode + index) % len(BLE_DISCONNECT_MODES)]
            length = timing.out_of_range_s if mode == "out-of-range" else 0.0
            plan.append(PlannedFault("ble-disconnect", at, length, target, mode))
            at += length + rng.uniform(low, high)
    return plan
