"""One open serial port, driven by the asyncio event loop.

Decision (docs/serial.md): pyserial opens the port, configures it (termios speed, framing,
raw mode, an advisory exclusive lock) and closes it; while it is open the event loop
watches its file descriptor with `loop.add_reader`/`add_writer` and does non-blocking
`os.read`/`os.write` on it. No thread per port, cancellation is immediate, and a hang-up
(unplugged USB device, closed PTY master) wakes the reader like data does, so it is seen
at once. pyserial's own read/write are not used on the loop: with timeout 0 its write
retries EAGAIN in a busy loop (3.5), and its blocking forms would stall the loop.
POSIX only (the gateway runs Linux); Windows would need a reader thread instead.

Loss of the device is reported as LinkLost: a read or write error (EIO, ENXIO, ENODEV...),
a read that returns no data although the fd was readable (how Linux reports a vanished
tty), or `abort()` by a watchdog that found the path gone or pointing elsewhere.
"""

from __future__ import annotations

import asyncio
import errno
import os

import serial

from edge_agent.serial_ingest.drivers import SerialSettings

READ_CHUNK = 4096
MAX_READ_BUFFER = 256 * 1024  # stop reading (kernel buffers fill) until the consumer catches up
MAX_WRITE_BUFFER = 64 * 1024  # more unsent bytes than this: the device is not reading


class LinkError(Exception):
    """The port could not be opened or used."""


class LinkLost(LinkError):
    """The device went away (unplugged, hung up, path vanished) or the link was closed."""


def _errno_text(exc: OSError) -> str:
    code = exc.errno or 0
    return f"{errno.errorcode.get(code, 'error')} ({os.strerror(code)})"


class SerialLink:
    """An open port: `await read()` chunks, `write()` bytes (queued, never blocking)."""

    def __init__(self, port: serial.Serial, path: str, loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self._port = port
        self._fd = port.fileno()
        self._identity = os.fstat(self._fd).st_rdev
        self._loop = loop
        self._inbox = bytearray()
        self._outbox = bytearray()
        self._waiters: dict[str, asyncio.Future[None]] = {}  # "read"/"drain" -> sleeper
        self._error: LinkError | None = None
        self._reading = False
        self._closed = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.reads = 0
        self._resume_reading()

    @classmethod
    def open(cls, path: str, settings: SerialSettings, *, exclusive: bool = True) -> SerialLink:
        """Open and configure `path` on the running loop; LinkError with the OS reason."""
        loop = asyncio.get_running_loop()
        try:
            port = serial.Serial(
                path, timeout=0, write_timeout=0, exclusive=exclusive,
                **settings.pyserial_kwargs(),  # type: ignore[arg-type]
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            # pyserial wraps OSError into SerialException(errno, text); keep the errno name
            reason = _errno_text(exc) if getattr(exc, "errno", None) else str(exc)
            raise LinkError(f"cannot open {path}: {reason}") from exc
        try:
            return cls(port, path, loop)
        except OSError as exc:
            port.close()
            raise LinkError(f"cannot watch {path}: {_errno_text(exc)}") from exc

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def error(self) -> LinkError | None:
        return self._error

    # --- reading -------------------------------------------------------------------

    def _resume_reading(self) -> None:
        if not self._reading and self._error is None and not self._closed:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def _pause_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self._fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(LinkLost(f"read failed: {_errno_text(exc)}"))
            return
        if not chunk:
            self._fail(LinkLost("hang-up: readable but no data (unplugged)"))
            return
        self.reads += 1
        self.bytes_in += len(chunk)
        self._inbox += chunk
        if len(self._inbox) >= MAX_READ_BUFFER:
            self._pause_reading()
        self._wake("read")

    async def read(self) -> bytes:
        """The bytes received since the last call (waits for some). Bytes that arrived
        before a loss are returned first; then LinkLost is raised."""
        while not self._inbox:
            self._raise_if_unusable()
            await self._sleep("read")
        data = bytes(self._inbox)
        self._inbox.clear()
        self._resume_reading()
        return data

    # --- writing -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue `data` and send what the port takes now; the rest follows as it drains.
        LinkError if the link is lost or the device has stopped reading (buffer full)."""
        self._raise_if_unusable()
        if len(self._outbox) + len(data) > MAX_WRITE_BUFFER:
            raise LinkError(f"{self.path}: {len(self._outbox)} bytes unsent, device not reading")
        was_idle = not self._outbox
        self._outbox += data
        if was_idle:
            self._flush()
            if self._outbox and self._error is None:
                self._loop.add_writer(self._fd, self._flush)

    def _flush(self) -> None:
        try:
            sent = os.write(self._fd, self._outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(LinkLost(f"write failed: {_errno_text(exc)}"))
            return
        self.bytes_out += sent
        del self._outbox[:sent]
        if not self._outbox:
            self._loop.remove_writer(self._fd)
            self._wake("drain")

    async def drain(self) -> None:
        """Wait until every queued byte is handed to the OS; LinkLost if lost first."""
        while self._outbox:
            self._raise_if_unusable()
            await self._sleep("drain")

    # --- waiting -------------------------------------------------------------------

    def _raise_if_unusable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise LinkLost(f"{self.path} was closed")

    async def _sleep(self, reason: str) -> None:
        """Sleep until `_wake(reason)`: data came, output drained, or the link ended."""
        waiter = self._loop.create_future()
        self._waiters[reason] = waiter
        try:
            await waiter
        finally:
            self._waiters.pop(reason, None)

    def _wake(self, *reasons: str) -> None:
        for reason in reasons:
            waiter = self._waiters.get(reason)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # --- loss, liveness, close -----------------------------------------------------

    def still_present(self) -> bool:
        """True while `path` still names the device this link has open (USB replugged as
        another node, a by-id link removed or re-pointed: False)."""
        try:
            return os.stat(self.path).st_rdev == self._identity
        except OSError:
            return False

    def abort(self, reason: str) -> None:
        """Declare the device lost (a watchdog's finding); pending readers get LinkLost."""
        self._fail(LinkLost(reason))

    def _fail(self, error: LinkError) -> None:
        if self._error is None and not self._closed:
            self._error = error
        self._pause_reading()
        self._loop.remove_writer(self._fd)
        self._wake("read", "drain")

    def close(self) -> None:
        """Stop watching and close the port (idempotent). Unsent bytes are dropped."""
        if self._closed:
            return
        self._pause_reading()
        self._loop.remove_writer(self._fd)
        self._closed = True
        self._wake("read", "drain")
        try:
            self._port.close()
        except (serial.SerialException, OSError):
            pass  # a vanished device may refuse even the close; the fd is released anyway
