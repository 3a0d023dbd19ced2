"""`vitalbridge sim scenario NAME --report DIR`: one simulated home through one clinical
scenario, with the real parts, judged against the scenario's expected alarm timeline.

What runs: a real mosquitto (simulator.broker), the reference monitoring centre
(simulator.centre), the real edge agent (edge_agent.service.AgentService, in this process)
and one firmware stand-in per scenario device (simulator.agent_home.FirmwareStandIn) on its
own serial PTY, sealing the scenario's readings (edge_agent.alarms.scenarios.build) the
way the firmware does: a batch per device per scenario second, the oximeter's signal
quality as an "sq" record in the same batch, a finger taken off as a sealed `sensor-off`
device-event (no placeholder values), a signed checkpoint every CHECKPOINT_EVERY_S.

Time. The agent's rules judge persistence on the readings' own times (evaluator.py: "time
is the reading's time"), and alarm steps carry the time of the reading that caused them.
So readings are stamped scenario-start + offset, where the scenario start is the wall time
the run began, and the replay may go faster than real time without changing a verdict.
It stays faithful because it is lock-stepped: the readings of second s+1 go out only after
the agent has acknowledged (device-ack: verified and durable, so the rules have seen them)
every batch of second s. That keeps the order across devices the scenario defines; within
one second the devices race, as real ones do. Reading times then run ahead of the wall
clock, never behind it, so the agent's wall-clock "offline" timer never fires spuriously.
One exception: the agent times device-events (a finger taken off: `sensor-off`) by their
arrival, on the wall clock, so a scenario that sends events is only faithful in real time.
`speed` "auto" (default) = real time when the scenario sends device-events, otherwise as fast
as the lock-step allows; "max" = as fast as the lock-step allows; a number caps the pace at
that many scenario seconds per wall second (1 = real time).

Report (simulator.report): readings generated/stored per device (the centre's store is the
oracle: a reading is identified by device, quantity and time, so a copy stored under
another session or seq counts as duplicated-as-new), reading latency = centre arrival minus
the wall time the device sent it, alarm latency = centre arrival of the step minus the wall
time the triggering second was sent. Alarms compare the centre's alarm steps with the
expected timeline: per condition key, each rise to a grade above any grade that key had
before (raised or regraded) is one raised alarm, at the scenario time of its step.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sqlite3
import tempfile
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.alarms import scenarios
from edge_agent.alarms.evaluator import FINGER_OFF, SENSOR_OFF
from edge_agent.alarms.grades import Grade
from simulator.report import AlarmOutcome, RunRecord, Sample, exit_status, summarise, write_report

GATEWAY_ID = "gw-scenario"
CHECKPOINT_EVERY_S = 10
ALARM_TOLERANCE_S = 1.0     # scenario seconds between expected and raised
CLINICAL_GRADES = tuple(g.label for g in Grade if g is not Grade.BLUE)
ACK_TIMEOUT_S = 15.0        # one scenario second's batches must be acknowledged within this
DRAIN_TIMEOUT_S = 20.0      # after the last second: outbox empty, centre has every reading
RESEND_AFTER_S = 1.0
SENSOR_ON = "sensor-on"  # the device-events the firmware sends (firmware/sampling.py)
FINGER_ON = "finger-on"


class ScenarioRunError(RuntimeError):
    """A part of the simulated home failed; the run proves nothing."""


# ---------------------------------------------------------------- the replay plan (pure)


@dataclass
class Second:
    """What every device sends at one scenario second."""

    offset: int
    batches: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def plan_replay(scenario: scenarios.Scenario) -> list[Second]:
    """The scenario as firmware would send it, second by second (see the module docstring).
    Values are sent as the scenario gives them; the quality goes out once per batch."""
    seconds: dict[int, Second] = {}
    finger_off: dict[str, bool] = defaultdict(bool)
    quality_sent: set[tuple[str, int]] = set()
    for reading in scenario.readings:
        offset = round(reading.time - scenario.start)
        second = seconds.setdefault(offset, Second(offset))
        batch = second.batches.setdefault(reading.device, [])
        if reading.finger_off != finger_off[reading.device]:
            finger_off[reading.device] = reading.finger_off
            # As firmware/sampling.py reports it: the technical condition is the sensor's
            # (the agent raises `sensor-off:<device>`); a finger taken off is its cause.
            name = SENSOR_OFF if reading.finger_off else SENSOR_ON
            cause = FINGER_OFF if reading.finger_off else FINGER_ON
            second.events.setdefault(reading.device, []).append(
                {"event": name, "time": int(reading.time), "cause": cause})
        quality = 0.0 if reading.finger_off else reading.signal_quality
        if quality is not None and (reading.device, offset) not in quality_sent:
            quality_sent.add((reading.device, offset))
            batch.append(("sq", round(quality, 1), reading.time))
        if not reading.finger_off:
            batch.append((reading.quantity, reading.value, reading.time))
    return [seconds[s] for s in sorted(seconds)]


# ---------------------------------------------------------------- judging the alarms (pure)


@dataclass(frozen=True)
class AlarmStep:
    """One alarm step as the centre stored it (times: POSIX seconds)."""

    alarm_id: str
    seq: int
    kind: str
    grade: str
    key: str
    time: float
    patient: str | None
    device: str | None
    received_at: float


@dataclass(frozen=True)
class Rise:
    """A condition key reaching a grade above any it had before."""

    key: str
    grade: str
    at: float                   # scenario seconds
    patient: str | None
    device: str | None
    received_at: float          # wall time the centre stored the step
    ended_at: float | None      # scenario seconds the alarm resolved or closed, if it did


_RISING = ("raised", "regraded", "recurred")
_ENDING = ("resolved", "closed")


def alarm_rises(steps: Iterable[AlarmStep], start: float) -> list[Rise]:
    """Every rise of a condition key to a new highest grade, in time order."""
    by_alarm: dict[str, list[AlarmStep]] = defaultdict(list)
    for step in steps:
        by_alarm[step.alarm_id].append(step)
    ordered = sorted((s for group in by_alarm.values() for s in group),
                     key=lambda s: (s.time, s.alarm_id, s.seq))
    highest: dict[tuple[str | None, str], Grade] = {}
    rises = []
    for step in ordered:
        if step.kind not in _RISING:
            continue
        grade = Grade.from_label(step.grade)
        known = highest.get((step.patient, step.key))
        if known is not None and grade <= known:
            continue
        highest[(step.patient, step.key)] = grade
        ended = [s.time for s in by_alarm[step.alarm_id]
                 if s.kind in _ENDING and (s.time, s.seq) >= (step.time, step.seq)]
        rises.append(Rise(step.key, step.grade, step.time - start, step.patient, step.device,
                          step.received_at, min(ended) - start if ended else None))
    return rises


def match_alarms(expected: Sequence[scenarios.ExpectedAlarm], rises: Sequence[Rise],
                 patient: str) -> list[AlarmOutcome]:
    """Expected vs raised: each expected (key, grade) takes the first rise with the same key
    and grade; rises nobody expected are reported with expected_at None."""
    unused = list(rises)
    outcomes = []
    for alarm in sorted(expected, key=lambda e: (e.at, e.key)):
        hit = next((r for r in unused if r.key == alarm.key and r.grade == alarm.grade.label),
                   None)
        if hit is not None:
            unused.remove(hit)
        device = hit.device if hit is not None else _device_of(alarm.key)
        outcomes.append(AlarmOutcome(
            alarm.grade.label, alarm.key, patient, device, float(alarm.at),
            None if hit is None else hit.at, None if hit is None else hit.ended_at))
    outcomes += [AlarmOutcome(r.grade, r.key, r.patient, r.device, None, r.at, r.ended_at)
                 for r in unused]
    return outcomes


def _device_of(key: str) -> str | None:
    """Technical keys name their device ("low-signal:sim-ox-1"); clinical ones do not."""
    name, _, device = key.partition(":")
    return device if device.startswith("sim-") else None


# ---------------------------------------------------------------- what the centre stored


@dataclass
class CentreView:
    readings: list[tuple[str, str, int, str, float, float]]  # device, session, seq, q, t, at
    duplicates: dict[str, int]
    steps: list[AlarmStep]


def read_centre(database: Path) -> CentreView:
    """The centre's store after it stopped (schema: simulator/centre/store.py)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        readings = db.execute("SELECT device, session, seq, quantity, time, received_at "
                              "FROM readings").fetchall()
        duplicates = dict(db.execute("SELECT device, duplicates FROM device_counts"))
        steps = [AlarmStep(*row[:5], row[5] / 1000.0, *row[6:]) for row in db.execute(
            "SELECT alarm_id, seq, kind, grade, key, time_ms, patient, device, received_at "
            "FROM alarm_steps")]
    return CentreView(readings, duplicates, steps)


