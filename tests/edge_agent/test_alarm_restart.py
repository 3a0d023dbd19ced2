"""A yellow alarm's 30 s persistence survives a `kill -9` of the agent inside the window.

Real parts: the agent as a subprocess (as tests/edge_agent/test_agent_kill.py runs it),
mosquitto, the reference centre, and a CPython firmware stand-in on a PTY sending a pulse
rate of 100/min (yellow `pr:high`, default limits) every 0.5 s from t0. The agent is
SIGKILLed 12 s into the persistence window and restarted 1 s later. Without the rebuild from
the journal (edge_agent/alarms/history.py, Evaluator.rebuild) the 30 s would start again at
the restart and the alarm would reach the centre at about t0 + 13 + 30 s; with it, the alarm
must reach the centre by t0 + 30 s + 1 s + the restart time, and not before t0 + 30 s.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from simulator.agent_home import FirmwareStandIn, provision_home
from simulator.broker import Broker
from simulator.centre import Centre, CentreConfig, TrustAnchor
from simulator.serial_devices import PtySerialDevice
from tests.edge_agent.test_agent_kill import start_agent, write_config

GW = "gw-kill"  # write_config's gateway and device
DEVICE = "ox-1"
PATIENT = "p-0001"
PERSISTENCE_S = 30.0  # yellow, EvaluatorConfig default
INTERVAL_S = 0.5
KILL_AFTER_S = 12.0


class PulseHigh(threading.Thread):
    """The device: pulse 100/min and SpO2 97 % every 0.5 s, stamped with the wall clock,
    its outbox re-sent until acknowledged (it keeps measuring while the agent is down)."""

    def __init__(self, device: FirmwareStandIn) -> None:
        super().__init__(daemon=True, name="device-pulse-high")
        self.device = device
        self.first_at: float | None = None
        self.stop_sending = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.device.handshake(timeout=60, retry_s=0.5)
            while not self.stop_sending.is_set():
                now = time.time()
                if self.first_at is None:
                    self.first_at = now
                self.device.send([("spo2", 97), ("pr", 100)], at=now)
                self.device.poll(INTERVAL_S)
                self.device.resend_unacked(older_than_s=1.0, limit=64)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def first_journal_row_after(data_dir: Path, since: float) -> float | None:
    path = data_dir / "journal.sqlite3"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT min(received_at) FROM messages WHERE kind = 'readings' "
                           "AND received_at > ?", (since,)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return None if row is None else row[0]


def test_persistence_survives_kill_9_inside_the_window(tmp_path: Path) -> None:
    home = provision_home(tmp_path / "data", GW, [(DEVICE, PATIENT)])
    broker = Broker(tmp_path / "broker").start()
    centre = Centre(CentreConfig(port=broker.port, database=tmp_path / "centre.db",
                                 anchor=TrustAnchor(org_ca_public=home.org_public),
                                 client_id="centre-restart", tick_s=0.1,
                                 synchronous="NORMAL")).start()
    pty = PtySerialDevice(tmp_path / "tty-ox-1")
    pty.plug()
    config = tmp_path / "gateway.toml"
    write_config(config, home.data_dir, broker.port, pty.path)
    log = tmp_path / "agent.log"
    agent = start_agent(config, log)
    device = PulseHigh(FirmwareStandIn(home.devices[DEVICE], home.gateway_x25519_public, pty))
    device.start()
    raised_seen: float | None = None
    try:
        deadline = time.monotonic() + 60
        while device.first_at is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert device.first_at is not None, device.error
        t0 = device.first_at
        time.sleep(max(0.0, t0 + KILL_AFTER_S - time.time()))
        assert agent.poll() is None, log.read_text()[-2000:]
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
        assert not alarms(centre), "fired before the persistence time"
        time.sleep(1.0)
        restarted_at = time.time()
        agent = start_agent(config, log)
        due = int(t0) + PERSISTENCE_S  # reading times are whole seconds (SenML as sent)
        while time.time() < due + 40 and raised_seen is None:
            if alarms(centre):
                raised_seen = time.time()
            time.sleep(0.05)
        ready = first_journal_row_after(home.data_dir, restarted_at)
        assert ready is not None, log.read_text()[-2000:]
        restart_s = ready - restarted_at  # spawn until the first reading is journaled again
        assert raised_seen is not None, "pr:high never reached the centre"
        lateness = raised_seen - due
        # the raise time is the reading's own time: the first reading at or after due
        raised_ms = next(a.raised_ms for a in alarms(centre))
        assert raised_ms is not None and due <= raised_ms / 1000 <= due + 1
        print(f"alarm at the centre {lateness:+.2f} s after due; restart took {restart_s:.2f} s")
        assert -0.5 < lateness <= 1.0 + restart_s, (lateness, restart_s)
    finally:
        device.stop_sending.set()
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=20)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        pty.close()
        centre.stop()
        broker.stop()
    assert device.error is None


def alarms(centre: Centre) -> list:
    return [a for a in centre.active_alarms(GW)
            if a.key == "pr:high" and a.patient == PATIENT and a.grade == "yellow"]
