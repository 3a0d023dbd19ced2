"""A simulated BLE radio: bumble controllers joined by a local link with a path model.

Above the link layer everything is real bumble code: each central and peripheral is a
bumble ``Device`` whose host talks HCI *bytes* to its own bumble ``Controller``, and on
top of that run L2CAP, ATT, GATT and SMP. What is simulated is the air between the
controllers: who hears whom, the RSSI each receiver reports, scan responses, and link
loss (supervision timeout) when a peripheral moves out of range.

Create one ``VirtualRadio`` per test, inside the running event loop::

    async with VirtualRadio() as radio:
        gateway = await radio.add_central("gateway")
        sensor = await radio.add_peripheral("HR-1", services=[heart_rate_service])
        async with BleakClient(sensor.address, backend=gateway.client_backend) as client:
            ...

Nothing is global: two radios in one loop never hear each other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import math
import random
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bleak.uuids import normalize_uuid_str
from bumble import data_types, gatt, hci
from bumble.controller import Connection as LinkLayerConnection
from bumble.controller import Controller
from bumble.core import UUID, AdvertisingData, PhysicalTransport
from bumble.device import AdvertisingType, Connection, Device
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

if TYPE_CHECKING:
    from bleak.backends.client import BaseBleakClient
    from bleak.backends.scanner import BaseBleakScanner
    from bumble import ll

logger = logging.getLogger(__name__)

LEGACY_ADVERTISING_DATA_MAX = 31  # bytes, Core Vol 6 Part B 2.3.1 (legacy PDUs)
DEFAULT_RSSI_DBM = -60
RSSI_AT_ONE_METRE_DBM = -59  # typical calibration of a 0 dBm BLE transmitter
FREE_SPACE_PATH_LOSS_EXPONENT = 2.0
RECEIVER_SENSITIVITY_DBM = -95  # typical 1M PHY receiver; below this a packet is lost
HCI_RSSI_MIN, HCI_RSSI_MAX = -127, 20  # HCI LE Advertising Report RSSI range
DEFAULT_SUPERVISION_TIMEOUT_S = 0.42  # BlueZ's default LE supervision timeout
DEFAULT_ADVERTISING_INTERVAL_MS = 100.0

_FLAGS_LE_GENERAL_NO_BREDR = 0x06  # LE General Discoverable | BR/EDR Not Supported
_ADDRESS_RE = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")
_BLUETOOTH_BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"


class VirtualRadioError(Exception):
    """Misuse of the virtual radio (bad address, duplicate address, closed radio...)."""


@dataclasses.dataclass(frozen=True)
class RadioPath:
    """What the air between one central and one peripheral does to packets."""

    rssi_dbm: int = DEFAULT_RSSI_DBM
    in_range: bool = True


def rssi_at_distance(
    distance_m: float,
    *,
    rssi_at_one_metre_dbm: float = RSSI_AT_ONE_METRE_DBM,
    path_loss_exponent: float = FREE_SPACE_PATH_LOSS_EXPONENT,
) -> int:
    """Log-distance path-loss model: RSSI(d) = RSSI(1 m) - 10 n log10(d)."""
    if not math.isfinite(distance_m) or distance_m <= 0:
        raise ValueError(f"distance must be a positive finite number of metres: {distance_m!r}")
    rssi = rssi_at_one_metre_dbm - 10.0 * path_loss_exponent * math.log10(distance_m)
    return _clamp_rssi(round(rssi))


def _clamp_rssi(rssi_dbm: int) -> int:
    return max(HCI_RSSI_MIN, min(HCI_RSSI_MAX, rssi_dbm))


def _bumble_uuid(uuid_text: str) -> UUID:
    """16-bit form for SIG UUIDs (so advertising data stays short), else 128-bit."""
    normalized = normalize_uuid_str(uuid_text)
    if normalized.startswith("0000") and normalized.endswith(_BLUETOOTH_BASE_UUID_SUFFIX):
        return UUID.from_16_bits(int(normalized[4:8], 16))
    return UUID(normalized)


def build_advertising_data(
    *,
    local_name: str | None = None,
    service_uuids: Sequence[str] = (),
    manufacturer_data: Mapping[int, bytes] | None = None,
    service_data: Mapping[str, bytes] | None = None,
    tx_power_dbm: int | None = None,
    include_flags: bool = True,
) -> bytes:
    """Encode AD structures with bumble's data types; raise ValueError above 31 bytes.

    Legacy advertising carries at most 31 bytes, which is what real health devices use:
    anything that does not fit belongs in the scan response (call this twice).
    """
    structures: list[Any] = []
    if include_flags:
        structures.append(data_types.Flags(_FLAGS_LE_GENERAL_NO_BREDR))
    if local_name is not None:
        structures.append(data_types.CompleteLocalName(local_name))
    uuids = [_bumble_uuid(u) for u in service_uuids]
    short = [u for u in uuids if len(u.uuid_bytes) == 2]
    long = [u for u in uuids if len(u.uuid_bytes) != 2]
    if short:
        structures.append(data_types.CompleteListOf16BitServiceUUIDs(short))
    if long:
        structures.append(data_types.CompleteListOf128BitServiceUUIDs(long))
    for uuid_text, payload in (service_data or {}).items():
        service_uuid = _bumble_uuid(uuid_text)
        if len(service_uuid.uuid_bytes) == 2:
            structures.append(data_types.ServiceData16BitUUID(service_uuid, bytes(payload)))
        else:
            structures.append(data_types.ServiceData128BitUUID(service_uuid, bytes(payload)))
    for company_id, payload in (manufacturer_data or {}).items():
        if not 0 <= company_id <= 0xFFFF:
            raise ValueError(f"company identifier out of range: {company_id}")
        structures.append(data_types.ManufacturerSpecificData(company_id, bytes(payload)))
    if tx_power_dbm is not None:
        if not -127 <= tx_power_dbm <= 127:
            raise ValueError(f"TX power level out of range: {tx_power_dbm}")
        # The AD type is a signed octet (Core Supplement Part A 1.5).
        structures.append(
            (AdvertisingData.Type.TX_POWER_LEVEL, tx_power_dbm.to_bytes(1, "little", signed=True))
        )
    encoded = bytes(AdvertisingData(structures))
    if len(encoded) > LEGACY_ADVERTISING_DATA_MAX:
        raise ValueError(
            f"advertising data is {len(encoded)} bytes; legacy advertising allows "
            f"{LEGACY_ADVERTISING_DATA_MAX} (move fields to the scan response)"
        )
    return encoded


def _normalize_address(address: str) -> str:
    normalized = address.upper()
    if not _ADDRESS_RE.match(normalized):
        raise VirtualRadioError(f"not a Bluetooth address: {address!r}")
    if int(normalized[:2], 16) & 0xC0 != 0xC0:
        # Static random addresses must have the two top bits set (Core Vol 6 Part B 1.3.2.1).
        raise VirtualRadioError(f"not a static random address (top bits must be 11): {address}")
    return normalized


class _ShapedLink(LocalLink):
    """bumble's LocalLink, but every delivery first asks the radio's path model."""

    def __init__(self, radio: VirtualRadio) -> None:
        super().__init__()
        self._radio = radio

    def send_advertising_pdu(
        self, sender_controller: Controller, packet: ll.AdvertisingPdu
    ) -> None:
        loop = asyncio.get_running_loop()
        for receiver in list(self.controllers):
            if receiver is sender_controller:
                continue
            if self._radio.path_between(sender_controller, receiver).in_range:
                loop.call_soon(receiver.on_ll_advertising_pdu, packet)

    def send_acl_data(
        self,
        sender_controller: Controller,
        destination_address: hci.Address,
        transport: PhysicalTransport,
        data: bytes,
    ) -> None:
        destination = self.find_le_controller(destination_address)
        if (
            destination is not None
            and not self._radio.path_between(sender_controller, destination).in_range
        ):
            return  # lost in the air; the supervision timeout will end the link
        super().send_acl_data(sender_controller, destination_address, transport, data)

    def send_ll_control_pdu(
        self, sender_address: hci.Address, receiver_address: hci.Address, packet: ll.ControlPdu
    ) -> None:
        sender = self.find_le_controller(sender_address)
        receiver = self.find_le_controller(receiver_address)
        if sender is not None and receiver is not None:
            if not self._radio.path_between(sender, receiver).in_range:
                return
        super().send_ll_control_pdu(sender_address, receiver_address, packet)


class _VirtualController(Controller):
    """bumble's Controller with the fixes and air effects the simulation needs."""

    def __init__(self, name: str, radio: VirtualRadio, link: _ShapedLink) -> None:
        super().__init__(name, link=link)
        self._radio = radio
        # Negotiated supervision timeout per peer, seconds (central side only).
        self.supervision_timeouts: dict[hci.Address, float] = {}

    # HCI events leaving the controller: advertising reports carry the air's RSSI and
    # the advertiser's real scan response (stock bumble reports -50 dBm and echoes the
    # advertising data as a fake scan response).
    def send_hci_packet(self, packet: hci.HCI_Packet) -> None:
        if isinstance(
            packet,
            hci.HCI_LE_Advertising_Report_Event | hci.HCI_LE_Extended_Advertising_Report_Event,
        ):
            shaped = self._shape_advertising_reports(packet)
            if shaped is None:
                return
            packet = shaped
        super().send_hci_packet(packet)

    def _shape_advertising_reports(
        self,
        event: hci.HCI_LE_Advertising_Report_Event | hci.HCI_LE_Extended_Advertising_Report_Event,
    ) -> hci.HCI_Packet | None:
        reports = []
        for report in event.reports:
            advertiser = self.link.find_le_controller(report.address)
            if advertiser is None:
                continue
            if _is_scan_response(report):
                if not self.le_scan_type:  # passive scanning sends no SCAN_REQ
                    continue
                scan_response = _current_scan_response(advertiser, report.address)
                if not scan_response:
                    continue
                report = dataclasses.replace(report, data=scan_response)
            rssi = self._radio.received_rssi(advertiser, self)
            reports.append(dataclasses.replace(report, rssi=rssi))
        if not reports:
            return None
        return type(event)(reports)

    def on_hci_le_set_extended_scan_parameters_command(
        self, command: hci.HCI_LE_Set_Extended_Scan_Parameters_Command
    ) -> hci.HCI_StatusReturnParameters:
        # Stock bumble forgets active/passive for extended scanning; remember it.
        self.le_scan_type = command.scan_types[0] if command.scan_types else 0
        return super().on_hci_le_set_extended_scan_parameters_command(command)

    def create_le_connection(self, peer_address: hci.Address) -> None:
        advertiser = self.link.find_le_controller(peer_address)
        if advertiser is None or not _is_connectable_advertiser(advertiser, peer_address):
            return  # keep initiating: a non-connectable advertiser never answers CONNECT_IND
        pending = self.pending_le_connection
        if pending is not None:
            timeout_units = (
                pending.supervision_timeouts[0]
                if isinstance(pending, hci.HCI_LE_Extended_Create_Connection_Command)
                else pending.supervision_timeout
            )
            self.supervision_timeouts[peer_address] = timeout_units * 0.010
        super().create_le_connection(peer_address)

    def on_hci_le_create_connection_cancel_command(
        self, command: hci.HCI_LE_Create_Connection_Cancel_Command
    ) -> hci.HCI_StatusReturnParameters:
        # Stock bumble acknowledges the cancel but never ends the pending connection, so a
        # host waiting for the outcome hangs. Core Vol 4 Part E 7.8.13: after the Command
        # Complete, report LE Connection Complete with Unknown Connection Identifier.
        pending = self.pending_le_connection
        if pending is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.COMMAND_DISALLOWED_ERROR)
        self.pending_le_connection = None
        failure = hci.HCI_LE_Connection_Complete_Event(
            status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
            connection_handle=0,
            role=hci.Role.CENTRAL,
            peer_address_type=pending.peer_address_type,
            peer_address=pending.peer_address,
            connection_interval=0,
            peripheral_latency=0,
            supervision_timeout=0,
            central_clock_accuracy=0,
        )
        # call_soon keeps the order the spec requires: Command Complete goes out first.
        asyncio.get_running_loop().call_soon(self.send_hci_packet, failure)
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)


