"""Simulated HAL for the MicroPython unix port: CI and `vitalbridge firmware run-sim`.

The same firmware modules run against it unchanged. What it simulates:

* I2C bus 0 with register-level device models (firmware/hal/sim_devices.py): a MAX30102
  at 0x57 and a MAX30205 at 0x48; UART 1 with the Sunrom 1437 blood-pressure module.
  Absent devices NACK like real ones (OSError ENODEV).
* Physiological signals (self.physiology) the models render into register values. Tests
  set them with `hal.physiology.set(hr=..., spo2=...)`; the simulator streams them as
  JSON lines (the signal feed, below).
* A clock (SimClock): virtual by default -- time moves only when a test calls
  `hal.clock.advance(seconds)`, when firmware blocks in sleep_ms(), or, with
  auto_advance, when every task waiting in asleep_ms() has had two turns since the last
  move (then it jumps to the earliest deadline, so an hour of firmware time runs in a
  moment); or realtime.
  ticks_ms() wraps at 2**30 like the ESP32's, and can start near the wrap.
* A flash directory (a host directory), LEDs and a buzzer that record what they did, a
  battery voltage, a watchdog, reset causes, and a deterministic RNG when seeded.
* Fault injection: hal.inject_fault("max30102", "absent" | "nack" | "timeout" | "stuck"),
  ("max30205", ... | "garbage"), ("bp", "absent" | "garbage"); None clears.
  A watchdog that starves, and hal.reset(), raise SimulatedReset (a BaseException, so
  `except Exception` in the firmware cannot swallow it: like the chip, the program stops).

Signal feed line protocol (one JSON object per line, UTF-8, at most 512 bytes):

    {"t": 12.5, "hr": 72, "spo2": 97, "temp": 36.8, "finger": true, "motion": 0.0}
    {"bp": {"sys": 128, "dia": 84, "pulse": 71}}      the cuff finishes a measurement
    {"fault": {"max30102": "stuck"}}                  inject (null clears)

Keys: hr, spo2, temp, finger, motion, noise, pi, resp, battery_mv, sys, dia, bp_pulse
(ranges in sim_devices.Physiology), bp (true or an object), fault, t (informational).
Unknown keys are ignored; bad lines and out-of-range values are counted in
feed.errors and skipped -- a simulator bug never crashes the firmware. The source is a
path (regular file appended to, or a FIFO) or "fd:N" (an inherited pipe), read without
blocking.

Environment (SimHal.from_environment): VB_SIM_SIGNALS (feed source), VB_SIM_FLASH
(flash directory), VB_SIM_SERIAL (host serial link, e.g. a PTY the simulator opened in
raw mode; becomes uart(0)), VB_SIM_CLOCK ("realtime", default, or "virtual"),
VB_SIM_RESET_CAUSE, VB_SIM_UNIQUE_ID (hex), VB_SIM_SEED (integer: deterministic RNG and
noise), VB_SIM_EPOCH (initial Unix time), VB_SIM_BLE (the radio's bridge peer,
tcp:HOST:PORT or unix:PATH, see sim_ble.py; unset: ble() is None, no radio).
"""

import asyncio
import binascii
import errno
import json
import os
import select
import time

from firmware.hal.base import RESET_CAUSES, Hal
from firmware.hal.sim_devices import (
    FAULTS,
    BpModuleModel,
    Max30102Model,
    Max30205Model,
    Physiology,
    Rng,
    SimUart,
)

TICKS_PERIOD = 1 << 30
DEFAULT_EPOCH = 1767225600  # 2026-01-01T00:00:00Z
LED_NAMES = ("red", "orange", "yellow", "blue", "status")
_HISTORY = 32


class SimulatedReset(BaseException):
    """The simulated chip restarted; `cause` is what reset_cause() reports next boot."""

    def __init__(self, cause):
        super().__init__(cause)
        self.cause = cause


def ticks_diff(new, old):
    delta = (new - old) & (TICKS_PERIOD - 1)
    return delta - TICKS_PERIOD if delta >= TICKS_PERIOD // 2 else delta


def ticks_add(ticks, delta):
    return (ticks + delta) & (TICKS_PERIOD - 1)


