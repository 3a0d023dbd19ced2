"""The simulated BLE devices, seen through plain bleak clients on the virtual radio.

These tests hold the simulator to the Bluetooth SIG service specifications (what the
agent's tests rely on): each value decodes with protocol.gatt to what the value source
gave, the glucose meter's RACP answers every request kind with the GLS response codes,
and every fault does to the link what it says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakGATTProtocolError

from edge_agent.ble.virtual_radio import VirtualCentral, VirtualRadio
from protocol import ble_service
from protocol.fragments import Reassembler, fragment
from protocol.gatt import characteristics as gatt_codecs
from protocol.gatt import glucose
from simulator.ble_devices import (
    BloodPressureMonitor,
    FirmwareLinkDevice,
    GlucoseMeter,
    HeartRateMonitor,
    PulseOximeter,
    SimulatedPeripheral,
    Thermometer,
    WeightScale,
)

TIMEOUT_S = 10.0
RACP = ble_service.sig_uuid(ble_service.RECORD_ACCESS_CONTROL_POINT)
GLUCOSE = ble_service.sig_uuid(ble_service.GLUCOSE_MEASUREMENT)
START = 1_700_000_000.0


class ManualClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class Inbox:
    """Notification callback that decodes values and lets a test wait for them."""

    def __init__(self, uuid16: int | None = None) -> None:
        self.uuid16 = uuid16
        self.raw: list[bytes] = []
        self._changed = asyncio.Event()

    def __call__(self, _characteristic: Any, data: bytearray) -> None:
        self.raw.append(bytes(data))
        self._changed.set()

    async def take(self, count: int = 1, timeout: float = 2.0) -> list[Any]:
        async with asyncio.timeout(timeout):
            while len(self.raw) < count:
                self._changed.clear()
                await self._changed.wait()
        values, self.raw = self.raw[:count], self.raw[count:]
        if self.uuid16 is None:
            return values
        return [gatt_codecs.decode(self.uuid16, value) for value in values]


def run(scenario: Callable[[VirtualRadio, VirtualCentral], Awaitable[None]]) -> None:
    async def main() -> None:
        async with asyncio.timeout(TIMEOUT_S), VirtualRadio() as radio:
            await scenario(radio, await radio.add_central())

    asyncio.run(main())


@asynccontextmanager
async def client_of(
    device: SimulatedPeripheral, central: VirtualCentral, **kwargs: Any
) -> AsyncIterator[BleakClient]:
    async with BleakClient(device.address, backend=central.client_backend, **kwargs) as client:
        yield client


def measurement_uuid(device: Any) -> str:
    return ble_service.sig_uuid(device.measurement_uuid16)


def values_of(decoded: dict[str, Any]) -> dict[str, Any]:
    return {v["n"]: v.get("special", v["v"]) for v in decoded["values"]}


# ---- value sources and encodings ------------------------------------------------------------


def test_each_device_sends_what_its_value_source_gives_over_time() -> None:
    clock = ManualClock()

    async def scenario(radio: VirtualRadio, central: VirtualCentral) -> None:
        devices = [
            HeartRateMonitor("HR", lambda t: {"hr": 60 + t}, clock=clock),
            Thermometer("Th", lambda t: {"temp": 36.5 + t / 10}, clock=clock),
            BloodPressureMonitor("BP", lambda t: {"sys": 110 + t, "pr": 70}, clock=clock),
            PulseOximeter("Ox", lambda t: {"spo2": 98 - t}, clock=clock),
            WeightScale("W", lambda t: {"weight": 70 + t / 2}, clock=clock),
        ]
        for device in devices:
            await device.attach(radio)
        clock.now += 4  # the sources see 4 s since attachment
        expected = {
            "HR": {"hr": 64.0},
            "Th": {"temp": 36.9},
            "BP": {"sys": 114.0, "dia": 80.0, "map": 93.0, "pr": 70.0},
            "Ox": {"spo2": 94.0, "pr": 72.0, "pi": 2.5},
            "W": {"weight": 72.0},
        }
        for device in devices:
            inbox = Inbox(device.measurement_uuid16)
            async with client_of(device, central) as client:
                await client.start_notify(measurement_uuid(device), inbox)
                await device.wait_subscribed(device.measurement)
                sent = await device.measure()
                (decoded,) = await inbox.take()
                assert values_of(decoded) == expected[device.name], device.name
                assert device.sent == [sent]
                if decoded.get("timestamp") is not None:  # the device clock is the clock
                    stamp = time.localtime(clock.now)[:6]
                    assert tuple(decoded["timestamp"].values()) == stamp

    run(scenario)


def test_pulse_oximeter_spot_check_is_indicated_with_a_timestamp() -> None:
    async def scenario(radio: VirtualRadio, central: VirtualCentral) -> None:
        oximeter = await PulseOximeter("Ox").attach(radio)
        inbox = Inbox(ble_service.PLX_SPOT_CHECK_MEASUREMENT)
        async with client_of(oximeter, central) as client:
            spot = client.services.get_characteristic(
                ble_service.sig_uuid(ble_service.PLX_SPOT_CHECK_MEASUREMENT)
            )
            assert spot.properties == ["indicate"]
            await client.start_notify(spot, inbox)
            await oximeter.spot_check(spo2=91, device_sensor_status=1 << 15)
            (decoded,) = await inbox.take()
            assert values_of(decoded)["spo2"] == 91.0
            assert decoded["device_sensor_status"]["set"] == ["sensor_disconnected"]
            assert decoded["timestamp"] is not None
            features = await client.read_gatt_char(ble_service.sig_uuid(ble_service.PLX_FEATURES))
            assert features == PulseOximeter.FEATURES

    run(scenario)


def test_streaming_sends_only_while_subscribed() -> None:
    async def scenario(radio: VirtualRadio, central: VirtualCentral) -> None:
        hr = await HeartRateMonitor("HR").attach(radio)
        hr.start_streaming(0.02)
        await asyncio.sleep(0.1)
        assert hr.sent == []  # nobody listening: nothing measured
        inbox = Inbox(ble_service.HEART_RATE_MEASUREMENT)
        async with client_of(hr, central) as client:
            await client.start_notify(
                ble_service.sig_uuid(ble_service.HEART_RATE_MEASUREMENT), inbox
            )
            decoded = await inbox.take(3)
            assert [values_of(d)["hr"] for d in decoded] == [72.0] * 3
        await hr.stop_streaming()
        count = len(hr.sent)
        await asyncio.sleep(0.1)
        assert len(hr.sent) == count

    run(scenario)


# ---- faults --------------------------------------------------------------------------------


def test_garbage_and_clock_skew() -> None:
    async def scenario(radio: VirtualRadio, central: VirtualCentral) -> None:
        thermo = await Thermometer("Th").attach(radio)
        inbox = Inbox()
        async with client_of(thermo, central) as client:
            await client.start_notify(measurement_uuid(thermo), inbox)
            await thermo.send_garbage()
            await thermo.send_garbage(b"\x02\x01")
            assert await inbox.take(2) == [b"\x1f", b"\x02\x01"]
            thermo.skew_clock(7200)
            await thermo.measure()
            (raw,) = await inbox.take()
            stamp = gatt_codecs.decode(ble_service.TEMPERATURE_MEASUREMENT, raw)["timestamp"]
            device_time = time.mktime((*stamp.values(), 0, 0, -1))
            assert 7195 < device_time - time.time() < 7205

    run(scenario)


def test_reboot_drop_and_range_faults_end_the_link() -> None:
    async def scenario(radio: VirtualRadio, central: VirtualCentral) -> None:
        meter = await GlucoseMeter("Gluco").attach(radio)
        meter.add_record(100)
        lost = asyncio.Event()
        client = BleakClient(meter.address, lambda _c: lost.set(), backend=central.client_backend)

        async def seen() -> bool:
            found = await BleakScanner.discover(0.25, backend=central.scanner_backend)
            return meter.address in {d.address for d in found}

        await client.connect()
        reboot = asyncio.ensure_future(meter.reboot(downtime_s=0.4))
        await asyncio.wait_for(lost.wait(), 1)
        assert not await seen()  # powered off: silent
        await reboot
        assert await seen() and meter.reboots == 1
        assert len(meter.records) == 1  # records are kept in flash

        for fault, recover in (
            (meter.drop_link, None),
            (meter.go_out_of_range, meter.come_into_range),
        ):
            lost.clear()
            await client.connect()
            started = time.monotonic()
            result = fault()
            if result is not None:
                await result
            await asyncio.wait_for(lost.wait(), 2)
            if recover is not None:
                assert time.monotonic() - started > 0.3  # the supervision timeout
                recover()

    run(scenario)


def test_an_indication_lost_with_the_link_does_not_hang_the_device() -> None:
    async def scenario(radio: VirtualRadio, central: VirtualCentral) -> None:
        thermo = await Thermometer("Th").attach(radio)
        async with client_of(thermo, central) as client:
            await client.start_notify(measurement_uuid(thermo), Inbox())
            await thermo.wait_subscribed(thermo.measurement)
            thermo.go_out_of_range()
            started = time.monotonic()
            assert await thermo.deliver(thermo.measurement, b"\x00\x6e\x01\x00\xff") == 0
            assert time.monotonic() - started < 2.0  # not bumble's 30 s GATT timeout

    run(scenario)


# ---- glucose meter: Record Access Control Point ----------------------------------------------


@asynccontextmanager
async def meter_session(
    radio: VirtualRadio, central: VirtualCentral, records: int = 5, **options: Any
) -> AsyncIterator[tuple[GlucoseMeter, BleakClient, Inbox, Inbox]]:
    meter = await GlucoseMeter("Gluco", **options).attach(radio)
    for i in range(records):
        meter.add_record(100 + i)
    measurements, answers = (
        Inbox(ble_service.GLUCOSE_MEASUREMENT),
        Inbox(ble_service.RECORD_ACCESS_CONTROL_POINT),
    )
    async with client_of(meter, central) as client:
        await client.start_notify(GLUCOSE, measurements)
        await client.start_notify(RACP, answers)
        yield meter, client, measurements, answers


def response(op: int, code: int) -> bytes:
    return glucose.encode_racp_response_code(op, code)


def test_racp_reports_the_selected_records_then_closes_the_procedure() -> None:
    report = glucose.RACP_REPORT_STORED_RECORDS
    seq = glucose.FILTER_SEQUENCE_NUMBER
    cases = [
        (glucose.encode_racp_report_all(), [1, 2, 3, 4, 5]),
        (glucose.encode_racp_report_from(4), [4, 5]),
        (
            glucose.encode_racp_request(report, glucose.OPERATOR_LESS_OR_EQUAL, seq, maximum=2),
            [1, 2],
        ),
        (glucose.encode_racp_request(report, glucose.OPERATOR_WITHIN_RANGE, seq, 2, 3), [2, 3]),
        (glucose.encode_racp_request(report, glucose.OPERATOR_FIRST), [1]),
        (glucose.encode_racp_request(report, glucose.OPERATOR_LAST), [5]),
    ]

    async def scenario(radio: VirtualRadio, central: VirtualCentral) -> None:
        async with meter_session(radio, central) as (meter, client, measurements, answers):
            for request, sequence_numbers in cases:
                await client.write_gatt_char(RACP, request, response=True)
                records = await measurements.take(len(sequence_numbers))
                assert [r["sequence_number"] for r in records] == sequence_numbers
                (answer,) = await answers.take()
                assert (answer["request_op_code"], answer["response_name"]) == (report, "success")
            await client.write_gatt_char(RACP, glucose.encode_racp_report_from(9), response=True)
            (answer,) = await answers.take()
            assert answer["response_name"] == "no_records_found"
            assert measurements.raw == []
            assert meter.racp_requests[:1] == [glucose.encode_racp_report_all()]

    run(scenario)


def test_racp_counts_deletes_and_answers_bad_requests_with_gls_codes() -> None:
    report = glucose.RACP_REPORT_STORED_RECORDS
    bad = [
        (b"\x01\x00", response(report, glucose.RESPONSE_INVALID_OPERATOR)),
        (b"\x01\x09", response(report, glucose.RESPONSE_OPERATOR_NOT_SUPPORTED)),
        (b"\x01\x03", response(report, glucose.RESPONSE_INVALID_OPERAND)),
        (b"\x01\x03\x01\x05", response(report, glucose.RESPONSE_INVALID_OPERAND)),
        (b"\x01\x03\x07\x05\x00", response(report, glucose.RESPONSE_OPERAND_NOT_SUPPORTED)),
        (b"\x01\x01\x00", response(report, glucose.RESPONSE_INVALID_OPERAND)),
        (b"\x09\x01", response(0x09, glucose.RESPONSE_OP_CODE_NOT_SUPPORTED)),
        (b"\x05\x00\x02\x00", response(0x05, glucose.RESPONSE_OP_CODE_NOT_SUPPORTED)),
        (b"\x03\x01", response(0x03, glucose.RESPONSE_INVALID_OPERATOR)),
        (
            glucose.encode_racp_request(
                report,
                glucose.OPERATOR_GREATER_OR_EQUAL,
                glucose.FILTER_USER_FACING_TIME,
                minimum=(2024, 1, 1, 0, 0, 0),
            ),
            response(report, glucose.RESPONSE_OPERAND_NOT_SUPPORTED),
        ),
    ]

    async def scenario(radio: VirtualRadio, central: VirtualCentral) -> None:
        async with meter_session(radio, central) as (meter, client, measurements, answers):
            await client.write_gatt_char(
                RACP, glucose.encode_racp_number_of_records(), response=True
            )
            assert (await answers.take())[0]["number_of_records"] == 5
            await client.write_gatt_char(
                RACP, glucose.encode_racp_number_of_records(3), response=True
            )
            assert (await answers.take())[0]["number_of_records"] == 3
            for request, expected in bad:
                await client.write_gatt_char(RACP, request, response=True)
                assert (await answers.take())[0] == gatt_codecs.decode(
                    ble_service.RECORD_ACCESS_CONTROL_POINT, expected
                ), request.hex()
            delete = glucose.encode_racp_request(
                glucose.RACP_DELETE_STORED_RECORDS,
                glucose.OPERATOR_LESS_OR_EQUAL,
                glucose.FILTER_SEQUENCE_NUMBER,
                maximum=3,
            )
            await client.write_gatt_char(RACP, delete, response=True)
            (answer,) = await answers.take()
            assert answer["response_name"] == "success"
            assert [r.sequence_number for r in meter.records] == [4, 5]
            assert measurements.raw == []  # no request above sent a record

    run(scenario)


def test_racp_abort_busy_and_cccd_rules() -> None:
    async def scenario(radio: VirtualRadio, central: VirtualCentral) -> None:
        async with meter_session(radio, central, records=20, record_interval_s=0.02) as (
            meter,
            client,
            measurements,
            answers,
        ):
            await client.write_gatt_char(RACP, glucose.encode_racp_report_all(), response=True)
            await measurements.take(2)
            with pytest.raises(BleakGATTProtocolError) as busy:
                await client.write_gatt_char(RACP, glucose.encode_racp_report_all(), response=True)
            assert busy.value.code == ble_service.GLS_PROCEDURE_ALREADY_IN_PROGRESS
            await client.write_gatt_char(RACP, glucose.encode_racp_abort(), response=True)
            (answer,) = await answers.take()
            assert answer["request_op_code"] == glucose.RACP_ABORT_OPERATION
            assert answer["response_name"] == "success"
            await asyncio.sleep(0.1)
            assert len(measurements.raw) < 18  # the report stopped early, and never closed
            assert answers.raw == []

            await client.stop_notify(GLUCOSE)
            with pytest.raises(BleakGATTProtocolError) as unconfigured:
                await client.write_gatt_char(RACP, glucose.encode_racp_report_all(), response=True)
            assert unconfigured.value.code == ble_service.GLS_CCCD_IMPROPERLY_CONFIGURED
            await client.stop_notify(RACP)
            with pytest.raises(BleakGATTProtocolError) as silent:
                await client.write_gatt_char(RACP, glucose.encode_racp_abort(), response=True)
            assert silent.value.code == ble_service.GLS_CCCD_IMPROPERLY_CONFIGURED

    run(scenario)


def test_racp_can_require_an_encrypted_link() -> None:
    async def scenario(radio: VirtualRadio, central: VirtualCentral) -> None:
        async with meter_session(radio, central, records=1, require_encryption=True) as (
            _meter,
            client,
            measurements,
            _answers,
        ):
            with pytest.raises(BleakGATTProtocolError) as refused:
                await client.write_gatt_char(RACP, glucose.encode_racp_report_all(), response=True)
            assert refused.value.code == 0x0F  # insufficient encryption
            await client.pair()
            await client.write_gatt_char(RACP, glucose.encode_racp_report_all(), response=True)
            assert len(await measurements.take()) == 1

    run(scenario)


# ---- the VitalBridge firmware service ---------------------------------------------------------


def test_firmware_link_fragments_up_reassembles_down_and_serves_its_identity() -> None:
    async def scenario(radio: VirtualRadio, central: VirtualCentral) -> None:
        board = await FirmwareLinkDevice("VB", identity=b"\x83\x01\x09\xa0").attach(
            radio, max_att_mtu=23
        )
        message = bytes(range(50))
        inbox = Inbox()
        async with client_of(board, central) as client:
            assert await client.read_gatt_char(ble_service.PROVISIONING_UUID) == b"\x83\x01\x09\xa0"
            await client.start_notify(ble_service.UPLINK_UUID, inbox)
            await board.wait_subscribed(board.uplink)
            assert await board.send_message(message) == 3  # 17 bytes per fragment at MTU 23
            reassembler = Reassembler()
            fragments = await inbox.take(3)
            assert all(len(f) <= 20 for f in fragments)
            assert [reassembler.add(f, 0.0) for f in fragments][-1] == message

            for part in fragment(message, client.mtu_size, 7):
                await client.write_gatt_char(ble_service.DOWNLINK_UUID, part, response=True)
            assert await board.next_message() == message
            # Half a message, then the link drops: the board forgets it.
            await client.write_gatt_char(
                ble_service.DOWNLINK_UUID, fragment(message, 23, 8)[0], response=True
            )
            assert board.reassembler.pending_count == 1
        assert board.reassembler.pending_count == 0
        assert board.received == [message]

    run(scenario)
