"""BLE ingest against simulated devices: the agent's real bleak code over the virtual radio.

Every scenario builds its own VirtualRadio inside asyncio.run: one gateway central, the
simulated devices of simulator/ble_devices.py (bumble GATT servers encoding with
protocol.gatt), and a BleManager whose scanner and clients use the bumble-backed bleak
backend. Nothing of bleak or bleak-retry-connector is mocked.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from bleak.uuids import normalize_uuid_16
from bumble.device import Connection, Device
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.ble.virtual_radio import VirtualRadio
from edge_agent.ble_ingest import (
    PROFILES,
    BleEvent,
    BleManager,
    CharacteristicProfile,
    ConnectionOptions,
    ConnectionState,
    DeviceConditions,
    DeviceConfig,
    DeviceUnavailable,
    FirmwareMessage,
    LinkNote,
    LinkStatus,
    MemoryCursorStore,
    Reading,
    ReconnectPolicy,
    Rejected,
    interpret,
)
from edge_agent.ble_ingest.connection import sequence_newer
from protocol import ble_service, crypto, device_link, messages, sealing, senml, session
from protocol.errors import GattError
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

SCENARIO_TIMEOUT_S = 15.0
WAIT_S = 3.0
FAST_RECONNECT = ReconnectPolicy(initial_s=0.05, factor=2.0, maximum_s=0.4, stable_after_s=5.0)


class Events:
    """The manager's sink: keeps every BleEvent and lets a scenario wait for some."""

    def __init__(self) -> None:
        self.all: list[BleEvent] = []
        self._arrived = asyncio.Event()

    def __call__(self, event: BleEvent) -> None:
        self.all.append(event)
        self._arrived.set()

    def of(self, kind: type, device: str | None = None) -> list[Any]:
        return [
            e.event
            for e in self.all
            if isinstance(e.event, kind) and (device is None or e.device == device)
        ]

    async def wait(
        self, kind: type, device: str, count: int = 1, where: Callable[[Any], bool] = bool
    ) -> list[Any]:
        """The first `count` events of `kind` from `device` that satisfy `where`."""
        async with asyncio.timeout(WAIT_S):
            while True:
                found = [e for e in self.of(kind, device) if where(e)]
                if len(found) >= count:
                    return found[:count]
                self._arrived.clear()
                await self._arrived.wait()


