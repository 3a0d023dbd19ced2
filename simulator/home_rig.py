"""A simulated home around the real edge agent: everything a runner needs, started and
stopped as one (docs/demo.md).

`HomeRig` (an async context manager; enter it inside a running event loop) starts, in order:

  broker      a real mosquitto on a free loopback port (simulator.broker)
  centre      the reference monitoring centre (simulator.centre): stores, receipts, verifies
              device checkpoints, and sends a clinician's acknowledgements and closures
  firmware    the real VitalBridge firmware on the MicroPython unix port with the simulated
              board, as `vitalbridge firmware run-sim` (a child process), enrolled over its
              serial link with the technician's `vitalbridge device enroll` (two runs: the
              second confirms the code the DEVICE printed) and bound to the patient
  cuff        a blood-pressure cuff speaking the VitalBridge serial protocol on a PTY
              (simulator.agent_home.FirmwareStandIn: sealed, enrolled, bound) -- the agent
              has no driver for a third-party serial cuff yet
  BLE         a standard pulse oximeter and thermometer (bumble GATT servers on the virtual
              radio), registered at their BLE addresses and bound to the patient with the
              technician's `vitalbridge device register ... --patient`: the gateway attests
              their readings and the agent evaluates them for the patient
  agent       ONE gateway: edge_agent.service.AgentService, provisioned like a commissioned
              gateway (simulator.agent_home.provision_home), serial + BLE ingest, journal,
              rules and alarms, MQTT uplink

`Patient` plays a named scenario (simulator.physiology) on a compressed clock and can be
treated (oxygen): the values then return to baseline, so alarms resolve and can be closed.

Leaving the context (normally, on an exception or on Ctrl-C's cancellation) stops
everything in reverse order and leaves no process behind: run-sim is stopped with SIGTERM
(it stops its firmware process) and, if it does not end, its process group is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator import physiology
from simulator.agent_home import FirmwareStandIn, Home, provision_home, write_gateway_state
from simulator.broker import Broker
from simulator.centre import Centre, CentreConfig, TrustAnchor
from simulator.serial_devices import PtySerialDevice

REPO = Path(__file__).resolve().parents[1]
GATEWAY_ID = "home-gw-1"
PATIENT = "p-0001"  # pseudonymous
FIRMWARE_UNIQUE_ID = "d3e400000001"
FIRMWARE_ID = "vb-" + FIRMWARE_UNIQUE_ID
CUFF_ID = "cuff-1"
BLE_OXIMETER_ID = "ble-ox-1"
BLE_THERMOMETER_ID = "ble-temp-1"
CLINICIAN = "nurse:n-0001"
TECHNICIAN = "t-0001"
SCENARIO = "sudden-desaturation"
# What each standard BLE measurement carries (the agent stores one reading per quantity).
BLE_QUANTITIES = {BLE_OXIMETER_ID: ("spo2", "pr", "pi"), BLE_THERMOMETER_ID: ("temp",)}
# The label of each standard BLE device, as the technician types it into `device register`.
BLE_LABELS = {BLE_OXIMETER_ID: ("VB-Demo-Oximeter", "SIM-OX-0001"),
              BLE_THERMOMETER_ID: ("VB-Demo-Thermo", "SIM-TH-0001")}
CUFF_QUANTITIES = ("sys", "dia", "map", "pr")
RECOVERY_S = 8.0  # oxygen given: SpO2 and pulse back to baseline over this many seconds
ENROLL_TIMEOUT_S = 60.0

# The firmware's configuration for a demo: checkpoints as often as allowed (5 s), SpO2 and
# pulse reported on every change of one unit at most once a second (the live view moves),
# temperature every 5 s; the cuff is a separate device, so the firmware's UART BP is off.
FIRMWARE_CONFIG: dict[str, Any] = {
    "sealing": {"checkpoint_interval": 5},
    "sensors": {
        "max30102": {"filters": {
            "pr": [["plausibility", 20, 250, 30], ["median", 3], ["throttle", 1, 60, 1]],
            "spo2": [["plausibility", 50, 100, 8], ["median", 3], ["throttle", 1, 60, 1]],
        }},
        "max30205": {"interval_ms": 5000},
        "bp": {"enabled": False},
    },
    "battery": {"interval_ms": 30000},
}


class RigError(RuntimeError):
    """A part of the simulated home did not start or failed."""


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking start step in a thread. If the run is cancelled (Ctrl-C) meanwhile,
    wait for the step to end before re-raising: the clean-up must not race a part that is
    still starting (it would be started after its stop ran and be left behind)."""
    step = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(step)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await step
        raise


