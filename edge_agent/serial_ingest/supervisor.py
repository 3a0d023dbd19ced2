"""Keeps every configured serial port open: open, read, detect unplug, reopen with backoff.

One task per configured port: resolve the device (an explicit path, or a USB VID/PID match
through the port lister) → open it (SerialLink) → feed each chunk to the port's driver and
hand every event, stamped with the wall-clock time of receipt, to `on_event` → on loss,
close and retry with exponential backoff until the device is back. While a port is open a
watchdog checks every `watch_interval` seconds that its path still names the open device,
which catches a device that vanished without a read error.

Dropped bytes (LinkNote) are counted per reason kind; the first of each kind is logged at
once, later ones are summarised every `report_interval` seconds. Logs carry port names,
device paths, counts and reasons, never payloads or values.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edge_agent.serial_ingest.drivers import (
    DRIVERS,
    DeviceStatus,
    Frame,
    LinkNote,
    LinkStatus,
    Measurement,
    SerialDriver,
    SerialEvent,
    driver_for_usb,
    make_driver,
    note_kind,
)
from edge_agent.serial_ingest.link import LinkError, LinkLost, SerialLink
from edge_agent.serial_ingest.ports import (
    PortLister,
    PortNotFound,
    UsbMatch,
    resolve_usb,
    system_ports,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PortConfig:
    """One configured serial device: where to find it and which driver speaks to it.

    Give exactly one of `path` (e.g. /dev/serial/by-id/...) or `usb`. `driver` may be
    left out only when the USB ids name a driver on their own (drivers.driver_for_usb).
    `baudrate` overrides the driver's default.
    """

    name: str
    driver: str | None = None
    path: str | None = None
    usb: UsbMatch | None = None
    baudrate: int | None = None

    def __post_init__(self) -> None:
        where = f"serial port {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("serial port name: must be a non-empty string")
        if (self.path is None) == (self.usb is None):
            raise ValueError(f"{where}: give exactly one of 'path' or 'usb'")
        if self.path is not None and (not isinstance(self.path, str) or not self.path):
            raise ValueError(f"{where}: 'path' must be a non-empty string")
        if self.baudrate is not None and (type(self.baudrate) is not int or self.baudrate <= 0):
            raise ValueError(f"{where}: 'baudrate' must be a positive integer")
        if self.driver is None:
            if self.usb is None or driver_for_usb(self.usb.vid, self.usb.pid) is None:
                raise ValueError(f"{where}: 'driver' is required (known: {', '.join(DRIVERS)})")
        elif self.driver not in DRIVERS:
            raise ValueError(
                f"{where}: unknown driver {self.driver!r} (known: {', '.join(DRIVERS)})"
            )

    @property
    def driver_name(self) -> str:
        if self.driver is not None:
            return self.driver
        assert self.usb is not None  # __post_init__ guarantees one of them
        name = driver_for_usb(self.usb.vid, self.usb.pid)
        assert name is not None
        return name


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before the next open attempt: initial * factor**failures, capped."""

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum or self.factor < 1:
            raise ValueError("backoff: need 0 < initial <= maximum and factor >= 1")

    def delay(self, failures: int) -> float:
        return min(self.maximum, self.initial * self.factor ** min(failures, 64))


class PortState(enum.StrEnum):
    WAITING = "waiting"  # not open: absent, refused, or between reopen attempts
    OPEN = "open"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class PortEvent:
    """An event from a configured port; `received_at` is wall-clock time (time.time())."""

    port: str
    device: str
    event: SerialEvent
    received_at: float


@dataclass(frozen=True, slots=True)
class PortStatus:
    """A snapshot of one port for status pages and metrics."""

    name: str
    driver: str
    state: PortState
    device: str | None
    last_error: str | None
    since: float  # wall-clock time of the last state change
    opens: int
    open_failures: int
    disconnects: int
    bytes_in: int
    bytes_out: int
    reads: int
    frames: int
    measurements: int
    status_changes: int
    notes: dict[str, int]  # dropped-bytes reports by reason kind
    sink_errors: int
    driver_stats: dict[str, int]


class PortUnavailable(Exception):
    """The named port is not configured, or not open right now."""