def _is_scan_response(report: Any) -> bool:
    if isinstance(report, hci.HCI_LE_Extended_Advertising_Report_Event.Report):
        return bool(
            report.event_type & hci.HCI_LE_Extended_Advertising_Report_Event.EventType.SCAN_RESPONSE
        )
    return report.event_type == hci.HCI_LE_Advertising_Report_Event.EventType.SCAN_RSP


def _current_scan_response(advertiser: Controller, address: hci.Address) -> bytes:
    for advertising_set in advertiser.advertising_sets.values():
        if advertising_set.enabled and advertising_set.address == address:
            return bytes(advertising_set.scan_response_data)
    legacy = advertiser.le_legacy_advertiser
    if legacy.enabled and legacy.address == address:
        return bytes(legacy.scan_response_data)
    return b""


def _is_connectable_advertiser(advertiser: Controller, address: hci.Address) -> bool:
    properties = hci.HCI_LE_Set_Extended_Advertising_Parameters_Command.AdvertisingProperties
    connectable_bit = properties.CONNECTABLE_ADVERTISING
    for advertising_set in advertiser.advertising_sets.values():
        if advertising_set.enabled and advertising_set.address == address:
            parameters = advertising_set.parameters
            return parameters is not None and bool(
                parameters.advertising_event_properties & connectable_bit
            )
    legacy = advertiser.le_legacy_advertiser
    if legacy.enabled and legacy.address == address:
        return legacy.advertising_type in (
            hci.HCI_LE_Set_Advertising_Parameters_Command.AdvertisingType.ADV_IND,
            hci.HCI_LE_Set_Advertising_Parameters_Command.AdvertisingType.ADV_DIRECT_IND,
            hci.HCI_LE_Set_Advertising_Parameters_Command.AdvertisingType.ADV_DIRECT_IND_LOW_DUTY,
        )
    return False