# ---------------------------------------------------------------- the run


@dataclass
class Sent:
    """The device side's own record of what it sent, when (wall time)."""

    readings: dict[str, dict[tuple[str, float], float]] = field(
        default_factory=lambda: defaultdict(dict))     # device -> (quantity, time) -> sent at
    second_sent_at: dict[int, float] = field(default_factory=dict)
    first_sent_at: float | None = None
    finished_at: float | None = None


def default_seed(name: str) -> int:
    """The seed scenarios.build uses when none is given (its canonical series)."""
    return zlib.crc32(name.encode())


def parse_speed(text: str) -> float | str:
    """--speed: "auto", "max" or a positive number of scenario seconds per wall second."""
    if text in ("auto", "max"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"speed must be auto, max or a positive number, got {text!r}")
    return value


def replay_speed(plan: Sequence[Second], speed: float | str) -> float | None:
    """The pace to replay at: None = lock-step only (see the module docstring)."""
    if speed == "auto":
        return 1.0 if any(second.events for second in plan) else None
    if speed == "max":
        return None
    return float(parse_speed(str(speed)))


def run_scenario(name: str, report_dir: Path, *, seed: int | None = None,
                 speed: float | str = "auto", workdir: Path | None = None
                 ) -> tuple[dict[str, Any], tuple[Path, Path]]:
    """Run scenario `name`, write report.json/.html into report_dir -> (summary, paths).
    ValueError for an unknown name or a bad speed; ScenarioRunError if the home failed."""
    if name not in scenarios.NAMES:
        raise ValueError(f"unknown scenario {name!r} (known: {', '.join(scenarios.NAMES)})")
    parse_speed(str(speed))
    seed = default_seed(name) if seed is None else seed
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="vitalbridge-scenario-")))
        record = asyncio.run(_run(name, seed, speed, Path(workdir)))
    summary = summarise(record)
    return summary, write_report(record, Path(report_dir))