def play(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run a scenario in a fresh loop; an error logged by any loop callback fails it."""
    problems: list[str] = []

    async def guarded() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: problems.append(str(context.get("exception") or context))
        )
        async with asyncio.timeout(SCENARIO_TIMEOUT_S):
            await scenario()

    asyncio.run(guarded())
    assert not problems, problems


@dataclass
class Home:
    """One simulated home: the radio, the gateway's manager and what it delivered."""

    radio: VirtualRadio
    manager: BleManager
    events: Events


@asynccontextmanager
async def home(
    devices: Mapping[str, SimulatedPeripheral],
    *,
    configs: Callable[[Mapping[str, SimulatedPeripheral]], list[DeviceConfig]] | None = None,
    mtu: int = 517,
    sink: Callable[[BleEvent], None] | None = None,
    before_start: Callable[[], None] | None = None,
    wait: bool = True,
    **manager_options: Any,
) -> AsyncIterator[Home]:
    """Attach `devices` to a fresh radio, start a BleManager for them (by default each
    configured by address under its key) and, unless `wait` is False, wait until every
    configured device is connected. A clean stop must leave no link behind."""
    async with VirtualRadio() as radio:
        central = await radio.add_central()
        for device in devices.values():
            await device.attach(radio, max_att_mtu=mtu)
        if configs is None:
            chosen = [DeviceConfig(name, address=d.address) for name, d in devices.items()]
        else:
            chosen = configs(devices)
        events = Events()

        def deliver(event: BleEvent) -> None:
            events(event)
            if sink is not None:
                sink(event)

        options = ConnectionOptions(
            client_backend=central.client_backend,
            reconnect=FAST_RECONNECT,
            connect_timeout_s=10.0,
            setup_timeout_s=5.0,
            racp_timeout_s=2.0,
            fragment_timeout_s=1.0,
        )
        manager = BleManager(
            chosen,
            deliver,
            scanner_backend=central.scanner_backend,
            options=options,
            seed=1,
            **manager_options,
        )
        if before_start is not None:
            before_start()
        async with manager:
            if wait:
                await connected(manager, *(config.name for config in chosen))
            yield Home(radio, manager, events)
        for peripheral in radio.peripherals:
            assert peripheral.connections == []


async def connected(manager: BleManager, *names: str) -> None:
    async with asyncio.timeout(WAIT_S):
        for name in names:
            await manager.wait_for_state(name, ConnectionState.CONNECTED)


def quantities(readings: Iterable[Reading]) -> set[tuple[str, float | None, str]]:
    return {(r.quantity, r.value, r.unit) for r in readings}


# ---- every standard device, end to end ------------------------------------------------------


def test_configured_devices_are_found_connected_and_decoded_into_readings() -> None:
    async def scenario() -> None:
        hr, thermo = HeartRateMonitor("Polar H10"), Thermometer("Thermo")
        cuff, oximeter = BloodPressureMonitor("BP-Cuff"), PulseOximeter("Oxi")
        scale, meter = WeightScale("Scale"), GlucoseMeter("Gluco")
        meter.add_record(110)
        meter.add_record(5.5, mmol=True, decimals=1)
        stranger = HeartRateMonitor("Neighbour HR")
        devices = {
            "hr": hr,
            "thermo": thermo,
            "cuff": cuff,
            "oxi": oximeter,
            "scale": scale,
            "gluco": meter,
            "stranger": stranger,
        }

        def configure(d: Mapping[str, SimulatedPeripheral]) -> list[DeviceConfig]:
            return [
                DeviceConfig("hr", local_name="Polar H10"),
                DeviceConfig("thermo", address=d["thermo"].address.lower()),
                DeviceConfig("cuff", address=d["cuff"].address),
                DeviceConfig("oxi", service_uuid="1822"),
                DeviceConfig("scale", local_name="Scale", service_uuid="181d"),
                DeviceConfig("gluco", address=d["gluco"].address),
            ]

        async with home(devices, configs=configure, max_connections=6) as h:
            manager, events = h.manager, h.events
            await hr.wait_subscribed(hr.measurement)
            await hr.measure(hr=75)
            await thermo.measure(temp=37.2)  # indications: returns after the confirmation
            await cuff.measure(sys=128, dia=84, map=99, pr=70)
            await oximeter.wait_subscribed(oximeter.measurement)
            await oximeter.measure(spo2=95, pr=77, pi=1.5)
            await oximeter.spot_check(spo2=93, pr=80, pi=None)
            await scale.measure(weight=80.25)

            got = {
                name: quantities(await events.wait(Reading, name, count))
                for name, count in (
                    ("hr", 1),
                    ("thermo", 1),
                    ("cuff", 4),
                    ("oxi", 5),
                    ("scale", 1),
                    ("gluco", 2),
                )
            }
            assert got["hr"] == {("hr", 75.0, "beat/min")}
            assert got["thermo"] == {("temp", 37.2, "Cel")}
            assert got["cuff"] == {
                ("sys", 128.0, "mm[Hg]"),
                ("dia", 84.0, "mm[Hg]"),
                ("map", 99.0, "mm[Hg]"),
                ("pr", 70.0, "beat/min"),
            }
            assert got["oxi"] == {
                ("spo2", 95.0, "%"),
                ("pr", 77.0, "beat/min"),
                ("pi", 1.5, "%"),
                ("spo2", 93.0, "%"),
                ("pr", 80.0, "beat/min"),
            }
            assert got["scale"] == {("weight", 80.25, "kg")}
            assert got["gluco"] == {("glucose", 110.0, "mg/dL"), ("glucose", 5.5, "mmol/L")}
            assert [r.device_seq for r in events.of(Reading, "gluco")] == [1, 2]

            status = {s.name: s for s in manager.statuses()}
            assert status["thermo"].subscriptions == {"temperature": "indicate"}
            assert status["oxi"].subscriptions == {
                "plx_spot_check": "indicate",
                "plx_continuous": "notify",
            }
            assert status["hr"].subscriptions == {"heart_rate": "notify"}
            assert status["hr"].address == hr.address and status["hr"].rssi == -60
            assert status["hr"].last_seen is not None
            assert manager.connected_count == 6
            # The unconfigured strap is heard but never connected.
            assert stranger.connections == []
            heard = {a.address: a for a in manager.nearby()}
            assert heard[stranger.address].configured_as is None
            assert heard[hr.address].configured_as == "hr"
            for name in ("hr", "thermo"):
                (up,) = events.of(LinkStatus, name)
                assert up.connected

    play(scenario)


# ---- link loss, backoff, re-subscription ------------------------------------------------------


def test_forced_disconnects_are_detected_and_notifications_resume_after_reconnect() -> None:
    async def scenario() -> None:
        hr, thermo = HeartRateMonitor("HR"), Thermometer("Thermo")
        async with home({"hr": hr, "thermo": thermo}) as h:
            manager, events = h.manager, h.events
            backoffs = []
            for round_number, fault in enumerate((hr.drop_link, hr.reboot), start=1):
                await fault()
                down = await events.wait(LinkStatus, "hr", round_number, lambda e: not e.connected)
                assert down[-1].reason == "disconnected"
                await events.wait(LinkStatus, "hr", round_number + 1, lambda e: e.connected)
                backoffs.append(manager.status("hr").last_backoff_s)
                # The CCCD is written again on the new link, so the strap's values flow.
                await hr.wait_subscribed(hr.measurement)
                await hr.measure(hr=100 + round_number)
                (reading,) = await events.wait(
                    Reading, "hr", where=lambda r, n=round_number: r.value == 100 + n
                )
                assert reading.quantity == "hr"
            # Each quick loss doubles the delay (jitter is within 20 %).
            assert 0.04 <= backoffs[0] <= 0.06 and 0.08 <= backoffs[1] <= 0.12
            counters = manager.status("hr").counters
            assert counters["connects"] == 3 and counters["disconnects"] == 2

            # Out of range: link loss after the supervision timeout, no connect attempts
            # while nothing is heard, indications resume once it is back.
            loop = asyncio.get_running_loop()
            faded_at = loop.time()
            thermo.go_out_of_range()
            await events.wait(LinkStatus, "thermo", 2, lambda e: True)
            assert 0.3 < loop.time() - faded_at < 2.0
            await asyncio.sleep(0.5)
            status = manager.status("thermo")
            assert status.state is ConnectionState.SEARCHING
            assert status.counters["connect_failures"] == 0
            thermo.come_into_range()
            await connected(manager, "thermo")
            await thermo.wait_subscribed(thermo.measurement)
            await thermo.measure(temp=38.4)
            await events.wait(Reading, "thermo", where=lambda r: r.value == 38.4)

    play(scenario)


def test_connection_cap_is_never_exceeded() -> None:
    async def scenario() -> None:
        straps = [HeartRateMonitor(f"HR-{i}") for i in range(4)]
        counters: list[LinkCounter] = []
        async with home(
            {f"hr{i}": strap for i, strap in enumerate(straps)},
            max_connections=2,
            wait=False,
            before_start=lambda: counters.append(LinkCounter(straps)),
        ) as h:
            manager = h.manager
            async with asyncio.timeout(WAIT_S):
                while manager.connected_count < 2:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)  # the other two keep waiting for a slot
            states = sorted(s.state for s in manager.statuses())
            assert states.count(ConnectionState.CONNECTED) == 2
            assert states.count(ConnectionState.QUEUED) == 2
            # A device that goes away frees its slot for a waiting one.
            waiting = [s.name for s in manager.statuses() if s.state is ConnectionState.QUEUED]
            first = next(s for s in manager.statuses() if s.state is ConnectionState.CONNECTED)
            leaving = next(s for s in straps if s.address == first.address)
            await leaving.peripheral.switch_off()
            await wait_until(
                lambda: any(
                    manager.status(name).state is ConnectionState.CONNECTED for name in waiting
                )
            )
            await asyncio.sleep(0.2)
            assert manager.connected_count == 2
            assert manager.status(first.name).state is ConnectionState.SEARCHING
            assert sum(s.counters["connects"] for s in manager.statuses()) == 3
        assert counters[0].most == 2  # counted in the radio, at every connection event
        assert counters[0].total == 3

    play(scenario)


