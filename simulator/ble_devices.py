"""Simulated BLE health devices: bumble GATT servers on a VirtualRadio (edge_agent.ble).

Each standard device exposes its Bluetooth SIG service exactly as the specification lays
it out (measurement characteristic with the mandated notify/indicate property, its
feature or type characteristic) and encodes every value with `protocol.gatt`, so the
agent's decoders are tested against the same codecs firmware uses, over real ATT.

  HeartRateMonitor        0x180D  Heart Rate Measurement 0x2A37 (notify)
  Thermometer             0x1809  Temperature Measurement 0x2A1C (indicate)
  BloodPressureMonitor    0x1810  Blood Pressure Measurement 0x2A35 (indicate)
  PulseOximeter           0x1822  PLX Continuous 0x2A5F (notify), Spot-Check 0x2A5E (indicate)
  WeightScale             0x181D  Weight Measurement 0x2A9D (indicate)
  GlucoseMeter            0x1808  stored records, Glucose Measurement 0x2A18 (notify) and a
                                  working Record Access Control Point 0x2A52 (write+indicate)
  FirmwareLinkDevice      the VitalBridge firmware service (protocol.ble_service): messages
                          fragmented on the uplink, reassembled from the downlink

A standard device takes a `ValueSource`, a callable from seconds since the device was
attached to the field values of one measurement (physiology generators plug in here), and
sends one measurement per `measure()` or periodically with `start_streaming()`.

Faults, on every device: `reboot()` (links drop, advertising stops, restarts after the
downtime; stored records survive), `drop_link()` (the device terminates its links),
`go_out_of_range()` / `come_into_range()` (link loss after the supervision timeout),
`send_garbage()` (raw bytes in the measurement characteristic) and `skew_clock()` (its
timestamps move, its measurements do not).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from bumble import att, gatt, hci
from bumble.device import Connection, Device

from edge_agent.ble.virtual_radio import VirtualPeripheral, VirtualRadio
from protocol import ble_service
from protocol.errors import GattError
from protocol.fragments import Reassembler, fragment
from protocol.gatt import characteristics as gatt_codecs
from protocol.gatt import glucose

logger = logging.getLogger(__name__)

ValueSource = Callable[[float], Mapping[str, Any]]

_P = gatt.Characteristic.Properties
_PERM = gatt.Characteristic.Permissions
# A garbage value that is no valid measurement of any kind: a flags byte announcing
# fields that never come.
DEFAULT_GARBAGE = b"\x1f"


def constant(**values: Any) -> ValueSource:
    """A source that gives the same field values at every moment."""
    return lambda _elapsed: values


def _uuid16(value: int) -> str:
    return f"{value:04X}"


class SimulatedPeripheral:
    """Base of every simulated device: radio attachment, subscriptions and faults."""

    kind: ClassVar[str] = "peripheral"

    def __init__(self, name: str, *, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.clock = clock
        self.clock_skew_s = 0.0
        self.sent: list[bytes] = []  # every value sent (measurements and garbage), in order
        self.reboots = 0
        self._peripheral: VirtualPeripheral | None = None
        self._attached_at = 0.0

    # ---- building ---------------------------------------------------------------------
    def services(self) -> list[gatt.Service]:
        raise NotImplementedError

    @property
    def garbage_characteristic(self) -> gatt.Characteristic[Any]:
        """Where send_garbage() puts its bytes by default."""
        raise NotImplementedError

    async def attach(
        self,
        radio: VirtualRadio,
        *,
        address: str | None = None,
        rssi_dbm: int = -60,
        max_att_mtu: int = 517,
        advertise: bool = True,
    ) -> SimulatedPeripheral:
        """Put the device on the radio; it advertises its name and service."""
        self._peripheral = await radio.add_peripheral(
            self.name,
            services=self.services(),
            address=address,
            rssi_dbm=rssi_dbm,
            max_att_mtu=max_att_mtu,
            advertise=advertise,
        )
        self._peripheral.device.on(Device.EVENT_CONNECTION, self._on_connection)
        self._attached_at = self.clock()
        return self

    @property
    def peripheral(self) -> VirtualPeripheral:
        if self._peripheral is None:
            raise RuntimeError(f"{self.name} is not attached to a radio")
        return self._peripheral

    @property
    def address(self) -> str:
        return self.peripheral.address

    @property
    def connections(self) -> list[Connection]:
        return self.peripheral.connections

    def elapsed(self) -> float:
        return self.clock() - self._attached_at

    def device_time(self) -> tuple[int, ...]:
        """The device's wall clock (local time, with its skew) as (y, m, d, h, min, s)."""
        return tuple(time.localtime(self.clock() + self.clock_skew_s)[:6])

    def _on_connection(self, connection: Connection) -> None:
        connection.on(Connection.EVENT_DISCONNECTION, lambda _reason: self._on_link_down())

    def _on_link_down(self) -> None:
        """A link dropped; subclasses forget per-link state."""

    # ---- subscriptions and delivery ------------------------------------------------------
    def _cccd(self, connection: Connection, characteristic: gatt.Characteristic[Any]) -> int:
        subscribers = self.peripheral.device.gatt_server.subscribers.get(connection, {})
        value = subscribers.get(characteristic.handle, b"\x00\x00")
        return int.from_bytes(value[:2], "little") if len(value) >= 2 else 0

    def subscribers(self, characteristic: gatt.Characteristic[Any]) -> list[Connection]:
        """Connections that enabled notifications or indications of `characteristic`."""
        return [c for c in self.connections if self._cccd(c, characteristic)]

    async def wait_subscribed(
        self, characteristic: gatt.Characteristic[Any], timeout_s: float = 5.0
    ) -> None:
        """Wait until some central has written the characteristic's CCCD."""
        async with asyncio.timeout(timeout_s):
            while not self.subscribers(characteristic):
                await asyncio.sleep(0.01)

    async def deliver(self, characteristic: gatt.Characteristic[Any], value: bytes) -> int:
        """Notify or indicate `value` to each subscriber, as its CCCD asks; returns how many
        links got it. An indication whose link drops before the confirmation is lost."""
        self.sent.append(bytes(value))
        delivered = 0
        for connection in self.subscribers(characteristic):
            if await self._send_to(connection, characteristic, value):
                delivered += 1
        return delivered

    async def _send_to(
        self, connection: Connection, characteristic: gatt.Characteristic[Any], value: bytes
    ) -> bool:
        device = self.peripheral.device
        if self._cccd(connection, characteristic) & ble_service.CCCD_INDICATE:
            sending: Awaitable[None] = device.indicate_subscriber(connection, characteristic, value)
        else:
            sending = device.notify_subscriber(connection, characteristic, value)
        return await _unless_link_drops(connection, sending)

    # ---- faults --------------------------------------------------------------------------
    async def send_garbage(
        self, data: bytes = DEFAULT_GARBAGE, characteristic: gatt.Characteristic[Any] | None = None
    ) -> int:
        """Send raw bytes as a value of the measurement (or the given) characteristic."""
        return await self.deliver(characteristic or self.garbage_characteristic, data)

    async def reboot(self, downtime_s: float = 0.2) -> None:
        """Power cycle: links drop (reason power off), no advertising for `downtime_s`."""
        self.reboots += 1
        await self.peripheral.switch_off()
        self._on_reboot()
        await asyncio.sleep(downtime_s)
        await self.peripheral.switch_on()

    def _on_reboot(self) -> None:
        """Volatile state is lost; subclasses reset it."""

    async def drop_link(self) -> None:
        """The device terminates its links (LL_TERMINATE_IND) and advertises again."""
        await self.peripheral.disconnect_all()

    def go_out_of_range(self) -> None:
        self.peripheral.go_out_of_range()

    def come_into_range(self) -> None:
        self.peripheral.come_into_range()

    def skew_clock(self, seconds: float) -> None:
        """Move the device's clock: its timestamps are off by `seconds` from now on."""
        self.clock_skew_s = float(seconds)