# ---------------------------------------------------------------- the patient


class Patient:
    """A named scenario played on the rig's clock: rig time `t` (seconds since the scenario
    started) is scenario time `skip_s + t`. `treat(t)` gives oxygen at rig time `t`."""

    def __init__(self, scenario: str, seed: int, skip_s: float) -> None:
        self.model = physiology.PatientModel(scenario, seed=seed)
        self.skip_s = skip_s
        self.treated_at: float | None = None
        self._plx = self.model.ble_source("pulse_oximeter")
        self._thermometer = self.model.ble_source("thermometer")

    def _at(self, t: float) -> float:
        return self.model.start + self.skip_s + max(0.0, t)

    def treat(self, t: float) -> bool:
        """Oxygen from rig time `t` on; False if already treated."""
        if self.treated_at is not None:
            return False
        self.treated_at = t
        return True

    def recovery(self, t: float) -> float:
        """0 untreated .. 1 fully recovered."""
        if self.treated_at is None or t <= self.treated_at:
            return 0.0
        return min(1.0, (t - self.treated_at) / RECOVERY_S)

    def _recovered(self, values: dict[str, Any], t: float, digits: int = 0) -> dict[str, Any]:
        share = self.recovery(t)
        if share:
            for name, baseline in (("spo2", physiology.BASELINE["spo2"]),
                                   ("pr", physiology.BASELINE["hr"]),
                                   ("hr", physiology.BASELINE["hr"])):
                if isinstance(values.get(name), int | float):
                    values[name] = round(values[name] * (1 - share) + baseline * share, digits)
        return values

    def firmware_line(self, t: float) -> str:
        """One line of the firmware's signal feed (the truth; it measures itself)."""
        line = json.loads(self.model.sim_hal_line(self._at(t)))
        self._recovered(line, t, 1)
        return json.dumps(line, separators=(",", ":")) + "\n"

    def oximeter(self, t: float) -> dict[str, Any]:
        return self._recovered(dict(self._plx(self._at(t) - self.model.start)), t)

    def thermometer(self, t: float) -> dict[str, Any]:
        return dict(self._thermometer(self._at(t) - self.model.start))

    def cuff(self, t: float) -> dict[str, float]:
        values = dict(self.model.observe(self._at(t), physiology.BP_CUFF).values)
        return self._recovered(values, t)


# ---------------------------------------------------------------- the firmware process


ENROLL_CODE = re.compile(r"VitalBridge enrollment code: (\d{3}) (\d{3})")


class FirmwareProcess:
    """`vitalbridge firmware run-sim` as a child process in its own process group."""

    def __init__(self, state_dir: Path, seed: int) -> None:
        self.state_dir = state_dir
        self.seed = seed
        self.info: dict[str, str] = {}
        self.lines: deque[str] = deque(maxlen=200)
        self.codes: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._code_seen = threading.Event()
        self._feed = None
        self._stopped = False

    def start(self, timeout: float = 30.0) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "config.json"
        config.write_text(json.dumps(FIRMWARE_CONFIG))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "firmware", "run-sim", "--state-dir",
             str(self.state_dir), "--unique-id", FIRMWARE_UNIQUE_ID, "--config", str(config),
             "--seed", str(self.seed), "--json"],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        ready = threading.Event()
        threading.Thread(target=self._read, args=(ready,), daemon=True,
                         name="firmware-output").start()
        if self._stopped:  # stopped while starting: do not leave this one behind
            self.stop()
            raise RigError("firmware run-sim stopped while starting")
        if not ready.wait(timeout) or not self.info:
            raise RigError("firmware run-sim did not start: " + " | ".join(self.lines))
        self._feed = open(self.info["signals"], "a", buffering=1)  # noqa: SIM115 - closed in stop

    def _read(self, ready: threading.Event) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            if not self.info and line.startswith("{"):
                with contextlib.suppress(ValueError):
                    self.info = json.loads(line)
                ready.set()
                continue
            self.lines.append(line)
            found = ENROLL_CODE.search(line)
            if found:
                self.codes.append(found.group(1) + found.group(2))
                self._code_seen.set()
        ready.set()  # the process ended (start() reports it)

    @property
    def link(self) -> Path:
        return Path(self.info["serial"])

    @property
    def device_id(self) -> str:
        return self.info["device_id"]

    def wait_code(self, timeout: float) -> str:
        """The enrollment code the device printed on its console."""
        if not self._code_seen.wait(timeout):
            raise RigError(f"the firmware showed no enrollment code within {timeout:g} s")
        return self.codes[-1]

    def feed(self, line: str) -> None:
        if self._feed is not None:
            self._feed.write(line)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        self._stopped = True
        if self._feed is not None:
            self._feed.close()
            self._feed = None
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # run-sim stops the firmware, then itself
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def firmware_pids(unique_id: str = FIRMWARE_UNIQUE_ID) -> list[int]:
    """Processes running the simulated firmware of this chip id (Linux /proc; run-sim puts
    VB_SIM_UNIQUE_ID in its firmware's environment): what a clean stop must leave none of."""
    marker = f"VB_SIM_UNIQUE_ID={unique_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def enroll_firmware(data_dir: Path, firmware: FirmwareProcess, patient: str) -> list[str]:
    """The technician's enrollment, as on a real gateway: `vitalbridge device enroll` over
    the device's serial link without a terminal stops at the code (exit 3); the second run
    confirms with the code the DEVICE printed, so a mismatch fails here; it exits 0 when
    the firmware's unsealed certificate-installed hint arrives. -> notes (none today)."""
    command = [sys.executable, "-m", "edge_agent.cli", "device", "enroll", "--data-dir",
               str(data_dir), "--port", str(firmware.link), "--id", firmware.device_id,
               "--patient", patient, "--actor", TECHNICIAN, "--json"]

    def run(extra: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command + extra, cwd=REPO, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=ENROLL_TIMEOUT_S)

    first = run(["--timeout", "20"])
    if first.returncode != 3:
        raise RigError(f"device enroll (code step) exited {first.returncode}: "
                       f"{(first.stderr or first.stdout).strip()[-300:]}")
    device_code = firmware.wait_code(10)
    second = run(["--confirm", device_code, "--timeout", "3"])
    if second.returncode == 0:
        return []
    output = second.stderr + second.stdout
    raise RigError(f"device enroll --confirm exited {second.returncode}: "
                   f"{output.strip()[-300:]}")