class LinkCounter:
    """Counts live links in the radio from the peripherals' own connection events."""

    def __init__(self, devices: Iterable[SimulatedPeripheral]) -> None:
        self.now = self.most = self.total = 0
        for device in devices:
            device.peripheral.device.on(Device.EVENT_CONNECTION, self._up)

    def _up(self, connection: Connection) -> None:
        self.now += 1
        self.total += 1
        self.most = max(self.most, self.now)
        connection.on(Connection.EVENT_DISCONNECTION, self._down)

    def _down(self, _reason: int) -> None:
        self.now -= 1


# ---- glucose records through the RACP -----------------------------------------------------


def test_glucose_records_are_fetched_once_and_only_newer_ones_after_a_reconnect() -> None:
    async def scenario() -> None:
        meter = GlucoseMeter("Gluco")
        for value in (95, 140, 180):
            meter.add_record(value)
        cursors = MemoryCursorStore()
        async with home({"gluco": meter}, cursors=cursors) as h:
            manager, events = h.manager, h.events
            first = await events.wait(Reading, "gluco", 3)
            assert [(r.device_seq, r.value) for r in first] == [
                (1, 95.0),
                (2, 140.0),
                (3, 180.0),
            ]
            assert all("stored" in r.flags for r in first)
            await wait_until(lambda: cursors.get("gluco") == 3)
            assert meter.racp_requests == [glucose.encode_racp_report_all()]

            meter.add_record(120)
            meter.add_record(99)
            await meter.drop_link()
            await events.wait(LinkStatus, "gluco", 3)  # up, down, up
            later = await events.wait(Reading, "gluco", 5)
            assert [r.device_seq for r in later[3:]] == [4, 5]
            await wait_until(lambda: cursors.get("gluco") == 5)
            assert meter.racp_requests[-1] == glucose.encode_racp_report_from(4)

            await meter.drop_link()  # nothing new: "no records found", cursor kept
            await events.wait(LinkStatus, "gluco", 5)
            await wait_until(lambda: len(meter.racp_responses) == 3)
            assert meter.racp_responses[-1] == glucose.encode_racp_response_code(
                glucose.RACP_REPORT_STORED_RECORDS, glucose.RESPONSE_NO_RECORDS_FOUND
            )
            assert len(events.of(Reading, "gluco")) == 5 and cursors.get("gluco") == 5
            assert manager.status("gluco").counters["duplicates"] == 0

    play(scenario)