async def _run(name: str, seed: int, requested: float | str, workdir: Path) -> RunRecord:
    # Imported here: the CLI lists scenario names without starting the whole stack.
    from simulator.agent_home import provision_home
    from simulator.broker import Broker
    from simulator.centre import Centre, CentreConfig, TrustAnchor
    from simulator.serial_devices import PtySerialDevice

    start = float(int(time.time()))
    scenario = scenarios.build(name, start=start, seed=seed)
    plan = plan_replay(scenario)
    speed = replay_speed(plan, requested)
    devices = sorted({r.device for r in scenario.readings})
    home = provision_home(workdir / "data", GATEWAY_ID,
                          [(d, scenario.patient) for d in devices], now=int(start))
    database = workdir / "centre.db"
    with contextlib.ExitStack() as stack:
        broker = Broker(workdir / "broker").start()
        stack.callback(broker.stop)
        centre = Centre(CentreConfig(
            port=broker.port, database=database, client_id="centre-scenario",
            anchor=TrustAnchor(org_ca_public=home.org_public), gap_deadline_s=120.0,
            tick_s=0.1, synchronous="NORMAL")).start()
        stack.callback(centre.stop)
        ptys = {}
        for device in devices:
            ptys[device] = PtySerialDevice(workdir / f"tty-{device}")
            ptys[device].plug()
            stack.callback(ptys[device].close)
        service = await _start_agent(home, broker.port, ptys, workdir)
        try:
            driver = _Driver(home, ptys, plan, speed)
            sent = await asyncio.to_thread(driver.play)
            expected_total = sum(len(v) for v in sent.readings.values())
            await asyncio.to_thread(_wait_stored, centre, expected_total)
            await service.alarms.drain()
        finally:
            await service.stop("scenario over")
        await asyncio.to_thread(centre.wait_idle, 5.0)
    view = read_centre(database)
    return _record(scenario, seed, requested, speed, sent, view)


async def _start_agent(home: Any, broker_port: int, ptys: dict[str, Any], workdir: Path) -> Any:
    from edge_agent.config import parse_config
    from edge_agent.serial_ingest import PortState
    from edge_agent.service import AgentService

    doc = {
        "gateway": {"id": GATEWAY_ID, "data_dir": str(home.data_dir)},
        "broker": {"host": "127.0.0.1", "port": broker_port, "keepalive_s": 5},
        "uplink": {"receipt_timeout_s": 2.0, "sweep_interval_s": 0.5, "stop_timeout_s": 2.0},
        "serial": [{"name": f"port-{device}", "device": device, "driver": "vitalbridge",
                    "path": str(pty.path)} for device, pty in ptys.items()],
    }
    config = parse_config(doc, workdir / "gateway.toml")
    service = AgentService(config)
    await service.start()
    try:
        async with asyncio.timeout(10):
            for port in config.serial:
                await service.serial.wait_for_state(port.port.name, PortState.OPEN)
    except BaseException:
        await service.stop("scenario start failed")
        raise
    return service


