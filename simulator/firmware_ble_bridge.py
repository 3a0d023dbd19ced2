"""The CPython peer of firmware/hal/sim_ble.py: the REAL firmware's GATT server on air.

The firmware runs on the MicroPython unix port with `SimBle` as its bluetooth.BLE. This
bridge listens on a socket for it and hosts, on an edge_agent `VirtualRadio`, a bumble
GATT peripheral whose services and characteristics mirror exactly what the firmware
registered (UUIDs, properties, value handles' order, CCCDs added by the stack). Then:

* firmware gatts_notify / gatts_indicate  -> ATT notification / indication on that link
  (sent whatever the central subscribed, as MicroPython documents; an indication's
  confirmation comes back as _IRQ_GATTS_INDICATE_DONE);
* firmware gatts_write(send_update=True)  -> notify / indicate each subscribed central
  according to its CCCD (bumble checks them);
* reads by a central                      -> the firmware's last gatts_write value;
* writes by a central                     -> _IRQ_GATTS_WRITE in the firmware (the value
  is truncated there to the attribute's buffer, like the stack does); a write to a
  characteristic without write properties is refused with ATT error 0x03;
* connections, disconnections and the negotiated ATT MTU -> the firmware's IRQs;
* firmware gap_advertise / gap_disconnect -> advertising / link termination.

The agent side (bleak with the radio's client backend, or edge_agent.ble_ingest's
BleManager) therefore talks ATT/GATT to the firmware's own code. Simulated, not real:
the air (see docs/ble-simulation.md), NimBLE's internals (modelled by SimBle: buffers,
credits), and one central at a time (the virtual peripheral stops advertising while
connected). Protocol and limits: firmware/hal/sim_ble.py; docs/firmware-transports.md.

    async with VirtualRadio() as radio:
        bridge = FirmwareBleBridge(radio)
        address = await bridge.start()          # VB_SIM_BLE for the firmware process
        ...start micropython with VB_SIM_BLE=address...
        peripheral = await bridge.wait_advertising()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from bumble import att, gatt
from bumble.device import Connection, Device

from edge_agent.ble.virtual_radio import VirtualPeripheral, VirtualRadio
from protocol import ble_service
from simulator.ble_devices import _unless_link_drops

logger = logging.getLogger(__name__)

MAX_LINE = 4096
DEFAULT_NAME = "MPY"
_P = gatt.Characteristic.Properties
_PERM = gatt.Characteristic.Permissions
_WRITE_FLAGS = ble_service.PROP_WRITE | ble_service.PROP_WRITE_NO_RESPONSE
_PROPERTY_MASK = 0xFF  # GATT property bits; higher flag bits are MicroPython security flags


class BridgeError(Exception):
    """The firmware did something the bridge cannot mirror."""


def uuid_text(value: int | str) -> str:
    """A firmware UUID (16-bit int or 128-bit text) in bumble's text form."""
    if isinstance(value, int):
        return f"{value:04X}"
    return value