class ForgetfulMeter(GlucoseMeter):
    """A meter that ignores the RACP filter and always sends every record."""

    def _select(self, request: Any) -> list[Any]:
        return list(self.records)


def test_records_resent_by_a_meter_ignoring_the_filter_are_not_delivered_twice() -> None:
    async def scenario() -> None:
        meter = ForgetfulMeter("Gluco")
        meter.add_record(101)
        meter.add_record(102)
        cursors = MemoryCursorStore()
        cursors.set("gluco", 1)  # record 1 was fetched by an earlier run
        async with home({"gluco": meter}, cursors=cursors) as h:
            manager, events = h.manager, h.events
            await wait_until(lambda: cursors.get("gluco") == 2)
            assert [r.device_seq for r in events.of(Reading, "gluco")] == [2]
            assert manager.status("gluco").counters["duplicates"] == 1

    play(scenario)


def test_bonding_policy_pairs_configured_devices_and_reports_the_others() -> None:
    async def scenario() -> None:
        bonded = GlucoseMeter("Bonded", require_encryption=True)
        unbonded = GlucoseMeter("Unbonded", require_encryption=True)
        for meter in (bonded, unbonded):
            meter.add_record(123)

        def configure(d: Mapping[str, SimulatedPeripheral]) -> list[DeviceConfig]:
            return [
                DeviceConfig("bonded", address=d["bonded"].address, bonding=True),
                DeviceConfig("unbonded", address=d["unbonded"].address),
            ]

        async with home({"bonded": bonded, "unbonded": unbonded}, configs=configure) as h:
            events = h.events
            (reading,) = await events.wait(Reading, "bonded")
            assert reading.value == 123.0
            (link,) = bonded.connections
            assert link.is_encrypted  # paired over SMP while connecting
            (note,) = await events.wait(LinkNote, "unbonded")
            assert note.reason.startswith("bonding:") and "set bonding" in note.reason
            assert events.of(Reading, "unbonded") == []

    play(scenario)


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.01)


