# The firmware's BLE transport on the MicroPython unix port, for tests/firmware/
# test_firmware_ble.py. Run from the repository root:
#   VB_SIM_BLE=tcp:127.0.0.1:PORT micropython tests/firmware/fw_ble_peripheral.py
# It uses firmware/transport/ble.py over firmware/hal/sim_ble.py (bridged to bumble):
# publishes heart rate, SpO2/pulse rate and temperature every 100 ms, sends one sealed
# message (COSE_Mac0 under TEST_KEY) on every link up, echoes every downlink message back
# on the uplink, and reports what happens as JSON lines on stdout. Environment:
# VB_TEST_MTU (preferred ATT MTU, default 64), VB_TEST_SETTLE_MS (default 200),
# VB_TEST_SECONDS (run time, default 30).
import asyncio
import binascii
import json
import os
import sys

sys.path.insert(0, ".")

from firmware.hal.sim import SimClock, SimHal  # noqa: E402
from firmware.hal.sim_ble import SimBle  # noqa: E402
from firmware.transport.ble import BleTransport  # noqa: E402
from protocol import ble_service, device_link, messages, senml  # noqa: E402
from protocol.sealing import seal_batch  # noqa: E402

TEST_KEY = bytes(range(32))
TEST_KID = b"\x5a" * 8
BASE_NAME = "urn:dev:vb:fw-ble-1:"
T0 = 1767225600


def report(**fields):
    print(json.dumps(fields))


def sealed_message():
    records = [senml.make_record("hr", 72, time=T0, seq=100),
               senml.make_record("spo2", 97, time=T0, seq=101),
               senml.make_record("temp", 36.9, unit="Cel", time=T0, seq=102)]
    return messages.encode("sealed", seal_batch(TEST_KEY, TEST_KID, records, BASE_NAME,
                                                base_time=T0))


def identity_message(now):
    event = ble_service.identity_event("fw-ble-1", "VB-1", "SN-0001", "0.1.0",
                                       ble_service.MODE_ENROLLED, now)
    return messages.encode("device-event", device_link.encode_event(event))


async def main():
    hal = SimHal(flash_dir="/tmp/vb-fw-ble/flash", clock=SimClock(realtime=True), devices=())
    radio = SimBle.from_environment()
    transport = BleTransport(hal, ble=radio, device_name="VB-fw-ble-1",
                             identity=identity_message(hal.time()),
                             mtu=int(os.getenv("VB_TEST_MTU") or "64"),
                             settle_ms=int(os.getenv("VB_TEST_SETTLE_MS") or "200"),
                             poll_ms=10)
    outgoing = []
    sealed = sealed_message()

    def on_link(up):
        report(event="link", up=up)
        if up:
            outgoing.append(sealed)

    def on_message(message):
        report(event="received", message=binascii.hexlify(message).decode())
        outgoing.append(message)  # echo

    transport.set_link_callback(on_link)
    transport.set_receiver(on_message)
    await transport.start()
    report(event="started")
    deadline = hal.ticks_add(hal.ticks_ms(), int(os.getenv("VB_TEST_SECONDS") or "30") * 1000)
    tick = 0
    while hal.ticks_diff(deadline, hal.ticks_ms()) > 0 and not radio.closed:
        tick += 1
        transport.publish_standard("hr", 60 + tick % 40)
        transport.publish_standard("spo2", 90 + tick % 10)
        if tick % 5 == 0:
            transport.publish_standard("temp", 36.5 + (tick % 10) / 10)
        while outgoing and transport.connected:
            message = outgoing.pop(0)
            try:
                await transport.send(message)
                report(event="sent", kind=messages.decode(message)[0], size=len(message))
            except Exception as exc:  # noqa: BLE001 - reported to the test, not hidden
                report(event="send-failed", error=repr(exc))
        await hal.asleep_ms(100)
    await transport.stop()
    report(event="stopped", notify_retries=transport.notify_retries,
           fragment_errors=transport.fragment_errors, callback_errors=transport.callback_errors)


asyncio.run(main())
