"""Serial devices simulated on pseudo-terminals (PTYs), for tests and the simulator.

What is real: the agent opens a real tty (the PTY slave) with pyserial, through the real
kernel tty layer (termios, buffering, hang-up on unplug). The device end is the PTY
master, also opened with pyserial (`serial.Serial("/dev/ptmx")`, which configures the
pair raw from the start so no byte is echoed or rewritten). How it maps to hardware:

  hardware                                 simulation
  USB device plugged in                    a new PTY pair; the device holds the master
  /dev/ttyUSB0, /dev/ttyACM0               the slave, /dev/pts/N
  /dev/serial/by-id/usb-... (udev link)    a symlink at a fixed path -> /dev/pts/N
  unplug                                   close the master: the slave hangs up, the
                                           node vanishes, the symlink is removed
  replug                                   a new PTY pair (N may differ), link re-pointed

The agent is configured with the symlink, exactly as on a gateway it is configured with
the by-id link, because /dev/pts/N (like ttyUSBn) may change on every plug.

Two PTY facts the helpers account for: pyserial flushes the input queue when the agent
opens the port, so bytes sent before that are lost (wait until the agent reports the
port open); and the device keeps a slave descriptor of its own open, so its reads do not
fail with EIO while the agent has the port closed (a powered device does not notice the
host closing the port either).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import time
from collections.abc import Iterable
from pathlib import Path

import serial

from edge_agent.serial_ingest.drivers import Cms50Sample, encode_cms50_packet
from protocol.frames import FrameDecoder, encode_frame

_READ_SLICE = 0.02  # seconds per blocking read while collecting until a deadline


def _pty_slave_name(master_fd: int) -> str:
    """Unlock the slave of `master_fd` and return its path (grantpt/unlockpt/ptsname)."""
    if hasattr(os, "ptsname"):  # Python 3.13+
        os.grantpt(master_fd)
        os.unlockpt(master_fd)
        return os.ptsname(master_fd)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.grantpt(master_fd) != 0 or libc.unlockpt(master_fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot unlock pty: {os.strerror(code)}")
    buffer = ctypes.create_string_buffer(128)
    code = libc.ptsname_r(master_fd, buffer, len(buffer))
    if code != 0:
        raise OSError(code, f"ptsname_r failed: {os.strerror(code)}")
    return buffer.value.decode()


def open_pty_master(baudrate: int, write_timeout: float) -> tuple[serial.Serial, str]:
    """A new PTY pair: the master as a pyserial port, and the slave's path."""
    master = serial.Serial("/dev/ptmx", baudrate, timeout=_READ_SLICE,
                           write_timeout=write_timeout)
    try:
        return master, _pty_slave_name(master.fileno())
    except OSError:
        master.close()
        raise


def _point_link(link: Path, target: str) -> None:
    """Make `link` a symlink to `target`, replacing any old link atomically."""
    temporary = link.with_name(f".{link.name}.{os.getpid()}.new")
    if temporary.is_symlink():
        temporary.unlink()
    os.symlink(target, temporary)
    os.replace(temporary, link)