class FirmwareBleBridge:
    """One firmware process <-> one bumble peripheral on `radio`. See the module docstring."""

    def __init__(self, radio: VirtualRadio, *, host: str = "127.0.0.1",
                 unix_path: str | None = None, rssi_dbm: int = -60) -> None:
        self.radio = radio
        self.host = host
        self.unix_path = unix_path
        self.rssi_dbm = rssi_dbm
        self.peripheral: VirtualPeripheral | None = None
        self.address: str | None = None
        self.errors: list[str] = []
        self.counters = {"notifications": 0, "indications": 0, "updates": 0, "writes": 0}
        self.firmware_connected = asyncio.Event()
        self.firmware_gone = asyncio.Event()
        self._advertising = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._services: list[gatt.Service] = []
        self._characteristics: dict[int, gatt.Characteristic[Any]] = {}
        self._flags: dict[int, int] = {}
        self._uuids: dict[int, int | str] = {}
        self._values: dict[int, bytes] = {}
        self._connections: dict[int, Connection] = {}
        self._gap_name = DEFAULT_NAME
        self._mtu = 23
        self._advertising_wanted = False
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> str:
        """Listen for the firmware; returns the VB_SIM_BLE address to give it."""
        if self.unix_path is not None:
            self._server = await asyncio.start_unix_server(
                self._serve, self.unix_path, limit=MAX_LINE * 2)
            self.address = f"unix:{self.unix_path}"
        else:
            self._server = await asyncio.start_server(
                self._serve, self.host, 0, limit=MAX_LINE * 2)
            port = self._server.sockets[0].getsockname()[1]
            self.address = f"tcp:{self.host}:{port}"
        return self.address

    async def wait_advertising(self, timeout_s: float = 10.0) -> VirtualPeripheral:
        """Wait until the firmware has registered its services and advertises."""
        async with asyncio.timeout(timeout_s):
            await self._advertising.wait()
        assert self.peripheral is not None
        return self.peripheral

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> FirmwareBleBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- for tests and the simulator ---------------------------------------------------
    def characteristic(self, uuid: int | str) -> gatt.Characteristic[Any]:
        """The mirrored characteristic with this UUID (16-bit int or 128-bit text)."""
        for handle, characteristic in self._characteristics.items():
            if self._uuids[handle] == (uuid.lower() if isinstance(uuid, str) else uuid):
                return characteristic
        raise KeyError(uuid)

    def value(self, uuid: int | str) -> bytes:
        """The firmware's current local value of a characteristic."""
        characteristic = self.characteristic(uuid)
        return self._values[self._handle_of(characteristic)]

    # ---- the firmware's socket -------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            self.errors.append("a second firmware connection was refused")
            writer.close()
            return
        self._writer = writer
        self.firmware_connected.set()
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    break
                except asyncio.LimitOverrunError:
                    self.errors.append("line longer than the limit")
                    break
                await self._handle_line(line)
        except ConnectionError as exc:
            logger.info("firmware connection lost: %r", exc)
        finally:
            await self._firmware_gone()

    async def _firmware_gone(self) -> None:
        """The firmware process ended: like a board losing power."""
        self.firmware_gone.set()
        if self.peripheral is not None and not self.radio.closed:
            with contextlib.suppress(Exception):
                await self.peripheral.switch_off()

    def _emit(self, event: dict[str, Any]) -> None:
        if self._writer is None or self._writer.is_closing():
            return
        self._writer.write((json.dumps(event) + "\n").encode())

    async def _handle_line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            op = message["op"]
            handler: Callable[[dict[str, Any]], Any] = getattr(self, f"_op_{op}")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.errors.append(f"bad line {line[:80]!r}: {exc!r}")
            return
        try:
            await handler(message)
        except (BridgeError, KeyError, ValueError, TypeError) as exc:
            self.errors.append(f"{op}: {exc!r}")
            logger.warning("firmware op %s failed: %r", op, exc)

    # ---- operations from the firmware -----------------------------------------------------
    async def _op_config(self, message: dict[str, Any]) -> None:
        self._gap_name = str(message["gap_name"])
        self._mtu = int(message["mtu"])

    async def _op_register(self, message: dict[str, Any]) -> None:
        if self.peripheral is not None:
            raise BridgeError("services registered again after advertising started")
        services = []
        for service in message["services"]:
            characteristics = [self._mirror(c) for c in service["chars"]]
            services.append(gatt.Service(uuid_text(service["uuid"]), characteristics))
        self._services = services

    def _mirror(self, spec: dict[str, Any]) -> gatt.Characteristic[Any]:
        handle = int(spec["handle"])
        flags = int(spec["flags"])
        permissions = _PERM(0)
        if flags & ble_service.PROP_READ:
            permissions |= _PERM.READABLE
        if flags & _WRITE_FLAGS:
            permissions |= _PERM.WRITEABLE
        self._values[handle] = b""
        self._flags[handle] = flags
        uuid = spec["uuid"]
        self._uuids[handle] = uuid.lower() if isinstance(uuid, str) else uuid
        characteristic = gatt.Characteristic(
            uuid_text(spec["uuid"]),
            _P(flags & _PROPERTY_MASK),
            permissions,
            gatt.CharacteristicValue(
                read=lambda _connection: self._values[handle],
                write=lambda connection, value: self._client_write(handle, connection, value),
            ),
        )
        self._characteristics[handle] = characteristic
        return characteristic

    async def _op_advertise(self, message: dict[str, Any]) -> None:
        interval_us = message.get("interval_us")
        adv = bytes.fromhex(message["adv"]) if "adv" in message else None
        resp = bytes.fromhex(message["resp"]) if "resp" in message else None
        if self.peripheral is None:
            if interval_us is None:
                return
            self.peripheral = await self.radio.add_peripheral(
                self._gap_name,
                services=self._services,
                advertising_data=adv or b"",
                scan_response_data=resp or b"",
                advertising_interval_ms=interval_us / 1000,
                connectable=bool(message.get("connectable", True)),
                rssi_dbm=self.rssi_dbm,
                max_att_mtu=self._mtu,
            )
            self.peripheral.device.on(Device.EVENT_CONNECTION, self._on_connection)
            self._advertising_wanted = True
            self._advertising.set()
            return
        if adv is not None:
            self.peripheral.advertising_data = adv
        if resp is not None:
            self.peripheral.scan_response_data = resp
        if interval_us is None:
            self._advertising_wanted = False
            await self.peripheral.stop_advertising()
        elif not self._advertising_wanted:
            # Once wanted, the virtual peripheral re-advertises after each disconnection
            # by itself -- the net effect of the firmware calling gap_advertise again.
            self._advertising_wanted = True
            await self.peripheral.start_advertising()

    async def _op_write(self, message: dict[str, Any]) -> None:
        handle = int(message["handle"])
        if handle not in self._characteristics:
            raise BridgeError(f"write to unknown handle {handle}")
        value = bytes.fromhex(message["value"])
        self._values[handle] = value
        if not message.get("update") or self.peripheral is None:
            return
        self.counters["updates"] += 1
        characteristic = self._characteristics[handle]
        device = self.peripheral.device
        await device.notify_subscribers(characteristic, value)
        if self._flags[handle] & ble_service.PROP_INDICATE:
            self._spawn(self._indicate_subscribers(characteristic, value))

    async def _indicate_subscribers(self, characteristic: gatt.Characteristic[Any],
                                    value: bytes) -> None:
        assert self.peripheral is not None
        for connection in list(self._connections.values()):
            await _unless_link_drops(connection, self.peripheral.device.indicate_subscriber(
                connection, characteristic, value))

    async def _op_notify(self, message: dict[str, Any]) -> None:
        connection, characteristic, value = self._target(message)
        if connection is not None:
            await self.peripheral.device.notify_subscriber(  # type: ignore[union-attr]
                connection, characteristic, value, force=True)
            self.counters["notifications"] += 1
        self._emit({"ev": "credit", "n": 1})

    async def _op_indicate(self, message: dict[str, Any]) -> None:
        connection, characteristic, value = self._target(message)
        if connection is None:
            self._emit({"ev": "credit", "n": 1})
            return
        self._spawn(self._indicate(int(message["conn"]), connection, characteristic, value))

    async def _indicate(self, conn: int, connection: Connection,
                        characteristic: gatt.Characteristic[Any], value: bytes) -> None:
        assert self.peripheral is not None
        confirmed = await _unless_link_drops(connection, self.peripheral.device.indicate_subscriber(
            connection, characteristic, value, force=True))
        self.counters["indications"] += 1
        self._emit({"ev": "indicate_done", "conn": conn,
                    "handle": self._handle_of(characteristic), "status": 0 if confirmed else 1})
        self._emit({"ev": "credit", "n": 1})

    async def _op_disconnect(self, message: dict[str, Any]) -> None:
        connection = self._connections.get(int(message["conn"]))
        if connection is not None:
            await connection.disconnect()

    def _target(self, message: dict[str, Any]) -> tuple[Connection | None,
                                                        gatt.Characteristic[Any], bytes]:
        handle = int(message["handle"])
        if handle not in self._characteristics:
            raise BridgeError(f"unknown handle {handle}")
        return (self._connections.get(int(message["conn"])), self._characteristics[handle],
                bytes.fromhex(message["value"]))

    # ---- radio events ---------------------------------------------------------------------
    def _on_connection(self, connection: Connection) -> None:
        conn = connection.handle
        self._connections[conn] = connection
        address = connection.peer_address
        event = {"conn": conn, "addr_type": int(address.address_type), "addr": bytes(address).hex()}
        self._emit({"ev": "connect", **event})

        def on_mtu() -> None:
            self._emit({"ev": "mtu", "conn": conn, "mtu": connection.att_mtu})

        def on_disconnection(_reason: int) -> None:
            self._connections.pop(conn, None)
            self._emit({"ev": "disconnect", **event})

        connection.on(Connection.EVENT_CONNECTION_ATT_MTU_UPDATE, on_mtu)
        connection.on(Connection.EVENT_DISCONNECTION, on_disconnection)

    def _client_write(self, handle: int, connection: Connection, value: bytes) -> None:
        if not self._flags[handle] & _WRITE_FLAGS:
            raise att.ATT_Error(att.ATT_WRITE_NOT_PERMITTED_ERROR)
        self.counters["writes"] += 1
        self._emit({"ev": "write", "conn": connection.handle, "handle": handle,
                    "value": bytes(value).hex()})

    # ---- helpers ----------------------------------------------------------------------------
    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _handle_of(self, characteristic: gatt.Characteristic[Any]) -> int:
        for handle, candidate in self._characteristics.items():
            if candidate is characteristic:
                return handle
        raise KeyError("characteristic not mirrored")