# ---- hostile and special values ------------------------------------------------------------------


def test_garbage_values_are_rejected_with_a_reason_and_the_link_survives() -> None:
    async def scenario() -> None:
        hr, cuff = HeartRateMonitor("HR"), BloodPressureMonitor("Cuff")
        async with home({"hr": hr, "cuff": cuff}) as h:
            manager, events = h.manager, h.events
            await hr.wait_subscribed(hr.measurement)
            await hr.send_garbage(b"\x10\x48\x01")  # RR flag with half an interval
            await cuff.send_garbage(b"\x00\x78")  # truncated systolic
            await hr.measure(hr=400)  # decodes, but no heart beats 400 times a minute
            await hr.measure(hr=64)
            rejected_hr = await events.wait(Rejected, "hr", 2)
            assert rejected_hr[0].source == "heart_rate"
            assert "rr_intervals" in rejected_hr[0].reason
            assert rejected_hr[0].raw == b"\x10\x48\x01"
            assert "possible range" in rejected_hr[1].reason
            (rejected_bp,) = await events.wait(Rejected, "cuff")
            assert rejected_bp.reason.startswith("blood_pressure.")
            assert "truncated" in rejected_bp.reason
            (reading,) = await events.wait(Reading, "hr")
            assert reading.value == 64.0  # 400 never became a reading
            assert manager.status("hr").state is ConnectionState.CONNECTED
            assert manager.status("hr").counters["rejected"] == 2

    play(scenario)


def test_special_values_are_flagged_and_never_numbers() -> None:
    async def scenario() -> None:
        thermo, cuff = Thermometer("Thermo"), BloodPressureMonitor("Cuff")
        oximeter, scale = PulseOximeter("Oxi"), WeightScale("Scale")
        devices = {"thermo": thermo, "cuff": cuff, "oxi": oximeter, "scale": scale}
        async with home(devices) as h:
            events = h.events
            await thermo.measure(temp="nan")
            await cuff.measure(sys="nres", dia=80, map=93, pr="+inf")
            await oximeter.wait_subscribed(oximeter.measurement)
            await oximeter.measure(spo2="-inf", pr=70, pi="reserved")
            await scale.measure(weight="unsuccessful")
            specials = {}
            for name, count in (("thermo", 1), ("cuff", 4), ("oxi", 3), ("scale", 1)):
                for reading in await events.wait(Reading, name, count):
                    specials[(name, reading.quantity)] = (reading.value, reading.special)
            assert specials == {
                ("thermo", "temp"): (None, "nan"),
                ("cuff", "sys"): (None, "nres"),
                ("cuff", "dia"): (80.0, None),
                ("cuff", "map"): (93.0, None),
                ("cuff", "pr"): (None, "+inf"),
                ("oxi", "spo2"): (None, "-inf"),
                ("oxi", "pr"): (70.0, None),
                ("oxi", "pi"): (None, "reserved"),
                ("scale", "weight"): (None, "unsuccessful"),
            }
            assert events.of(Rejected) == []

    play(scenario)


