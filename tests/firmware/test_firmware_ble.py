"""The firmware's BLE transport, running on the real MicroPython unix port, read by bleak.

tests/firmware/fw_ble_peripheral.py runs firmware/transport/ble.py over
firmware/hal/sim_ble.py; simulator/firmware_ble_bridge.py puts its GATT server on a
VirtualRadio as a bumble peripheral. The agent side is unmodified bleak (the radio's
client backend) and edge_agent.ble_ingest's BleManager: real ATT/GATT both ways.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner

from edge_agent.ble.virtual_radio import VirtualRadio
from edge_agent.ble_ingest import BleManager, ConnectionOptions, DeviceConfig
from edge_agent.ble_ingest.connection import FirmwareMessage
from edge_agent.ble_ingest.profiles import Reading
from protocol import ble_service, device_link, messages
from protocol.fragments import Reassembler, fragment
from protocol.gatt import characteristics as gatt_codecs
from protocol.sealing import open_batch
from simulator.firmware_ble_bridge import FirmwareBleBridge

ROOT = Path(__file__).resolve().parents[2]
MICROPYTHON = Path(sys.executable).parent / "micropython"
SCRIPT = "tests/firmware/fw_ble_peripheral.py"
TEST_KEY = bytes(range(32))  # as in fw_ble_peripheral.py
TEST_KID = b"\x5a" * 8
MTU = 64

pytestmark = pytest.mark.skipif(not MICROPYTHON.exists(), reason="no micropython binary")


def sig(uuid16: int) -> str:
    return ble_service.sig_uuid(uuid16)


class Firmware:
    """The micropython process and the JSON lines it reports."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def launch(cls, address: str, **env: str) -> Firmware:
        environment = dict(os.environ, VB_SIM_BLE=address, VB_TEST_MTU=str(MTU),
                           VB_TEST_SECONDS="30", **env)
        process = await asyncio.create_subprocess_exec(
            str(MICROPYTHON), "-X", "heapsize=4M", SCRIPT, cwd=ROOT, env=environment,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.lines.append(json.loads(line))
            self._changed.set()

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool],
                       timeout_s: float = 5.0, count: int = 1) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout_s):
            while True:
                found = [line for line in self.lines if predicate(line)]
                if len(found) >= count:
                    return found
                self._changed.clear()
                await self._changed.wait()

    async def stop(self) -> str:
        if self.process.returncode is None:
            self.process.terminate()
        await self.process.wait()
        await self._reader
        assert self.process.stderr is not None
        return (await self.process.stderr.read()).decode()


class Uplink:
    """Reassembles the VitalBridge uplink notifications of one client."""

    def __init__(self) -> None:
        self.reassembler = Reassembler()
        self.fragments: list[bytes] = []
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()

    def __call__(self, _characteristic: Any, data: bytearray) -> None:
        self.fragments.append(bytes(data))
        message = self.reassembler.add(bytes(data), 0.0)
        if message is not None:
            self.messages.put_nowait(message)

    async def next(self, timeout_s: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout_s):
            return await self.messages.get()


class Values:
    """Collects the decoded values of one standard characteristic."""

    def __init__(self, uuid16: int) -> None:
        self.uuid16 = uuid16
        self.decoded: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    def __call__(self, _characteristic: Any, data: bytearray) -> None:
        self.decoded.append(gatt_codecs.decode(self.uuid16, bytes(data)))
        self.arrived.set()

    async def wait(self, count: int, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.decoded) < count:
                self.arrived.clear()
                await self.arrived.wait()


def assert_sealed_batch(message: bytes) -> None:
    kind, body = messages.decode(message)
    assert kind == "sealed"
    batch = open_batch(TEST_KEY, TEST_KID, body)
    assert [(r.quantity, r.value, r.seq) for r in batch.readings] == [
        ("hr", 72, 100), ("spo2", 97, 101), ("temp", 36.9, 102)]


async def connect_and_subscribe(central: Any, address: str) -> tuple[BleakClient, Uplink,
                                                                        dict[int, Values]]:
    device = await BleakScanner.find_device_by_address(
        address, backend=central.scanner_backend)
    assert device is not None
    client = BleakClient(device, backend=central.client_backend)
    await client.connect()
    uplink = Uplink()
    await client.start_notify(ble_service.UPLINK_UUID, uplink)
    values = {uuid16: Values(uuid16) for uuid16 in (0x2A37, 0x2A5F, 0x2A1C)}
    for uuid16, sink in values.items():
        await client.start_notify(sig(uuid16), sink)
    return client, uplink, values