class VirtualCentral:
    """A gateway's BLE adapter: one bumble host + controller on the virtual radio."""

    def __init__(
        self, radio: VirtualRadio, name: str, device: Device, controller: _VirtualController
    ) -> None:
        self.radio = radio
        self.name = name
        self.device = device
        self.controller = controller
        # A controller initiates one LE connection at a time (HCI rejects a second
        # LE Create Connection); clients queue here as BlueZ queues them.
        self.connect_lock = asyncio.Lock()
        self._scan_lock = asyncio.Lock()
        self._scan_users: dict[int, bool] = {}  # token -> wants active scanning
        self._scan_tokens = itertools.count(1)
        self._scanning_active: bool | None = None  # None: not scanning

    @property
    def address(self) -> str:
        return self.device.random_address.to_string(with_type_qualifier=False)

    @functools.cached_property
    def scanner_backend(self) -> type[BaseBleakScanner]:
        """A bleak scanner backend class bound to this central: BleakScanner(backend=...)."""
        from edge_agent.ble.bumble_backend import bind_scanner_backend

        return bind_scanner_backend(self)

    @functools.cached_property
    def client_backend(self) -> type[BaseBleakClient]:
        """A bleak client backend class bound to this central: BleakClient(backend=...)."""
        from edge_agent.ble.bumble_backend import bind_client_backend

        return bind_client_backend(self)

    async def start_scan(self, *, active: bool) -> int:
        """Register one scan user; the controller scans while any user remains."""
        self.radio.check_open()
        async with self._scan_lock:
            token = next(self._scan_tokens)
            self._scan_users[token] = active
            await self._apply_scan_state()
            return token

    async def stop_scan(self, token: int) -> None:
        async with self._scan_lock:
            if self._scan_users.pop(token, None) is not None and not self.radio.closed:
                await self._apply_scan_state()

    async def _apply_scan_state(self) -> None:
        wanted = any(self._scan_users.values()) if self._scan_users else None
        if wanted == self._scanning_active:
            return
        if self._scanning_active is not None:
            await self.device.stop_scanning()
            self._scanning_active = None
        if wanted is not None:
            await self.device.start_scanning(active=wanted, filter_duplicates=False)
            self._scanning_active = wanted