def _wait_stored(centre: Any, total: int) -> None:
    """Until the centre holds every reading sent (or the drain deadline passes)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        if centre.store.count("readings") >= total:
            break
        time.sleep(0.05)
    centre.wait_idle(5.0)


class _Driver:
    """Plays the plan through the firmware stand-ins, lock-stepped on device-acks (one
    thread for all devices: the cross-device order per second is the point)."""

    def __init__(self, home: Any, ptys: dict[str, Any], plan: list[Second],
                 speed: float | None) -> None:
        from simulator.agent_home import FirmwareStandIn

        self.devices = {d: FirmwareStandIn(home.devices[d], home.gateway_x25519_public, pty)
                        for d, pty in ptys.items()}
        self.plan = plan
        self.speed = speed
        self.sent = Sent()
        self.stop = threading.Event()

    def play(self) -> Sent:
        from protocol import device_link, messages

        for stand_in in self.devices.values():
            stand_in.handshake(timeout=10)
        began = time.monotonic()
        wall_began = time.time()
        for second in self.plan:
            if self.speed is not None:
                due = began + second.offset / self.speed
                while time.monotonic() < due:
                    self._poll_all(min(0.02, max(0.0, due - time.monotonic())))
            now = time.time()
            self.sent.second_sent_at[second.offset] = now
            if self.sent.first_sent_at is None:
                self.sent.first_sent_at = wall_began
            for device, events in second.events.items():
                stand_in = self.devices[device]
                session = stand_in.session
                for event in events:
                    body = device_link.encode_event(event, session.device_mac_key, session.kid)
                    stand_in._write(messages.encode("device-event", body))
            for device, values in second.batches.items():
                if not values:
                    continue
                stand_in = self.devices[device]
                stand_in.send(list(values))
                for quantity, _value, t in values:
                    self.sent.readings[device][(quantity, float(t))] = now
            if second.offset % CHECKPOINT_EVERY_S == 0:
                for stand_in in self.devices.values():
                    stand_in.send_checkpoint()
            self._until_acked(ACK_TIMEOUT_S, f"second {second.offset}")
        for stand_in in self.devices.values():
            stand_in.send_checkpoint()
        self._until_acked(DRAIN_TIMEOUT_S, "the end")
        self.sent.finished_at = time.time()
        return self.sent

    def _poll_all(self, timeout: float) -> None:
        share = timeout / max(len(self.devices), 1)
        for stand_in in self.devices.values():
            stand_in.poll(share)

    def _until_acked(self, limit: float, what: str) -> None:
        deadline = time.monotonic() + limit
        while any(s.unacked() for s in self.devices.values()):
            if time.monotonic() > deadline:
                waiting = {d: s.unacked() for d, s in self.devices.items() if s.unacked()}
                raise ScenarioRunError(f"the agent did not acknowledge {what} within "
                                       f"{limit:g} s (unacknowledged batches: {waiting})")
            self._poll_all(0.004)
            for stand_in in self.devices.values():
                stand_in.resend_unacked(older_than_s=RESEND_AFTER_S)


# ---------------------------------------------------------------- the record


def _record(scenario: scenarios.Scenario, seed: int, requested: float | str,
            speed: float | None, sent: Sent, view: CentreView) -> RunRecord:
    start = scenario.start
    generated = {d: len(r) for d, r in sent.readings.items()}
    stored: dict[str, dict[tuple[str, float], list[float]]] = defaultdict(
        lambda: defaultdict(list))
    for device, _session, _seq, quantity, t, received_at in view.readings:
        stored[device][(quantity, float(t))].append(received_at)
    received = {d: len(keys) for d, keys in stored.items()}
    duplicated_as_new = {d: sum(len(times) - 1 for times in keys.values())
                         for d, keys in stored.items()}
    latencies = []
    arrivals = []
    for device, keys in stored.items():
        for key, times in keys.items():
            arrivals.append(min(times))
            sent_at = sent.readings.get(device, {}).get(key)
            if sent_at is not None:
                latencies.append((min(times) - sent_at) * 1000.0)
    rises = alarm_rises(view.steps, start)
    alarm_latency = [(r.received_at - sent.second_sent_at[round(r.at)]) * 1000.0
                     for r in rises if round(r.at) in sent.second_sent_at]
    wall_start = sent.first_sent_at or start
    wall_end = max([sent.finished_at or wall_start] + arrivals)
    notes = [f"scenario: {scenario.description}",
             f"replayed {scenario.duration:g} scenario seconds in "
             f"{wall_end - wall_start:.1f} wall seconds "
             f"({'lock-stepped on device-acks' if speed is None else f'speed {speed:g}'})",
             f"{len(view.steps)} alarm steps stored by the centre"]
    return RunRecord(
        kind="scenario", name=scenario.name, seed=seed, duration_s=float(scenario.duration),
        parameters={"speed": "max" if speed is None else speed, "speed_requested": requested,
                    "patient": scenario.patient,
                    "devices": sorted(generated), "gateway": GATEWAY_ID,
                    "wall_duration_s": round(wall_end - wall_start, 3),
                    "alarm_tolerance_s": ALARM_TOLERANCE_S,
                    "transport": "serial PTY, VitalBridge firmware stand-in",
                    "agent": "edge_agent.service.AgentService (in process)"},
        generated=generated, received=received,
        duplicated={d: int(n) for d, n in view.duplicates.items() if n},
        duplicated_as_new={d: n for d, n in duplicated_as_new.items() if n},
        reading_latency_ms=latencies, alarm_latency_ms=alarm_latency,
        alarms=match_alarms(scenario.expected, rises, scenario.patient),
        faults=[], timeline=_timeline(sent, arrivals, wall_start, wall_end),
        notes=notes, fail_unexpected_grades=CLINICAL_GRADES,
        alarm_tolerance_s=ALARM_TOLERANCE_S)


def _timeline(sent: Sent, arrivals: list[float], wall_start: float, wall_end: float
              ) -> list[Sample]:
    """One sample per wall second from the first send: backlog = sent but not yet stored."""
    sent_times = sorted(t for keys in sent.readings.values() for t in keys.values())
    stored_times = sorted(arrivals)
    samples = []
    for second in range(int(math.ceil(wall_end - wall_start)) + 1):
        at = wall_start + second
        out = sum(1 for t in sent_times if t <= at)
        done = sum(1 for t in stored_times if t <= at)
        rate = sum(1 for t in stored_times if at - 1 < t <= at)
        samples.append(Sample(float(second), max(0, out - done), float(rate)))
    return samples


# ---------------------------------------------------------------- command line


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `scenario` (the lead wires it under `vitalbridge sim`)."""
    p = sub.add_parser("scenario", help="run one simulated home through a clinical scenario",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("name", help=f"one of: {', '.join(scenarios.NAMES)}")
    p.add_argument("--report", required=True, type=Path, metavar="DIR",
                   help="directory for report.json and report.html")
    p.add_argument("--seed", type=int, default=None,
                   help="scenario seed (default: the scenario's canonical series)")
    p.add_argument("--speed", default="auto",
                   help="scenario seconds per wall second (1 = real time), or max (as fast "
                        "as the lock-step on device-acks allows); default auto: max, but "
                        "real time for scenarios with device-events")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from edge_agent.cli import CommandError

    if args.name not in scenarios.NAMES:
        raise CommandError(f"unknown scenario {args.name!r}; known: {', '.join(scenarios.NAMES)}")
    try:
        speed = parse_speed(args.speed)
    except ValueError as err:
        raise CommandError(f"--{err}") from None
    try:
        summary, (json_path, html_path) = run_scenario(args.name, args.report, seed=args.seed,
                                                       speed=speed)
    except ScenarioRunError as err:
        raise CommandError(str(err), status=1) from None
    readings = summary["readings"]
    alarms = summary["alarms_summary"]
    print(f"{summary['verdict'].upper()}: {args.name} (seed {summary['seed']}): "
          f"{readings['received']}/{readings['generated']} readings stored, "
          f"{readings['lost']} lost; alarms {alarms['raised']} raised, {alarms['expected']} "
          f"expected, {alarms['missed']} missed, {alarms['unexpected']} unexpected")
    for reason in summary["reasons"]:
        print(f"  - {reason}")
    print(f"report: {json_path} {html_path}")
    return exit_status(summary)