def test_device_conditions_and_clock_skew_are_reported() -> None:
    async def scenario() -> None:
        hr, thermo = HeartRateMonitor("HR"), Thermometer("Thermo")
        async with home({"hr": hr, "thermo": thermo}) as h:
            manager, events = h.manager, h.events
            await hr.wait_subscribed(hr.measurement)
            await hr.measure(hr=70, sensor_contact=False)
            await hr.measure(hr=71, sensor_contact=False)  # unchanged: no second event
            await hr.measure(hr=72, sensor_contact=True)
            await events.wait(Reading, "hr", 3)
            changes = events.of(DeviceConditions, "hr")
            assert [c.conditions for c in changes] == [
                frozenset({"no-sensor-contact"}),
                frozenset(),
            ]
            flags = [r.flags for r in events.of(Reading, "hr")]
            assert flags == [frozenset({"no-sensor-contact"})] * 2 + [frozenset()]

            thermo.skew_clock(-3600)
            await thermo.measure(temp=36.9)
            (reading,) = await events.wait(Reading, "thermo")
            assert "clock-skew" in reading.flags
            assert reading.time == reading.received_at  # filed under the gateway's clock
            assert -3602 < reading.clock_offset_s < -3598
            assert manager.status("thermo").counters["readings"] == 1

    play(scenario)


# ---- the VitalBridge firmware service ---------------------------------------------------------


def test_firmware_service_handshake_sealed_batch_and_acknowledgement() -> None:
    device_private = bytes(range(1, 33))
    gateway_private = bytes(range(101, 133))
    device_public = crypto.x25519_public_key(device_private)
    gateway_public = crypto.x25519_public_key(gateway_private)

    identity = messages.encode(
        "device-event",
        device_link.encode_event(
            ble_service.identity_event(
                "vb-dev-7", "VB-ESP32", "SN7", "1.2.0", ble_service.MODE_ENROLLED, 1000
            )
        ),
    )

    async def scenario() -> None:
        board = FirmwareLinkDevice("VB-7", identity=identity)
        pending: set[asyncio.Task[None]] = set()
        opened: list[sealing.OpenedBatch] = []
        sessions: dict[str, session.Session] = {}
        managers: list[BleManager] = []

        def pipeline(event: BleEvent) -> None:
            """A minimal verification pipeline: answers hello, opens and acks batches."""
            if not isinstance(event.event, FirmwareMessage) or event.event.channel != "uplink":
                return
            kind, body = messages.decode(event.event.payload)
            if kind == "hello":
                gw_session, accept = session.gateway_accept(body, device_public, gateway_private)
                sessions[event.device] = gw_session
                reply = messages.encode("accept", accept)
            elif kind == "sealed":
                gw_session = sessions[event.device]
                batch = sealing.open_batch(gw_session.device_mac_key, gw_session.kid, body)
                opened.append(batch)
                ack = device_link.Ack(gw_session.session_id, upto=batch.last_seq)
                sealed_ack = device_link.encode_ack(ack, gw_session.gateway_mac_key, gw_session.kid)
                reply = messages.encode("device-ack", sealed_ack)
            else:
                return
            task = asyncio.ensure_future(managers[0].send(event.device, reply))
            pending.add(task)
            task.add_done_callback(pending.discard)

        def by_name_and_service(_devices: Any) -> list[DeviceConfig]:
            return [DeviceConfig("vb7", service_uuid=ble_service.SERVICE_UUID, local_name="VB-7")]

        # MTU 23: 17 message bytes per fragment.
        async with home(
            {"vb7": board}, configs=by_name_and_service, mtu=23, sink=pipeline, wait=False
        ) as h:
            manager, events = h.manager, h.events
            managers.append(manager)
            (hint,) = await events.wait(FirmwareMessage, "vb7")
            assert hint == FirmwareMessage(identity, "provisioning")

            handshake = session.DeviceHandshake("vb-dev-7", device_private, gateway_public)
            await board.wait_subscribed(board.uplink)
            hello = messages.encode("hello", handshake.hello())
            assert await board.send_message(hello) > 1  # really fragmented
            kind, accept = messages.decode(await board.next_message())
            assert kind == "accept"
            device_session = handshake.finish(accept)

            records = [
                senml.make_record("spo2", 96, time=1_700_000_000, seq=10),
                senml.make_record("pr", 71, time=1_700_000_000, seq=11),
            ]
            sealed = sealing.seal_batch(
                device_session.device_mac_key, device_session.kid, records, "urn:dev:vb:vb-dev-7:"
            )
            await board.send_message(messages.encode("sealed", sealed))
            kind, ack_body = messages.decode(await board.next_message())
            assert kind == "device-ack"
            ack = device_link.decode_ack(
                ack_body, device_session.gateway_mac_key, device_session.kid
            )
            assert ack.upto == 11 and ack.session_id == device_session.session_id
            assert [(r.quantity, r.value, r.seq) for r in opened[0].readings] == [
                ("spo2", 96, 10),
                ("pr", 71, 11),
            ]
            assert board.reassembler.messages_dropped == 0
            await asyncio.gather(*pending)
        assert events.of(LinkNote) == []

    play(scenario)