class VirtualPeripheral:
    """A simulated BLE sensor: a bumble GATT server that advertises on the radio."""

    def __init__(
        self,
        radio: VirtualRadio,
        name: str,
        device: Device,
        controller: _VirtualController,
        *,
        advertising_data: bytes,
        scan_response_data: bytes,
        advertising_interval_ms: float,
        connectable: bool,
        path: RadioPath,
    ) -> None:
        self.radio = radio
        self.name = name
        self.device = device
        self.controller = controller
        self.advertising_data = advertising_data
        self.scan_response_data = scan_response_data
        self.advertising_interval_ms = advertising_interval_ms
        self.connectable = connectable
        self._default_path = path
        self._paths: dict[VirtualCentral, RadioPath] = {}
        self._advertising_wanted = False
        self._restart_tasks: set[asyncio.Task[None]] = set()
        device.on(Device.EVENT_CONNECTION, self._on_connection)

    @property
    def address(self) -> str:
        return self.device.random_address.to_string(with_type_qualifier=False)

    @property
    def connections(self) -> list[Connection]:
        return list(self.device.connections.values())

    @property
    def is_advertising(self) -> bool:
        return bool(self.device.is_advertising)

    # ---- advertising ---------------------------------------------------------------
    async def start_advertising(self) -> None:
        """Advertise (and re-advertise after every disconnection) until stopped."""
        self.radio.check_open()
        self._advertising_wanted = True
        if not self.connections:
            await self._advertise_now()

    async def stop_advertising(self) -> None:
        self._advertising_wanted = False
        await self.device.stop_advertising()

    async def _advertise_now(self) -> None:
        advertising_type = (
            AdvertisingType.UNDIRECTED_CONNECTABLE_SCANNABLE
            if self.connectable
            else AdvertisingType.UNDIRECTED_SCANNABLE
        )
        await self.device.start_advertising(
            advertising_type=advertising_type,
            advertising_data=self.advertising_data,
            scan_response_data=self.scan_response_data,
            advertising_interval_min=self.advertising_interval_ms,
            advertising_interval_max=self.advertising_interval_ms,
        )

    def _on_connection(self, connection: Connection) -> None:
        connection.on(Connection.EVENT_DISCONNECTION, lambda _reason: self._after_disconnection())

    def _after_disconnection(self) -> None:
        # The controller stops advertising when a central connects; a real sensor
        # advertises again once the link is gone.
        if self._advertising_wanted and not self.radio.closed:
            task = asyncio.get_running_loop().create_task(self._advertise_now())
            self._restart_tasks.add(task)
            task.add_done_callback(self._restart_tasks.discard)

    # ---- GATT server side ----------------------------------------------------------
    async def notify(self, characteristic: gatt.Characteristic[Any], value: bytes) -> None:
        """Send an ATT Handle Value Notification to every subscribed central."""
        await self.device.notify_subscribers(characteristic, value)

    async def indicate(self, characteristic: gatt.Characteristic[Any], value: bytes) -> None:
        """Send an ATT Handle Value Indication to every subscriber; waits for confirmations."""
        await self.device.indicate_subscribers(characteristic, value)

    async def disconnect_all(
        self, reason: int = hci.HCI_ErrorCode.REMOTE_USER_TERMINATED_CONNECTION_ERROR
    ) -> None:
        """Peripheral-initiated disconnection (LL_TERMINATE_IND) of every link."""
        for connection in self.connections:
            await connection.disconnect(reason)

    async def switch_off(self) -> None:
        """Battery pulled: stop advertising and terminate links (reason: power off)."""
        await self.stop_advertising()
        await self.disconnect_all(
            hci.HCI_ErrorCode.REMOTE_DEVICE_TERMINATED_CONNECTION_DUE_TO_POWER_OFF_ERROR
        )

    async def switch_on(self) -> None:
        await self.start_advertising()

    # ---- the air ---------------------------------------------------------------------
    def path_to(self, central: VirtualCentral | None) -> RadioPath:
        if central is None:
            return self._default_path
        return self._paths.get(central, self._default_path)

    def set_rssi(self, rssi_dbm: int, *, central: VirtualCentral | None = None) -> None:
        """Set the RSSI that central (default: every central) measures for this device."""
        self._update_path(central, rssi_dbm=_clamp_rssi(int(rssi_dbm)))

    def set_distance(
        self,
        distance_m: float,
        *,
        central: VirtualCentral | None = None,
        sensitivity_dbm: int = RECEIVER_SENSITIVITY_DBM,
    ) -> int:
        """Place the device at a distance; below the sensitivity it is out of range."""
        rssi = rssi_at_distance(distance_m)
        self._update_path(central, rssi_dbm=rssi, in_range=rssi >= sensitivity_dbm)
        return rssi

    def go_out_of_range(self, *, central: VirtualCentral | None = None) -> None:
        """Packets stop; a connected central sees link loss after its supervision timeout."""
        self._update_path(central, in_range=False)

    def come_into_range(self, *, central: VirtualCentral | None = None) -> None:
        self._update_path(central, in_range=True)

    def _update_path(self, central: VirtualCentral | None, **changes: Any) -> None:
        if central is None:
            self._default_path = dataclasses.replace(self._default_path, **changes)
            self._paths = {c: dataclasses.replace(p, **changes) for c, p in self._paths.items()}
        else:
            self._paths[central] = dataclasses.replace(self.path_to(central), **changes)
        self.radio.on_path_changed(self)


