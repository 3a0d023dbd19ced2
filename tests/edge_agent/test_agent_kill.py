"""`kill -9` of the real agent under load: nothing acknowledged to a device is ever lost.

The agent runs as a subprocess (`vitalbridge agent run --config gateway.toml`, or the same
command module through `python -m` while the `vitalbridge` front end does not list it) with
a real mosquitto and the reference centre. A CPython firmware stand-in on a PTY sends sealed
batches as fast as the link takes them and records every seq a device-ack confirmed. The
agent is SIGKILLed at random moments (also while starting), and after each kill, before
the restart, the reading journal on disk must hold every acknowledged seq. At the end the
agent runs once more, the device's outbox must drain, every acknowledged seq must be at
the centre, SIGTERM must stop the agent cleanly and every SQLite file must pass
`PRAGMA integrity_check`.

SIGKILL tests process death (the kernel's page cache survives it); power loss is the
journal's synchronous=FULL argument (docs/journal.md).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_agent import cli
from simulator.agent_home import FirmwareStandIn, provision_home
from simulator.broker import Broker
from simulator.centre import Centre, CentreConfig, TrustAnchor
from simulator.serial_devices import PtySerialDevice

ROOT = Path(__file__).resolve().parents[2]
GW = "gw-kill"
DEVICE = "ox-1"
BURST = 20  # batches between two reads of the acks
MAX_OUTBOX = 400  # unacknowledged batches (800 seqs) before new ones wait


def agent_command(config: Path) -> list[str]:
    if "edge_agent.commands.agent" in cli.COMMAND_MODULES:
        return [sys.executable, "-m", "edge_agent.cli", "agent", "run", "--config", str(config)]
    return [sys.executable, "-m", "edge_agent.commands.agent", "run", "--config", str(config)]


def write_config(path: Path, data_dir: Path, port: int, tty: Path) -> None:
    path.write_text(f"""\
[gateway]
id = "{GW}"
data_dir = "{data_dir}"

[broker]
host = "127.0.0.1"
port = {port}
keepalive_s = 5

[uplink]
receipt_timeout_s = 2.0
sweep_interval_s = 0.5
stop_timeout_s = 2.0

[[serial]]
name = "bed1"
device = "{DEVICE}"
driver = "vitalbridge"
path = "{tty}"

[eventlog]
checkpoint_interval_s = 2.0

[logging]
level = "WARNING"
format = "json"
""")


class Load(threading.Thread):
    """The device: bursts of batches (SpO2 + pulse), acks read between bursts (a read
    waits at least 20 ms), the outbox re-sent oldest first. Like the firmware, it holds
    back new batches while its outbox is long: a backlog more than the gateway's replay
    window (4096 seqs) behind the newest seq would be refused as replays (docs/agent.md)."""

    def __init__(self, device: FirmwareStandIn) -> None:
        super().__init__(daemon=True, name="device-load")
        self.device = device
        self.stop_sending = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.device.handshake(timeout=60, retry_s=0.5)
            batches = 0
            while not self.stop_sending.is_set():
                for _ in range(BURST if self.device.unacked() < MAX_OUTBOX else 0):
                    self.device.send([("spo2", 96 + batches % 3), ("pr", 70 + batches % 5)])
                    batches += 1
                    if batches % 100 == 0:
                        self.device.send_checkpoint()
                self.device.poll(0.002)
                self.device.resend_unacked(older_than_s=1.0, limit=64)
            deadline = time.monotonic() + 30
            while self.device.unacked() and time.monotonic() < deadline:
                self.device.poll(0.05)
                self.device.resend_unacked(older_than_s=0.5)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


def journaled_seqs(data_dir: Path) -> set[int]:
    if not (data_dir / "journal.sqlite3").exists():  # killed before it was created
        return set()
    conn = sqlite3.connect(f"file:{data_dir / 'journal.sqlite3'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT first_seq, last_seq FROM messages WHERE device_id = ? AND "
                            "kind = 'readings'", (DEVICE,)).fetchall()
    finally:
        conn.close()
    return {seq for first, last in rows for seq in range(first, last + 1)}


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def start_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(agent_command(config), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=log.open("ab"))


def kill_under_load(tmp_path: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    home = provision_home(tmp_path / "data", GW, [(DEVICE, "p-0001")])
    log = tmp_path / "agent.log"
    with Broker(tmp_path / "broker") as broker, \
            Centre(CentreConfig(port=broker.port, database=tmp_path / "centre.db",
                                anchor=TrustAnchor(org_ca_public=home.org_public),
                                client_id="centre-kill", gap_deadline_s=300.0, tick_s=0.2,
                                synchronous="NORMAL")) as centre, \
            PtySerialDevice(tmp_path / "tty-ox1", write_timeout=0.2) as pty:
        config = tmp_path / "gateway.toml"
        write_config(config, home.data_dir, broker.port, pty.path)
        device = FirmwareStandIn(home.devices[DEVICE], home.gateway_x25519_public, pty)
        load = Load(device)
        load.start()
        agent = None
        try:
            for kill in range(kills):
                agent = start_agent(config, log)
                before = len(device.acked)
                # Kill while it starts, or once acknowledgements flow again, at random.
                if rng.random() < 0.75:
                    deadline = time.monotonic() + 30
                    while len(device.acked) < before + 20 and time.monotonic() < deadline:
                        assert agent.poll() is None, log.read_text()[-2000:]
                        time.sleep(0.01)
                    assert len(device.acked) >= before + 20, "no acknowledgements after start"
                time.sleep(rng.uniform(0.0, 0.5))
                os.kill(agent.pid, signal.SIGKILL)
                assert agent.wait(10) == -signal.SIGKILL
                acked = set(device.acked)  # acks read after the kill were sent before it
                missing = acked - journaled_seqs(home.data_dir)
                assert not missing, f"kill {kill}: acknowledged but not journaled: " \
                    f"{sorted(missing)[:20]}"
            agent = start_agent(config, log)
            time.sleep(1.0)
            load.stop_sending.set()
            assert load.done.wait(60)
            assert load.error is None, load.error
            assert device.unacked() == 0
            assert device.acked == set(range(device.next_seq))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                at_centre = {row["seq"] for row in centre.store.readings(DEVICE)}
                if device.acked <= at_centre:
                    break
                time.sleep(0.1)
            assert device.acked <= at_centre, sorted(device.acked - at_centre)[:20]
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(20) == 0, log.read_text()[-2000:]
        finally:
            load.stop_sending.set()
            if agent is not None and agent.poll() is None:
                agent.kill()
                agent.wait()
    assert len(device.acked) >= 20 * kills
    for name in ("journal.sqlite3", "pipeline-state.sqlite3", "events.sqlite3",
                 "alarms.sqlite3", "registry.sqlite3", "limits.sqlite3"):
        assert integrity(home.data_dir / name) == "ok", name


def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    kill_under_load(tmp_path, kills=3, seed=4)


@pytest.mark.slow
def test_kill_9_twenty_times_under_load(tmp_path: Path) -> None:
    kill_under_load(tmp_path, kills=20, seed=20)