def test_partial_messages_are_reported_and_reassembly_restarts_on_a_new_link() -> None:
    async def scenario() -> None:
        board = FirmwareLinkDevice("VB-8")
        async with home({"vb8": board}, mtu=23) as h:
            manager, events = h.manager, h.events
            await board.wait_subscribed(board.uplink)
            message = messages.encode("device-event", {0: 1, 1: "battery-low", 2: 7})
            parts = board.fragments(message + bytes(40))
            assert len(parts) >= 3
            for part in parts[:2]:
                await board.deliver(board.uplink, part)
            await board.send_garbage(b"\x01")  # shorter than a fragment header
            (malformed,) = await events.wait(LinkNote, "vb8")
            assert malformed.reason.startswith("fragments: malformed")
            await board.drop_link()
            (dropped,) = await events.wait(LinkNote, "vb8", where=lambda n: "reset" in n.reason)
            assert dropped.reason.startswith("fragments: reset: message 0 had 2 of")

            await board.wait_subscribed(board.uplink)
            await board.deliver(board.uplink, parts[2])  # the rest of the old message
            await board.send_message(message)
            (received,) = await events.wait(FirmwareMessage, "vb8")
            assert received == FirmwareMessage(message, "uplink")
            with pytest.raises(DeviceUnavailable):
                await manager.send("nobody", message)

    play(scenario)


def test_send_to_a_standard_device_is_refused() -> None:
    async def scenario() -> None:
        async with home({"hr": HeartRateMonitor("HR")}, wait=False) as h:
            manager = h.manager
            with pytest.raises(DeviceUnavailable, match="not connected"):
                await manager.send("hr", b"\x00")
            await connected(manager, "hr")
            with pytest.raises(DeviceUnavailable, match="VitalBridge service"):
                await manager.send("hr", b"\x00")

    play(scenario)


# ---- pure parts ------------------------------------------------------------------------------


def test_reconnect_policy_grows_caps_and_jitters() -> None:
    policy = ReconnectPolicy(initial_s=1.0, factor=2.0, maximum_s=10.0, jitter=0.1)
    rng = random.Random(5)
    delays = [policy.delay(n, rng) for n in range(8)]
    for n, delay in enumerate(delays):
        base = min(10.0, 2.0**n)
        assert base * 0.9 <= delay <= base * 1.1
    assert len({round(d, 6) for d in delays[4:]}) == 4  # jittered, not lock-step
    assert ReconnectPolicy(jitter=0.0).delay(10_000, rng) == 60.0
    for bad in ({"initial_s": 0}, {"initial_s": 5, "maximum_s": 1}, {"factor": 0.5}, {"jitter": 1}):
        with pytest.raises(ValueError):
            ReconnectPolicy(**bad)


def test_device_config_validation_and_matching() -> None:
    hr = normalize_uuid_16(0x180D)
    by_address = DeviceConfig("a", address="d0:00:00:00:00:01")
    assert by_address.address == "D0:00:00:00:00:01"
    assert by_address.matches("D0:00:00:00:00:01", None, [])
    assert not by_address.matches("D0:00:00:00:00:02", "a", [hr])
    both = DeviceConfig("b", local_name="Strap", service_uuid="180d")
    assert both.service_uuid == hr
    assert both.matches("X", "Strap", [hr])
    assert not both.matches("X", "Strap", [])
    assert not both.matches("X", "Other", [hr])
    for bad in (
        {"name": ""},
        {"name": "x"},
        {"name": "x", "address": "D0:00:00:00:00"},
        {"name": "x", "address": "D0:00:00:00:00:GG"},
        {"name": "x", "service_uuid": "not-a-uuid"},
        {"name": "x", "local_name": "n", "bonding": "yes"},
    ):
        with pytest.raises(ValueError):
            DeviceConfig(**bad)

    async def duplicated() -> None:
        with pytest.raises(ValueError, match="unique"):
            BleManager(
                [DeviceConfig("a", local_name="A"), DeviceConfig("a", local_name="B")], print
            )
        with pytest.raises(ValueError, match="twice"):
            BleManager([by_address, DeviceConfig("c", address=by_address.address)], print)
        with pytest.raises(ValueError):
            BleManager([], print, max_connections=0)

    asyncio.run(duplicated())