class SimClock:
    """Monotonic milliseconds plus a settable wall clock. See the module docstring."""

    def __init__(self, epoch=DEFAULT_EPOCH, realtime=False, auto_advance=True, ticks_start=0):
        self.realtime = realtime
        self.auto_advance = auto_advance
        self.ticks_start = ticks_start
        self._advanced = 0
        self._host_start = time.ticks_ms()
        self._epoch_ms = epoch * 1000
        self._waiters = []  # [deadline_ms, turns taken since the last advance]

    def monotonic_ms(self):
        if self.realtime:
            return time.ticks_diff(time.ticks_ms(), self._host_start) + self._advanced
        return self._advanced

    def advance(self, seconds):
        self.advance_ms(int(seconds * 1000))

    def advance_ms(self, ms):
        if ms < 0:
            raise ValueError("time only moves forward")
        self._advanced += ms
        for waiter in self._waiters:
            waiter[1] = 0

    def ticks_ms(self):
        return (self.ticks_start + self.monotonic_ms()) & (TICKS_PERIOD - 1)

    def time(self):
        return (self._epoch_ms + self.monotonic_ms()) // 1000

    def set_time(self, epoch_s):
        self._epoch_ms = int(epoch_s) * 1000 - self.monotonic_ms()

    async def sleep_ms(self, ms):
        if self.realtime:
            await asyncio.sleep_ms(ms if ms > 0 else 0)
            return
        waiter = [self.monotonic_ms() + (ms if ms > 0 else 0), 0]
        self._waiters.append(waiter)
        try:
            await asyncio.sleep_ms(0)
            while self._advanced < waiter[0]:
                waiter[1] += 1
                if self.auto_advance and self._may_advance(waiter):
                    self.advance_ms(waiter[0] - self._advanced)
                    break
                await asyncio.sleep_ms(0)
        finally:
            # By identity: list.remove() compares by value and could take another task's
            # equal-looking entry.
            for i in range(len(self._waiters)):
                if self._waiters[i] is waiter:
                    del self._waiters[i]
                    break

    def _may_advance(self, waiter):
        # Jump only to the earliest deadline, so no task sleeps past its own, and only
        # when every waiting task has had two turns since the last move: a task that
        # became runnable meanwhile (woken by an event, a finished task) has then had
        # its turn too, so it sees the time at which it was woken.
        for other in self._waiters:
            if other[1] < 2 or other[0] < waiter[0]:
                return False
        return True


class SimI2C:
    """Virtual I2C bus: device models attach by address."""

    def __init__(self, hal):
        self.hal = hal
        self.devices = {}

    def attach(self, device):
        self.devices[device.address] = device
        return device

    def detach(self, address):
        self.devices.pop(address, None)

    def _device(self, address):
        self.hal.pump_signals()
        device = self.devices.get(address)
        if device is None:
            raise OSError(errno.ENODEV)
        return device

    def scan(self):
        self.hal.pump_signals()
        return sorted(a for a in self.devices if self.devices[a].acknowledges())

    def readfrom_mem(self, address, register, count, addrsize=8):
        return self._device(address).read(register, count)

    def readfrom_mem_into(self, address, register, buf, addrsize=8):
        data = self._device(address).read(register, len(buf))
        buf[:] = data

    def writeto_mem(self, address, register, buf, addrsize=8):
        self._device(address).write(register, bytes(buf))


class _Pollable:
    """A file, FIFO or inherited fd read without blocking."""

    def __init__(self, source, writable=False):
        if source.startswith("fd:"):
            self.stream = open(int(source[3:]), "r+b" if writable else "rb")
            self.regular = False
        else:
            mode = os.stat(source)[0] & 0o170000
            self.regular = mode == 0o100000
            # A FIFO opened read-write does not wait for a writer (Linux semantics).
            self.stream = open(source, "rb" if self.regular and not writable else "r+b")
        self.poller = select.poll()
        self.poller.register(self.stream, select.POLLIN)
        self.closed = False

    def readable(self):
        if self.closed:
            return False
        for _, event in self.poller.poll(0):
            if event & (select.POLLHUP | select.POLLERR) and not event & select.POLLIN:
                self.closed = True
                return False
            return bool(event & select.POLLIN)
        return False

    def read(self, limit):
        if self.regular:
            return self.stream.read(limit) or b""
        out = bytearray()
        while len(out) < limit and self.readable():
            byte = self.stream.read(1)  # read(n) on a pipe would wait for all n bytes
            if not byte:
                self.closed = True
                break
            out.extend(byte)
        return bytes(out)


class SignalFeed:
    """Applies JSON signal lines from a source to a Physiology (see module docstring)."""

    MAX_LINE = 512

    def __init__(self, source, physiology, on_event=None):
        self.source = _Pollable(source)
        self.physiology = physiology
        self.on_event = on_event
        self.buffer = b""
        self.lines = 0
        self.errors = 0

    def pump(self, limit=4096):
        data = self.source.read(limit)
        if not data:
            return
        data = self.buffer + data
        while True:
            end = data.find(b"\n")
            if end < 0:
                break
            line = data[:end]
            data = data[end + 1:]
            if len(line) > self.MAX_LINE:
                self.errors += 1
            elif line.strip():
                self.apply_line(line)
        if len(data) > self.MAX_LINE:
            self.errors += 1
            data = b""
        self.buffer = data

    def apply_line(self, line):
        self.lines += 1
        try:
            message = json.loads(line)
        except ValueError:
            self.errors += 1
            return
        if not isinstance(message, dict):
            self.errors += 1
            return
        for key in message:
            value = message[key]
            try:
                if key in ("bp", "fault"):
                    if self.on_event is not None:
                        self.on_event(key, value)
                elif key == "finger" or key in Physiology.RANGES:
                    self.physiology.set(**{key: value})
            except (ValueError, TypeError, KeyError):
                self.errors += 1