def test_bleak_reads_the_real_firmware_and_survives_a_forced_disconnect() -> None:
    async def scenario() -> None:
        async with VirtualRadio() as radio:
            central = await radio.add_central("gateway")
            bridge = FirmwareBleBridge(radio)
            firmware = await Firmware.launch(await bridge.start(), VB_TEST_SETTLE_MS="800")
            try:
                peripheral = await bridge.wait_advertising()
                scanner = BleakScanner(backend=central.scanner_backend)
                async with scanner:
                    await asyncio.sleep(0.4)
                _, advertisement = scanner.discovered_devices_and_advertisement_data[
                    peripheral.address]
                assert advertisement.local_name == "VB-fw-ble-1"
                assert {sig(0x180D), sig(0x1822), sig(0x1809), ble_service.SERVICE_UUID} <= set(
                    advertisement.service_uuids)

                client, uplink, values = await connect_and_subscribe(central, peripheral.address)
                assert client.mtu_size == MTU
                assert_sealed_batch(await uplink.next())
                assert len(uplink.fragments) >= 2
                assert max(len(f) for f in uplink.fragments) <= MTU - 3

                for sink in values.values():
                    await sink.wait(2)
                hr = values[0x2A37].decoded[-1]["values"][0]
                assert hr["n"] == "hr" and 60 <= hr["v"] < 100
                plx = {v["n"]: v["v"] for v in values[0x2A5F].decoded[-1]["values"]}
                assert 90 <= plx["spo2"] < 100 and 60 <= plx["pr"] < 100
                temp = values[0x2A1C].decoded[-1]["values"][0]
                assert temp["u"] == "Cel" and 36.4 < temp["v"] < 37.5

                identity = await client.read_gatt_char(ble_service.PROVISIONING_UUID)
                kind, body = messages.decode(bytes(identity))
                event = device_link.decode_event(body)
                assert kind == "device-event" and event.name == "identity"
                assert event.details["device"] == "fw-ble-1"
                assert event.details["mode"] == "enrolled"

                command = messages.encode("device-command", bytes(range(200)))
                for part in fragment(command, client.mtu_size, 7):
                    await client.write_gatt_char(ble_service.DOWNLINK_UUID, part, response=True)
                assert await uplink.next() == command  # reassembled by the firmware, echoed
                await firmware.wait_for(lambda x: x.get("event") == "received")

                # Forced disconnect (the device ends the link) and a new connection.
                await peripheral.disconnect_all()
                await firmware.wait_for(lambda x: x == {"event": "link", "up": False})
                assert not client.is_connected
                client, uplink, values = await connect_and_subscribe(central, peripheral.address)
                assert_sealed_batch(await uplink.next())
                await values[0x2A37].wait(3)
                await firmware.wait_for(lambda x: x == {"event": "link", "up": True}, count=2)
                await client.disconnect()
            finally:
                stderr = await firmware.stop()
                await bridge.close()
            assert "Traceback" not in stderr, stderr
            assert bridge.errors == []
            assert not [x for x in firmware.lines if x.get("event") == "send-failed"]

    asyncio.run(scenario())


def test_the_agents_ble_manager_ingests_the_real_firmware() -> None:
    async def scenario() -> None:
        events: list[Any] = []
        arrived = asyncio.Event()

        def on_event(event: Any) -> None:
            events.append(event.event)
            arrived.set()

        async def wait_for(predicate: Callable[[Any], bool], timeout_s: float = 8.0) -> Any:
            async with asyncio.timeout(timeout_s):
                while True:
                    for event in events:
                        if predicate(event):
                            return event
                    arrived.clear()
                    await arrived.wait()

        async with VirtualRadio() as radio:
            central = await radio.add_central("gateway")
            bridge = FirmwareBleBridge(radio)
            firmware = await Firmware.launch(await bridge.start(), VB_TEST_SETTLE_MS="600")
            manager = BleManager(
                [DeviceConfig("board", service_uuid=ble_service.SERVICE_UUID)], on_event,
                scanner_backend=central.scanner_backend,
                options=ConnectionOptions(client_backend=central.client_backend))
            try:
                await bridge.wait_advertising()
                async with manager:
                    identity = await wait_for(lambda e: isinstance(e, FirmwareMessage)
                                              and e.channel == "provisioning")
                    assert messages.decode(identity.payload)[0] == "device-event"
                    sealed = await wait_for(lambda e: isinstance(e, FirmwareMessage)
                                            and e.channel == "uplink")
                    assert_sealed_batch(sealed.payload)
                    reading = await wait_for(lambda e: isinstance(e, Reading)
                                             and e.quantity == "hr")
                    assert reading.unit == "beat/min" and 60 <= reading.value < 100
                    await wait_for(lambda e: isinstance(e, Reading) and e.quantity == "temp")
                    command = messages.encode("device-command", b"\x01" * 90)
                    await manager.send("board", command)
                    await wait_for(lambda e: isinstance(e, FirmwareMessage)
                                   and e.payload == command)
            finally:
                stderr = await firmware.stop()
                await bridge.close()
            assert "Traceback" not in stderr, stderr
            assert bridge.errors == []

    asyncio.run(scenario())