async def _unless_link_drops(connection: Connection, sending: Awaitable[None]) -> bool:
    """Run a notify/indicate; False if the link went down first.

    bumble forgets a pending indication when its link drops but never wakes the sender,
    who would wait for the 30 s GATT timeout: race the send against the disconnection.
    """
    task = asyncio.ensure_future(sending)
    lost = asyncio.get_running_loop().create_future()

    def on_disconnection(_reason: int) -> None:
        if not lost.done():
            lost.set_result(None)

    connection.on(Connection.EVENT_DISCONNECTION, on_disconnection)
    try:
        done, _ = await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        connection.remove_listener(Connection.EVENT_DISCONNECTION, on_disconnection)
        lost.cancel()
    if task in done:
        try:
            task.result()
        except (TimeoutError, att.ATT_Error, hci.HCI_Error) as exc:
            logger.info("delivery to %s failed: %r", connection.peer_address, exc)
            return False
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return False


# ---- standard health devices ------------------------------------------------------------


# Per device kind: its SIG service, the measurement characteristic and whether the
# service specification has that characteristic notified or indicated.
SIG_LAYOUTS: dict[str, tuple[int, int, gatt.Characteristic.Properties]] = {
    "heart_rate": (ble_service.HEART_RATE_SERVICE, ble_service.HEART_RATE_MEASUREMENT, _P.NOTIFY),
    "thermometer": (
        ble_service.HEALTH_THERMOMETER_SERVICE,
        ble_service.TEMPERATURE_MEASUREMENT,
        _P.INDICATE,
    ),
    "blood_pressure": (
        ble_service.BLOOD_PRESSURE_SERVICE,
        ble_service.BLOOD_PRESSURE_MEASUREMENT,
        _P.INDICATE,
    ),
    "pulse_oximeter": (
        ble_service.PULSE_OXIMETER_SERVICE,
        ble_service.PLX_CONTINUOUS_MEASUREMENT,
        _P.NOTIFY,
    ),
    "weight_scale": (ble_service.WEIGHT_SCALE_SERVICE, ble_service.WEIGHT_MEASUREMENT, _P.INDICATE),
    "glucose_meter": (ble_service.GLUCOSE_SERVICE, ble_service.GLUCOSE_MEASUREMENT, _P.NOTIFY),
}