class FileUart:
    """A UART on a host path (PTY, FIFO): the firmware's serial link in simulation."""

    def __init__(self, path):
        self.port = _Pollable(path, writable=True)

    def any(self):
        return 1 if self.port.readable() else 0

    def read(self, count=-1):
        data = self.port.read(count if count and count > 0 else 4096)
        return data or None

    def write(self, data):
        # MicroPython's FileIO is unbuffered; flush() would fsync, which a PTY refuses.
        return self.port.stream.write(data)


class SimLed:
    def __init__(self, clock, name):
        self.clock = clock
        self.name = name
        self.lit = False
        self.history = []  # (ticks_ms, lit), the last 32 changes

    def value(self, v=None):
        if v is None:
            return self.lit
        lit = bool(v)
        if lit != self.lit:
            self.lit = lit
            self.history.append((self.clock.ticks_ms(), lit))
            if len(self.history) > _HISTORY:
                self.history.pop(0)
        return None

    def on(self):
        self.value(True)

    def off(self):
        self.value(False)


class SimBuzzer:
    def __init__(self, clock):
        self.clock = clock
        self.history = []  # (monotonic start ms, freq_hz, ms), the last 32 tones
        self._until = None  # monotonic ms when the current tone ends; 0 = until off()
        self.frequency = 0

    def tone(self, freq_hz, ms=0):
        if freq_hz <= 0 or ms < 0:
            raise ValueError("tone needs freq_hz > 0 and ms >= 0")
        start = self.clock.monotonic_ms()
        self.frequency = freq_hz
        self._until = start + ms if ms else 0
        self.history.append((start, freq_hz, ms))
        if len(self.history) > _HISTORY:
            self.history.pop(0)

    def off(self):
        self._until = None
        self.frequency = 0

    def playing(self):
        if self._until is None:
            return False
        return self._until == 0 or self.clock.monotonic_ms() < self._until


class SimWatchdog:
    def __init__(self, clock, timeout_ms):
        self.clock = clock
        self.timeout_ms = timeout_ms
        self.fed_at = clock.monotonic_ms()

    def feed(self):
        self.fed_at = self.clock.monotonic_ms()

    def expired(self):
        return self.clock.monotonic_ms() - self.fed_at > self.timeout_ms


