"""One fleet gateway as an OS process: its gateway.toml, start, SIGKILL, graceful restart,
and the control socket its BLE devices take forced disconnects from.

The process is simulator.fleet.launcher (the real AgentService, plus its BLE devices on a
virtual radio). Killing it is a real SIGKILL; the journal and the BLE devices' flash files
on disk are what survive, as on a gateway that loses its process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOUSEKEEPING_S = 2.0  # the agent's is 60 s: a fleet run compresses time
CONTROL_TIMEOUT_S = 2.0


def gateway_toml(gateway_id: str, data_dir: Path, broker_port: int,
                 serial: list[tuple[str, Path]], ble: list[tuple[str, str]] = ()) -> str:
    """The configuration the fleet gives every gateway: quick receipt re-sends (the
    broker faults last seconds, not minutes), housekeeping every HOUSEKEEPING_S, one serial
    port per serial device, one BLE entry (by address) per BLE device."""
    ports = "".join(f"""
[[serial]]
name = "port-{device}"
device = "{device}"
driver = "vitalbridge"
path = "{path}"
""" for device, path in serial)
    ports += "".join(f"""
[[ble.devices]]
name = "ble-{device}"
device = "{device}"
address = "{address}"
""" for device, address in ble)
    return f"""\
[gateway]
id = "{gateway_id}"
data_dir = "{data_dir}"

[broker]
host = "127.0.0.1"
port = {broker_port}
keepalive_s = 5

[uplink]
receipt_timeout_s = 3.0
sweep_interval_s = 0.5
stop_timeout_s = 2.0

[journal]
housekeeping_s = {HOUSEKEEPING_S}

[eventlog]
checkpoint_interval_s = 5.0

[logging]
level = "WARNING"
format = "json"
{ports}"""


class GatewayProcess:
    """Start/kill/restart one agent process. Called from one thread (the fleet's)."""

    def __init__(self, gateway_id: str, config: Path, data_dir: Path, log: Path,
                 ble_spec: Path | None = None, control: Path | None = None) -> None:
        self.gateway_id = gateway_id
        self.ble_spec = ble_spec
        self.control = control
        self.config = config
        self.data_dir = data_dir
        self.log = log
        self.disk_budget_bytes: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.exit_codes: list[int] = []

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        command = [sys.executable, "-m", "simulator.fleet.launcher", "--config", str(self.config)]
        if self.ble_spec is not None and self.control is not None:
            command += ["--ble-spec", str(self.ble_spec), "--control", str(self.control)]
        if self.disk_budget_bytes is not None:
            command += ["--disk-budget-bytes", str(self.disk_budget_bytes)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                                            stderr=log)
        self.starts += 1

    def kill(self) -> bool:
        """SIGKILL; False when it was not running."""
        if not self.running:
            return False
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.exit_codes.append(self.process.wait(10))
        self.process = None
        self.kills += 1
        return True

    def exited_on_its_own(self) -> int | None:
        """The exit status when the agent stopped without being told to (a crash)."""
        if self.process is None:
            return None
        return self.process.poll()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait (the agent's graceful stop); SIGKILL if it hangs."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.exit_codes.append(code)
        self.process = None
        return code

    def disconnect(self, device: str, how: str, for_s: float) -> dict[str, object]:
        """Ask the process to force `device` off the air; its answer (`ok`, `links` it had,
        ...) or {"ok": False, "error": ...} when the process is down or does not answer."""
        if not self.running or self.control is None:
            return {"ok": False, "error": "the gateway process is down"}
        request = json.dumps({"op": "disconnect", "device": device, "how": how,
                              "for_s": for_s}) + "\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(CONTROL_TIMEOUT_S)
                sock.connect(str(self.control))
                sock.sendall(request.encode())
                answer = sock.makefile("rb").readline()
            return json.loads(answer)
        except (OSError, ValueError) as exc:  # starting, just killed, or no answer in time
            return {"ok": False, "error": f"control socket: {exc!r}"}

    def restart_with_budget(self, budget_bytes: int) -> None:
        self.disk_budget_bytes = budget_bytes
        was_running = self.running
        self.stop()
        if was_running or self.process is None:
            self.start()

    def journal_bytes(self) -> tuple[int, int]:
        """(bytes of journal pages in use, payload bytes of rows the centre receipted): what
        sizes a disk budget that receipted rows alone can satisfy."""
        path = self.data_dir / "journal.sqlite3"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = conn.execute("PRAGMA page_size").fetchone()[0]
            received = conn.execute("SELECT ifnull(sum(length(payload)), 0) FROM messages "
                                    "WHERE state = 'received'").fetchone()[0]
        finally:
            conn.close()
        return (pages - free) * size, int(received)
