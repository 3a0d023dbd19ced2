"""Devices under test: one interface, two kinds of board (docs/hil.md).

    dut.console        expect(pattern, timeout) / expect_exact / write(line) (console.py)
    dut.link           the serial frame link, gateway end (link.py)
    dut.power_cycle()  cut the power and start again (reset cause "power-on")
    dut.hang(s)        freeze the CPU for s seconds (the watchdog must reset it)
    dut.set_signals()  what the sensors measure (simulated board only)
    dut.expect_alarm_signal(grade)   the LED/buzzer shows an alarm grade
    dut.supports(name) whether hang/signals/power_cycle can be done on this board

SimDut runs the firmware on the MicroPython unix port exactly as `vitalbridge firmware
run-sim` does (same environment, same serial bridge, restart on a simulated reset) through
hil_tests/sim_entry.py, which adds the LED/buzzer probe. SerialBoardDut drives a real
board on its USB serial port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import serial

from edge_agent.commands import firmware as fw_command
from hil_tests.console import Console
from hil_tests.link import BAUDRATE, ConsoleSplitter, FrameLink

REPO = Path(__file__).resolve().parents[1]
SIM_ENTRY = "import hil_tests.sim_entry as entry; entry.run()"
UNIQUE_ID = "025642000001"
TONES = {"red": 880, "orange": 660, "yellow": 440}  # firmware/feedback.py ALARM_PATTERNS

# The firmware configuration both kinds of board run for this suite (docs/hil.md):
# sessions, checkpoints and the answer timeout short enough for a ~90 s suite, every
# sealed entry on flash at once (flush_count 1), a temperature reading every second, and
# provisioning on, so a board that is already enrolled can be enrolled again.
HIL_CONFIG: dict = {
    "device": {"provisioning": True},
    "sensors": {"max30205": {"interval_ms": 1000,
                             "filters": {"temp": [["plausibility", 25, 45, 1.0],
                                                  ["throttle", 1, 1, 0]]}}},
    "link": {"handshake_timeout_ms": 5000, "retry_min_ms": 500, "retry_max_ms": 2000,
             "resend_s": 5},
    "outbox": {"flush_count": 1, "flush_age": 1},
    "sealing": {"checkpoint_interval": 5},
    "robust": {"watchdog_ms": 4000},
}
UART_LINK = {"kind": "uart", "port": 0, "baudrate": BAUDRATE, "answer_timeout_ms": 2000,
             "retry_ms": 500, "max_retry_ms": 1000}


def hil_config(uart_port: int = 0) -> dict:
    """HIL_CONFIG with the frame link on `uart_port` (0: the USB serial of a board, and
    the simulated board's PTY; 2: a separate USB-UART adapter, docs/hil.md)."""
    return {**HIL_CONFIG, "transports": [dict(UART_LINK, port=uart_port)]}


class Unsupported(Exception):
    """This board cannot do that (e.g. freeze the CPU of a real chip)."""


class Dut:
    console: Console
    link: FrameLink
    device_id: str | None = None
    features: frozenset[str] = frozenset()

    def supports(self, feature: str) -> bool:
        return feature in self.features

    def power_cycle(self) -> None:
        raise Unsupported("power_cycle")

    def hang(self, seconds: float) -> None:
        raise Unsupported("hang")

    def set_signals(self, **values: object) -> None:
        raise Unsupported("set_signals")

    def expect_alarm_signal(self, grade: str, timeout: float = 10) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------- simulated board


class SimDut(Dut):
    features = frozenset({"power_cycle", "hang", "signals", "led_probe"})

    def __init__(self, state_dir: Path, config: dict, seed: int = 7,
                 heap: str = "4M") -> None:
        micropython = Path(sys.executable).parent / "micropython"
        state_dir.mkdir(parents=True, exist_ok=True)
        config_file = state_dir / "config.json"
        config_file.write_text(json.dumps(config))
        self.plan = fw_command.SimPlan(
            device_id="vb-" + UNIQUE_ID, unique_id=UNIQUE_ID, state_dir=state_dir,
            flash=state_dir / "flash", link=state_dir / "serial",
            signals=state_dir / "signals.jsonl", config=config_file, micropython=micropython)
        self.plan.flash.mkdir(exist_ok=True)
        self.plan.signals.touch()
        self.device_id = self.plan.device_id
        self.seed = seed
        self.heap = heap
        self.console = Console(writer=self._write_stdin)
        self.bridge = fw_command.SerialBridge(self.plan.link)
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._expected_exit = False
        self._closing = False
        self.boots: list[str] = []  # reset cause of every start
        self._start("power-on")
        self.link = FrameLink(str(self.plan.link))

    def _start(self, cause: str) -> None:
        env = self.plan.environment(self.bridge.tty, cause, "realtime", self.seed)
        command = [str(self.plan.micropython), "-X", f"heapsize={self.heap}", "-c", SIM_ENTRY]
        # MICROPYPATH: the repository first, so `hil_tests` is importable on the port.
        process = subprocess.Popen(command, env=env, cwd=self.plan.state_dir,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   umask=0o077)  # key files 0600: the unix port has no chmod
        self._process = process
        self.boots.append(cause)
        threading.Thread(target=self._watch, args=(process,), daemon=True).start()

    def _watch(self, process: subprocess.Popen) -> None:
        """Console from this boot; on a simulated reset, the next boot (like run-sim)."""
        assert process.stdout is not None
        for line in iter(process.stdout.readline, b""):
            self.console.feed(line)
        status = process.wait()
        with self._lock:
            if self._closing or process is not self._process or self._expected_exit:
                return
            cause = fw_command.reset_cause_of(status)
            if cause is None:
                self.console.feed(f"[sim] firmware exited with status {status}\n".encode())
                return
            self._start(cause)

    def _write_stdin(self, data: bytes) -> None:
        process = self._process
        if process is not None and process.stdin is not None and process.poll() is None:
            process.stdin.write(data)
            process.stdin.flush()

    def _kill(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)

    def power_cycle(self) -> None:
        """A power cut (SIGKILL: nothing is saved) and a power-on boot."""
        with self._lock:
            self._expected_exit = True
            self._kill()
            self._expected_exit = False
            self._start("power-on")

    def hang(self, seconds: float) -> None:
        """Freeze the firmware process (SIGSTOP) for `seconds`, then let it run again."""
        process = self._process
        assert process is not None
        os.killpg(process.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.killpg(process.pid, signal.SIGCONT)

    def set_signals(self, **values: object) -> None:
        with open(self.plan.signals, "a") as feed:
            feed.write(json.dumps(values) + "\n")

    def expect_alarm_signal(self, grade: str, timeout: float = 10) -> None:
        self.console.expect(rf"hal: led {grade} on", timeout)
        if grade in TONES:
            self.console.expect(rf"hal: tone {TONES[grade]} Hz", timeout)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._kill()
        self.link.close()
        self.bridge.close()


# ---------------------------------------------------------------- real board


class SerialBoardDut(Dut):
    """A real board: frames on `port` (text there goes to the console as well), the
    console also read from `console_port` when the board prints elsewhere (docs/hil.md).

    power_cycle() pulses EN through RTS, as esptool's hard reset does on boards with the
    usual auto-reset circuit (DTR -> GPIO0 held high, RTS -> EN)."""

    features = frozenset({"power_cycle"})

    def __init__(self, port: str, console_port: str | None = None,
                 baudrate: int = BAUDRATE) -> None:
        self.console = Console(writer=self._write_console)
        self._console_port: serial.Serial | None = None
        self._stop = threading.Event()
        # Text on the frame port (the ROM's reset line, prints when the REPL shares the
        # UART) goes to the console too; a separate console port is read into the same one.
        self.link = FrameLink(port, baudrate, splitter=ConsoleSplitter(self.console),
                              opener=_no_reset_open)
        if console_port:
            self._console_port = _no_reset_open(console_port, baudrate)
            threading.Thread(target=self._read_console, daemon=True).start()

    def _read_console(self) -> None:
        assert self._console_port is not None
        while not self._stop.is_set():
            try:
                self.console.feed(self._console_port.read(4096))
            except (OSError, serial.SerialException):
                if self._stop.wait(0.2):
                    return

    def _write_console(self, data: bytes) -> None:
        port = self._console_port or self.link.port
        if port is None:
            raise RuntimeError("the console port is closed")
        port.write(data)

    def power_cycle(self) -> None:
        port = self.link.port
        if port is None:
            raise RuntimeError("the link is dropped: restore it before a reset")
        port.dtr = False
        port.rts = True
        time.sleep(0.2)
        port.rts = False

    def expect_alarm_signal(self, grade: str, timeout: float = 10) -> None:
        # A real board's LEDs cannot be seen from here without a light sensor: the firmware's
        # echo of the grade it drives them to (firmware/feedback.py) is what is checked.
        self.console.expect(rf"feedback grade={grade} source=\w+", timeout)

    def close(self) -> None:
        self._stop.set()
        self.link.close()
        if self._console_port is not None:
            self._console_port.close()


def _no_reset_open(path: str, baudrate: int) -> serial.Serial:
    """Open without toggling DTR/RTS (which would reset an ESP32 board)."""
    port = serial.Serial()
    port.port = path
    port.baudrate = baudrate
    port.timeout = 0.05
    port.dtr = False
    port.rts = False
    port.open()
    return port