class StandardHealthDevice(SimulatedPeripheral):
    """A SIG health device: one measurement characteristic fed by a value source.

    Subclasses declare their `kind` (its SIG_LAYOUTS row gives the service and the
    measurement characteristic), default field values and read-only companions
    (feature, type).
    """

    service_uuid16: ClassVar[int]
    measurement_uuid16: ClassVar[int]
    measurement_property: ClassVar[gatt.Characteristic.Properties]
    companions: ClassVar[tuple[tuple[int, bytes], ...]] = ()  # (uuid16, read-only value)
    default_values: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.service_uuid16, cls.measurement_uuid16, cls.measurement_property = SIG_LAYOUTS[cls.kind]

    def __init__(
        self,
        name: str,
        source: ValueSource | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name, clock=clock)
        self.source: ValueSource = source or constant()
        self._stream: asyncio.Task[None] | None = None
        self.measurement = gatt.Characteristic(
            _uuid16(self.measurement_uuid16), self.measurement_property, 0, b""
        )

    def characteristics(self) -> list[gatt.Characteristic[Any]]:
        return [self.measurement] + [
            gatt.Characteristic(_uuid16(uuid16), _P.READ, _PERM.READABLE, value)
            for uuid16, value in self.companions
        ]

    def services(self) -> list[gatt.Service]:
        return [gatt.Service(_uuid16(self.service_uuid16), self.characteristics())]

    @property
    def garbage_characteristic(self) -> gatt.Characteristic[Any]:
        return self.measurement

    def values(self, **overrides: Any) -> dict[str, Any]:
        """Field values now: defaults, then the source, then the overrides."""
        values = dict(self.default_values)
        values.update(self.source(self.elapsed()))
        values.update(overrides)
        return values

    def encode(self, values: Mapping[str, Any]) -> bytes:
        raise NotImplementedError

    async def measure(self, **overrides: Any) -> bytes:
        """Take one measurement and send it to the subscribers; returns the value bytes."""
        value = self.encode(self.values(**overrides))
        await self.deliver(self.measurement, value)
        return value

    def start_streaming(self, interval_s: float) -> None:
        """Measure every `interval_s` seconds while some central is subscribed."""
        if self._stream is None or self._stream.done():
            self._stream = asyncio.ensure_future(self._streaming(interval_s))

    async def stop_streaming(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream

    async def _streaming(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if self.subscribers(self.measurement):
                await self.measure()


class HeartRateMonitor(StandardHealthDevice):
    """Heart Rate Service: fields hr (beat/min), sensor_contact, energy_expended_kj,
    rr_intervals_s."""

    kind = "heart_rate"
    default_values: ClassVar[dict[str, Any]] = {
        "hr": 72,
        "sensor_contact": True,
        "energy_expended_kj": None,
        "rr_intervals_s": None,
    }
    companions = ((ble_service.BODY_SENSOR_LOCATION, b"\x01"),)  # chest

    def encode(self, values: Mapping[str, Any]) -> bytes:
        return gatt_codecs.encode_heart_rate(
            round(values["hr"]),
            sensor_contact=values["sensor_contact"],
            energy_expended_kj=values["energy_expended_kj"],
            rr_intervals_s=values["rr_intervals_s"],
        )


class Thermometer(StandardHealthDevice):
    """Health Thermometer Service: fields temp (Cel, or a special name), fahrenheit."""

    kind = "thermometer"
    default_values: ClassVar[dict[str, Any]] = {"temp": 36.8, "fahrenheit": False}
    companions = ((ble_service.TEMPERATURE_TYPE, b"\x02"),)  # body (general)

    def encode(self, values: Mapping[str, Any]) -> bytes:
        # HTS: with a Temperature Type characteristic the measurement carries no type field.
        return gatt_codecs.encode_temperature(
            values["temp"],
            decimals=2,
            fahrenheit=values["fahrenheit"],
            timestamp=self.device_time(),
        )


class BloodPressureMonitor(StandardHealthDevice):
    """Blood Pressure Service: fields sys, dia, map (mmHg, or kPa if kpa), pr,
    measurement_status (uint16 or None)."""

    kind = "blood_pressure"
    default_values: ClassVar[dict[str, Any]] = {
        "sys": 120,
        "dia": 80,
        "map": 93,
        "pr": 72,
        "kpa": False,
        "measurement_status": None,
    }
    companions = ((ble_service.BLOOD_PRESSURE_FEATURE, b"\x00\x00"),)

    def encode(self, values: Mapping[str, Any]) -> bytes:
        return gatt_codecs.encode_blood_pressure(
            values["sys"],
            values["dia"],
            values["map"],
            kpa=values["kpa"],
            decimals=1,
            timestamp=self.device_time(),
            pulse_rate=values["pr"],
            measurement_status=values["measurement_status"],
        )


class PulseOximeter(StandardHealthDevice):
    """Pulse Oximeter Service: fields spo2 (%), pr, pi (%), measurement_status (uint16),
    device_sensor_status (uint24). measure() sends a continuous measurement (notify),
    spot_check() a timestamped spot-check measurement (indicate)."""

    kind = "pulse_oximeter"
    default_values: ClassVar[dict[str, Any]] = {
        "spo2": 97,
        "pr": 72,
        "pi": 2.5,
        "measurement_status": None,
        "device_sensor_status": None,
    }
    # PLX Features: measurement status, device and sensor status, spot-check timestamp and
    # pulse amplitude index supported, then the supported status bits (uint16, uint24).
    FEATURES = bytes((0x4B, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0x00))
    companions = ((ble_service.PLX_FEATURES, FEATURES),)

    @functools.cached_property
    def spot_check_measurement(self) -> gatt.Characteristic[Any]:
        return gatt.Characteristic(
            _uuid16(ble_service.PLX_SPOT_CHECK_MEASUREMENT), _P.INDICATE, 0, b""
        )

    def characteristics(self) -> list[gatt.Characteristic[Any]]:
        return [self.spot_check_measurement, *super().characteristics()]

    def encode(self, values: Mapping[str, Any]) -> bytes:
        return gatt_codecs.encode_plx_continuous(
            values["spo2"],
            values["pr"],
            measurement_status=values["measurement_status"],
            device_sensor_status=values["device_sensor_status"],
            pai=values["pi"],
        )

    async def spot_check(self, **overrides: Any) -> bytes:
        values = self.values(**overrides)
        value = gatt_codecs.encode_plx_spot_check(
            values["spo2"],
            values["pr"],
            timestamp=self.device_time(),
            measurement_status=values["measurement_status"],
            device_sensor_status=values["device_sensor_status"],
            pai=values["pi"],
        )
        await self.deliver(self.spot_check_measurement, value)
        return value


class WeightScale(StandardHealthDevice):
    """Weight Scale Service: fields weight (kg, lb if imperial, or "unsuccessful"), bmi,
    height (m; both or neither)."""

    kind = "weight_scale"
    default_values: ClassVar[dict[str, Any]] = {
        "weight": 72.4,
        "imperial": False,
        "bmi": None,
        "height": None,
    }
    # Weight Scale Feature (uint32): time stamp supported, weight resolution 0.005 kg.
    companions = ((ble_service.WEIGHT_SCALE_FEATURE, (0x02 | 7 << 3).to_bytes(4, "little")),)

    def encode(self, values: Mapping[str, Any]) -> bytes:
        return gatt_codecs.encode_weight(
            values["weight"],
            imperial=values["imperial"],
            timestamp=self.device_time(),
            bmi=values["bmi"],
            height=values["height"],
        )


@dataclasses.dataclass(frozen=True)
class GlucoseRecord:
    sequence_number: int
    value: bytes  # the Glucose Measurement value, encoded when the record was taken


class GlucoseMeter(StandardHealthDevice):
    """Glucose Service 1.0 with stored records and a working Record Access Control Point.

    measure() takes a reading into memory (field glucose in mg/dL, sensor_status) and
    sends nothing: a GLS meter reports records only when asked through the RACP.
    Supported: report stored records, delete stored records, report number of stored
    records (operators all, <=, >=, within range, first, last on sequence numbers) and
    abort. A user-facing-time filter is answered "operand not supported". A RACP write
    while a procedure runs is refused with ATT error 0x80, one without indications (and,
    for reports, without glucose notifications) enabled with 0x81 (GLS 1.0).
    `require_encryption` makes the RACP need an encrypted (bonded) link, as many meters do.
    """

    kind = "glucose_meter"
    companions = ((ble_service.GLUCOSE_FEATURE, b"\x00\x00"),)
    default_values: ClassVar[dict[str, Any]] = {"glucose": 100, "sensor_status": None}

    def __init__(
        self,
        name: str,
        source: ValueSource | None = None,
        *,
        clock: Callable[[], float] = time.time,
        require_encryption: bool = False,
        record_interval_s: float = 0.0,
    ) -> None:
        self.require_encryption = require_encryption
        super().__init__(name, source, clock=clock)
        self.record_interval_s = record_interval_s
        self.records: list[GlucoseRecord] = []
        self.racp_requests: list[bytes] = []  # every RACP write, as received
        self.racp_responses: list[bytes] = []  # every RACP indication sent
        self._next_sequence = 1
        self._procedure: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        permissions = _PERM.WRITEABLE
        if require_encryption:
            permissions |= _PERM.WRITE_REQUIRES_ENCRYPTION
        self.racp = gatt.Characteristic(
            _uuid16(ble_service.RECORD_ACCESS_CONTROL_POINT),
            _P.WRITE | _P.INDICATE,
            permissions,
            gatt.CharacteristicValue(write=self._on_racp_write),
        )

    def characteristics(self) -> list[gatt.Characteristic[Any]]:
        return [*super().characteristics(), self.racp]

    # ---- records ---------------------------------------------------------------------------
    def add_record(
        self, concentration: Any = None, sensor_status: int | None = None, **fields: Any
    ) -> int:
        """Store one record (mg/dL) stamped with the device clock; returns its sequence number."""
        sequence = self._next_sequence
        self._next_sequence = (sequence + 1) & 0xFFFF
        value = glucose.encode_glucose(
            sequence,
            self.device_time(),
            concentration=concentration,
            sensor_status=sensor_status,
            **fields,
        )
        self.records.append(GlucoseRecord(sequence, value))
        return sequence

    def encode(self, values: Mapping[str, Any]) -> bytes:
        self.add_record(values["glucose"], values["sensor_status"])
        return self.records[-1].value

    async def measure(self, **overrides: Any) -> bytes:
        """Take a reading into memory; the collector fetches it through the RACP."""
        return self.encode(self.values(**overrides))

    def _on_reboot(self) -> None:
        self._on_link_down()  # records stay: they are in the meter's flash

    def _on_link_down(self) -> None:
        if self._procedure is not None:
            self._procedure.cancel()  # GLS: a procedure ends with its link

    # ---- Record Access Control Point ---------------------------------------------------------
    def _on_racp_write(self, connection: Connection, value: bytes) -> None:
        """Validate a RACP write before bumble sends the Write Response, then run the
        procedure in a task, so the response precedes the records as GLS requires."""
        value = bytes(value)
        self.racp_requests.append(value)
        if not self._cccd(connection, self.racp) & ble_service.CCCD_INDICATE:
            raise att.ATT_Error(ble_service.GLS_CCCD_IMPROPERLY_CONFIGURED)
        op_code = value[0] if value else None
        if op_code == glucose.RACP_ABORT_OPERATION:
            problem = glucose.decode_racp(value)["problem"]
            if problem is not None:  # a malformed abort leaves the running procedure alone
                answer = glucose.encode_racp_response_code(op_code, problem)
                task = asyncio.ensure_future(self._respond(connection, answer, closes=False))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
            self._open(self._abort(connection, self._procedure))
            return
        if self._procedure is not None:
            raise att.ATT_Error(ble_service.GLS_PROCEDURE_ALREADY_IN_PROGRESS)
        if op_code == glucose.RACP_REPORT_STORED_RECORDS and not self._cccd(
            connection, self.measurement
        ):
            raise att.ATT_Error(ble_service.GLS_CCCD_IMPROPERLY_CONFIGURED)
        self._open(self._run_procedure(connection, value))

    def _open(self, work: Awaitable[None]) -> None:
        """Run a procedure; it stays open until its final answer is sent (or it ends)."""
        task = asyncio.ensure_future(work)
        self._procedure = task
        task.add_done_callback(self._close)

    def _close(self, task: asyncio.Future[None]) -> None:
        if self._procedure is task:
            self._procedure = None

    async def _respond(self, connection: Connection, value: bytes, *, closes: bool = True) -> None:
        # The procedure is over once its answer is on its way: the collector may write
        # the next request as soon as it sees the indication.
        current = asyncio.current_task()
        if closes and current is not None:
            self._close(current)
        self.racp_responses.append(value)
        await self._send_to(connection, self.racp, value)

    async def _abort(self, connection: Connection, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            previous.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await previous
        await self._respond(
            connection,
            glucose.encode_racp_response_code(
                glucose.RACP_ABORT_OPERATION, glucose.RESPONSE_SUCCESS
            ),
        )

    async def _run_procedure(self, connection: Connection, value: bytes) -> None:
        try:
            request = glucose.decode_racp(value)
        except GattError:  # not even an op code
            await self._respond(
                connection,
                glucose.encode_racp_response_code(0, glucose.RESPONSE_OP_CODE_NOT_SUPPORTED),
            )
            return
        op_code = request["op_code"]
        problem = request.get("problem")
        if request["kind"] == "response":
            problem = glucose.RESPONSE_OP_CODE_NOT_SUPPORTED
        elif problem is None and request.get("filter_type") == glucose.FILTER_USER_FACING_TIME:
            problem = glucose.RESPONSE_OPERAND_NOT_SUPPORTED
        if problem is not None:
            await self._respond(connection, glucose.encode_racp_response_code(op_code, problem))
            return
        selected = self._select(request)
        if op_code == glucose.RACP_REPORT_NUMBER_OF_RECORDS:
            await self._respond(
                connection, glucose.encode_racp_number_of_records_response(len(selected))
            )
            return
        if not selected:
            await self._respond(
                connection,
                glucose.encode_racp_response_code(op_code, glucose.RESPONSE_NO_RECORDS_FOUND),
            )
            return
        if op_code == glucose.RACP_REPORT_STORED_RECORDS:
            for record in selected:
                await self._send_to(connection, self.measurement, record.value)
                self.sent.append(record.value)
                await asyncio.sleep(self.record_interval_s)
        else:  # delete stored records
            doomed = {id(record) for record in selected}
            self.records = [record for record in self.records if id(record) not in doomed]
        await self._respond(
            connection, glucose.encode_racp_response_code(op_code, glucose.RESPONSE_SUCCESS)
        )

    def _select(self, request: Mapping[str, Any]) -> list[GlucoseRecord]:
        operator = request["operator"]
        records = self.records
        if operator == glucose.OPERATOR_ALL:
            return list(records)
        if operator == glucose.OPERATOR_FIRST:
            return records[:1]
        if operator == glucose.OPERATOR_LAST:
            return records[-1:]
        low, high = request["minimum"], request["maximum"]
        return [
            record
            for record in records
            if (low is None or record.sequence_number >= low)
            and (high is None or record.sequence_number <= high)
        ]


# ---- the VitalBridge firmware service ------------------------------------------------------


class FirmwareLinkDevice(SimulatedPeripheral):
    """The VitalBridge firmware service without the firmware: the caller supplies the
    protocol messages (a test plays the device with protocol.session / protocol.sealing).

    send_message() fragments a message to the link's ATT MTU and notifies the uplink;
    downlink writes are reassembled (one Reassembler per link, reset when it drops) and
    each complete message is queued for next_message(). The provisioning characteristic
    returns `identity` (a whole protocol.messages message, or empty).
    """

    kind = "vitalbridge"

    def __init__(
        self, name: str, *, identity: bytes = b"", clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(name, clock=clock)
        if len(identity) > ble_service.MAX_PROVISIONING_VALUE:
            raise ValueError("identity message longer than one attribute value")
        self.identity = identity
        self.uplink = gatt.Characteristic(ble_service.UPLINK_UUID, _P.NOTIFY, 0, b"")
        self.downlink = gatt.Characteristic(
            ble_service.DOWNLINK_UUID,
            _P.WRITE,
            _PERM.WRITEABLE,
            gatt.CharacteristicValue(write=self._on_downlink_write),
        )
        self.provisioning = gatt.Characteristic(
            ble_service.PROVISIONING_UUID,
            _P.READ,
            _PERM.READABLE,
            gatt.CharacteristicValue(read=lambda _connection: self.identity),
        )
        self.reassembler = Reassembler()
        self.received: list[bytes] = []
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._message_id = 0

    def services(self) -> list[gatt.Service]:
        return [
            gatt.Service(ble_service.SERVICE_UUID, [self.uplink, self.downlink, self.provisioning])
        ]

    @property
    def garbage_characteristic(self) -> gatt.Characteristic[Any]:
        return self.uplink

    def link_mtu(self) -> int:
        """The smallest ATT MTU of the current links (23 when there is none)."""
        return min((c.att_mtu for c in self.connections), default=att.ATT_DEFAULT_MTU)

    def fragments(self, message: bytes) -> list[bytes]:
        """The uplink values that carry `message` at the current MTU (uses one message id)."""
        message_id = self._message_id
        self._message_id = (message_id + 1) & 0xFF
        return fragment(message, self.link_mtu(), message_id)

    async def send_message(self, message: bytes) -> int:
        """Send one message on the uplink; returns the number of fragments."""
        parts = self.fragments(message)
        for part in parts:
            await self.deliver(self.uplink, part)
        return len(parts)

    async def next_message(self, timeout_s: float = 5.0) -> bytes:
        """The next complete message the gateway wrote to the downlink."""
        async with asyncio.timeout(timeout_s):
            return await self._inbox.get()

    def _on_downlink_write(self, _connection: Connection, value: bytes) -> None:
        message = self.reassembler.add(bytes(value), time.monotonic())
        if message is not None:
            self.received.append(message)
            self._inbox.put_nowait(message)

    def _on_link_down(self) -> None:
        self.reassembler.reset()

    def _on_reboot(self) -> None:
        self.reassembler.reset()