@dataclass
class _Port:
    config: PortConfig
    driver: SerialDriver
    state: PortState = PortState.WAITING
    device: str | None = None
    link: SerialLink | None = None
    last_error: str | None = None
    since: float = 0.0
    opens: int = 0
    open_failures: int = 0
    disconnects: int = 0
    closed_bytes_in: int = 0  # totals of links already closed
    closed_bytes_out: int = 0
    closed_reads: int = 0
    frames: int = 0
    measurements: int = 0
    status_changes: int = 0
    sink_errors: int = 0
    notes: Counter[str] = field(default_factory=Counter)
    unreported: Counter[str] = field(default_factory=Counter)
    last_report: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class SerialSupervisor:
    """Runs all configured ports; `async with SerialSupervisor(...)` starts and stops them."""

    def __init__(
        self,
        ports: Sequence[PortConfig],
        on_event: Callable[[PortEvent], None],
        *,
        backoff: Backoff | None = None,
        lister: PortLister = system_ports,
        watch_interval: float = 1.0,
        report_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        names = [config.name for config in ports]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"serial port names must be unique: {', '.join(duplicates)}")
        self._on_event = on_event
        self._backoff = backoff or Backoff()
        self._lister = lister
        self._watch_interval = watch_interval
        self._report_interval = report_interval
        self._clock = clock
        self._ports = {
            config.name: _Port(config, make_driver(config.driver_name)) for config in ports
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._in_use: dict[str, str] = {}  # real device path -> port name

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        now = self._clock()
        for port in self._ports.values():
            port.since = port.last_report = now
            task = asyncio.create_task(self._run(port), name=f"serial:{port.config.name}")
            self._tasks.append(task)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for port in self._ports.values():
            self._close_link(port)
            self._report_notes(port)
            self._set_state(port, PortState.STOPPED, None, port.last_error)

    async def __aenter__(self) -> SerialSupervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- queries and commands ------------------------------------------------------

    def _port(self, name: str) -> _Port:
        try:
            return self._ports[name]
        except KeyError:
            raise PortUnavailable(f"no serial port named {name!r}") from None

    def status(self, name: str) -> PortStatus:
        port = self._port(name)
        link = port.link
        return PortStatus(
            name=name,
            driver=port.driver.name,
            state=port.state,
            device=port.device,
            last_error=port.last_error,
            since=port.since,
            opens=port.opens,
            open_failures=port.open_failures,
            disconnects=port.disconnects,
            bytes_in=port.closed_bytes_in + (link.bytes_in if link else 0),
            bytes_out=port.closed_bytes_out + (link.bytes_out if link else 0),
            reads=port.closed_reads + (link.reads if link else 0),
            frames=port.frames,
            measurements=port.measurements,
            status_changes=port.status_changes,
            notes=dict(port.notes),
            sink_errors=port.sink_errors,
            driver_stats=dict(port.driver.stats),
        )

    def statuses(self) -> list[PortStatus]:
        return [self.status(name) for name in self._ports]

    async def wait_for_state(self, name: str, state: PortState) -> PortStatus:
        """Wait until port `name` is in `state` (wrap in asyncio.timeout to bound it)."""
        port = self._port(name)
        while port.state is not state:
            await port.changed.wait()
        return self.status(name)

    def send(self, name: str, payload: bytes) -> None:
        """Send `payload` (e.g. a device-ack message) to the device on port `name`.

        PortUnavailable if the port is not open, DriverError if its driver cannot carry
        the payload, LinkError if the device stopped reading or went away.
        """
        port = self._port(name)
        if port.state is not PortState.OPEN or port.link is None:
            raise PortUnavailable(f"serial port {name!r} is not open ({port.last_error})")
        port.link.write(port.driver.encode_outgoing(payload))

    # --- per-port task -------------------------------------------------------------

    async def _run(self, port: _Port) -> None:
        failures = 0
        while True:
            try:
                link = self._open(port)
            except Exception as exc:
                if isinstance(exc, PortNotFound | LinkError):
                    reason = str(exc)
                else:  # e.g. a failing port lister: keep retrying, loudly
                    log.exception("serial %s: open attempt failed", port.config.name)
                    reason = f"open attempt failed: {type(exc).__name__}: {exc}"
                self._open_failed(port, reason)
                await asyncio.sleep(self._backoff.delay(failures))
                failures += 1
                continue
            failures = 0
            try:
                reason = await self._pump(port, link)
            except Exception as exc:  # a bug must not end the port's supervision for good
                log.exception("serial %s: reader failed; reopening", port.config.name)
                reason = f"reader failed: {type(exc).__name__}"
            self._close_link(port)
            self._report_notes(port)
            port.disconnects += 1
            log.warning("serial %s: lost %s: %s", port.config.name, link.path, reason)
            self._deliver(port, link.path, LinkStatus(False, reason), self._clock())
            self._set_state(port, PortState.WAITING, None, reason)
            await asyncio.sleep(self._backoff.delay(0))

    def _open_failed(self, port: _Port, reason: str) -> None:
        port.open_failures += 1
        if reason != port.last_error:  # once per distinct reason, not once per retry
            log.info("serial %s: not open: %s", port.config.name, reason)
        self._set_state(port, PortState.WAITING, None, reason)

    def _open(self, port: _Port) -> SerialLink:
        config = port.config
        if config.path is not None:
            device = config.path
        else:
            assert config.usb is not None
            try:
                listing = list(self._lister())
            except OSError as exc:
                raise PortNotFound(f"cannot list serial ports: {exc}") from exc
            device = resolve_usb(listing, config.usb).device
        real = os.path.realpath(device)
        holder = self._in_use.get(real)
        if holder is not None:
            raise PortNotFound(f"{device} is already open as serial port {holder!r}")
        settings = port.driver.settings.with_baudrate(config.baudrate)
        link = SerialLink.open(device, settings)
        self._in_use[real] = config.name
        port.link = link
        port.opens += 1
        port.driver.reset()
        log.info("serial %s: opened %s (%s)", config.name, device, port.driver.name)
        self._set_state(port, PortState.OPEN, device, None)
        self._deliver(port, device, LinkStatus(True, f"opened {device}"), self._clock())
        return link

    async def _pump(self, port: _Port, link: SerialLink) -> str:
        """Read until the link is lost; returns why."""
        watchdog = asyncio.create_task(self._watch(link), name=f"serial-watch:{link.path}")
        try:
            while True:
                try:
                    data = await link.read()
                except LinkLost as exc:
                    return str(exc)
                received_at = self._clock()
                for event in port.driver.feed(data):
                    self._deliver(port, link.path, event, received_at)
                if port.unreported and received_at - port.last_report >= self._report_interval:
                    self._report_notes(port)
        finally:
            watchdog.cancel()

    async def _watch(self, link: SerialLink) -> None:
        while not link.closed and link.error is None:
            await asyncio.sleep(self._watch_interval)
            if not link.still_present():
                link.abort("vanished: the path is gone or names another device")

    def _close_link(self, port: _Port) -> None:
        link = port.link
        if link is None:
            return
        link.close()
        port.link = None
        port.closed_bytes_in += link.bytes_in
        port.closed_bytes_out += link.bytes_out
        port.closed_reads += link.reads
        for real, holder in list(self._in_use.items()):
            if holder == port.config.name:
                del self._in_use[real]

    # --- events, state, logging ----------------------------------------------------

    def _deliver(self, port: _Port, device: str, event: SerialEvent, received_at: float) -> None:
        if isinstance(event, Frame):
            port.frames += 1
        elif isinstance(event, Measurement):
            port.measurements += 1
        elif isinstance(event, DeviceStatus):
            port.status_changes += 1
        elif isinstance(event, LinkNote):
            kind = note_kind(event.reason)
            if kind not in port.notes:
                log.warning(
                    "serial %s: dropped bytes: %s (first %r; more are summarised every %gs)",
                    port.config.name, event.reason, kind, self._report_interval,
                )
            else:
                port.unreported[kind] += 1
            port.notes[kind] += 1
        try:
            self._on_event(PortEvent(port.config.name, device, event, received_at))
        except Exception:
            port.sink_errors += 1
            log.exception("serial %s: event consumer failed", port.config.name)

    def _report_notes(self, port: _Port) -> None:
        port.last_report = self._clock()
        if not port.unreported:
            return
        detail = ", ".join(f"{kind} x{count}" for kind, count in sorted(port.unreported.items()))
        log.warning(
            "serial %s: %d more drops (%s); %s bytes discarded in total",
            port.config.name, sum(port.unreported.values()), detail,
            port.driver.stats.get("bytes_discarded", "?"),
        )
        port.unreported.clear()

    def _set_state(
        self, port: _Port, state: PortState, device: str | None, error: str | None
    ) -> None:
        if state is not port.state:
            port.since = self._clock()
        port.state, port.device, port.last_error = state, device, error
        port.changed.set()
        port.changed = asyncio.Event()