def register_standard_device(data_dir: Path, device_id: str, address: str,
                             patient: str) -> None:
    """The technician records a standard BLE device at its address and binds it to the
    patient: `vitalbridge device register` as a separate run, as on a real gateway. The
    agent must start after this (it maps configured links to registered ids at start)."""
    model, serial = BLE_LABELS[device_id]
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "device", "register", device_id,
         "--data-dir", str(data_dir), "--transport", "ble", "--address", address,
         "--model", model, "--serial", serial, "--patient", patient, "--actor", TECHNICIAN,
         "--json"],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=ENROLL_TIMEOUT_S)
    if done.returncode != 0:
        raise RigError(f"device register {device_id} exited {done.returncode}: "
                       f"{(done.stderr or done.stdout).strip()[-300:]}")


# ---------------------------------------------------------------- the serial cuff


class CuffLoop(threading.Thread):
    """The cuff's firmware loop: handshake, then `measure()` requests become sealed batches;
    it reads device-acks and re-sends what none covered (its outbox)."""

    def __init__(self, device: FirmwareStandIn) -> None:
        super().__init__(daemon=True, name="cuff")
        self.device = device
        self.requests: deque[list[tuple[str, float]]] = deque()
        self.stop_sending = threading.Event()
        self.finished = threading.Event()
        self.connected = threading.Event()
        self.error: BaseException | None = None

    def measure(self, values: dict[str, float]) -> None:
        self.requests.append([(name, values[name]) for name in CUFF_QUANTITIES])

    @property
    def generated(self) -> int:
        return self.device.next_seq

    def run(self) -> None:
        try:
            self.device.handshake(timeout=15)
            self.connected.set()
            while not self.stop_sending.is_set():
                while self.requests:
                    self.device.send(self.requests.popleft())
                    self.device.send_checkpoint()  # a cuff reading is a spot value
                self.device.poll(0.05)
                self.device.resend_unacked(older_than_s=2.0)
            deadline = time.monotonic() + 15
            while self.device.unacked() and time.monotonic() < deadline:
                self.device.poll(0.05)
                self.device.resend_unacked(older_than_s=1.0)
        except BaseException as exc:  # noqa: BLE001 - reported by the rig
            self.error = exc
        finally:
            self.finished.set()


# ---------------------------------------------------------------- the rig


@dataclass
class BleDevice:
    device_id: str
    peripheral: Any  # simulator.ble_devices.StandardHealthDevice
    measurements: int = 0  # measurements a connected gateway received (link-level)
    missed: int = 0  # taken while no gateway was subscribed (a standard device keeps none)

    @property
    def generated(self) -> int:
        return self.measurements * len(BLE_QUANTITIES[self.device_id])