class SimHal(Hal):
    """The simulated board. Devices are in self.devices by name; see the module docstring."""

    name = "sim"

    def __init__(self, flash_dir="/tmp/vitalbridge-sim/flash", clock=None, signals=None,
                 serial=None, reset_cause="power-on", unique_id=b"\x02\x56\x42\x00\x00\x01",
                 seed=None, devices=("max30102", "max30205", "bp"), ble=None):
        if reset_cause not in RESET_CAUSES:
            raise ValueError("unknown reset cause %r" % (reset_cause,))
        self.clock = clock if clock is not None else SimClock()
        self.physiology = Physiology()
        self.flash_dir = flash_dir
        _makedirs(flash_dir)
        self._reset_cause = reset_cause
        self._unique_id = bytes(unique_id)
        self._rng = Rng(seed) if seed is not None else None
        noise_seed = seed if seed is not None else 1
        self.bus = SimI2C(self)
        self.uarts = {}
        self.devices = {}
        if "max30102" in devices:
            self.devices["max30102"] = self.bus.attach(
                Max30102Model(self.clock, self.physiology, seed=noise_seed))
        if "max30205" in devices:
            self.devices["max30205"] = self.bus.attach(
                Max30205Model(self.clock, self.physiology, seed=noise_seed + 1))
        if "bp" in devices:
            self.uarts[1] = SimUart()
            self.devices["bp"] = BpModuleModel(self.uarts[1], self.physiology, seed=noise_seed + 2)
        if serial:
            self.uarts[0] = FileUart(serial)
        self.leds = {}
        self._buzzer = None
        self._watchdog = None
        self.feed = SignalFeed(signals, self.physiology, self._feed_event) if signals else None
        if ble is not None and not (ble.startswith("tcp:") or ble.startswith("unix:")):
            raise ValueError("ble must be tcp:HOST:PORT or unix:PATH, not %r" % (ble,))
        self._ble_address = ble  # None: no radio
        self._ble = None

    @classmethod
    def from_environment(cls):
        env = os.getenv
        seed = env("VB_SIM_SEED")
        realtime = (env("VB_SIM_CLOCK") or "realtime") == "realtime"
        epoch = env("VB_SIM_EPOCH")
        epoch = int(epoch) if epoch else (int(time.time()) if realtime else DEFAULT_EPOCH)
        unique_id = env("VB_SIM_UNIQUE_ID")
        return cls(
            flash_dir=env("VB_SIM_FLASH") or "/tmp/vitalbridge-sim/flash",
            clock=SimClock(epoch=epoch, realtime=realtime),
            signals=env("VB_SIM_SIGNALS"),
            serial=env("VB_SIM_SERIAL"),
            reset_cause=env("VB_SIM_RESET_CAUSE") or "power-on",
            unique_id=binascii.unhexlify(unique_id) if unique_id else b"\x02\x56\x42\x00\x00\x01",
            seed=int(seed) if seed else None,
            ble=env("VB_SIM_BLE") or None,
        )

    # --- simulation controls -----------------------------------------------------------
    def pump_signals(self):
        if self.feed is not None:
            self.feed.pump()

    def _feed_event(self, kind, value):
        if kind == "bp":
            bp = self.devices.get("bp")
            if bp is not None:
                if value is True:
                    bp.measure()
                elif isinstance(value, dict):
                    bp.measure(value.get("sys"), value.get("dia"), value.get("pulse"))
                else:
                    raise ValueError("bp must be true or an object")
        elif kind == "fault":
            if not isinstance(value, dict):
                raise ValueError("fault must be an object")
            for name in value:
                self.inject_fault(name, value[name])

    def inject_fault(self, device, kind):
        if device not in self.devices:
            raise KeyError(device)
        if kind is not None and kind not in FAULTS:
            raise ValueError("unknown fault %r" % (kind,))
        self.devices[device].fault = kind

    def check_watchdog(self):
        if self._watchdog is not None and self._watchdog.expired():
            self._watchdog = None
            raise SimulatedReset("watchdog")

    # --- Hal interface -------------------------------------------------------------
    def time(self):
        return self.clock.time()

    def set_time(self, epoch_s):
        self.clock.set_time(epoch_s)

    def ticks_ms(self):
        return self.clock.ticks_ms()

    def ticks_diff(self, new, old):
        return ticks_diff(new, old)

    def ticks_add(self, ticks, delta_ms):
        return ticks_add(ticks, delta_ms)

    def sleep_ms(self, ms):
        if self.clock.realtime:
            time.sleep_ms(ms)
        elif ms > 0:
            self.clock.advance_ms(ms)
        self.check_watchdog()

    async def asleep_ms(self, ms):
        await self.clock.sleep_ms(ms)
        self.check_watchdog()

    def random_bytes(self, n):
        if self._rng is None:
            return os.urandom(n)
        return bytes(self._rng.next32() & 0xFF for _ in range(n))

    def unique_id(self):
        return self._unique_id

    def i2c(self, bus=0):
        if bus != 0:
            raise ValueError("the simulated board has I2C bus 0 only")
        return self.bus

    def uart(self, port=1, baudrate=9600):
        if port not in self.uarts:
            self.uarts[port] = SimUart()  # nothing attached: reads stay empty
        uart = self.uarts[port]
        uart.baudrate = baudrate
        return uart

    def led(self, name):
        if name not in LED_NAMES:
            raise ValueError("unknown LED %r" % (name,))
        if name not in self.leds:
            self.leds[name] = SimLed(self.clock, name)
        return self.leds[name]

    def buzzer(self):
        if self._buzzer is None:
            self._buzzer = SimBuzzer(self.clock)
        return self._buzzer

    def battery_mv(self):
        self.pump_signals()
        return int(self.physiology.battery_mv)

    def ble(self):
        """A SimBle bridged to VB_SIM_BLE's peer (one per board, like bluetooth.BLE()),
        or None when no address was configured: the board has no radio."""
        if self._ble is None and self._ble_address:
            from firmware.hal.sim_ble import SimBle  # socket code only when a radio is asked for

            self._ble = SimBle(self._ble_address)
        return self._ble

    def ble_uuid(self, value):
        from firmware.hal.sim_ble import UUID

        return UUID(value)

    def wlan(self):
        return None

    def watchdog(self, timeout_ms):
        if self._watchdog is None:
            self._watchdog = SimWatchdog(self.clock, timeout_ms)
        else:
            self._watchdog.timeout_ms = timeout_ms
        return self._watchdog

    def reset_cause(self):
        return self._reset_cause

    def reset(self):
        raise SimulatedReset("software")


def _makedirs(path):
    built = ""
    for part in path.split("/"):
        if not part:
            built = built or "/"
            continue
        built = built + part if built.endswith("/") else built + "/" + part
        try:
            os.mkdir(built)
        except OSError as exc:
            if exc.args[0] != errno.EEXIST:
                raise
