"""bleak client backend: a GATT client on the virtual central's bumble host.

Every operation is a real ATT exchange with the peripheral's bumble GATT server over
L2CAP/HCI. Behaviour follows bleak's BlueZ backend where the agent could notice:
- ``connect`` with a bare address first scans for it (``BleakDeviceNotFoundError`` if not
  seen within the timeout); a connection that does not complete raises ``TimeoutError``;
- on connect the MTU is exchanged (517 requested, as BlueZ does) and all services,
  characteristics and descriptors are discovered;
- a bonded peripheral is re-encrypted on connect with the stored LTK;
- the disconnected callback fires on *every* disconnection after a successful connect,
  including ``disconnect()`` — that is what BlueZ does, whatever bleak's base class says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from bleak import BleakScanner
from bleak.args import SizedBuffer
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.exc import (
    BleakCharacteristicNotFoundError,
    BleakDeviceNotFoundError,
    BleakError,
)
from bumble import att, core, gatt, hci
from bumble.device import Connection, ConnectionParametersPreferences, Peer
from bumble.gatt_client import CharacteristicProxy

from edge_agent.ble.bumble_backend.binding import BumbleDeviceDetails, resolve_central
from edge_agent.ble.bumble_backend.errors import NOT_CONNECTED, bleak_errors
from edge_agent.ble.bumble_backend.services import build_service_collection, value_handle
from edge_agent.ble.virtual_radio import VirtualCentral, VirtualRadioError

logger = logging.getLogger(__name__)

REQUESTED_ATT_MTU = 517  # BlueZ asks for the maximum on every LE connection
DISCONNECT_TIMEOUT_S = 10.0
# BlueZ's default LE connection parameters (interval 30-50 ms, latency 0, timeout 420 ms).
BLUEZ_CONNECTION_PARAMETERS = ConnectionParametersPreferences(
    connection_interval_min=30.0,
    connection_interval_max=50.0,
    max_latency=0,
    supervision_timeout=420,
)
_SUBSCRIBABLE = gatt.Characteristic.Properties.NOTIFY | gatt.Characteristic.Properties.INDICATE


class BumbleClientBackend(BaseBleakClient):
    """GATT client over the virtual radio; see the module docstring for semantics."""

    _bound_central: ClassVar[VirtualCentral | None] = None

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        services: set[str] | None = None,
        *,
        disconnected_callback: Callable[[], None] | None,
        timeout: float,
        central: VirtualCentral | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        details: BumbleDeviceDetails | None = None
        if isinstance(address_or_ble_device, BLEDevice):
            if isinstance(address_or_ble_device.details, BumbleDeviceDetails):
                details = address_or_ble_device.details
            self._device_name: str | None = address_or_ble_device.name
        else:
            self._device_name = None
        self.address = self.address.upper()
        self._central = resolve_central(
            central, details.central if details else None, type(self)._bound_central
        )
        self._peer_address: hci.Address | None = details.address if details else None
        self._requested_services = services
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._notify_subscribers: dict[int, Callable[[bytes], None]] = {}  # by value handle
        self._disconnected: asyncio.Event | None = None
        self._last_mtu = att.ATT_DEFAULT_MTU

    # ---- properties ------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._device_name or self.address.replace(":", "-")

    @property
    def mtu_size(self) -> int:
        if self._connection is not None:
            return self._connection.att_mtu
        return self._last_mtu

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    # ---- connection ------------------------------------------------------------------
    async def connect(
        self, pair: bool, dangerous_use_bleak_cache: bool = False, **kwargs: Any
    ) -> None:
        """Connect, (pair,) exchange MTU and discover services within ``timeout`` seconds.

        ``dangerous_use_bleak_cache`` is accepted and ignored: discovery always runs.
        """
        if self.is_connected:
            raise BleakError("Client is already connected")
        try:
            self._central.radio.check_open()
        except VirtualRadioError as error:
            raise BleakError(str(error)) from error
        timeout = float(kwargs.get("timeout", self._timeout))
        if self._peer_address is None:
            await self._find_peer(timeout)
        assert self._peer_address is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        connection = await self._open_link(self._peer_address, deadline)
        try:
            async with asyncio.timeout_at(deadline):
                await self._start_session(connection, pair)
        except BaseException:
            self._forget_connection()
            await self._close_link(connection)
            raise
        if connection.handle not in self._central.device.connections:
            self._forget_connection()  # the link dropped right after the last exchange
            raise BleakError(f"{self.address} disconnected while connecting")
        self._disconnected = asyncio.Event()
        connection.on(Connection.EVENT_DISCONNECTION, self._on_disconnection)

    async def _find_peer(self, timeout: float) -> None:
        device = await BleakScanner.find_device_by_address(
            self.address, timeout=timeout, backend=self._central.scanner_backend
        )
        if device is None or not isinstance(device.details, BumbleDeviceDetails):
            raise BleakDeviceNotFoundError(
                self.address, f"Device with address {self.address} was not found."
            )
        self._peer_address = device.details.address
        self._device_name = device.name

    async def _open_link(self, peer_address: hci.Address, deadline: float) -> Connection:
        loop = asyncio.get_running_loop()
        device = self._central.device
        async with asyncio.timeout_at(deadline):
            await self._central.connect_lock.acquire()
        try:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out connecting to {self.address}")
            # bumble cancels the LE Create Connection itself when its timeout expires.
            attempt = asyncio.ensure_future(
                device.connect(
                    peer_address,
                    connection_parameters_preferences={
                        hci.HCI_LE_1M_PHY: BLUEZ_CONNECTION_PARAMETERS
                    },
                    timeout=remaining,
                )
            )
            try:
                return await asyncio.shield(attempt)
            except asyncio.CancelledError:
                await self._abandon_attempt(attempt)
                raise
            except core.TimeoutError as error:
                raise TimeoutError(f"timed out connecting to {self.address}") from error
            except core.ConnectionError as error:
                raise BleakError(f"connection to {self.address} failed: {error}") from error
            except core.BaseBumbleError as error:
                raise BleakError(f"connection to {self.address} failed: {error!r}") from error
        finally:
            self._central.connect_lock.release()

    async def _abandon_attempt(self, attempt: asyncio.Future[Connection]) -> None:
        """Our caller was cancelled mid-connect: stop the initiator, close any late link.

        bumble's connect must not simply be cancelled: it would leave the controller
        initiating, and a link completing later would reach a host that no longer
        expects it. So cancel at the HCI level and let bumble's connect finish.
        """
        if not attempt.done():
            with contextlib.suppress(core.BaseBumbleError, hci.HCI_Error):
                await self._central.device.send_sync_command(
                    hci.HCI_LE_Create_Connection_Cancel_Command()
                )
        try:
            async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                late_link = await attempt
        except (core.BaseBumbleError, hci.HCI_Error, TimeoutError):
            return  # the attempt ended without a link
        await self._close_link(late_link)

    async def _start_session(self, connection: Connection, pair: bool) -> None:
        self._connection = connection
        self._peer = peer = Peer(connection)
        if pair:
            await self._pair_connection(connection)
        elif await self._is_bonded():
            await bleak_errors(connection.encrypt(), "encryption with stored keys")
        await bleak_errors(peer.request_mtu(REQUESTED_ATT_MTU), "MTU exchange")
        self._last_mtu = connection.att_mtu
        self.services = build_service_collection(
            await self._discover(peer), lambda: self.mtu_size - 3
        )

    async def _discover(self, peer: Peer) -> list[Any]:
        wanted = [core.UUID(u) for u in self._requested_services or ()]
        services = await bleak_errors(peer.discover_services(wanted), "service discovery")
        for service in services:
            await bleak_errors(
                peer.discover_characteristics(service=service), "characteristic discovery"
            )
            for characteristic in service.characteristics:
                await bleak_errors(
                    peer.discover_descriptors(characteristic=characteristic),
                    "descriptor discovery",
                )
                characteristic.descriptors_discovered = True  # bumble would re-discover
        return services

    def _on_disconnection(self, _reason: int) -> None:
        self._forget_connection()
        if self._disconnected is not None:
            self._disconnected.set()
        if self._disconnected_callback is not None:
            try:
                self._disconnected_callback()
            except Exception:
                logger.exception("disconnected callback for %s raised", self.address)

    def _forget_connection(self) -> None:
        if self._connection is not None:
            self._last_mtu = self._connection.att_mtu
        self._connection = None
        self._peer = None
        self.services = None
        self._notify_subscribers.clear()

    async def _close_link(self, connection: Connection) -> None:
        if connection.handle not in self._central.device.connections:
            return
        try:
            await connection.disconnect()
        except (core.BaseBumbleError, hci.HCI_Error):
            pass  # already gone: nothing left to close

    async def disconnect(self) -> None:
        connection = self._connection
        if connection is None:
            return
        disconnected = self._disconnected
        try:
            await connection.disconnect()
        except (core.BaseBumbleError, hci.HCI_Error):
            pass  # the link went down on its own meanwhile
        if disconnected is not None and self._connection is connection:
            async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                await disconnected.wait()

    # ---- pairing ---------------------------------------------------------------------
    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """LE pairing over SMP with the peripheral's bumble host (Just Works by default)."""
        await self._pair_connection(self._require_connection())

    async def _pair_connection(self, connection: Connection) -> None:
        await bleak_errors(connection.pair(), "pairing")
        if not connection.is_encrypted:
            raise BleakError("pairing finished but the link is not encrypted")

    async def unpair(self) -> None:
        """Forget the bond (LTK/IRK) and disconnect, as BlueZ's RemoveDevice does."""
        await self.disconnect()
        keystore = self._central.device.keystore
        if keystore is not None and self._peer_address is not None:
            name = str(self._peer_address)
            if await keystore.get(name) is not None:
                await keystore.delete(name)

    async def _is_bonded(self) -> bool:
        keystore = self._central.device.keystore
        if keystore is None or self._peer_address is None:
            return False
        return await keystore.get(str(self._peer_address)) is not None

    # ---- GATT operations -------------------------------------------------------------
    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return await self._read(value_handle(characteristic), use_cached, "read characteristic")

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return await self._read(descriptor.handle, use_cached, "read descriptor")

    async def _read(self, handle: int, use_cached: bool, what: str) -> bytearray:
        peer = self._require_peer()
        if use_cached:
            cached = peer.gatt_client.cached_values.get(handle)
            if cached is not None:
                return bytearray(cached[1])
        return bytearray(await bleak_errors(peer.read_value(handle), what))

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        payload = bytes(data)
        if not response and len(payload) > characteristic.max_write_without_response_size:
            raise BleakError(
                f"{len(payload)} bytes exceed max_write_without_response_size "
                f"{characteristic.max_write_without_response_size}"
            )
        await bleak_errors(
            self._require_peer().write_value(
                value_handle(characteristic), payload, with_response=response
            ),
            "write characteristic",
        )

    async def write_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, data: SizedBuffer
    ) -> None:
        await bleak_errors(
            self._require_peer().write_value(descriptor.handle, bytes(data), with_response=True),
            "write descriptor",
        )

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        """Write the CCCD: notifications if supported, else indications (bleak's rule)."""
        peer = self._require_peer()
        proxy = self._current_proxy(characteristic)
        if not int(proxy.properties) & _SUBSCRIBABLE:
            raise BleakError(
                f"characteristic {characteristic.uuid} supports neither notify nor indicate"
            )
        if proxy.get_descriptor(gatt.GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR) is None:
            raise BleakError(f"characteristic {characteristic.uuid} has no CCCD")
        if proxy.handle in self._notify_subscribers:
            raise BleakError(f"notifications already started on {characteristic.uuid}")

        def deliver(value: bytes) -> None:
            # BlueZ confirms indications in bluetoothd whatever the app does; here the
            # confirmation is sent after subscribers run, so a raising callback must not
            # escape into bumble's host.
            try:
                callback(bytearray(value))
            except Exception:
                logger.exception("notification callback for %s raised", characteristic.uuid)

        try:
            await bleak_errors(peer.subscribe(proxy, deliver, prefer_notify=True), "start notify")
        except BaseException:
            # bumble registers the subscriber before writing the CCCD; undo on failure.
            for subscribers in (
                peer.gatt_client.notification_subscribers,
                peer.gatt_client.indication_subscribers,
            ):
                subscribers.get(proxy.handle, set()).discard(deliver)
            raise
        self._notify_subscribers[proxy.handle] = deliver

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        peer = self._require_peer()
        proxy = self._current_proxy(characteristic)
        deliver = self._notify_subscribers.pop(proxy.handle, None)
        if deliver is None:
            raise BleakError(f"No notify session started on {characteristic.uuid}")
        await bleak_errors(peer.unsubscribe(proxy, deliver), "stop notify")

    # ---- helpers ---------------------------------------------------------------------
    def _require_connection(self) -> Connection:
        if self._connection is None:
            raise BleakError(NOT_CONNECTED)
        return self._connection

    def _require_peer(self) -> Peer:
        if self._peer is None:
            raise BleakError(NOT_CONNECTED)
        return self._peer

    def _current_proxy(self, characteristic: BleakGATTCharacteristic) -> CharacteristicProxy[bytes]:
        # A BleakGATTCharacteristic may outlive its connection; look it up in this session.
        current = self.services.get_characteristic(characteristic.handle) if self.services else None
        if current is None:
            raise BleakCharacteristicNotFoundError(characteristic.handle)
        proxy: CharacteristicProxy[bytes] = current.obj
        return proxy