@dataclass
class RigOptions:
    workdir: Path
    seed: int = 1
    scenario: str = SCENARIO
    skip_s: float = 0.0  # scenario seconds skipped at the start (compresses the story)


@dataclass
class HomeRig:
    """See the module docstring. Attributes are set while the rig is entered."""

    options: RigOptions
    home: Home | None = None
    broker: Broker | None = None
    centre: Centre | None = None
    firmware: FirmwareProcess | None = None
    cuff: CuffLoop | None = None
    ble: dict[str, BleDevice] = field(default_factory=dict)
    service: Any = None  # edge_agent.service.AgentService
    patient: Patient | None = None
    started_at: float = 0.0  # monotonic: rig time 0
    bindings: dict[str, str | None] = field(default_factory=dict)  # device -> patient
    notes: list[str] = field(default_factory=list)
    _stack: contextlib.AsyncExitStack | None = None
    _ptys: list[PtySerialDevice] = field(default_factory=list)

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> HomeRig:
        self._stack = contextlib.AsyncExitStack()
        try:
            await self._start(self._stack)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._stack is not None
        # Shield the clean-up from a second cancellation (Ctrl-C pressed twice).
        await asyncio.shield(self._stack.aclose())

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        from edge_agent.ble.virtual_radio import VirtualRadio

        opts = self.options
        work = opts.workdir
        self.patient = Patient(opts.scenario, opts.seed, opts.skip_s)
        self.home = await in_thread(
            provision_home, work / "gateway", GATEWAY_ID, [(CUFF_ID, PATIENT)])
        self.broker = Broker(work / "broker")
        stack.callback(self.broker.stop)
        await in_thread(self.broker.start)
        write_gateway_state(self.home, self.broker.port)
        centre = Centre(CentreConfig(
            port=self.broker.port, database=work / "centre.sqlite3",
            anchor=TrustAnchor(org_ca_public=self.home.org_public), client_id="centre-demo",
            gap_deadline_s=30.0, tick_s=0.2, synchronous="NORMAL"))
        stack.callback(centre.stop)
        self.centre = await in_thread(centre.start)

        self.firmware = FirmwareProcess(work / "firmware", opts.seed)
        stack.callback(self.firmware.stop)
        await in_thread(self.firmware.start)
        self.notes += await in_thread(enroll_firmware, self.home.data_dir, self.firmware,
                                      PATIENT)

        cuff_pty = PtySerialDevice(work / "tty-cuff")
        cuff_pty.plug()
        self._ptys.append(cuff_pty)
        stack.callback(cuff_pty.close)

        radio = await stack.enter_async_context(VirtualRadio())
        central = await radio.add_central()
        await self._attach_ble(radio)
        for device_id, dev in self.ble.items():
            await in_thread(register_standard_device, self.home.data_dir, device_id,
                            dev.peripheral.address, PATIENT)

        self.service = await self._start_agent(stack, central, cuff_pty)
        self.cuff = CuffLoop(FirmwareStandIn(self.home.devices[CUFF_ID],
                                             self.home.gateway_x25519_public, cuff_pty))
        self.cuff.start()
        stack.callback(self._stop_cuff)
        await self._wait_ready()
        # Whose readings each device carries, as the running agent resolves it.
        now = int(time.time())
        self.bindings = {device: self.service.directory.patient_at(device, now)
                         for device in (self.firmware.device_id, CUFF_ID, *self.ble)}
        self.started_at = time.monotonic()

    async def _attach_ble(self, radio: Any) -> None:
        from simulator.ble_devices import PulseOximeter, Thermometer

        for device_id, peripheral in (
                (BLE_OXIMETER_ID, PulseOximeter(BLE_LABELS[BLE_OXIMETER_ID][0])),
                (BLE_THERMOMETER_ID, Thermometer(BLE_LABELS[BLE_THERMOMETER_ID][0]))):
            await peripheral.attach(radio)
            self.ble[device_id] = BleDevice(device_id, peripheral)

    async def _start_agent(self, stack: contextlib.AsyncExitStack, central: Any,
                           cuff_pty: PtySerialDevice) -> Any:
        from edge_agent.ble_ingest import ConnectionOptions, ReconnectPolicy
        from edge_agent.config import parse_config
        from edge_agent.serial_ingest import PortState
        from edge_agent.service import AgentService, BleBackends

        assert self.home is not None and self.broker is not None and self.firmware is not None
        doc = {
            "gateway": {"id": GATEWAY_ID, "data_dir": str(self.home.data_dir)},
            "broker": {"host": "127.0.0.1", "port": self.broker.port, "keepalive_s": 5},
            "uplink": {"receipt_timeout_s": 5.0, "sweep_interval_s": 0.5,
                       "stop_timeout_s": 3.0},
            "serial": [
                {"name": "port-firmware", "device": self.firmware.device_id,
                 "driver": "vitalbridge", "path": str(self.firmware.link)},
                {"name": "port-cuff", "device": CUFF_ID, "driver": "vitalbridge",
                 "path": str(cuff_pty.path)}],
            "ble": {"devices": [
                {"name": name, "device": device_id, "address": dev.peripheral.address}
                for name, (device_id, dev) in zip(("ble-oximeter", "ble-thermometer"),
                                                  self.ble.items(), strict=True)]},
            "eventlog": {"checkpoint_interval_s": 5.0},
        }
        config = parse_config(doc, self.options.workdir / "gateway.toml")
        options = ConnectionOptions(
            client_backend=central.client_backend, connect_timeout_s=10.0, setup_timeout_s=5.0,
            reconnect=ReconnectPolicy(initial_s=0.2, maximum_s=2.0, stable_after_s=5.0))
        service = AgentService(config, ble=BleBackends(central.scanner_backend,
                                                       central.client_backend, options))
        stack.push_async_callback(service.stop, "demo over")
        await service.start()
        async with asyncio.timeout(10):
            for port in config.serial:
                await service.serial.wait_for_state(port.port.name, PortState.OPEN)
        return service

    async def _wait_ready(self, timeout: float = 30.0) -> None:
        """Every device connected: BLE subscribed, the cuff's and firmware's sessions up."""
        from edge_agent.ble_ingest import ConnectionState

        assert self.cuff is not None
        async with asyncio.timeout(timeout):
            for name in ("ble-oximeter", "ble-thermometer"):
                await self.service.ble.wait_for_state(name, ConnectionState.CONNECTED)
            for dev in self.ble.values():
                await dev.peripheral.wait_subscribed(dev.peripheral.measurement, timeout)
            await asyncio.to_thread(self.cuff.connected.wait, timeout)
            while not self.firmware_session_open():
                if self.cuff.error is not None:
                    raise RigError(f"cuff: {self.cuff.error}")
                if self.firmware is not None and not self.firmware.alive():
                    raise RigError("the firmware process ended: "
                                   + " | ".join(list(self.firmware.lines)[-5:]))
                await asyncio.sleep(0.2)

    def firmware_session_open(self) -> bool:
        """The firmware's first readings reached the centre (session, verify, deliver)."""
        assert self.centre is not None
        return FIRMWARE_ID in self.centre.store.verdict_counts()

    def _stop_cuff(self) -> None:
        if self.cuff is not None:
            self.cuff.stop_sending.set()
            self.cuff.finished.wait(20)

    # -- driving -----------------------------------------------------------------------------

    def now(self) -> float:
        """Rig time: seconds since every device was connected."""
        return time.monotonic() - self.started_at

    async def play(self, duration: float, on_second: Callable[[float], None] | None = None,
                   cuff_every_s: float = 15.0, thermometer_every_s: float = 5.0) -> None:
        """Drive every device from the patient for `duration` seconds of rig time."""
        assert self.patient is not None and self.firmware is not None and self.cuff is not None
        oximeter, thermometer = self.ble[BLE_OXIMETER_ID], self.ble[BLE_THERMOMETER_ID]
        tick = 0
        next_cuff = 2.0
        while (t := self.now()) < duration:
            self.firmware.feed(self.patient.firmware_line(t))
            await self._measure(oximeter, self.patient.oximeter(t))
            if tick % max(1, round(thermometer_every_s)) == 0:
                await self._measure(thermometer, self.patient.thermometer(t))
            if t >= next_cuff:
                self.cuff.measure(self.patient.cuff(t))
                next_cuff += cuff_every_s
            if on_second is not None:
                on_second(t)
            self.check_alive()
            tick += 1
            await asyncio.sleep(max(0.0, tick - self.now()))

    async def _measure(self, device: BleDevice, values: dict[str, Any]) -> None:
        if await device.peripheral.measure(**values):
            device.measurements += 1
        else:
            device.missed += 1

    def check_alive(self) -> None:
        if self.firmware is not None and not self.firmware.alive():
            raise RigError("the firmware process ended: "
                           + " | ".join(list(self.firmware.lines)[-5:]))
        if self.cuff is not None and self.cuff.error is not None:
            raise RigError(f"cuff: {self.cuff.error}")

    def finish_sending(self) -> None:
        """The cuff stops measuring (it still drains its outbox)."""
        if self.cuff is not None:
            self.cuff.stop_sending.set()