class VirtualRadio:
    """The shared air of one simulation: centrals and peripherals on one bumble link.

    Use it as an async context manager inside the running loop (bumble controllers need
    the loop at construction); ``close()`` stops every timer it started.
    """

    def __init__(self, *, rssi_jitter_db: float = 0.0, seed: int = 0) -> None:
        asyncio.get_running_loop()  # fail early, outside a loop nothing here can work
        self.link = _ShapedLink(self)
        self.rssi_jitter_db = rssi_jitter_db
        self._random = random.Random(seed)
        self._centrals: dict[Controller, VirtualCentral] = {}
        self._peripherals: dict[Controller, VirtualPeripheral] = {}
        self._addresses: set[str] = set()
        self._address_counter = itertools.count(1)
        self._link_loss_timers: dict[tuple[Controller, Controller], asyncio.TimerHandle] = {}
        self.closed = False

    async def __aenter__(self) -> VirtualRadio:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def centrals(self) -> list[VirtualCentral]:
        return list(self._centrals.values())

    @property
    def peripherals(self) -> list[VirtualPeripheral]:
        return list(self._peripherals.values())

    def check_open(self) -> None:
        if self.closed:
            raise VirtualRadioError("the virtual radio is closed")

    # ---- building the simulation -------------------------------------------------------
    async def add_central(
        self, name: str = "gateway", *, address: str | None = None
    ) -> VirtualCentral:
        device, controller = await self._new_device(name, address, prefix=0xC0)
        central = VirtualCentral(self, name, device, controller)
        self._centrals[controller] = central
        return central

    async def add_peripheral(
        self,
        name: str,
        *,
        services: Iterable[gatt.Service] = (),
        address: str | None = None,
        advertising_data: bytes | None = None,
        scan_response_data: bytes = b"",
        advertising_interval_ms: float = DEFAULT_ADVERTISING_INTERVAL_MS,
        connectable: bool = True,
        rssi_dbm: int = DEFAULT_RSSI_DBM,
        max_att_mtu: int = 517,
        advertise: bool = True,
    ) -> VirtualPeripheral:
        """Add a GATT-server peripheral; by default it advertises its name and services.

        ``max_att_mtu`` is the largest ATT MTU the peripheral accepts in the exchange
        (many real sensors answer 23 or 247).
        """
        services = list(services)
        if advertising_data is None:
            advertising_data = build_advertising_data(
                local_name=name,
                service_uuids=[_service_uuid_text(service) for service in services],
            )
        for label, data in (
            ("advertising", advertising_data),
            ("scan response", scan_response_data),
        ):
            if len(data) > LEGACY_ADVERTISING_DATA_MAX:
                raise ValueError(f"{label} data longer than {LEGACY_ADVERTISING_DATA_MAX} bytes")
        if not 23 <= max_att_mtu <= 517:
            raise ValueError(f"ATT MTU must be within 23..517: {max_att_mtu}")
        device, controller = await self._new_device(name, address, prefix=0xD0)
        device.gatt_server.max_mtu = max_att_mtu
        device.add_services(services)
        peripheral = VirtualPeripheral(
            self,
            name,
            device,
            controller,
            advertising_data=advertising_data,
            scan_response_data=scan_response_data,
            advertising_interval_ms=advertising_interval_ms,
            connectable=connectable,
            path=RadioPath(rssi_dbm=_clamp_rssi(rssi_dbm)),
        )
        self._peripherals[controller] = peripheral
        if advertise:
            await peripheral.start_advertising()
        return peripheral

    async def _new_device(
        self, name: str, address: str | None, *, prefix: int
    ) -> tuple[Device, _VirtualController]:
        self.check_open()
        if address is None:
            address = self._next_address(prefix)
        address = _normalize_address(address)
        if address in self._addresses:
            raise VirtualRadioError(f"address already on this radio: {address}")
        self._addresses.add(address)
        controller = _VirtualController(name, self, self.link)
        host = Host(controller, AsyncPipeSink(controller))
        device = Device(name=name, address=hci.Address(address), host=host)
        await device.power_on()
        return device, controller

    def _next_address(self, prefix: int) -> str:
        while True:
            n = next(self._address_counter)
            candidate = (
                f"{prefix:02X}:00:00:{(n >> 16) & 0xFF:02X}:{(n >> 8) & 0xFF:02X}:{n & 0xFF:02X}"
            )
            if candidate not in self._addresses:
                return candidate

    async def close(self) -> None:
        """Stop all advertising, scanning and timers; drop every device from the link."""
        if self.closed:
            return
        self.closed = True
        for timer in self._link_loss_timers.values():
            timer.cancel()
        self._link_loss_timers.clear()
        # Let advertising restarts finish: cancelling one mid-command would leave bumble's
        # host a command response with nobody waiting for it.
        restarts = [t for p in self.peripherals for t in p._restart_tasks]
        await asyncio.gather(*restarts, return_exceptions=True)
        devices = [c.device for c in self.centrals] + [p.device for p in self.peripherals]
        controllers = list(self._centrals) + list(self._peripherals)
        for controller in controllers:
            # Silence the air first so no timer fires into a half-closed host.
            for advertising_set in controller.advertising_sets.values():
                advertising_set.stop()
            controller.le_legacy_advertiser.stop()
            controller.le_scan_enable = False
        for device in devices:
            await device.power_off()  # flushes the host: pending waits end, links report down
        for controller in controllers:
            self.link.remove_controller(controller)

    # ---- the path model (used by the link and the controllers) ---------------------------
    def path_between(self, a: Controller, b: Controller) -> RadioPath:
        peripheral_a = self._peripherals.get(a)
        peripheral_b = self._peripherals.get(b)
        if peripheral_a is not None and peripheral_b is not None:
            return RadioPath()  # peripherals neither scan nor connect to each other
        if peripheral_a is not None:
            return peripheral_a.path_to(self._centrals.get(b))
        if peripheral_b is not None:
            return peripheral_b.path_to(self._centrals.get(a))
        return RadioPath()

    def received_rssi(self, transmitter: Controller, receiver: Controller) -> int:
        rssi = self.path_between(transmitter, receiver).rssi_dbm
        if self.rssi_jitter_db > 0:
            rssi += round(self._random.gauss(0.0, self.rssi_jitter_db))
        return _clamp_rssi(rssi)

    def on_path_changed(self, peripheral: VirtualPeripheral) -> None:
        """Start or cancel link-loss timers for every central's links to ``peripheral``."""
        if self.closed:
            return
        for central_controller, central in self._centrals.items():
            key = (central_controller, peripheral.controller)
            if peripheral.path_to(central).in_range:
                timer = self._link_loss_timers.pop(key, None)
                if timer is not None:
                    timer.cancel()
                continue
            links = self._links_between(central_controller, peripheral.controller)
            if not links or key in self._link_loss_timers:
                continue
            timeouts = central_controller.supervision_timeouts
            timeout_s = max(
                timeouts.get(link.peer_address, DEFAULT_SUPERVISION_TIMEOUT_S) for link in links
            )
            self._link_loss_timers[key] = asyncio.get_running_loop().call_later(
                timeout_s, self._supervision_timeout_expired, central_controller, peripheral
            )

    def _links_between(
        self, central_controller: Controller, peripheral_controller: Controller
    ) -> list[LinkLayerConnection]:
        return [
            link
            for peer_address, link in central_controller.le_connections.items()
            if self.link.find_le_controller(peer_address) is peripheral_controller
        ]

    def _supervision_timeout_expired(
        self, central_controller: _VirtualController, peripheral: VirtualPeripheral
    ) -> None:
        self._link_loss_timers.pop((central_controller, peripheral.controller), None)
        central = self._centrals[central_controller]
        if self.closed or peripheral.path_to(central).in_range:
            return
        reason = hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR
        for link in self._links_between(central_controller, peripheral.controller):
            peripheral_side = peripheral.controller.le_connections.get(link.self_address)
            central_controller.on_le_disconnected(link, reason)
            if peripheral_side is not None:
                peripheral.controller.on_le_disconnected(peripheral_side, reason)


def _service_uuid_text(service: gatt.Service) -> str:
    # bumble keeps UUIDs little-endian; the text form is big-endian.
    return str(uuid.UUID(bytes=service.uuid.uuid_128_bytes[::-1]))
