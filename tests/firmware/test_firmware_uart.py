"""The firmware's UART transport on the real MicroPython unix port, over a real PTY.

The firmware (firmware/transport/uart.py on SimHal's uart(0)) opens the PTY slave through
a symlink, as the simulator's serial devices do; the gateway side is pyserial on the PTY
master. Proven: frames out are protocol.frames payloads, garbage/truncated/corrupted
input is skipped and the next valid frame still arrives, a silent gateway is probed with
a periodic hello that backs off, and an answer keeps the link up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protocol import messages
from protocol.frames import FrameDecoder, encode_frame
from simulator.serial_devices import open_pty_master

ROOT = Path(__file__).resolve().parents[2]
MICROPYTHON = Path(sys.executable).parent / "micropython"

pytestmark = pytest.mark.skipif(not MICROPYTHON.exists(), reason="no micropython binary")

# The device program: a hello on every link up (what the app's handshake does), every
# received message echoed back, JSON reports on stdout.
FIRMWARE = """
import asyncio, binascii, json, os, sys
sys.path.insert(0, ".")
from firmware.hal.sim import SimClock, SimHal
from firmware.transport.uart import UartTransport
from protocol import messages

def report(**fields):
    print(json.dumps(fields))

async def main():
    hal = SimHal(flash_dir="/tmp/vb-fw-uart/flash", clock=SimClock(realtime=True),
                 serial=os.getenv("VB_SIM_SERIAL"), devices=())
    transport = UartTransport(hal, port=0, answer_timeout_ms=700, retry_ms=400)
    outgoing = []
    probes = [0]

    def on_link(up):
        report(event="link", up=up, at=hal.ticks_ms())
        if up:
            probes[0] += 1
            outgoing.append(messages.encode("hello", b"probe-%d" % probes[0]))

    def on_message(message):
        report(event="received", message=binascii.hexlify(message).decode())
        outgoing.append(message)

    transport.set_link_callback(on_link)
    transport.set_receiver(on_message)
    await transport.start()
    deadline = hal.ticks_add(hal.ticks_ms(), int(os.getenv("VB_TEST_SECONDS")) * 1000)
    while hal.ticks_diff(deadline, hal.ticks_ms()) > 0:
        while outgoing and transport.connected:
            await transport.send(outgoing.pop(0))
        await hal.asleep_ms(20)
    report(event="stats", frames_bad=transport.frames_bad, frames_in=transport.frames_in,
           frames_out=transport.frames_out, heard=transport.gateway_heard,
           timeouts=transport.watch.timeouts)
    await transport.stop()

asyncio.run(main())
"""


class Gateway:
    """pyserial on the PTY master: reads frames with the agent's decoder."""

    def __init__(self, master) -> None:
        self.master = master
        self.decoder = FrameDecoder()
        self.frames: list[tuple[float, bytes]] = []

    def read_until(self, count: int, timeout_s: float) -> list[bytes]:
        deadline = time.monotonic() + timeout_s
        while len(self.frames) < count and time.monotonic() < deadline:
            data = self.master.read(4096)
            now = time.monotonic()
            self.frames.extend((now, payload) for payload in self.decoder.feed(data))
        assert len(self.frames) >= count, f"only {len(self.frames)} frames: {self.frames}"
        return [payload for _, payload in self.frames]


def test_uart_transport_over_a_pty_with_pyserial(tmp_path: Path) -> None:
    script = tmp_path / "fw_uart.py"
    script.write_text(FIRMWARE)
    master, tty = open_pty_master(115200, write_timeout=2.0)
    link = tmp_path / "ttyVB0"
    os.symlink(tty, link)
    env = dict(os.environ, VB_SIM_SERIAL=str(link), VB_TEST_SECONDS="4")
    process = subprocess.Popen([str(MICROPYTHON), "-X", "heapsize=2M", str(script)], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    gateway = Gateway(master)
    try:
        # The gateway stays silent: the hello is repeated after answer timeout + back-off.
        frames = gateway.read_until(2, timeout_s=5)
        assert frames[:2] == [messages.encode("hello", b"probe-1"),
                              messages.encode("hello", b"probe-2")]
        gap = gateway.frames[1][0] - gateway.frames[0][0]
        assert 0.9 < gap < 2.5  # 700 ms unanswered + 400 ms back-off

        # Garbage, a truncated frame and a corrupted one around two valid frames, in pieces.
        ack = messages.encode("device-ack", b"\x01" * 40)
        command = messages.encode("device-command", bytes(range(256)) * 2)
        corrupted = bytearray(encode_frame(messages.encode("accept", b"x" * 30)))
        corrupted[10] ^= 0x01
        stream = (b"\xff\xfe noise \x13\x11" + encode_frame(ack) + encode_frame(command)[:50]
                  + bytes(corrupted) + encode_frame(command))
        for i in range(0, len(stream), 64):
            master.write(stream[i:i + 64])
            time.sleep(0.005)
        echoed = gateway.read_until(4, timeout_s=5)[2:4]
        assert echoed == [ack, command]
    finally:
        stdout, stderr = process.communicate(timeout=10)
        master.close()
    assert process.returncode == 0, stderr
    reports = [json.loads(line) for line in stdout.splitlines()]
    links = [r["up"] for r in reports if r["event"] == "link"]
    assert links[:3] == [True, False, True]
    (stats,) = [r for r in reports if r["event"] == "stats"]
    assert stats["heard"] and stats["frames_in"] == 2
    assert stats["frames_bad"] >= 3  # leading noise, truncated frame, corrupted frame
