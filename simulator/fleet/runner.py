"""A whole simulated fleet with faults, from start to RunRecord (docs/fleet.md).

Real parts: mosquitto (simulator.broker), the reference centre (simulator.centre), one
agent process per gateway (simulator.fleet.launcher), sealing devices on PTYs
(simulator.fleet.devices) and sealing BLE devices on a virtual radio inside each gateway
process (simulator.fleet.ble_device; their truth is read from their flash files).
The run: start everything, inject the planned faults while the devices measure, stop
measuring, put every part back up and let the backlog drain (bounded by the drain
timeout), then compare the devices' truth with the centre's store.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_agent.alarms import scenarios
from edge_agent.alarms.evaluator import Reading
from edge_agent.alarms.grades import Grade
from simulator.agent_home import Home, provision_home
from simulator.broker import Broker
from simulator.centre import Centre, CentreConfig, TrustAnchor
from simulator.fleet import oracle
from simulator.fleet.ble_device import BleDeviceSpec, DeviceFlash
from simulator.fleet.devices import FleetDevice, Sealed, Vitals, stable_vitals
from simulator.fleet.faults import FaultTiming, PlannedFault, check_plan, plan_faults
from simulator.fleet.gateway import GatewayProcess, gateway_toml
from simulator.report import FaultRecord, RunRecord, Sample
from simulator.serial_devices import PtySerialDevice

SCENARIO = "sudden-desaturation"
SCENARIO_DROP_S = 30  # when SpO2 starts to fall in that scenario
DISK_BUDGET_KEY = "disk-budget"  # edge_agent.alarms.evaluator.DISK_BUDGET

Progress = Callable[[float, str], None]


class FleetError(RuntimeError):
    """The fleet could not be set up (mosquitto missing, a gateway that cannot start...)."""


@dataclass(frozen=True)
class FleetOptions:
    gateways: int
    devices_per_gateway: int
    duration_s: float
    faults: tuple[str, ...]
    seed: int
    rate_hz: float = 1.0
    drain_timeout_s: float = 60.0
    timing: FaultTiming = field(default_factory=FaultTiming)
    ble_per_gateway: int = 1  # sealing BLE devices per gateway, besides the serial ones
    # An explicit schedule (exact times, targets, clock jumps) instead of the seeded
    # planner's; checked against the fleet's parts when the run starts (faults.check_plan).
    plan: tuple[PlannedFault, ...] | None = None

    def __post_init__(self) -> None:
        if self.plan is not None:
            object.__setattr__(self, "plan", tuple(self.plan))


@dataclass(frozen=True)
class FleetHooks:
    """Callbacks into a run, on the fleet's own thread (a slow one delays what follows).

    on_agent_killed(gateway id, data dir): right after a SIGKILL that struck a running
    agent, before its restart; the files are as the kill left them.
    on_agent_stopped(gateway id, data dir, exit status): after the final SIGTERM of each
    agent at the end of the run (after the drain, before the oracle), files still on disk.
    """

    on_agent_killed: Callable[[str, Path], None] | None = None
    on_agent_stopped: Callable[[str, Path, int | None], None] | None = None


def gateway_ids(count: int) -> list[str]:
    return [f"gw-{index + 1:02d}" for index in range(count)]


def ble_address(gateway: int, device: int) -> str:
    """A static random address (top bits 11) per BLE device, the same after each restart."""
    return f"D1:00:00:00:{gateway + 1:02X}:{device + 1:02X}"


@dataclass(frozen=True)
class BleDevice:
    """A BLE device as the fleet process sees it: where it lives and its flash file."""

    device_id: str
    gateway: str
    address: str
    flash: Path

    def flash_now(self) -> DeviceFlash:
        return DeviceFlash.load(self.flash)


def scenario_vitals(drop_at_s: float, seed: int) -> Vitals:
    """The oximeter of the sudden-desaturation scenario, shifted so SpO2 starts falling
    `drop_at_s` seconds into the run (before that: its own steady start)."""
    built = scenarios.build(SCENARIO, seed=seed)
    series: dict[int, dict[str, float]] = {}
    for reading in built.readings:
        if reading.device == scenarios.OXIMETER:
            series.setdefault(int(reading.time - built.start), {})[reading.quantity] = \
                float(reading.value)
    shift = SCENARIO_DROP_S - int(drop_at_s)
    last = max(series)

    def vitals(second: int) -> tuple[float, float]:
        values = series[min(last, max(0, second + shift))]
        return values["spo2"], values["pr"]
    return vitals


class FleetRun:
    """One run. `run()` returns the RunRecord; everything started is stopped on return."""

    def __init__(self, options: FleetOptions, progress: Progress | None = None,
                 hooks: FleetHooks | None = None) -> None:
        self.options = options
        self.hooks = hooks or FleetHooks()
        self.progress = progress or (lambda fraction, phase: None)
        self.rng = random.Random(options.seed)
        self.faults: list[FaultRecord] = []
        self.timeline: list[Sample] = []
        self.notes: list[str] = []
        self.homes: dict[str, Home] = {}
        self.gateways: dict[str, GatewayProcess] = {}
        self.devices: dict[str, FleetDevice] = {}  # the serial ones
        self.ble: dict[str, BleDevice] = {}
        self.ptys: list[PtySerialDevice] = []
        self.patients: dict[str, str] = {}
        self.scenario_devices: list[str] = []
        self.disk_full_gateways: list[str] = []
        self.run_start = 0.0
        self._actions: list[tuple[float, int, Callable[[], None]]] = []
        self._last_sample: tuple[float, int] | None = None

    # ------------------------------------------------------------------ the run

    def run(self) -> RunRecord:
        work = Path(tempfile.mkdtemp(prefix="vb-fleet-"))
        broker = centre = view = None
        try:
            self._provision(work)
            broker = Broker(work / "broker").start()
            anchor = TrustAnchor(gateway_keys={gw: home.gateway_public
                                               for gw, home in self.homes.items()})
            centre = Centre(CentreConfig(port=broker.port, database=work / "centre.db",
                                         anchor=anchor, client_id="fleet-centre",
                                         gap_deadline_s=self.options.drain_timeout_s + 120,
                                         tick_s=0.2, synchronous="NORMAL")).start()
            view = oracle.CentreView(work / "centre.db")
            self.run_start = time.time()
            self._start_gateways(work, broker.port)
            self._start_devices()
            self._schedule(broker, centre)
            self._play(view)
            self._drain(broker, centre, view)
            self._stop_gateways()
            return self._record(view)
        finally:
            for device in self.devices.values():
                device.stopped.set()
            for device in self.devices.values():
                device.join(timeout=5)
            for gateway in self.gateways.values():
                code = gateway.stop()
                if code not in (0, None):
                    self.notes.append(f"{gateway.gateway_id}: agent exit status {code} at "
                                      f"the end:\n{_tail(gateway.log)}")
            for pty in self.ptys:
                pty.close()
            if view is not None:
                view.close()
            if centre is not None:
                centre.stop()
            if broker is not None:
                broker.stop()
            shutil.rmtree(work, ignore_errors=True)

    def _provision(self, work: Path) -> None:
        options = self.options
        for g, gw in enumerate(gateway_ids(options.gateways)):
            members = []
            for d in range(options.devices_per_gateway):
                device, patient = f"{gw}-ox{d + 1}", f"p-{g + 1:02d}-{d + 1}"
                members.append((device, patient))
                self.patients[device] = patient
                if d == 0:
                    self.scenario_devices.append(device)
            for b in range(options.ble_per_gateway):
                device, patient = f"{gw}-ble{b + 1}", f"p-{g + 1:02d}-b{b + 1}"
                members.append((device, patient))
                self.patients[device] = patient
                self.ble[device] = BleDevice(device, gw, ble_address(g, b),
                                             work / gw / f"flash-{device}.json")
            self.homes[gw] = provision_home(work / gw / "data", gw, members)

    def _start_gateways(self, work: Path, port: int) -> None:
        for gw, home in self.homes.items():
            ports = []
            for device in home.devices:
                if device in self.ble:
                    continue
                pty = PtySerialDevice(work / gw / f"tty-{device}", write_timeout=0.2)
                pty.plug()
                self.ptys.append(pty)
                ports.append((device, pty.path))
            radio = [(d.device_id, d.address) for d in self.ble.values() if d.gateway == gw]
            config = work / gw / "gateway.toml"
            config.write_text(gateway_toml(gw, home.data_dir, port, ports, radio))
            spec = control = None
            if radio:
                spec, control = work / gw / "ble.json", work / gw / "control.sock"
                self._write_ble_spec(spec, home)
            process = GatewayProcess(gw, config, home.data_dir, work / gw / "agent.log",
                                     spec, control)
            process.start()
            self.gateways[gw] = process

    def _write_ble_spec(self, path: Path, home: Home) -> None:
        """The BLE devices' keys and parameters for the gateway process (mode 0600: it
        holds device keys, as the devices' own flash would)."""
        options = self.options
        specs = []
        for device in (d for d in self.ble.values() if d.gateway == home.gateway_id):
            keys = home.devices[device.device_id]
            specs.append(BleDeviceSpec(
                device.device_id, device.address, keys.seed, keys.agreement,
                home.gateway_x25519_public, device.flash,
                zlib.crc32(f"{options.seed}:{device.device_id}".encode()), self.run_start,
                options.rate_hz, self.run_start + options.duration_s).to_json())
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(specs, out)

    def _start_devices(self) -> None:
        options = self.options
        drop_at = max(3.0, min(12.0, options.duration_s * 0.3))
        ptys = {pty.path.name[len("tty-"):]: pty for pty in self.ptys}
        for home in self.homes.values():
            serial = [(d, keys) for d, keys in home.devices.items() if d not in self.ble]
            for index, (device, keys) in enumerate(serial):
                seed = zlib.crc32(f"{options.seed}:{device}".encode())
                vitals = (scenario_vitals(drop_at, options.seed) if index == 0
                          else stable_vitals(seed))
                self.devices[device] = FleetDevice(keys, home.gateway_x25519_public,
                                                   ptys[device], vitals, self.run_start,
                                                   options.rate_hz, seed)
        for device in self.devices.values():
            device.start()

    # ------------------------------------------------------------------ faults

    def _at(self, when: float, action: Callable[[], None]) -> None:
        self._actions.append((when, len(self._actions), action))

    def _schedule(self, broker: Broker, centre: Centre) -> None:
        if self.options.plan is not None:
            plan = list(self.options.plan)
            check_plan(plan, list(self.gateways), list(self.devices), list(self.ble))
        else:
            others = [d for d in self.devices if d not in self.scenario_devices]
            plan = plan_faults(self.options.faults, self.options.duration_s,
                               list(self.gateways), list(self.devices), self.rng,
                               self.options.timing, skew_devices=others or None,
                               ble_devices=list(self.ble))
        for fault in plan:
            self._plan_one(fault, broker, centre)
        self._actions.sort()

    def _plan_one(self, fault: PlannedFault, broker: Broker, centre: Centre) -> None:
        timing = self.options.timing
        start, end = fault.at, fault.at + fault.duration_s

        def note(detail: str = "", duration: float | None = None) -> None:
            self.faults.append(FaultRecord(fault.name, round(time.time() - self.run_start, 3),
                                           fault.duration_s if duration is None else duration,
                                           fault.target, detail))

        if fault.name == "broker-outage":
            self._at(start, lambda: (broker.stop(), note("mosquitto stopped")))
            self._at(end, broker.start)
        elif fault.name == "broker-restart":
            def restart() -> None:
                began = time.monotonic()
                broker.restart()
                note(f"same port {broker.port}", round(time.monotonic() - began, 3))
            self._at(start, restart)
        elif fault.name == "agent-kill":
            gateway = self.gateways[fault.target]

            def kill() -> None:
                killed = gateway.kill()
                note("SIGKILL" if killed else "SIGKILL skipped: the agent was down")
                if killed and self.hooks.on_agent_killed is not None:
                    self.hooks.on_agent_killed(gateway.gateway_id, gateway.data_dir)
            self._at(start, kill)
            self._at(end, gateway.start)
        elif fault.name == "disk-full":
            self._at(start, lambda: note(self._fill_disk(fault.target)))
        elif fault.name == "ble-disconnect":
            self._at(start, lambda: note(self._disconnect(fault)))
        elif fault.name == "slow-consumer":
            self._at(start, lambda: (centre.set_slow_consumer(timing.slow_delay_s),
                                     note(f"{timing.slow_delay_s * 1000:.0f} ms per message")))
            self._at(end, lambda: centre.set_slow_consumer(0.0))
        else:
            self._plan_device_fault(fault, note)

    def _plan_device_fault(self, fault: PlannedFault, note: Callable[..., None]) -> None:
        device = self.devices[fault.target]
        if fault.name == "serial-unplug":
            self._at(fault.at, lambda: (device.request("unplug", fault.duration_s),
                                        note("PTY closed, reopened")))
        elif fault.name == "garbage":
            for burst in range(3):
                self._at(fault.at + burst * 0.4, lambda: device.request("garbage"))
            self._at(fault.at, lambda: note("3 bursts of 16-200 random bytes"))
        elif fault.name == "device-reboot":
            self._at(fault.at, lambda: (device.request("reboot"),
                                        note("new session, outbox replayed")))
        elif fault.name == "clock-skew":
            self._at(fault.at, lambda: (device.request("skew", fault.jump_s),
                                        note(f"device clock {fault.jump_s:+.0f} s")))
            self._at(fault.at + fault.duration_s, lambda: device.request("skew", 0.0))

    def _disconnect(self, fault: PlannedFault) -> str:
        """One forced disconnect, carried out by the device's gateway process; the detail
        says what it found (links up at that moment, batches waiting in its outbox)."""
        device = self.ble[fault.target]
        answer = self.gateways[device.gateway].disconnect(device.device_id, fault.mode,
                                                          self.options.timing.out_of_range_s)
        if not answer.get("ok"):
            return f"{fault.mode}: not injected ({answer.get('error')})"
        return (f"{fault.mode}: {answer['links']} link(s) dropped, "
                f"{answer['unacked']} batch(es) unacknowledged")

    def _fill_disk(self, gw: str) -> str:
        """Restart the gateway with a budget its receipted rows alone can bring it under:
        the policy must thin what the centre already holds and raise the disk alarm."""
        gateway = self.gateways[gw]
        used, receipted = gateway.journal_bytes()
        budget = max(4096, int(used - receipted / 2))
        gateway.restart_with_budget(budget)
        self.disk_full_gateways.append(gw)
        return f"budget {budget} bytes (journal used {used}, receipted payload {receipted})"

    # ------------------------------------------------------------------ time

    def _play(self, view: oracle.CentreView) -> None:
        end = self.run_start + self.options.duration_s
        next_sample = self.run_start + 1.0
        while time.time() < end:
            now = time.time()
            while self._actions and self.run_start + self._actions[0][0] <= now:
                _, _, action = self._actions.pop(0)
                action()
            if now >= next_sample:
                self._sample(view)
                next_sample += 1.0
            self._check_parts()
            self.progress(min(1.0, (now - self.run_start) / self.options.duration_s), "run")
            time.sleep(0.05)

    def _drain(self, broker: Broker, centre: Centre, view: oracle.CentreView) -> None:
        """Stop measuring and injecting; bring every part back; wait for the backlog."""
        for device in self.devices.values():
            device.stop_measuring()
            device.request("skew", 0.0)
        self._actions.clear()  # faults not yet started are not injected; ended below
        if broker.process is None:
            broker.start()
        centre.set_slow_consumer(0.0)
        for gateway in self.gateways.values():
            gateway.start()
        began = time.time()
        deadline = began + self.options.drain_timeout_s
        next_sample = time.time()
        # When each half of "drained" first held: a slow drain says which side lagged.
        acked_after = stored_after = None
        while time.time() < deadline:
            if time.time() >= next_sample:
                self._sample(view)
                next_sample += 1.0
            if acked_after is None and self._all_acknowledged():
                acked_after = time.time() - began
            if stored_after is None and view.stored_count() >= self._generated():
                stored_after = time.time() - began
            if acked_after is not None and stored_after is not None:
                break
            self._check_parts()
            self.progress((time.time() - began) / self.options.drain_timeout_s, "drain")
            time.sleep(0.1)
        else:
            self.notes.append(f"drain timed out after {self.options.drain_timeout_s:.0f} s; "
                              f"still unacknowledged: {self._unacknowledged() or 'nothing'}")
        self._sample(view)
        self.notes.append(f"drain took {time.time() - began:.1f} s (device outboxes empty "
                          f"after {_seconds(acked_after)}, the centre complete after "
                          f"{_seconds(stored_after)})")

    def _stop_gateways(self) -> None:
        """SIGTERM every agent (its graceful stop) before the oracle reads anything: the
        record is taken of a quiet fleet, and on_agent_stopped sees each agent's files."""
        for gateway in self.gateways.values():
            code = gateway.stop()
            if code not in (0, None):
                self.notes.append(f"{gateway.gateway_id}: agent exit status {code} at "
                                  f"the end:\n{_tail(gateway.log)}")
            if self.hooks.on_agent_stopped is not None:
                self.hooks.on_agent_stopped(gateway.gateway_id, gateway.data_dir, code)

    def _sample(self, view: oracle.CentreView) -> None:
        now = time.time()
        stored = view.stored_count()
        generated = self._generated()
        rate = 0.0
        if self._last_sample is not None and now > self._last_sample[0]:
            rate = (stored - self._last_sample[1]) / (now - self._last_sample[0])
        self._last_sample = (now, stored)
        self.timeline.append(Sample(round(now - self.run_start, 3), max(0, generated - stored),
                                    round(rate, 3)))

    def _truth(self) -> dict[str, dict[int, Sealed]]:
        """Every device's record of what it sealed: the serial devices' in memory, the BLE
        devices' in their flash files (they live in the gateway processes)."""
        truth = {device_id: device.snapshot() for device_id, device in self.devices.items()}
        for device_id, device in self.ble.items():
            truth[device_id] = device.flash_now().truth
        return truth

    def _generated(self) -> int:
        return sum(d.generated() for d in self.devices.values()) + \
            sum(len(d.flash_now().truth) for d in self.ble.values())

    def _all_acknowledged(self) -> bool:
        return all(d.unacked() == 0 for d in self.devices.values()) and \
            all(not d.flash_now().outbox for d in self.ble.values())

    def _unacknowledged(self) -> str:
        """'device: n batch(es)' for every device whose outbox is not empty."""
        waiting = {d: device.unacked() for d, device in self.devices.items()}
        waiting |= {d: len(device.flash_now().outbox) for d, device in self.ble.items()}
        return ", ".join(f"{d}: {n} batch(es)" for d, n in sorted(waiting.items()) if n)

    def _check_parts(self) -> None:
        """A crashed agent or device thread ends the run: its report would prove nothing."""
        for device in self.devices.values():
            if device.error is not None:
                raise FleetError(f"device {device.device_id} failed: {device.error!r}")
        for gateway in self.gateways.values():
            code = gateway.exited_on_its_own()
            if code is not None:
                raise FleetError(f"agent {gateway.gateway_id} exited with status {code}: "
                                 + _tail(gateway.log, 600).replace("\n", " "))

    # ------------------------------------------------------------------ the oracle

    def _expected_alarms(self) -> list[oracle.ExpectedAlarmAt]:
        out = []
        for device_id in self.scenario_devices:
            patient = self.patients[device_id]
            truth = self.devices[device_id].snapshot()
            readings = [Reading(patient, device_id, s.quantity, s.value, float(s.reading_time))
                        for _, s in sorted(truth.items())]
            # The rules see the device's whole-second times; the alarm is due from the
            # moment the reading that completes the condition was taken.
            taken = {s.reading_time: s.sealed_at for s in truth.values()}
            for expected in scenarios.expected_timeline(readings, frozenset(), self.run_start):
                due = taken.get(round(self.run_start + expected.at))
                at = expected.at if due is None else due - self.run_start
                out.append(oracle.ExpectedAlarmAt(expected, patient, device_id, at))
        for gw in dict.fromkeys(self.disk_full_gateways):
            fault = next(f for f in self.faults if f.name == "disk-full" and f.target == gw)
            out.append(oracle.ExpectedAlarmAt(
                scenarios.ExpectedAlarm(Grade.BLUE, DISK_BUDGET_KEY, fault.at), None, None,
                fault.at))
        return out

    def _record(self, view: oracle.CentreView) -> RunRecord:
        tallies = oracle.compare_readings(self._truth(), view.readings())
        outcomes, alarm_latency = oracle.match_alarms(self._expected_alarms(),
                                                      view.alarm_steps(), self.run_start)
        duplicates = view.duplicates()
        latency = [ms for tally in tallies.values() for ms in tally.latency_ms]
        for device, tally in sorted(tallies.items()):
            if tally.wrong_content or tally.unknown_seqs:
                self.notes.append(f"{device}: {tally.wrong_content} seqs stored with content "
                                  f"the device never sealed, {tally.unknown_seqs} seqs it "
                                  "never sealed")
        for gateway in self.gateways.values():
            self.notes.append(f"{gateway.gateway_id}: agent started {gateway.starts} times, "
                              f"SIGKILLed {gateway.kills} times")
        for device_id, device in sorted(self.ble.items()):
            flash = device.flash_now()
            live = sum(1 for forced in flash.forced if forced["links"])
            self.notes.append(
                f"{device_id} (BLE): booted {flash.boots} times, {flash.handshakes} handshakes,"
                f" uplink subscribed {flash.subscriptions} times ({flash.replayed} outbox "
                f"batches replayed), {len(flash.forced)} forced "
                f"disconnects ({live} dropped a live link), {len(flash.outbox)} batches "
                "unacknowledged at the end")
        handshakes = sum(d.handshakes for d in self.devices.values())
        self.notes.append(f"devices: {handshakes} handshakes, "
                          f"{sum(d.garbage_bytes for d in self.devices.values())} garbage bytes")
        parameters = {k: v for k, v in asdict(self.options).items() if k != "timing"}
        parameters["faults"] = list(self.options.faults)
        parameters["timing"] = asdict(self.options.timing)
        return RunRecord(
            kind="fleet", name=f"fleet-{self.options.gateways}x{self.options.devices_per_gateway}",
            seed=self.options.seed, duration_s=self.options.duration_s, parameters=parameters,
            generated={d: t.generated for d, t in tallies.items()},
            received={d: t.received for d, t in tallies.items()},
            duplicated={d: duplicates.get(d, 0) for d in tallies},
            duplicated_as_new={d: t.duplicated_as_new for d, t in tallies.items()},
            reading_latency_ms=latency, alarm_latency_ms=alarm_latency, alarms=outcomes,
            faults=self.faults, timeline=self.timeline, notes=self.notes)


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _tail(path: Path, size: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return "(no log)"