class PtySerialDevice:
    """A serial device the agent reaches at `path` (a symlink to the current PTY slave).

    Blocking API (pyserial on the device end): from asyncio code call the blocking reads
    through asyncio.to_thread, as a real device would run on its own.
    """

    def __init__(self, path: str | Path, *, baudrate: int = 115200,
                 write_timeout: float = 2.0) -> None:
        self.path = Path(path)
        self.baudrate = baudrate
        self.write_timeout = write_timeout
        self.tty: str | None = None
        self._master: serial.Serial | None = None
        self._keepalive: int | None = None

    # --- plugging ------------------------------------------------------------------

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def plug(self) -> str:
        """Connect: a new PTY pair, `path` pointed at its slave. Returns the slave path."""
        if self._master is not None:
            raise RuntimeError(f"{self.path} is already plugged in")
        master, tty = open_pty_master(self.baudrate, self.write_timeout)
        try:
            self._keepalive = os.open(tty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            _point_link(self.path, tty)
        except OSError:
            if self._keepalive is not None:
                os.close(self._keepalive)
                self._keepalive = None
            master.close()
            raise
        self._master, self.tty = master, tty
        return tty

    def unplug(self) -> None:
        """Disconnect: the agent's open port hangs up and `path` disappears."""
        master, self._master = self._master, None
        if master is None:
            return
        if self._keepalive is not None:
            os.close(self._keepalive)
            self._keepalive = None
        master.close()
        try:  # leave the link alone if another device has taken the path meanwhile
            if os.readlink(self.path) == self.tty:
                self.path.unlink()
        except OSError:
            pass

    def replug(self) -> str:
        self.unplug()
        return self.plug()

    def close(self) -> None:
        self.unplug()

    def __enter__(self) -> PtySerialDevice:
        if not self.plugged:
            self.plug()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _port(self) -> serial.Serial:
        if self._master is None:
            raise RuntimeError(f"{self.path} is unplugged")
        return self._master

    # --- sending -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send raw bytes (frames, garbage, anything) in one write."""
        self._port().write(data)

    def write_in_pieces(self, data: bytes, sizes: Iterable[int], pause: float = 0.0) -> int:
        """Send `data` in pieces of the given sizes (cycled), sleeping `pause` between
        them so the agent sees many separate reads. Returns the number of writes."""
        port = self._port()
        sizes = list(sizes)
        if not sizes or min(sizes) < 1:
            raise ValueError("piece sizes must be positive")
        offset = writes = 0
        while offset < len(data):
            size = sizes[writes % len(sizes)]
            port.write(data[offset : offset + size])
            offset += size
            writes += 1
            if pause and offset < len(data):
                time.sleep(pause)
        return writes

    def send_frame(self, payload: bytes) -> bytes:
        """Send one VitalBridge frame carrying `payload`; returns the bytes sent."""
        frame = encode_frame(payload)
        self.write(frame)
        return frame

    def send_cms50(self, samples: Iterable[Cms50Sample]) -> bytes:
        """Send Contec CMS50 live-data packets; returns the bytes sent."""
        data = b"".join(encode_cms50_packet(sample) for sample in samples)
        self.write(data)
        return data

    # --- receiving -----------------------------------------------------------------

    def read(self, timeout: float) -> bytes:
        """Everything the agent sends within `timeout` seconds (blocking)."""
        port = self._port()
        deadline = time.monotonic() + timeout
        received = bytearray()
        while time.monotonic() < deadline:
            received += port.read(4096)
        return bytes(received)

    def receive_frames(self, count: int, timeout: float) -> list[bytes]:
        """Frames the agent sends, decoded, until `count` arrived or `timeout` passed."""
        port = self._port()
        decoder = FrameDecoder()
        deadline = time.monotonic() + timeout
        payloads: list[bytes] = []
        while len(payloads) < count and time.monotonic() < deadline:
            payloads.extend(decoder.feed(port.read(4096)))
        return payloads


def oximeter_samples(count: int, spo2: int, pulse_rate: int, **flags: bool) -> list[Cms50Sample]:
    """`count` CMS50 samples (60 per second) with steady values, a sawtooth-like pleth
    wave and a beep once per beat. `flags` sets the Cms50Sample condition booleans
    (probe_error, searching, searching_too_long, spo2_dropping)."""
    per_beat = max(3, round(3600 / pulse_rate)) if pulse_rate else 60
    rise = per_beat // 3
    samples = []
    for index in range(count):
        phase = index % per_beat
        if phase < rise:
            pleth = 20 + 90 * phase // rise
        else:
            pleth = 110 - 90 * (phase - rise) // (per_beat - rise)
        base = Cms50Sample(
            signal_strength=6, searching_too_long=False, spo2_dropping=False,
            beep=phase == 0, pleth=pleth, bar=pleth // 8, probe_error=False,
            searching=False, pulse_rate=pulse_rate, spo2=spo2,
        )
        samples.append(dataclasses.replace(base, **flags))
    return samples
