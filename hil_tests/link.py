"""The DUT's serial frame link: protocol envelopes in protocol.frames frames over a
pyserial port, read by a background thread.

A link can be dropped and restored from the gateway side (`drop()` closes the port,
`restore()` opens it again), which is what a gateway that goes away looks like to the
device: nobody answers. When a real board has one USB serial port for both its console and
its frames, `ConsoleSplitter` separates the two (see its docstring).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import serial

from hil_tests.console import Console
from protocol import messages
from protocol.errors import ProtocolError
from protocol.frames import FrameDecoder, decode_frame, encode_frame

BAUDRATE = 115200
_READ_TIMEOUT_S = 0.05


class LinkTimeout(AssertionError):
    """The awaited message did not arrive in time."""


class ConsoleSplitter:
    """One byte stream carrying console text and frames -> text to a Console, payloads out.

    Frames are `00 COBS 00`; text never contains 00. After a frame (or at the start) a
    non-zero byte starts text, which goes to the console at once; a 00 starts a candidate
    frame, collected to the next 00: if it decodes it is a frame, else it was text. A
    print that lands inside a frame corrupts that frame (it fails its CRC and is shown as
    text); the firmware resends what is not acknowledged.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self._in_frame = False
        self._frame = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        payloads: list[bytes] = []
        text = bytearray()
        for byte in data:
            if byte == 0:
                if self._in_frame and self._frame:
                    try:
                        payloads.append(decode_frame(bytes(self._frame)))
                        self._in_frame = False
                    except ProtocolError:
                        text.extend(self._frame)  # stays "in frame": this 00 may lead one
                    self._frame = bytearray()
                else:
                    self._in_frame = True
            elif self._in_frame:
                self._frame.extend(bytes((byte,)))
            else:
                text.append(byte)
        self.console.feed(bytes(text))
        return payloads


class FrameLink:
    """Gateway end of the device link on `path` (a tty or a symlink to one)."""

    def __init__(self, path: str, baudrate: int = BAUDRATE,
                 splitter: ConsoleSplitter | None = None,
                 opener: Callable[[str, int], serial.Serial] | None = None) -> None:
        self.path = path
        self.baudrate = baudrate
        self._splitter = splitter
        self._opener = opener or (lambda p, b: serial.Serial(p, b, timeout=_READ_TIMEOUT_S))
        self._decoder = FrameDecoder()
        self._inbox: list[tuple[str, object]] = []
        self._arrived = threading.Condition()
        self._port: serial.Serial | None = None
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self.undecodable = 0  # frames whose envelope did not decode
        self.restore()

    # ------------------------------------------------------------ connection

    @property
    def port(self) -> serial.Serial | None:
        """The open port (None while dropped): for modem lines such as a reset pulse."""
        return self._port

    @property
    def up(self) -> bool:
        return self._port is not None

    def restore(self) -> None:
        """Open the port (again) and start reading."""
        if self._port is not None:
            return
        deadline = time.monotonic() + 10
        while True:
            try:
                self._port = self._opener(self.path, self.baudrate)
                break
            except (OSError, serial.SerialException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # a board re-enumerating, a PTY link being re-pointed
        self._stop.clear()
        self._reader = threading.Thread(target=self._read_loop, args=(self._port,),
                                        daemon=True)
        self._reader.start()

    def drop(self) -> None:
        """Close the port: the device hears nothing until restore()."""
        if self._port is None:
            return
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=2)
        self._port.close()
        self._port = None
        self._decoder.reset()

    def close(self) -> None:
        self.drop()

    def _read_loop(self, port: serial.Serial) -> None:
        while not self._stop.is_set():
            try:
                data = port.read(4096)
            except (OSError, serial.SerialException):
                if self._stop.wait(0.1):
                    return
                continue
            if not data:
                continue
            if self._splitter is not None:
                payloads = self._splitter.feed(data)
            else:
                payloads = self._decoder.feed(data)
            decoded = []
            for payload in payloads:
                try:
                    decoded.append(messages.decode(payload))
                except ProtocolError:
                    self.undecodable += 1
            if decoded:
                with self._arrived:
                    self._inbox.extend(decoded)
                    self._arrived.notify_all()

    # ------------------------------------------------------------ messages

    def send(self, kind: str, body: object) -> None:
        if self._port is None:
            raise RuntimeError("the link is dropped")
        self._port.write(encode_frame(messages.encode(kind, body)))

    def receive(self, kinds: tuple[str, ...], timeout: float) -> tuple[str, object]:
        """The oldest waiting message of one of `kinds` (others stay queued, in order)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for i, (kind, _) in enumerate(self._inbox):
                    if kind in kinds:
                        return self._inbox.pop(i)
                left = deadline - time.monotonic()
                if left <= 0:
                    waiting = [k for k, _ in self._inbox]
                    raise LinkTimeout(f"no {kinds} within {timeout} s; queued: {waiting}")
                self._arrived.wait(left)

    def take_all(self) -> list[tuple[str, object]]:
        """Every queued message, oldest first."""
        with self._arrived:
            taken, self._inbox = self._inbox, []
            return taken
