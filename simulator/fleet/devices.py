"""One simulated sealing device of a fleet: a FirmwareStandIn on a PTY, on its own thread.

The device measures an oximeter pair (spo2, pr) every 1/rate seconds and seals it at once
(under its last session while the link is down, as the firmware does, docs/firmware-app.md
decision 1); its outbox is re-sent until a device-ack covers it. Its own record of what it
sealed (`truth`: seq -> what and when) is the fleet's oracle for "generated".

Faults are requested from other threads (`request(...)`) and carried out on the device's
own thread, so only that thread ever touches the PTY: unplug/replug, garbage on the line,
a reboot (new handshake, outbox replayed oldest first), a clock jump.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from simulator.agent_home import DeviceKeys, FirmwareStandIn
from simulator.serial_devices import PtySerialDevice

CHECKPOINT_EVERY = 10  # batches between two signed checkpoints
RESEND_AFTER_S = 1.0  # an unacknowledged batch is sent again after this long
REBOOT_S = 1.0  # a rebooting device measures nothing for this long
HELLO_RETRY_S = 0.5  # a device without a session says hello again after this long

# value source: run second -> (spo2, pr)
Vitals = Callable[[int], tuple[float, float]]


@dataclass(frozen=True)
class Sealed:
    """One reading as the device sealed it."""

    quantity: str
    value: float
    reading_time: int  # the time the device put in the record (its own, maybe skewed, clock)
    sealed_at: float  # true wall-clock time of sealing


def stable_vitals(seed: int) -> Vitals:
    """A resting patient: SpO2 96-98 %, pulse 66-78/min (no NEWS2 band reached)."""
    def vitals(second: int) -> tuple[float, float]:
        rng = random.Random(seed * 1_000_003 + second)
        return float(rng.randint(96, 98)), float(rng.randint(66, 78))
    return vitals


class FleetDevice(threading.Thread):
    """See the module docstring. `run_start` is the fleet's wall-clock start (time.time)."""

    def __init__(self, keys: DeviceKeys, gateway_x25519_public: bytes, pty: PtySerialDevice,
                 vitals: Vitals, run_start: float, rate_hz: float, seed: int) -> None:
        super().__init__(daemon=True, name=f"fleet-{keys.device_id}")
        self.device_id = keys.device_id
        self.pty = pty
        self.stand_in = FirmwareStandIn(keys, gateway_x25519_public, pty)
        self.vitals = vitals
        self.run_start = run_start
        self.interval = 1.0 / rate_hz
        self.rng = random.Random(seed)
        self.truth: dict[int, Sealed] = {}
        self.clock_offset = 0.0
        self.handshakes = 0
        self.garbage_bytes = 0
        self.measuring = threading.Event()
        self.measuring.set()
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self._requests: queue.Queue[tuple[str, float]] = queue.Queue()
        self._replug_at: float | None = None
        self._lock = threading.Lock()

    # -- requests from the fleet (any thread) -----------------------------------------------

    def request(self, action: str, value: float = 0.0) -> None:
        """"unplug" (for value s), "garbage", "reboot", "skew" (jump by value s; 0 = back)."""
        if action not in ("unplug", "garbage", "reboot", "skew"):
            raise ValueError(f"unknown device action {action!r}")
        self._requests.put((action, value))

    def stop_measuring(self) -> None:
        self.measuring.clear()

    def generated(self) -> int:
        with self._lock:
            return len(self.truth)

    def unacked(self) -> int:
        return self.stand_in.unacked()

    def snapshot(self) -> dict[int, Sealed]:
        with self._lock:
            return dict(self.truth)

    # -- the device's own thread -------------------------------------------------------------

    def run(self) -> None:
        try:
            self._handshake()
            next_tick = time.monotonic()
            sent = 0
            while not self.stopped.is_set():
                self._serve_requests()
                if self.measuring.is_set() and time.monotonic() >= next_tick:
                    next_tick += self.interval
                    self._measure()
                    sent += 1
                    if sent % CHECKPOINT_EVERY == 0:
                        self.stand_in.send_checkpoint()
                self.stand_in.poll(0.02)
                self.stand_in.resend_unacked(older_than_s=RESEND_AFTER_S)
        except BaseException as exc:  # reported by the fleet run
            self.error = exc

    def _handshake(self) -> None:
        """hello every HELLO_RETRY_S until accepted. Requests are served between two hellos
        (a replug falls due, an unplug or garbage arrives): a device that reboots while
        unplugged must see its line come back, or it would say hello into the void forever."""
        while not self.stopped.is_set():
            try:
                self.stand_in.handshake(timeout=HELLO_RETRY_S, retry_s=HELLO_RETRY_S)
                self.handshakes += 1
                return
            except TimeoutError:
                # The agent is down or restarting, or the line is unplugged: keep trying.
                self._serve_requests(handshaking=True)

    def _measure(self) -> None:
        now = time.time()
        second = int(now - self.run_start)
        spo2, pr = self.vitals(second)
        reading_time = int(now + self.clock_offset)
        # Sealed and kept in the outbox whether or not the line is up (a failed write is
        # re-sent from the outbox like an unacknowledged one).
        first = self.stand_in.send([("spo2", spo2), ("pr", pr)], at=reading_time)
        with self._lock:
            self.truth[first] = Sealed("spo2", spo2, reading_time, now)
            self.truth[first + 1] = Sealed("pr", pr, reading_time, now)

    def _serve_requests(self, handshaking: bool = False) -> None:
        """Carry out what the fleet asked. `handshaking`: called from inside the handshake
        loop, where a reboot only power-cycles (the loop already shakes hands afresh)."""
        if self._replug_at is not None and time.monotonic() >= self._replug_at:
            self._replug_at = None
            self.pty.plug()
        while True:
            try:
                action, value = self._requests.get_nowait()
            except queue.Empty:
                return
            if action == "unplug" and self.pty.plugged:
                self.pty.unplug()
                self._replug_at = time.monotonic() + value
            elif action == "garbage" and self.pty.plugged:
                noise = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(16, 200)))
                self.pty.write(noise)
                self.garbage_bytes += len(noise)
            elif action == "reboot" and handshaking:
                self._power_cycle()
            elif action == "reboot":
                self._reboot()
            elif action == "skew":
                self.clock_offset = value

    def _power_cycle(self) -> None:
        """RAM state gone; nothing measured or sent for REBOOT_S."""
        self.stand_in.session = None
        self.stand_in.chain = None
        time.sleep(REBOOT_S)

    def _reboot(self) -> None:
        """Power cycle: RAM state gone (session, partial frames), flash kept (keys, seq,
        outbox). After the new handshake the whole outbox is replayed oldest first."""
        stand_in = self.stand_in
        self._power_cycle()
        self._handshake()
        with stand_in.lock:
            stand_in.sent_at.clear()
        stand_in.resend_unacked(older_than_s=0.0, limit=1_000_000)
