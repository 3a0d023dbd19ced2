"""The bleak API over bumble: real ATT/GATT/SMP between simulated hosts, no radio.

Each test builds its own VirtualRadio inside ``asyncio.run`` so nothing leaks between
tests. The peripherals are bumble GATT servers exposing the standard Heart Rate (0x180D)
and Health Thermometer (0x1809) services.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aio_harness import run_bounded
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakCharacteristicNotFoundError,
    BleakDeviceNotFoundError,
    BleakError,
    BleakGATTProtocolError,
    BleakGATTProtocolErrorCode,
)
from bleak.uuids import normalize_uuid_16
from bleak_retry_connector import BleakClientWithServiceCache, establish_connection
from bumble import att, gatt
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.ble.bumble_backend import BumbleClientBackend, BumbleScannerBackend
from edge_agent.ble.bumble_backend.advertising import (
    decode_advertising_data,
    split_ad_structures,
)
from edge_agent.ble.virtual_radio import (
    LEGACY_ADVERTISING_DATA_MAX,
    VirtualCentral,
    VirtualPeripheral,
    VirtualRadio,
    VirtualRadioError,
    build_advertising_data,
    rssi_at_distance,
)

TEST_TIMEOUT_S = 10.0
HEART_RATE_SERVICE = normalize_uuid_16(0x180D)
HEART_RATE_MEASUREMENT = normalize_uuid_16(0x2A37)
BODY_SENSOR_LOCATION = normalize_uuid_16(0x2A38)
HEART_RATE_CONTROL_POINT = normalize_uuid_16(0x2A39)
THERMOMETER_SERVICE = normalize_uuid_16(0x1809)
TEMPERATURE_MEASUREMENT = normalize_uuid_16(0x2A1C)
TEMPERATURE_TYPE = normalize_uuid_16(0x2A1D)
MEASUREMENT_INTERVAL = normalize_uuid_16(0x2A21)
CCCD = normalize_uuid_16(0x2902)
USER_DESCRIPTION = normalize_uuid_16(0x2901)
VENDOR_SERVICE = "7b1e0001-5c3a-4f7e-9a57-8f9d2a1b0c01"
VENDOR_COMMAND = "7b1e0002-5c3a-4f7e-9a57-8f9d2a1b0c01"
TEST_COMPANY_ID = 0xFFFF  # reserved by the SIG for internal tests
HRS_CONTROL_POINT_NOT_SUPPORTED = 0x80  # HRS 1.0 section 3.3.2.1

# Heart Rate Measurement: flags 0 (uint8 bpm) + 72 bpm.
HR_72 = bytes([0x00, 72])
# Temperature Measurement: flags 0 (Celsius) + IEEE-11073 FLOAT 366e-1 = 36.6 degC.
TEMP_36_6 = bytes([0x00, 0x6E, 0x01, 0x00, 0xFF])

R = gatt.Characteristic.Properties
P = gatt.Characteristic.Permissions


@dataclasses.dataclass
class Ward:
    """One simulated room: a gateway and two standard health sensors."""

    radio: VirtualRadio
    gateway: VirtualCentral
    heart_rate: VirtualPeripheral
    thermometer: VirtualPeripheral
    hr_measurement: gatt.Characteristic[Any]
    temperature: gatt.Characteristic[Any]
    control_point_writes: list[bytes]
    vendor_commands: list[bytes]


async def _build_ward(radio: VirtualRadio, **hr_options: Any) -> Ward:
    control_point_writes: list[bytes] = []
    vendor_commands: list[bytes] = []

    def write_control_point(_connection: Any, value: bytes) -> None:
        if value != b"\x01":  # only "reset energy expended" exists
            raise att.ATT_Error(HRS_CONTROL_POINT_NOT_SUPPORTED)
        control_point_writes.append(value)

    hr_measurement = gatt.Characteristic(HEART_RATE_MEASUREMENT[4:8], R.NOTIFY, 0, b"")
    heart_rate_service = gatt.Service(
        HEART_RATE_SERVICE[4:8],
        [
            hr_measurement,
            gatt.Characteristic(BODY_SENSOR_LOCATION[4:8], R.READ, P.READABLE, b"\x01"),
            gatt.Characteristic(
                HEART_RATE_CONTROL_POINT[4:8],
                R.WRITE,
                P.WRITEABLE,
                gatt.CharacteristicValue(write=write_control_point),
            ),
        ],
    )
    vendor_service = gatt.Service(
        VENDOR_SERVICE,
        [
            gatt.Characteristic(
                VENDOR_COMMAND,
                R.WRITE | R.WRITE_WITHOUT_RESPONSE,
                P.WRITEABLE,
                gatt.CharacteristicValue(write=lambda _c, v: vendor_commands.append(bytes(v))),
                descriptors=[
                    gatt.Descriptor(USER_DESCRIPTION[4:8], P.READABLE | P.WRITEABLE, b"command")
                ],
            )
        ],
    )
    temperature = gatt.Characteristic(TEMPERATURE_MEASUREMENT[4:8], R.INDICATE, 0, b"")
    thermometer_service = gatt.Service(
        THERMOMETER_SERVICE[4:8],
        [
            temperature,
            gatt.Characteristic(TEMPERATURE_TYPE[4:8], R.READ, P.READABLE, b"\x02"),
            gatt.Characteristic(
                MEASUREMENT_INTERVAL[4:8],
                R.READ | R.WRITE,
                P.READ_REQUIRES_ENCRYPTION | P.WRITE_REQUIRES_ENCRYPTION,
                b"\x3c\x00",
            ),
        ],
    )
    gateway = await radio.add_central("gateway")
    heart_rate = await radio.add_peripheral(
        "HR-Strap",
        services=[heart_rate_service, vendor_service],
        advertising_data=build_advertising_data(
            local_name="HR-Strap",
            service_uuids=[HEART_RATE_SERVICE],
            manufacturer_data={TEST_COMPANY_ID: b"\x01\x02"},
            tx_power_dbm=-4,
        ),
        rssi_dbm=-48,
        **hr_options,
    )
    thermometer = await radio.add_peripheral(
        "Thermo",
        services=[thermometer_service],
        advertising_data=build_advertising_data(service_uuids=[THERMOMETER_SERVICE]),
        # Name and service data only in the scan response: active scanning needed.
        scan_response_data=build_advertising_data(
            include_flags=False,
            local_name="Thermo",
            service_data={THERMOMETER_SERVICE: TEMP_36_6[1:]},
        ),
        rssi_dbm=-81,
    )
    return Ward(
        radio,
        gateway,
        heart_rate,
        thermometer,
        hr_measurement,
        temperature,
        control_point_writes,
        vendor_commands,
    )


@contextlib.asynccontextmanager
async def ward(**hr_options: Any) -> AsyncIterator[Ward]:
    async with VirtualRadio() as radio:
        yield await _build_ward(radio, **hr_options)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    run_bounded(scenario, TEST_TIMEOUT_S)


async def _scan(central: VirtualCentral, seconds: float = 0.35, **kwargs: Any) -> dict[str, Any]:
    return await BleakScanner.discover(
        seconds, return_adv=True, backend=central.scanner_backend, **kwargs
    )


class Inbox:
    """Collects notification payloads and lets a test wait for the n-th one."""

    def __init__(self) -> None:
        self.values: list[bytes] = []
        self._changed = asyncio.Event()

    def __call__(self, _characteristic: Any, data: bytearray) -> None:
        assert isinstance(data, bytearray)  # bleak's callback contract
        self.values.append(bytes(data))
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 2.0) -> list[bytes]:
        async with asyncio.timeout(timeout):
            while len(self.values) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.values


# ---- scanning ---------------------------------------------------------------------------
def test_scan_reports_each_sensor_with_its_own_rssi_and_advertised_fields() -> None:
    async def scenario() -> None:
        async with ward() as w:
            found = await _scan(w.gateway)
            hr_device, hr_adv = found[w.heart_rate.address]
            th_device, th_adv = found[w.thermometer.address]
            assert hr_device.name == "HR-Strap"
            assert hr_adv.local_name == "HR-Strap"
            assert hr_adv.rssi == -48
            assert hr_adv.service_uuids == [HEART_RATE_SERVICE]
            assert hr_adv.manufacturer_data == {TEST_COMPANY_ID: b"\x01\x02"}
            assert hr_adv.tx_power == -4
            # The thermometer's name and service data come from its scan response.
            assert th_device.name == "Thermo"
            assert th_adv.rssi == -81
            assert th_adv.service_uuids == [THERMOMETER_SERVICE]
            assert th_adv.service_data == {THERMOMETER_SERVICE: TEMP_36_6[1:]}
            assert w.gateway.address not in found

    run(scenario)


def test_passive_scan_gets_no_scan_response() -> None:
    async def scenario() -> None:
        async with ward() as w:
            found = await _scan(w.gateway, scanning_mode="passive")
            th_device, th_adv = found[w.thermometer.address]
            assert th_adv.local_name is None
            assert th_adv.service_data == {}
            assert th_device.name == w.thermometer.address.replace(":", "-")  # BlueZ alias

    run(scenario)


def test_detection_callback_filter_and_find_by_address() -> None:
    async def scenario() -> None:
        async with ward() as w:
            seen: list[tuple[BLEDevice, AdvertisementData]] = []
            scanner = BleakScanner(
                lambda d, a: seen.append((d, a)),
                service_uuids=[THERMOMETER_SERVICE],
                backend=w.gateway.scanner_backend,
            )
            async with scanner:
                await asyncio.sleep(0.3)
            assert seen, "no advertisement reached the detection callback"
            assert {d.address for d, _ in seen} == {w.thermometer.address}
            assert scanner.backend_id == "BumbleScannerBackend"

            found = await BleakScanner.find_device_by_address(
                w.heart_rate.address.lower(), timeout=2, backend=w.gateway.scanner_backend
            )
            assert found is not None and found.address == w.heart_rate.address
            missing = await BleakScanner.find_device_by_address(
                "D0:DE:AD:BE:EF:00", timeout=0.3, backend=w.gateway.scanner_backend
            )
            assert missing is None

    run(scenario)


def test_rssi_follows_distance_and_out_of_range_stops_advertisements() -> None:
    async def scenario() -> None:
        async with ward() as w:
            rssi = w.heart_rate.set_distance(4.0)
            assert rssi == rssi_at_distance(4.0)
            found = await _scan(w.gateway, 0.25)
            assert found[w.heart_rate.address][1].rssi == rssi
            w.heart_rate.set_distance(500.0)  # below receiver sensitivity
            found = await _scan(w.gateway, 0.25)
            assert w.heart_rate.address not in found
            assert w.thermometer.address in found
            w.heart_rate.come_into_range()
            found = await _scan(w.gateway, 0.25)
            assert w.heart_rate.address in found

    run(scenario)


def test_generic_backend_class_takes_central_keyword() -> None:
    async def scenario() -> None:
        async with ward() as w:
            found = await BleakScanner.discover(
                0.25, backend=BumbleScannerBackend, central=w.gateway
            )
            assert w.heart_rate.address in {d.address for d in found}
            with pytest.raises(BleakError, match="no virtual central"):
                BleakScanner(backend=BumbleScannerBackend)
            with pytest.raises(BleakError, match="no virtual central"):
                BleakClient(w.heart_rate.address, backend=BumbleClientBackend)

    run(scenario)


# ---- connection and GATT -----------------------------------------------------------------
def test_connect_discovers_services_as_bluez_shows_them() -> None:
    async def scenario() -> None:
        async with ward(max_att_mtu=247) as w:
            callbacks: list[BleakClient] = []
            async with BleakClient(
                w.heart_rate.address, callbacks.append, backend=w.gateway.client_backend
            ) as c:
                assert c.is_connected
                assert c.name == "HR-Strap"
                assert c.mtu_size == 247  # min(517 requested, 247 offered), really exchanged
                uuids = {s.uuid for s in c.services}
                assert HEART_RATE_SERVICE in uuids and VENDOR_SERVICE in uuids
                assert normalize_uuid_16(0x1800) not in uuids  # BlueZ hides GAP
                measurement = c.services.get_characteristic(HEART_RATE_MEASUREMENT)
                assert measurement is not None
                assert measurement.properties == ["notify"]
                assert [d.uuid for d in measurement.descriptors] == [CCCD]
                assert measurement.descriptors[0].handle == measurement.handle + 2
                command = c.services.get_characteristic(VENDOR_COMMAND)
                assert command is not None
                assert command.properties == ["write-without-response", "write"]
                assert command.max_write_without_response_size == 244
                assert c.services.get_characteristic(measurement.handle) is measurement
            assert not c.is_connected
            assert callbacks == [c]  # BlueZ calls it on a local disconnect() too
            with pytest.raises(BleakError, match="Service Discovery has not been performed"):
                _ = c.services

            only_hr = BleakClient(
                w.heart_rate.address,
                services=[HEART_RATE_SERVICE[4:8]],
                backend=w.gateway.client_backend,
            )
            async with only_hr:
                assert [s.uuid for s in only_hr.services] == [HEART_RATE_SERVICE]

    run(scenario)


def test_minimum_mtu_uses_long_write_and_read_blob() -> None:
    async def scenario() -> None:
        async with ward(max_att_mtu=23) as w:
            async with BleakClient(w.heart_rate.address, backend=w.gateway.client_backend) as c:
                assert c.mtu_size == 23
                command = c.services.get_characteristic(VENDOR_COMMAND)
                assert command.max_write_without_response_size == 20
                long_value = bytes(range(60))  # > MTU-3: Prepare/Execute Write
                await c.write_gatt_char(command, long_value, response=True)
                assert w.vendor_commands == [long_value]
                description = command.descriptors[0]
                await c.write_gatt_descriptor(description, b"d" * 50)
                assert await c.read_gatt_descriptor(description) == b"d" * 50  # Read Blob

    run(scenario)


def test_notifications_and_indications_carry_the_bytes_sent() -> None:
    async def scenario() -> None:
        async with ward() as w:
            hr_inbox, temp_inbox = Inbox(), Inbox()
            gateway = w.gateway.client_backend
            hr = BleakClient(w.heart_rate.address, backend=gateway)
            th = BleakClient(w.thermometer.address, backend=gateway)
            # Concurrent connects queue on the one controller, as on BlueZ.
            await asyncio.gather(hr.connect(), th.connect())
            async with contextlib.AsyncExitStack() as stack:
                stack.push_async_callback(hr.disconnect)
                stack.push_async_callback(th.disconnect)
                await hr.start_notify(HEART_RATE_MEASUREMENT, hr_inbox)
                await th.start_notify(TEMPERATURE_MEASUREMENT, temp_inbox)
                hr_cccd = hr.services.get_characteristic(HEART_RATE_MEASUREMENT).descriptors[0]
                th_cccd = th.services.get_characteristic(TEMPERATURE_MEASUREMENT).descriptors[0]
                assert await hr.read_gatt_descriptor(hr_cccd) == b"\x01\x00"  # notify bit
                assert await th.read_gatt_descriptor(th_cccd) == b"\x02\x00"  # indicate bit

                for bpm in (72, 73, 74):
                    await w.heart_rate.notify(w.hr_measurement, bytes([0x00, bpm]))
                # indicate() returns only after the central's ATT confirmation.
                await w.thermometer.indicate(w.temperature, TEMP_36_6)
                assert await hr_inbox.wait_for(3) == [b"\x00\x48", b"\x00\x49", b"\x00\x4a"]
                assert await temp_inbox.wait_for(1) == [TEMP_36_6]

                await hr.stop_notify(HEART_RATE_MEASUREMENT)
                assert await hr.read_gatt_descriptor(hr_cccd) == b"\x00\x00"
                await w.heart_rate.notify(w.hr_measurement, HR_72)
                await asyncio.sleep(0.05)
                assert len(hr_inbox.values) == 3
                with pytest.raises(BleakError, match="No notify session"):
                    await hr.stop_notify(HEART_RATE_MEASUREMENT)
                with pytest.raises(BleakError, match="neither notify nor indicate"):
                    await hr.start_notify(BODY_SENSOR_LOCATION, hr_inbox)

    run(scenario)


def test_read_write_and_att_errors_map_to_bleak_types() -> None:
    async def scenario() -> None:
        async with ward() as w:
            async with BleakClient(w.heart_rate.address, backend=w.gateway.client_backend) as c:
                assert await c.read_gatt_char(BODY_SENSOR_LOCATION) == bytearray(b"\x01")
                await c.write_gatt_char(HEART_RATE_CONTROL_POINT, b"\x01", response=True)
                assert w.control_point_writes == [b"\x01"]
                with pytest.raises(BleakGATTProtocolError) as refused:
                    await c.write_gatt_char(HEART_RATE_CONTROL_POINT, b"\x07", response=True)
                assert refused.value.code == HRS_CONTROL_POINT_NOT_SUPPORTED

                await c.write_gatt_char(VENDOR_COMMAND, b"\xaa\xbb", response=False)
                await c.write_gatt_char(VENDOR_COMMAND, b"\xcc", response=True)
                big = bytes(range(200))  # fits one PDU at MTU 517
                await c.write_gatt_char(VENDOR_COMMAND, big, response=False)
                async with asyncio.timeout(1):
                    while len(w.vendor_commands) < 3:
                        await asyncio.sleep(0.005)
                assert w.vendor_commands == [b"\xaa\xbb", b"\xcc", big]
                with pytest.raises(BleakError, match="max_write_without_response_size"):
                    await c.write_gatt_char(VENDOR_COMMAND, bytes(600), response=False)

                description = c.services.get_characteristic(VENDOR_COMMAND).descriptors[0]
                assert description.uuid == USER_DESCRIPTION
                assert await c.read_gatt_descriptor(description) == b"command"
                await c.write_gatt_descriptor(description, b"cmd")
                assert await c.read_gatt_descriptor(description.handle) == b"cmd"
                with pytest.raises(BleakCharacteristicNotFoundError):
                    await c.read_gatt_char(normalize_uuid_16(0x2A19))
                with pytest.raises(ValueError, match="CCCD"):
                    cccd = c.services.get_characteristic(HEART_RATE_MEASUREMENT).descriptors[0]
                    await c.write_gatt_descriptor(cccd, b"\x01\x00")

    run(scenario)


def test_encrypted_characteristic_needs_pairing_over_smp() -> None:
    async def scenario() -> None:
        async with ward() as w:
            backend = w.gateway.client_backend
            async with BleakClient(w.thermometer.address, backend=backend) as c:
                with pytest.raises(BleakGATTProtocolError) as refused:
                    await c.read_gatt_char(MEASUREMENT_INTERVAL)
                assert refused.value.code == BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION
                await c.pair()
                (link,) = w.thermometer.connections
                assert link.is_encrypted and link.sc  # LE Secure Connections, Just Works
                assert await c.read_gatt_char(MEASUREMENT_INTERVAL) == b"\x3c\x00"
            # Bonded: the next connection is encrypted again with the stored LTK.
            async with BleakClient(w.thermometer.address, backend=backend) as c:
                await c.write_gatt_char(MEASUREMENT_INTERVAL, b"\x1e\x00", response=True)
                assert await c.read_gatt_char(MEASUREMENT_INTERVAL) == b"\x1e\x00"
                await c.unpair()
            async with BleakClient(w.thermometer.address, backend=backend) as c:
                with pytest.raises(BleakGATTProtocolError):
                    await c.read_gatt_char(MEASUREMENT_INTERVAL)
            # pair=True pairs during connect, as BleakClient(pair=True) does on BlueZ.
            async with BleakClient(w.thermometer.address, backend=backend, pair=True) as c:
                assert await c.read_gatt_char(MEASUREMENT_INTERVAL) == b"\x1e\x00"

    run(scenario)


# ---- link loss, reconnection and errors --------------------------------------------------
def test_peripheral_disconnect_fires_callback_and_retry_connector_reconnects() -> None:
    async def scenario() -> None:
        async with ward() as w:
            device = await BleakScanner.find_device_by_address(
                w.heart_rate.address, timeout=2, backend=w.gateway.scanner_backend
            )
            assert device is not None
            dropped: list[BleakClient] = []
            lost = asyncio.Event()

            def on_disconnect(client: BleakClient) -> None:
                dropped.append(client)
                lost.set()

            inbox = Inbox()
            client = await establish_connection(
                BleakClientWithServiceCache,
                device,
                "HR-Strap",
                disconnected_callback=on_disconnect,
                backend=w.gateway.client_backend,
            )
            await client.start_notify(HEART_RATE_MEASUREMENT, inbox)
            await w.heart_rate.notify(w.hr_measurement, HR_72)
            await inbox.wait_for(1)

            await w.heart_rate.disconnect_all()  # LL_TERMINATE_IND from the sensor
            async with asyncio.timeout(2):
                await lost.wait()
            assert dropped == [client] and not client.is_connected
            with pytest.raises(BleakError):
                await client.read_gatt_char(BODY_SENSOR_LOCATION)

            again = await establish_connection(
                BleakClientWithServiceCache, device, "HR-Strap", backend=w.gateway.client_backend
            )
            await again.start_notify(HEART_RATE_MEASUREMENT, inbox)
            await w.heart_rate.notify(w.hr_measurement, bytes([0x00, 80]))
            assert (await inbox.wait_for(2))[1] == bytes([0x00, 80])
            await again.disconnect()

    run(scenario)


def test_out_of_range_is_link_loss_after_the_supervision_timeout() -> None:
    async def scenario() -> None:
        async with ward() as w:
            lost = asyncio.Event()
            client = BleakClient(
                w.thermometer.address,
                lambda _c: lost.set(),
                backend=w.gateway.client_backend,
            )
            await client.connect()
            loop = asyncio.get_running_loop()
            started = loop.time()
            w.thermometer.go_out_of_range()
            # A read in flight is lost in the air and fails when the link is declared lost.
            with pytest.raises(BleakError, match="Not connected"):
                await client.read_gatt_char(TEMPERATURE_TYPE)
            await asyncio.wait_for(lost.wait(), 2)
            elapsed = loop.time() - started
            assert 0.35 < elapsed < 1.5  # BlueZ's default supervision timeout is 420 ms
            assert not client.is_connected
            with pytest.raises(TimeoutError):
                await client.connect(timeout=0.3)  # nothing answers the initiator
            w.thermometer.come_into_range()
            await client.connect(timeout=2)
            assert await client.read_gatt_char(TEMPERATURE_TYPE) == b"\x02"
            await client.disconnect()

    run(scenario)


def test_switched_off_sensor_drops_the_link_and_stops_advertising() -> None:
    async def scenario() -> None:
        async with ward() as w:
            lost = asyncio.Event()
            client = BleakClient(
                w.heart_rate.address, lambda _c: lost.set(), backend=w.gateway.client_backend
            )
            await client.connect()
            await w.heart_rate.switch_off()
            await asyncio.wait_for(lost.wait(), 2)
            assert w.heart_rate.address not in await _scan(w.gateway, 0.25)
            await w.heart_rate.switch_on()
            assert w.heart_rate.address in await _scan(w.gateway, 0.25)

    run(scenario)


def test_brief_fade_shorter_than_supervision_timeout_keeps_the_link() -> None:
    async def scenario() -> None:
        async with ward() as w:
            async with BleakClient(w.heart_rate.address, backend=w.gateway.client_backend) as c:
                w.heart_rate.go_out_of_range()
                await asyncio.sleep(0.1)
                w.heart_rate.come_into_range()
                await asyncio.sleep(0.5)
                assert c.is_connected
                assert await c.read_gatt_char(BODY_SENSOR_LOCATION) == b"\x01"

    run(scenario)


def test_absent_address_raises_device_not_found() -> None:
    async def scenario() -> None:
        async with ward() as w:
            client = BleakClient("d0:00:00:00:0a:bc", backend=w.gateway.client_backend, timeout=0.3)
            with pytest.raises(BleakDeviceNotFoundError) as missing:
                await client.connect()
            assert missing.value.identifier == "D0:00:00:00:0A:BC"
            assert not client.is_connected
            with pytest.raises(BleakError, match="Not connected"):
                await client.pair()

    run(scenario)


def test_cancelled_connect_leaves_the_central_usable() -> None:
    async def scenario() -> None:
        async with ward() as w:
            device = await BleakScanner.find_device_by_address(
                w.heart_rate.address, timeout=2, backend=w.gateway.scanner_backend
            )
            await w.heart_rate.stop_advertising()
            client = BleakClient(device, backend=w.gateway.client_backend, timeout=5)
            attempt = asyncio.ensure_future(client.connect())
            await asyncio.sleep(0.1)
            attempt.cancel()
            with pytest.raises(asyncio.CancelledError):
                await attempt
            assert w.gateway.controller.pending_le_connection is None  # initiator stopped
            await w.heart_rate.start_advertising()
            async with BleakClient(w.heart_rate.address, backend=w.gateway.client_backend) as c:
                assert c.is_connected

    run(scenario)


def test_two_radios_never_hear_each_other() -> None:
    async def scenario() -> None:
        async with VirtualRadio() as first, VirtualRadio() as second:
            gateway = await first.add_central()
            await second.add_peripheral("Elsewhere")
            nearby = await first.add_peripheral("Nearby")
            found = await _scan(gateway, 0.25)
            assert list(found) == [nearby.address]
        with pytest.raises(VirtualRadioError):
            await first.add_central()
        with pytest.raises(BleakBluetoothNotAvailableError):
            await BleakScanner(backend=gateway.scanner_backend).start()

    run(scenario)


def test_two_gateways_have_their_own_paths_to_one_sensor() -> None:
    async def scenario() -> None:
        async with ward() as w:
            ward_b = await w.radio.add_central("gateway-b")
            w.heart_rate.set_rssi(-90, central=ward_b)
            w.thermometer.go_out_of_range(central=ward_b)
            seen_a, seen_b = await asyncio.gather(_scan(w.gateway), _scan(ward_b))
            assert seen_a[w.heart_rate.address][1].rssi == -48
            assert seen_b[w.heart_rate.address][1].rssi == -90
            assert w.thermometer.address in seen_a and w.thermometer.address not in seen_b

    run(scenario)


# ---- pure parts ----------------------------------------------------------------------------
def test_advertising_data_round_trips_through_the_decoder() -> None:
    vendor = decode_advertising_data(build_advertising_data(service_uuids=[VENDOR_SERVICE]))
    assert vendor.service_uuids == [VENDOR_SERVICE]
    encoded = build_advertising_data(
        local_name="Scale",
        service_uuids=["181d"],
        manufacturer_data={0x0059: b"\x10"},
        service_data={"181d": b"\x02\x03"},
        tx_power_dbm=-20,
    )
    decoded = decode_advertising_data(encoded)
    assert decoded.local_name == "Scale"
    assert decoded.service_uuids == [normalize_uuid_16(0x181D)]
    assert decoded.manufacturer_data == {0x0059: b"\x10"}
    assert decoded.service_data == {normalize_uuid_16(0x181D): b"\x02\x03"}
    assert decoded.tx_power == -20
    with pytest.raises(ValueError, match="31"):
        build_advertising_data(local_name="x" * 40)
    assert len(build_advertising_data(local_name="x" * 26)) == LEGACY_ADVERTISING_DATA_MAX


def test_decoder_skips_malformed_structures() -> None:
    # 128-bit UUID list, a TX power of the wrong size, then a truncated structure.
    uuid128 = bytes.fromhex(VENDOR_SERVICE.replace("-", ""))[::-1]
    data = bytes([17, 0x07]) + uuid128 + bytes([3, 0x0A, 1, 2]) + bytes([9, 0x09]) + b"abc"
    decoded = decode_advertising_data(data)
    assert decoded.service_uuids == [VENDOR_SERVICE]
    assert decoded.tx_power is None
    assert decoded.local_name is None
    assert split_ad_structures(b"\x00\x02\x01\x06") == []  # zero length ends the data


@given(st.binary(max_size=64))
def test_decoder_never_raises(data: bytes) -> None:
    decoded = decode_advertising_data(data)
    assert all(len(u) == 36 for u in decoded.service_uuids)


def test_rssi_jitter_is_seeded_and_bounded_to_hci_range() -> None:
    async def scenario() -> None:
        draws = []
        for _ in range(2):
            async with VirtualRadio(rssi_jitter_db=4.0, seed=7) as radio:
                gateway = await radio.add_central()
                sensor = await radio.add_peripheral("S", rssi_dbm=-70, advertise=False)
                draws.append(
                    [radio.received_rssi(sensor.controller, gateway.controller) for _ in range(50)]
                )
        assert draws[0] == draws[1]  # same seed, same air
        assert len(set(draws[0])) > 3
        assert abs(sum(draws[0]) / 50 - -70) < 3

    run(scenario)


def test_raising_notification_callback_does_not_block_indications() -> None:
    async def scenario() -> None:
        async with ward() as w:
            calls: list[bytes] = []

            def broken(_c: Any, data: bytearray) -> None:
                calls.append(bytes(data))
                raise RuntimeError("agent bug")

            async with BleakClient(w.thermometer.address, backend=w.gateway.client_backend) as c:
                await c.start_notify(TEMPERATURE_MEASUREMENT, broken)
                async with asyncio.timeout(2):  # the ATT confirmation still goes back
                    await w.thermometer.indicate(w.temperature, TEMP_36_6)
                    await w.thermometer.indicate(w.temperature, TEMP_36_6)
            assert calls == [TEMP_36_6, TEMP_36_6]

    run(scenario)


def test_rssi_model_and_address_validation() -> None:
    assert rssi_at_distance(1.0) == -59
    assert rssi_at_distance(10.0) == -79
    assert rssi_at_distance(2.0) > rssi_at_distance(3.0)
    with pytest.raises(ValueError):
        rssi_at_distance(0.0)

    async def scenario() -> None:
        async with VirtualRadio() as radio:
            await radio.add_central(address="c1:02:03:04:05:06")
            with pytest.raises(VirtualRadioError, match="already"):
                await radio.add_peripheral("dup", address="C1:02:03:04:05:06")
            with pytest.raises(VirtualRadioError, match="static random"):
                await radio.add_peripheral("public", address="00:11:22:33:44:55")

    run(scenario)
