"""One configured BLE device, kept connected: connect, set up, stream, detect loss, reconnect.

`DeviceConnection.run()` loops for as long as the agent runs:

  searching   wait for an advertisement newer than the last attempt (a device that is not
              advertising cannot be connected, so no 20 s connect timeouts are spent on it)
  queued      wait for a connection slot (the manager's asyncio.Semaphore caps how many
              devices are connecting or connected at once)
  connecting  bleak_retry_connector.establish_connection(client class, BLEDevice, name,
              disconnected_callback, pair=bonding, backend=...) inside an overall timeout
  connected   on EVERY (re)connection: discover (done by connect), subscribe to the
              notifications and indications of every known characteristic present, read
              the VitalBridge provisioning characteristic, fetch glucose records through the
              RACP from the stored cursor; then wait for the disconnected callback
  backoff     exponential delay with jitter, reset once a link has lasted `stable_after_s`

Events go to the manager's sink as `BleEvent(device, address, event, received_at)`, the
BLE counterpart of the serial ingest's PortEvent. Error handling is typed: bleak-retry-
connector's BleakNotFoundError / BleakOutOfConnectionSlotsError / BleakAbortedError /
BleakConnectionError, bleak's BleakDeviceNotFoundError / BleakGATTProtocolError /
BleakError, TimeoutError; anything else is a bug, logged with its traceback, and the
device is retried after the backoff rather than dropped for good.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.exc import BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError
from bleak.uuids import normalize_uuid_str
from bleak_retry_connector import (
    BleakClientWithServiceCache,
    BleakNotFoundError,
    BleakOutOfConnectionSlotsError,
    establish_connection,
)

from edge_agent.ble_ingest.profiles import (
    DEFAULT_MAX_CLOCK_SKEW_S,
    PROFILES_BY_UUID16,
    RACP,
    CharacteristicProfile,
    Reading,
    interpret,
)
from protocol import ble_service
from protocol.errors import GattError
from protocol.fragments import Reassembler, fragment
from protocol.gatt import characteristics as gatt_codecs
from protocol.gatt import glucose

log = logging.getLogger(__name__)

_SEQUENCE_MODULUS = 0x10000  # glucose sequence numbers are uint16 and wrap
_DISCONNECT_TIMEOUT_S = 5.0
# ATT errors meaning "pair (bond) first": insufficient authentication, key size, encryption.
_NEEDS_BONDING = frozenset((0x05, 0x0C, 0x0F))
# "Procedure already in progress": GLS 1.0 application code and the newer CSS code.
_PROCEDURE_BUSY = frozenset((ble_service.GLS_PROCEDURE_ALREADY_IN_PROGRESS, 0xFE))


# --- configuration ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """One allowed device. Matched by `address`, else by advertised `local_name` and/or
    `service_uuid` (all given must match); a name/service match binds the first advertiser
    that fits for the rest of the run. `bonding`: the device requires an encrypted, bonded
    link, so the agent pairs when it connects (see docs/ble-ingest.md for BlueZ's part)."""

    name: str
    address: str | None = None
    local_name: str | None = None
    service_uuid: str | None = None
    bonding: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("ble device name: must be a non-empty string")
        where = f"ble device {self.name!r}"
        if self.address is None and self.local_name is None and self.service_uuid is None:
            raise ValueError(f"{where}: give 'address', 'local_name' or 'service_uuid'")
        if self.address is not None:
            parts = self.address.split(":") if isinstance(self.address, str) else []
            if len(parts) != 6 or not all(_is_hex_byte(part) for part in parts):
                raise ValueError(f"{where}: 'address' must look like AA:BB:CC:DD:EE:FF")
            object.__setattr__(self, "address", self.address.upper())
        if self.service_uuid is not None:
            try:
                object.__setattr__(self, "service_uuid", normalize_uuid_str(self.service_uuid))
            except (ValueError, TypeError, AttributeError):
                raise ValueError(f"{where}: 'service_uuid' is not a UUID") from None
        if not isinstance(self.bonding, bool):
            raise ValueError(f"{where}: 'bonding' must be true or false")

    def matches(self, address: str, local_name: str | None, service_uuids: list[str]) -> bool:
        if self.address is not None:
            return address.upper() == self.address
        if self.local_name is not None and local_name != self.local_name:
            return False
        return self.service_uuid is None or self.service_uuid in service_uuids


def _is_hex_byte(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Delay after the n-th consecutive failure: initial * factor**n, capped, +/- jitter.

    Jitter keeps a gateway's devices from reconnecting in lock-step after it restarts.
    A link that lasted `stable_after_s` resets the count: a device dropping now and then
    reconnects after `initial_s`, one dropping at once keeps backing off.
    """

    initial_s: float = 1.0
    factor: float = 2.0
    maximum_s: float = 60.0
    jitter: float = 0.2
    stable_after_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.maximum_s or self.factor < 1:
            raise ValueError("reconnect: need 0 < initial_s <= maximum_s and factor >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("reconnect: jitter must be within [0, 1)")

    def delay(self, failures: int, rng: random.Random) -> float:
        base = min(self.maximum_s, self.initial_s * self.factor ** min(failures, 64))
        return base * (1 + rng.uniform(-self.jitter, self.jitter))


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """How devices are connected; the defaults suit BlueZ on a Raspberry Pi."""

    client_backend: type | None = None  # None: bleak's platform backend (BlueZ)
    client_class: type[BleakClient] = BleakClientWithServiceCache
    connect_timeout_s: float = 60.0  # whole establish_connection call
    connect_attempts: int = 3  # establish_connection's own quick retries
    setup_timeout_s: float = 20.0  # subscriptions and reads after connecting
    racp_timeout_s: float = 10.0  # silence allowed while a RACP procedure runs
    reconnect: ReconnectPolicy = ReconnectPolicy()
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S
    time_zone: datetime.tzinfo | None = None  # of device clocks; None: the gateway's
    max_message: int = 8192  # VitalBridge messages, reassembled
    fragment_timeout_s: float = 5.0


class CursorStore(Protocol):
    """Where the last glucose record sequence number fetched per device is kept. `set` is
    called after the records up to it were handed to the event sink."""

    def get(self, device: str) -> int | None: ...

    def set(self, device: str, sequence_number: int) -> None: ...


class MemoryCursorStore:
    """A CursorStore in a dict (tests; an agent without a journal)."""

    def __init__(self) -> None:
        self.cursors: dict[str, int] = {}

    def get(self, device: str) -> int | None:
        return self.cursors.get(device)

    def set(self, device: str, sequence_number: int) -> None:
        self.cursors[device] = sequence_number


# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FirmwareMessage:
    """A complete protocol.messages message from the VitalBridge service. `channel` is
    "uplink" (reassembled notifications) or "provisioning" (the identity read on connect:
    unauthenticated, a hint only)."""

    payload: bytes
    channel: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A characteristic value that is not a usable measurement; keep it in quarantine.
    `source` is the characteristic name, `reason` names the field, `raw` the bytes."""

    source: str
    reason: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class DeviceConditions:
    """The conditions a device reports on `source` changed; empty = measuring normally."""

    conditions: frozenset[str]
    source: str


@dataclass(frozen=True, slots=True)
class LinkNote:
    """Something was dropped or refused on the link; `reason` starts with a stable keyword
    ("fragments", "racp", "bonding", "setup")."""

    reason: str


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """The device connected (True) or its link ended (False), and why."""

    connected: bool
    reason: str


BleIngestEvent = Reading | FirmwareMessage | Rejected | DeviceConditions | LinkNote | LinkStatus


@dataclass(frozen=True, slots=True)
class BleEvent:
    """An event of a configured device; `received_at` is wall-clock time (time.time())."""

    device: str
    address: str | None
    event: BleIngestEvent
    received_at: float


class DeviceUnavailable(Exception):
    """The device is not connected, or does not have the VitalBridge service."""


class ConnectionState(enum.StrEnum):
    SEARCHING = "searching"  # waiting for an advertisement
    QUEUED = "queued"  # seen, waiting for a connection slot
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    STOPPED = "stopped"


class _SetupError(Exception):
    """The connected device cannot be used as configured (reason in the message)."""


# --- advertisements ----------------------------------------------------------------------


class Sighting:
    """What the scanner last saw of one device: BLEDevice, RSSI, when; wakes waiters."""

    def __init__(self) -> None:
        self.device: BLEDevice | None = None
        self.rssi: int | None = None
        self.last_seen: float | None = None  # wall clock
        self.last_seen_monotonic: float | None = None
        self.advertisements = 0
        self._changed = asyncio.Event()

    def update(self, device: BLEDevice, rssi: int | None, now: float, monotonic: float) -> None:
        self.device = device
        self.rssi = rssi
        self.last_seen = now
        self.last_seen_monotonic = monotonic
        self.advertisements += 1
        self._changed.set()

    async def wait_after(self, monotonic: float) -> BLEDevice:
        """The device, once an advertisement newer than `monotonic` has been seen."""
        while self.last_seen_monotonic is None or self.last_seen_monotonic <= monotonic:
            self._changed.clear()
            await self._changed.wait()
        assert self.device is not None
        return self.device


def sequence_newer(candidate: int, reference: int) -> bool:
    """Serial-number order for uint16 sequence numbers (RFC 1982): candidate after reference."""
    distance = (candidate - reference) % _SEQUENCE_MODULUS
    return 0 < distance < _SEQUENCE_MODULUS // 2


# --- one device --------------------------------------------------------------------------


class DeviceConnection:
    """Keeps one configured device connected; see the module docstring."""

    def __init__(
        self,
        config: DeviceConfig,
        *,
        sighting: Sighting,
        slots: asyncio.Semaphore,
        sink: Callable[[BleEvent], None],
        options: ConnectionOptions,
        cursors: CursorStore,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.sighting = sighting
        self.options = options
        self.cursors = cursors
        self._slots = slots
        self._sink = sink
        self._clock = clock
        self._rng = rng or random.Random()
        self.state = ConnectionState.SEARCHING
        self.since = clock()
        self.changed = asyncio.Event()
        self.address: str | None = None
        self.last_error: str | None = None
        self.last_backoff_s: float | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "connects",
                "connect_failures",
                "disconnects",
                "readings",
                "rejected",
                "notes",
                "messages",
                "duplicates",
            ),
            0,
        )
        self.subscriptions: dict[str, str] = {}  # characteristic name -> "notify"/"indicate"
        self._conditions: dict[str, frozenset[str]] = {}
        self._session: _Session | None = None
        self._lost = asyncio.Event()

    # ---- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        failures = 0
        fresh_after = float("-inf")  # an advertisement must be newer than this
        try:
            while True:
                self._set_state(ConnectionState.SEARCHING)
                device = await self.sighting.wait_after(fresh_after)
                self._set_state(ConnectionState.QUEUED)
                async with self._slots:
                    outcome = await self._attempt(device)
                fresh_after = time.monotonic()
                failed, lived_s, reason = outcome
                if failed:
                    failures += 1
                elif lived_s >= self.options.reconnect.stable_after_s:
                    failures = 0
                else:
                    failures += 1  # connected, then lost at once: back off as for a failure
                self.last_error = reason
                delay = self.options.reconnect.delay(max(failures - 1, 0), self._rng)
                self.last_backoff_s = delay
                self._set_state(ConnectionState.BACKOFF)
                await asyncio.sleep(delay)
        finally:
            self._set_state(ConnectionState.STOPPED)

    async def _attempt(self, device: BLEDevice) -> tuple[bool, float, str]:
        """Connect and serve until the link ends: (failed before serving, seconds, reason)."""
        self._set_state(ConnectionState.CONNECTING)
        self.address = device.address
        try:
            client = await self._connect(device)
        except (BleakNotFoundError, BleakDeviceNotFoundError) as exc:
            return self._connect_failed(f"not found: {exc}")
        except BleakOutOfConnectionSlotsError as exc:
            return self._connect_failed(f"adapter out of connection slots: {exc}")
        except (BleakError, TimeoutError, EOFError, BrokenPipeError) as exc:
            return self._connect_failed(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            log.exception("ble %s: connect failed unexpectedly", self.config.name)
            return self._connect_failed(f"connect failed: {type(exc).__name__}: {exc}")
        started = time.monotonic()
        try:
            reason = await self._serve(client)
        except Exception as exc:  # a bug must not end this device's supervision for good
            log.exception("ble %s: session failed unexpectedly", self.config.name)
            reason = f"session failed: {type(exc).__name__}: {exc}"
        finally:
            await self._disconnect(client)
        return False, time.monotonic() - started, reason

    def _connect_failed(self, reason: str) -> tuple[bool, float, str]:
        self.counters["connect_failures"] += 1
        if reason != self.last_error:  # once per distinct reason, not once per retry
            log.info("ble %s: connect failed: %s", self.config.name, reason)
        return True, 0.0, reason

    async def _connect(self, device: BLEDevice) -> BleakClient:
        options = self.options
        backend = {} if options.client_backend is None else {"backend": options.client_backend}
        self._lost = asyncio.Event()
        async with asyncio.timeout(options.connect_timeout_s):
            return await establish_connection(
                options.client_class,
                device,
                self.config.name,
                disconnected_callback=self._on_disconnected,
                max_attempts=options.connect_attempts,
                pair=self.config.bonding,
                **backend,
            )

    def _on_disconnected(self, _client: BleakClient) -> None:
        self._lost.set()

    async def _serve(self, client: BleakClient) -> str:
        """Set the session up, then wait for the link to end; returns why it ended."""
        lost = self._lost
        # Published before setup: a message arriving during setup may be answered at once.
        self._session = session = _Session(self, client)
        try:
            async with asyncio.timeout(self.options.setup_timeout_s):
                await session.start()
            if lost.is_set() or not client.is_connected:
                raise BleakError("disconnected during setup")
        except (BleakError, TimeoutError, _SetupError) as exc:
            self._session = None
            reason = f"setup: {type(exc).__name__}: {exc}"
            self.counters["connect_failures"] += 1
            self._emit(LinkNote(reason))
            await session.close()
            return reason
        self.counters["connects"] += 1
        self.subscriptions = dict(session.subscriptions)
        self._set_state(ConnectionState.CONNECTED)
        log.info("ble %s: connected (%s)", self.config.name, ", ".join(session.subscriptions))
        self._emit(LinkStatus(True, f"connected, mtu {client.mtu_size}"))
        session.start_background()
        try:
            await lost.wait()
        finally:
            self._session = None
            await session.close()
        self.counters["disconnects"] += 1
        reason = "disconnected"
        log.warning("ble %s: link lost", self.config.name)
        self._emit(LinkStatus(False, reason))
        return reason

    async def _disconnect(self, client: BleakClient) -> None:
        if not client.is_connected:
            return
        try:
            async with asyncio.timeout(_DISCONNECT_TIMEOUT_S):
                await client.disconnect()
        except (BleakError, TimeoutError) as exc:
            log.info("ble %s: disconnect failed: %s", self.config.name, exc)

    # ---- for the manager ----------------------------------------------------------------------
    async def send(self, message: bytes) -> None:
        """Fragment `message` to the link's MTU and write it to the device's downlink."""
        session = self._session
        if session is None or session.downlink is None:
            raise DeviceUnavailable(
                f"ble device {self.config.name!r} is not connected with the VitalBridge service"
            )
        await session.send(message)

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self.state:
            self.state = state
            self.since = self._clock()
            self.changed.set()
            self.changed = asyncio.Event()

    def _emit(self, event: BleIngestEvent, received_at: float | None = None) -> None:
        if isinstance(event, Reading):
            self.counters["readings"] += 1
        elif isinstance(event, Rejected):
            self.counters["rejected"] += 1
            # No reason in the log: it may quote a measured value. The first of this device
            # is a warning, the rest are counted (a garbage flood must not flood the log).
            level = logging.WARNING if self.counters["rejected"] == 1 else logging.DEBUG
            log.log(level, "ble %s: rejected a %s value", self.config.name, event.source)
        elif isinstance(event, LinkNote):
            self.counters["notes"] += 1
            log.warning("ble %s: %s", self.config.name, event.reason)
        elif isinstance(event, FirmwareMessage):
            self.counters["messages"] += 1
        stamp = self._clock() if received_at is None else received_at
        self._sink(BleEvent(self.config.name, self.address, event, stamp))

    def _report_conditions(self, source: str, conditions: frozenset[str]) -> None:
        if self._conditions.get(source, frozenset()) != conditions:
            self._conditions[source] = conditions
            self._emit(DeviceConditions(conditions, source))


# --- one connected session -------------------------------------------------------------------


class _Session:
    """Everything that lives exactly as long as one link: subscriptions, the fragment
    reassembler, the downlink writer and the glucose record fetch."""

    def __init__(self, link: DeviceConnection, client: BleakClient) -> None:
        self.link = link
        self.client = client
        options = link.options
        self.subscriptions: dict[str, str] = {}
        self.downlink: BleakGATTCharacteristic | None = None
        self._racp: BleakGATTCharacteristic | None = None
        self._reassembler = Reassembler(options.max_message, timeout_s=options.fragment_timeout_s)
        self._message_id = random.randrange(256)
        self._write_lock = asyncio.Lock()
        self._racp_answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._record_activity = 0
        self._cursor: int | None = None  # records up to here were fetched before
        self._fetched: int | None = None  # newest record delivered in this session
        self._fetching = False
        self._tasks: list[asyncio.Task[None]] = []

    # ---- setup ------------------------------------------------------------------------------
    async def start(self) -> None:
        client = self.client
        uplink = provisioning = None
        for service in client.services:
            for characteristic in service.characteristics:
                uuid16 = ble_service.uuid16_of(characteristic.uuid)
                profile = PROFILES_BY_UUID16.get(uuid16) if uuid16 is not None else None
                if profile is not None:
                    await self._subscribe(characteristic, profile)
                elif uuid16 == RACP.uuid16:
                    self._racp = characteristic
                elif characteristic.uuid == ble_service.UPLINK_UUID:
                    uplink = characteristic
                elif characteristic.uuid == ble_service.DOWNLINK_UUID:
                    self.downlink = characteristic
                elif characteristic.uuid == ble_service.PROVISIONING_UUID:
                    provisioning = characteristic
        if self._racp is not None and "glucose" in self.subscriptions:
            await client.start_notify(self._racp, self._on_racp)
        else:
            self._racp = None
        if uplink is not None:
            await client.start_notify(uplink, self._on_uplink)
            self.subscriptions["vitalbridge"] = "notify"
        if provisioning is not None:
            try:
                identity = bytes(await client.read_gatt_char(provisioning))
            except BleakGATTProtocolError as exc:
                self.link._emit(LinkNote(f"setup: provisioning characteristic unreadable: {exc}"))
            else:
                if identity:
                    self.link._emit(FirmwareMessage(identity, "provisioning"))
        if not self.subscriptions:
            raise _SetupError("no supported health service or VitalBridge service found")

    async def _subscribe(
        self, characteristic: BleakGATTCharacteristic, profile: CharacteristicProfile
    ) -> None:
        handler = functools.partial(self._on_measurement, profile)
        await self.client.start_notify(characteristic, handler)
        # bleak enables notifications when offered, else indications (as the specs expect).
        mode = "notify" if "notify" in characteristic.properties else "indicate"
        if mode != profile.delivery:
            log.info(
                "ble %s: %s delivered by %s, the specification says %s",
                self.link.config.name,
                profile.name,
                mode,
                profile.delivery,
            )
        self.subscriptions[profile.name] = mode

    def start_background(self) -> None:
        if self._racp is not None:
            self._tasks.append(asyncio.create_task(self._fetch_records()))
        if "vitalbridge" in self.subscriptions:
            self._tasks.append(asyncio.create_task(self._expire_fragments()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._reassembler.reset()  # partial messages of this link are reported dropped
        self._report_fragment_errors()

    # ---- standard measurements ----------------------------------------------------------------
    def _on_measurement(
        self, profile: CharacteristicProfile, _characteristic: Any, data: bytearray
    ) -> None:
        link = self.link
        received_at = link._clock()
        raw = bytes(data)
        try:
            decoded = gatt_codecs.decode(profile.uuid16, raw)
        except GattError as exc:
            link._emit(Rejected(profile.name, str(exc), raw), received_at)
            return
        if profile.uuid16 == ble_service.GLUCOSE_MEASUREMENT and not self._take_record(decoded):
            return
        options = link.options
        result = interpret(
            decoded,
            received_at=received_at,
            stored=profile.stored,
            max_clock_skew_s=options.max_clock_skew_s,
            zone=options.time_zone,
        )
        for reading in result.readings:
            link._emit(reading, received_at)
        for problem in result.problems:
            link._emit(Rejected(profile.name, problem, raw), received_at)
        link._report_conditions(profile.name, result.conditions)
        if profile.uuid16 == ble_service.GLUCOSE_MEASUREMENT:
            self._record_delivered(decoded["sequence_number"])

    def _take_record(self, decoded: dict[str, Any]) -> bool:
        """False for a record fetched in an earlier session (a meter ignoring the filter)."""
        self._record_activity += 1
        sequence = decoded["sequence_number"]
        if self._cursor is not None and not sequence_newer(sequence, self._cursor):
            self.link.counters["duplicates"] += 1
            return False
        return True

    def _record_delivered(self, sequence: int) -> None:
        if self._fetched is None or sequence_newer(sequence, self._fetched):
            self._fetched = sequence
        if not self._fetching:  # a record pushed outside a RACP procedure
            self._store_cursor()

    def _store_cursor(self) -> None:
        if self._fetched is not None and (
            self._cursor is None or sequence_newer(self._fetched, self._cursor)
        ):
            self.link.cursors.set(self.link.config.name, self._fetched)
            self._cursor = self._fetched

    # ---- glucose: Record Access Control Point --------------------------------------------------
    async def _fetch_records(self) -> None:
        """Ask the meter for every record after the stored cursor; store the new cursor
        once the meter reports the procedure complete."""
        name = self.link.config.name
        self._cursor = self.link.cursors.get(name)
        cursor = self._cursor
        if cursor is None or cursor == _SEQUENCE_MODULUS - 1:
            request = glucose.encode_racp_report_all()  # nothing yet, or the counter wraps
        else:
            request = glucose.encode_racp_report_from(cursor + 1)
        self._fetching = True
        try:
            answer = await self._racp_procedure(request)
            code = answer.get("response_code")
            if code in (glucose.RESPONSE_SUCCESS, glucose.RESPONSE_NO_RECORDS_FOUND):
                self._store_cursor()
                log.info("ble %s: glucose records fetched up to %s", name, self._cursor)
            else:
                self.link._emit(LinkNote(f"racp: report refused: {answer.get('response_name')}"))
        except BleakGATTProtocolError as exc:
            if exc.code in _NEEDS_BONDING and not self.link.config.bonding:
                self.link._emit(
                    LinkNote(f"bonding: the meter requires a bonded link ({exc}); set bonding")
                )
            else:
                self.link._emit(LinkNote(f"racp: write refused: {exc}"))
        except (BleakError, TimeoutError) as exc:
            if self.client.is_connected:
                self.link._emit(LinkNote(f"racp: {type(exc).__name__}: {exc}"))
        finally:
            self._fetching = False

    async def _racp_procedure(self, request: bytes) -> dict[str, Any]:
        try:
            await self._racp_write(request)
        except BleakGATTProtocolError as exc:
            if exc.code not in _PROCEDURE_BUSY:
                raise
            # A procedure of an earlier link still runs in the meter: abort it, then ask again.
            await self._racp_write(glucose.encode_racp_abort())
            await self._racp_answer(glucose.RACP_ABORT_OPERATION)
            await self._racp_write(request)
        return await self._racp_answer(request[0])

    async def _racp_write(self, request: bytes) -> None:
        assert self._racp is not None
        await self.client.write_gatt_char(self._racp, request, response=True)

    async def _racp_answer(self, request_op: int) -> dict[str, Any]:
        """The meter's answer to `request_op`. The timeout counts silence: a meter sending
        many records keeps the procedure alive."""
        while True:
            activity = self._record_activity
            try:
                async with asyncio.timeout(self.link.options.racp_timeout_s):
                    answer = await self._racp_answers.get()
            except TimeoutError:
                if self._record_activity != activity:
                    continue
                raise TimeoutError(
                    f"no RACP answer within {self.link.options.racp_timeout_s}s"
                ) from None
            if answer["op_code"] == glucose.RACP_NUMBER_OF_RECORDS_RESPONSE:
                if request_op == glucose.RACP_REPORT_NUMBER_OF_RECORDS:
                    return answer
            elif answer["request_op_code"] == request_op:
                return answer

    def _on_racp(self, _characteristic: Any, data: bytearray) -> None:
        raw = bytes(data)
        try:
            answer = glucose.decode_racp(raw)
        except GattError as exc:
            self.link._emit(Rejected("racp", str(exc), raw))
            return
        if answer["kind"] != "response":
            self.link._emit(
                Rejected("racp", f"racp: a meter sent a request ({answer['op_name']})", raw)
            )
            return
        self._racp_answers.put_nowait(answer)

    # ---- VitalBridge firmware service ----------------------------------------------------------
    def _on_uplink(self, _characteristic: Any, data: bytearray) -> None:
        received_at = self.link._clock()
        message = self._reassembler.add(bytes(data), time.monotonic())
        self._report_fragment_errors()
        if message is not None:
            self.link._emit(FirmwareMessage(message, "uplink"), received_at)

    def _report_fragment_errors(self) -> None:
        for reason in self._reassembler.take_errors():
            self.link._emit(LinkNote(f"fragments: {reason}"))

    async def _expire_fragments(self) -> None:
        # add() only expires when a fragment arrives: a timer reports loss on a quiet link.
        while True:
            await asyncio.sleep(self._reassembler.timeout_s / 2)
            self._reassembler.expire(time.monotonic())
            self._report_fragment_errors()

    async def send(self, message: bytes) -> None:
        assert self.downlink is not None
        async with self._write_lock:  # fragments of two messages never interleave
            message_id = self._message_id
            self._message_id = (message_id + 1) & 0xFF
            for part in fragment(message, self.client.mtu_size, message_id):
                await self.client.write_gatt_char(self.downlink, part, response=True)