def test_glucose_sequence_numbers_wrap() -> None:
    assert sequence_newer(5, 4) and not sequence_newer(4, 5) and not sequence_newer(4, 4)
    assert sequence_newer(0, 0xFFFF) and sequence_newer(3, 0xFFF0)
    assert not sequence_newer(0xFFF0, 3)


def test_interpret_maps_conditions_units_time_and_problems() -> None:
    received = 1_700_000_000.0
    plx = gatt_codecs.decode(
        ble_service.PLX_SPOT_CHECK_MEASUREMENT,
        gatt_codecs.encode_plx_spot_check(
            88,
            60,
            measurement_status=1 << 9,  # data from measurement storage
            device_sensor_status=(1 << 15) | (1 << 4),  # sensor disconnected, poor signal
            device_clock_not_set=True,
        ),
    )
    result = interpret(plx, received_at=received)
    assert result.conditions == {"sensor-off", "poor-signal", "device-clock-not-set"}
    assert all("stored" in r.flags and "device-time-unknown" in r.flags for r in result.readings)
    assert {r.time for r in result.readings} == {received}

    bp = gatt_codecs.decode(
        ble_service.BLOOD_PRESSURE_MEASUREMENT,
        gatt_codecs.encode_blood_pressure(
            16, 10, 12.4, kpa=True, decimals=1, measurement_status=0b01001
        ),
    )
    result = interpret(bp, received_at=received)
    assert result.conditions == {"motion", "pulse-rate-out-of-range"}
    sys_reading = result.readings[0]
    assert sys_reading.unit == "mm[Hg]" and sys_reading.reported == (16.0, "kPa")
    assert math.isclose(sys_reading.value, 120.00985, rel_tol=1e-6)

    stamp = (2024, 2, 29, 13, 5, 7)
    record = gatt_codecs.decode(
        ble_service.GLUCOSE_MEASUREMENT,
        glucose.encode_glucose(42, stamp, concentration=3000, sensor_status=1),
    )
    result = interpret(record, received_at=received, stored=True)
    assert result.readings == []  # 3000 mg/dL is not possible: a problem, not a reading
    assert result.problems and "glucose.glucose" in result.problems[0]
    assert result.conditions == {"battery-low"}

    record = gatt_codecs.decode(
        ble_service.GLUCOSE_MEASUREMENT, glucose.encode_glucose(43, stamp, concentration=90)
    )
    (reading,) = interpret(record, received_at=received, stored=True).readings
    assert reading.device_seq == 43 and reading.device_time == "2024-02-29T13:05:07"
    assert reading.time == reading.received_at + reading.clock_offset_s  # its own clock
    assert "stored" in reading.flags and "clock-skew" not in reading.flags


@given(st.sampled_from(PROFILES), st.binary(max_size=40), st.floats(-1e6, 1e6))
def test_any_decodable_value_interprets_without_raising(
    profile: CharacteristicProfile, data: bytes, skew: float
) -> None:
    try:
        decoded = gatt_codecs.decode(profile.uuid16, data)
    except GattError:
        return
    received = 1_700_000_000.0 + skew
    result = interpret(decoded, received_at=received, stored=profile.stored)
    for reading in result.readings:
        if reading.special is None:
            assert reading.value is not None and math.isfinite(reading.value)
        else:
            assert reading.value is None
        assert math.isfinite(reading.time) and reading.received_at == received
    assert len(result.readings) + len(result.problems) == len(decoded["values"])
