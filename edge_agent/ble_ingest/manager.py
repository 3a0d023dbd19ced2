"""BLE ingest for the whole gateway: one scanner, an allow-list, a cap on connections.

`BleManager` runs one BleakScanner for as long as it runs. Every advertisement updates
the RSSI and last-seen time of the advertiser; advertisers that match a configured device
(by address, else by name and/or service UUID) wake that device's `DeviceConnection`
task, which connects through bleak-retry-connector. Unconfigured devices are never
connected; they are listed by `nearby()` for the technician's scan. An
asyncio.Semaphore of `max_connections` slots is held by a device from the start of its
connection attempt until its link ends, so the adapter never has more links than that
(BlueZ adapters typically manage 5-10 LE links; each costs radio time).

Events reach `on_event` (a plain callable, like the serial supervisor's) in the order the
radio delivered them; an exception in it is logged and counted, never propagated into
bleak. The backends are injectable: tests and the simulator pass the virtual radio's
`central.scanner_backend` / `central.client_backend` (docs/ble-simulation.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from edge_agent.ble_ingest.connection import (
    BleEvent,
    ConnectionOptions,
    ConnectionState,
    CursorStore,
    DeviceConfig,
    DeviceConnection,
    DeviceUnavailable,
    MemoryCursorStore,
    Sighting,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 4


@dataclass(frozen=True, slots=True)
class Advertiser:
    """A device the scanner has heard, configured or not."""

    address: str
    name: str | None
    rssi: int | None
    last_seen: float  # wall clock
    service_uuids: tuple[str, ...]
    configured_as: str | None  # the DeviceConfig name it is bound to


@dataclass(frozen=True, slots=True)
class BleDeviceStatus:
    """A snapshot of one configured device for status pages and metrics."""

    name: str
    state: ConnectionState
    since: float
    address: str | None
    rssi: int | None
    last_seen: float | None
    advertisements: int
    last_error: str | None
    last_backoff_s: float | None
    subscriptions: dict[str, str]
    counters: dict[str, int] = field(default_factory=dict)


class BleManager:
    """Scan, match the allow-list, keep configured devices connected within the cap."""

    def __init__(
        self,
        devices: Sequence[DeviceConfig],
        on_event: Callable[[BleEvent], None],
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        scanner_backend: type | None = None,
        scanning_mode: str = "active",
        options: ConnectionOptions | None = None,
        cursors: CursorStore | None = None,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        names = [config.name for config in devices]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"ble device names must be unique: {', '.join(duplicates)}")
        addresses = [config.address for config in devices if config.address is not None]
        repeated = sorted({a for a in addresses if addresses.count(a) > 1})
        if repeated:
            raise ValueError(f"ble device addresses configured twice: {', '.join(repeated)}")
        self._on_event = on_event
        self._scanner_backend = scanner_backend
        self._scanning_mode = scanning_mode
        self._clock = clock
        self.max_connections = max_connections
        self.sink_errors = 0
        options = options or ConnectionOptions()
        cursors = cursors if cursors is not None else MemoryCursorStore()
        slots = asyncio.Semaphore(max_connections)
        rng = random.Random(seed)
        self._configs = list(devices)
        self._links = {
            config.name: DeviceConnection(
                config,
                sighting=Sighting(),
                slots=slots,
                sink=self._deliver,
                options=options,
                cursors=cursors,
                clock=clock,
                rng=random.Random(rng.random()),
            )
            for config in devices
        }
        # address -> configured name; explicit addresses are bound from the start.
        self._bound: dict[str, str] = {c.address: c.name for c in devices if c.address}
        self._advertisers: dict[str, Advertiser] = {}
        self._scanner: BleakScanner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        if self._scanner is not None:
            return
        backend = {} if self._scanner_backend is None else {"backend": self._scanner_backend}
        scanner = BleakScanner(self._on_advertisement, scanning_mode=self._scanning_mode, **backend)
        await scanner.start()
        self._scanner = scanner
        for name, link in self._links.items():
            self._tasks.append(asyncio.create_task(link.run(), name=f"ble:{name}"))
        log.info(
            "ble: scanning for %d configured devices, at most %d connected",
            len(self._links),
            self.max_connections,
        )

    async def stop(self) -> None:
        """Disconnect every device and stop scanning."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            await scanner.stop()

    async def __aenter__(self) -> BleManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ---- advertisements ------------------------------------------------------------------
    def _on_advertisement(self, device: BLEDevice, advertisement: AdvertisementData) -> None:
        address = device.address.upper()
        name = self._bound.get(address)
        if name is None:
            name = self._bind(address, advertisement)
        now = self._clock()
        self._advertisers[address] = Advertiser(
            address,
            advertisement.local_name or device.name,
            advertisement.rssi,
            now,
            tuple(advertisement.service_uuids),
            name,
        )
        if name is not None:
            self._links[name].sighting.update(device, advertisement.rssi, now, time.monotonic())

    def _bind(self, address: str, advertisement: AdvertisementData) -> str | None:
        taken = set(self._bound.values())
        for config in self._configs:
            if config.address is not None or config.name in taken:
                continue
            if config.matches(address, advertisement.local_name, advertisement.service_uuids):
                self._bound[address] = config.name
                log.info("ble %s: bound to %s", config.name, address)
                return config.name
        return None

    # ---- events ----------------------------------------------------------------------------
    def _deliver(self, event: BleEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            self.sink_errors += 1
            log.exception("ble %s: event consumer failed", event.device)

    # ---- queries and commands ----------------------------------------------------------------
    def _link(self, name: str) -> DeviceConnection:
        try:
            return self._links[name]
        except KeyError:
            raise DeviceUnavailable(f"no ble device named {name!r}") from None

    def status(self, name: str) -> BleDeviceStatus:
        link = self._link(name)
        sighting = link.sighting
        return BleDeviceStatus(
            name=name,
            state=link.state,
            since=link.since,
            address=link.address or _bound_address(self._bound, name),
            rssi=sighting.rssi,
            last_seen=sighting.last_seen,
            advertisements=sighting.advertisements,
            last_error=link.last_error,
            last_backoff_s=link.last_backoff_s,
            subscriptions=dict(link.subscriptions),
            counters=dict(link.counters),
        )

    def statuses(self) -> list[BleDeviceStatus]:
        return [self.status(name) for name in self._links]

    def nearby(self) -> list[Advertiser]:
        """Every advertiser heard since start, strongest first."""
        return sorted(
            self._advertisers.values(),
            key=lambda a: -(a.rssi if a.rssi is not None else -999),
        )

    @property
    def connected_count(self) -> int:
        return sum(link.state is ConnectionState.CONNECTED for link in self._links.values())

    async def wait_for_state(self, name: str, state: ConnectionState) -> BleDeviceStatus:
        """Wait until device `name` is in `state` (wrap in asyncio.timeout to bound it)."""
        link = self._link(name)
        while link.state is not state:
            await link.changed.wait()
        return self.status(name)

    async def send(self, name: str, message: bytes) -> None:
        """Send a protocol message (accept, device-ack, command...) to a VitalBridge device.

        DeviceUnavailable if it is not connected with the VitalBridge service; bleak errors
        if the link fails during the write (the caller keeps the message and retries).
        """
        await self._link(name).send(message)


def _bound_address(bound: dict[str, str], name: str) -> str | None:
    for address, holder in bound.items():
        if holder == name:
            return address
    return None
