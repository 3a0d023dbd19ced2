# Firmware transports on the MicroPython unix port. UART: frames out, garbage and broken
# frames in (resynchronisation), bounded buffers, link liveness with back-off on the
# virtual clock. BLE: the transport against a loopback fake of the HAL's ble() object at
# the MicroPython bluetooth API level (registration, advertising, MTU-sized fragments,
# downlink reassembly, standard characteristics, stack back-pressure, disconnects).
# Run: micropython -X heapsize=8M tests/mpy/run.py test_fw_transport
import asyncio
import binascii

from firmware.hal.sim import SimHal
from firmware.hal.sim_devices import SimUart
from firmware.transport import ble as ble_transport
from firmware.transport.base import AnswerWatch, TransportDown
from firmware.transport.ble import BleTransport, advertising_payloads
from firmware.transport.uart import UartTransport
from protocol import ble_service, messages
from protocol.errors import FrameError
from protocol.fragments import Reassembler, fragment, fragment_capacity
from protocol.frames import FrameDecoder, encode_frame
from protocol.gatt import characteristics as gatt_codecs

FLASH = "/tmp/vb-mpy-fw-transport/flash"


def make_hal():
    return SimHal(flash_dir=FLASH, seed=3, devices=())


def envelope(kind, n=0, size=8):
    return messages.encode(kind, bytes([n % 256]) * size)


def expect_error(kind, coro_or_fn, *args):
    try:
        result = coro_or_fn(*args)
        if hasattr(result, "send"):  # a coroutine: run it
            asyncio.run(result)
    except kind as exc:
        return exc
    raise AssertionError("%s not raised" % kind.__name__)


class Recorder:
    def __init__(self, transport):
        self.messages = []
        self.links = []
        transport.set_receiver(self.messages.append)
        transport.set_link_callback(self.links.append)


# --- UART ------------------------------------------------------------------------------


def uart_setup(**kw):
    hal = make_hal()
    port = SimUart(rx_capacity=kw.pop("rx_capacity", 8192))
    transport = UartTransport(hal, uart=port, **kw)
    return hal, port, transport, Recorder(transport)


def test_uart_frames_out_decode_to_the_messages_in_order():
    hal, port, transport, rec = uart_setup(write_chunk=7)
    sent = [envelope("device-event", i, size=10 + 50 * i) for i in range(4)]

    async def main():
        await transport.start()
        for message in sent:
            await transport.send(message)
        await transport.stop()

    asyncio.run(main())
    assert FrameDecoder().feed(bytes(port.tx)) == sent
    assert transport.frames_out == 4
    assert rec.links == [True, False]


def test_uart_resynchronises_after_garbage_truncation_and_corruption():
    hal, port, transport, rec = uart_setup()
    good1 = envelope("device-ack", 1)
    good2 = envelope("accept", 2, size=300)
    broken = bytearray(encode_frame(envelope("device-command", 3)))
    broken[5] ^= 0x40  # CRC mismatch
    stream = (b"\xff\x13garbage\x01\x02" + encode_frame(good1) + encode_frame(good2)[:40]
              + bytes(broken) + encode_frame(good2))

    async def main():
        await transport.start()
        for i in range(0, len(stream), 17):  # arrives in odd-sized pieces
            port.deliver(stream[i:i + 17])
            await hal.asleep_ms(15)
        await transport.stop()

    asyncio.run(main())
    assert rec.messages == [good1, good2]
    assert transport.frames_bad >= 3  # leading garbage, truncated frame, bad CRC
    assert transport.bytes_discarded > 0
    assert transport.gateway_heard


def test_uart_oversized_run_is_discarded_within_bounds():
    hal, port, transport, rec = uart_setup(max_payload=256)
    good = envelope("device-ack", 5)

    async def main():
        await transport.start()
        for _ in range(20):
            port.deliver(b"\x55" * 400)  # 8000 bytes without a delimiter
            await hal.asleep_ms(15)
            assert transport.decoder.pending_bytes <= 270
        port.deliver(encode_frame(good))
        await hal.asleep_ms(15)
        await transport.stop()

    asyncio.run(main())
    assert rec.messages == [good]
    assert transport.frames_bad == 1


def test_uart_rejects_a_message_larger_than_a_frame():
    hal, port, transport, rec = uart_setup(max_payload=64)

    async def main():
        await transport.start()
        try:
            await transport.send(envelope("sealed", 1, size=100))
        finally:
            await transport.stop()

    expect_error(FrameError, main)
    assert bytes(port.tx) == b""


def test_uart_silent_gateway_is_probed_with_backoff_and_an_answer_restores_the_link():
    hal, port, transport, rec = uart_setup(answer_timeout_ms=1000, retry_ms=500,
                                           max_retry_ms=1500)
    downs = []

    def on_link(up):
        rec.links.append(up)
        if not up:
            downs.append(hal.ticks_ms())

    transport.set_link_callback(on_link)

    async def main():
        await transport.start()
        start = hal.ticks_ms()
        await transport.send(envelope("hello", 1))
        await transport.send(envelope("device-event", 2))  # not answered by design
        await hal.asleep_ms(900)
        assert transport.connected  # still within the answer time
        await hal.asleep_ms(200)
        assert not transport.connected and rec.links == [True, False]
        await expect_error_async(TransportDown, transport.send(envelope("sealed", 3)))
        await hal.asleep_ms(520)
        assert transport.connected and rec.links == [True, False, True]  # after 500 ms
        await transport.send(envelope("hello", 4))  # the app's new handshake: a probe
        await hal.asleep_ms(1100)
        assert not transport.connected
        await hal.asleep_ms(800)
        assert not transport.connected  # second back-off doubled to 1000 ms
        await hal.asleep_ms(250)
        assert transport.connected
        await transport.send(envelope("hello", 5))
        await hal.asleep_ms(300)
        port.deliver(encode_frame(envelope("accept", 6)))  # the gateway answers
        await hal.asleep_ms(3000)
        assert transport.connected and transport.gateway_heard
        await transport.stop()
        return start

    start = asyncio.run(main())
    assert [hal.ticks_diff(t, start) // 100 for t in downs[:2]] == [10, 26]
    assert rec.messages == [envelope("accept", 6)]
    assert transport.watch.timeouts == 2


async def expect_error_async(kind, coro):
    try:
        await coro
    except kind:
        return
    raise AssertionError("%s not raised" % kind.__name__)


def test_uart_frame_while_down_brings_the_link_up_before_delivery():
    hal, port, transport, rec = uart_setup(answer_timeout_ms=100, retry_ms=60000)
    order = []
    transport.set_link_callback(lambda up: order.append(("link", up)))
    transport.set_receiver(lambda m: order.append(("message", m)))

    async def main():
        await transport.start()
        await transport.send(envelope("hello", 1))
        await hal.asleep_ms(200)
        port.deliver(encode_frame(envelope("device-command", 2)))
        await hal.asleep_ms(30)
        await transport.stop()

    asyncio.run(main())
    assert order == [("link", True), ("link", False), ("link", True),
                     ("message", envelope("device-command", 2)), ("link", False)]


def test_uart_receiver_exception_is_counted_and_the_link_survives():
    hal, port, transport, rec = uart_setup()
    got = []

    def receiver(message):
        got.append(message)
        if len(got) == 1:
            raise ValueError("app bug")

    transport.set_receiver(receiver)

    async def main():
        await transport.start()
        port.deliver(encode_frame(envelope("device-ack", 1))
                     + encode_frame(envelope("device-ack", 2)))
        await hal.asleep_ms(30)
        await transport.stop()

    asyncio.run(main())
    assert len(got) == 2 and transport.callback_errors == 1


def test_answer_watch_backoff_caps():
    watch = AnswerWatch(lambda a, b: a - b, answer_timeout_ms=10, retry_ms=100, max_retry_ms=350)
    delays = []
    for _ in range(5):
        watch.sent("sealed", 0)
        assert watch.overdue(11)
        delays.append(watch.gave_up())
    assert delays == [100, 200, 350, 350, 350]
    watch.heard_from_gateway(20)
    watch.sent("checkpoint", 0)
    assert watch.gave_up() == 100
    watch.sent("enroll-request", 0)
    assert not watch.overdue(10000)


# --- BLE: a loopback fake of bluetooth.BLE ---------------------------------------------------


class FakeUUID:
    def __init__(self, value):
        self.value = value.lower() if isinstance(value, str) else value

    def __eq__(self, other):
        return isinstance(other, FakeUUID) and other.value == self.value

    def __hash__(self):
        return hash(self.value)


class FakeBle:
    """The MicroPython bluetooth.BLE subset the transport uses, with a central's view:
    connect/disconnect/exchange_mtu/write drive IRQs like the stack would."""

    def __init__(self):
        self.is_active = False
        self.cfg = {}
        self.handler = None
        self.definitions = None
        self.chars = {}  # value handle -> (uuid value, flags)
        self.values = {}
        self.buffers = {}
        self.notified = []  # (conn, handle, data)
        self.updates = []  # (handle, data) written with send_update
        self.advertising = None
        self.connected = set()
        self.fail_next = 0
        self.fail_errno = 12

    def active(self, on=None):
        if on is not None:
            self.is_active = bool(on)
        return self.is_active

    def config(self, *args, **kwargs):
        if args:
            return self.cfg[args[0]]
        self.cfg.update(kwargs)
        return None

    def irq(self, handler):
        self.handler = handler

    def gatts_register_services(self, definitions):
        self.definitions = definitions
        handle = 0
        out = []
        for _service_uuid, chars in definitions:
            handle += 1
            handles = []
            for char in chars:
                handle += 2
                self.chars[handle] = (char[0].value, char[1])
                self.values[handle] = b""
                self.buffers[handle] = 20
                handles.append(handle)
                if char[1] & (ble_service.PROP_NOTIFY | ble_service.PROP_INDICATE):
                    handle += 1  # the CCCD
            out.append(tuple(handles))
        return tuple(out)

    def gatts_set_buffer(self, handle, size, append=False):
        self.buffers[handle] = size

    def gatts_write(self, handle, data, send_update=False):
        self.values[handle] = bytes(data)
        self.buffers[handle] = max(self.buffers[handle], len(data))
        if send_update:
            self.updates.append((handle, bytes(data)))

    def gatts_read(self, handle):
        return self.values[handle]

    def gatts_notify(self, conn, handle, data=None):
        if conn not in self.connected:
            raise OSError(107)
        if self.fail_next:
            self.fail_next -= 1
            raise OSError(self.fail_errno)
        self.notified.append((conn, handle, bytes(data)))

    def gap_advertise(self, interval_us, adv_data=None, resp_data=None, connectable=True):
        self.advertising = None if interval_us is None else (adv_data, resp_data)

    def gap_disconnect(self, conn):
        if conn in self.connected:
            self.disconnect(conn)
            return True
        return False

    # central side
    def connect(self, conn):
        self.connected.add(conn)
        self.advertising = None  # the stack stops advertising on a connection
        self.handler(1, (conn, 0, memoryview(b"\xc0\x00\x00\x00\x00\x01")))

    def disconnect(self, conn):
        self.connected.discard(conn)
        self.handler(2, (conn, 0, memoryview(b"\xc0\x00\x00\x00\x00\x01")))

    def exchange_mtu(self, conn, mtu):
        self.handler(21, (conn, mtu))

    def write(self, conn, handle, data):
        self.values[handle] = bytes(data[:self.buffers[handle]])  # the stack truncates
        self.handler(3, (conn, handle))

    def handle_of(self, uuid_value):
        for handle in self.chars:
            if self.chars[handle][0] == uuid_value:
                return handle
        raise KeyError(uuid_value)


def ble_setup(**kw):
    hal = make_hal()
    radio = FakeBle()
    kw.setdefault("settle_ms", 300)
    transport = BleTransport(hal, ble=radio, uuid=FakeUUID, **kw)
    return hal, radio, transport, Recorder(transport)


def uplink_messages(radio, conn):
    handle = radio.handle_of(ble_service.UPLINK_UUID)
    reassembler = Reassembler()
    out = []
    for c, h, data in radio.notified:
        if c == conn and h == handle:
            message = reassembler.add(data, 0)
            if message is not None:
                out.append(message)
    return out


def test_ble_registers_the_standard_and_vitalbridge_services():
    hal, radio, transport, rec = ble_setup(identity=b"identity-event")

    async def main():
        await transport.start()
        await transport.stop()

    asyncio.run(main())
    layout = [(s.value, [(c[0].value, c[1]) for c in chars]) for s, chars in radio.definitions]
    assert layout == [
        (0x180D, [(0x2A37, 0x10)]),
        (0x1822, [(0x2A5F, 0x10), (0x2A60, 0x02)]),
        (0x1809, [(0x2A1C, 0x20)]),
        (ble_service.SERVICE_UUID, [(ble_service.UPLINK_UUID, 0x10),
                                    (ble_service.DOWNLINK_UUID, 0x08),
                                    (ble_service.PROVISIONING_UUID, 0x02)]),
    ]
    assert radio.buffers[radio.handle_of(ble_service.DOWNLINK_UUID)] == 512
    assert radio.values[radio.handle_of(ble_service.PROVISIONING_UUID)] == b"identity-event"
    assert radio.values[radio.handle_of(0x2A60)] == b"\x00\x00"
    assert radio.cfg["gap_name"] == "VitalBridge" and radio.cfg["mtu"] == 247


def test_advertising_payloads_fit_and_carry_the_services():
    adv, resp = advertising_payloads("VitalBridge", (0x180D, 0x1822, 0x1809),
                                     ble_service.SERVICE_UUID)
    assert adv == (b"\x02\x01\x06" + b"\x07\x03\x0d\x18\x22\x18\x09\x18"
                   + b"\x0c\x09VitalBridge")
    assert resp[:2] == b"\x11\x07" and len(resp) == 18
    assert resp[2:] == bytes(reversed(binascii.unhexlify("c7fc000106234edfba49112648f320cf")))
    long_adv, _ = advertising_payloads("A very long device name indeed",
                                       (0x180D, 0x1822, 0x1809), None)
    assert len(long_adv) == 31 and long_adv[11:13] == b"\x13\x08"  # shortened name
    try:
        advertising_payloads("x", tuple(range(0x1800, 0x1810)), None)
    except ValueError:
        pass
    else:
        raise AssertionError("oversized advertising data accepted")


def test_ble_link_up_after_settle_and_uplink_fragmented_to_the_mtu():
    hal, radio, transport, rec = ble_setup()
    hello = envelope("hello", 1, size=150)

    async def main():
        await transport.start()
        assert radio.advertising is not None
        radio.connect(1)
        radio.exchange_mtu(1, 50)
        await hal.asleep_ms(200)
        assert not transport.connected
        await hal.asleep_ms(150)
        assert transport.connected and rec.links == [True]
        assert transport.mtu_of(1) == 50
        await transport.send(hello)
        await transport.stop()

    asyncio.run(main())
    uplink = [d for c, h, d in radio.notified]
    assert len(uplink) == (len(hello) + fragment_capacity(50) - 1) // fragment_capacity(50)
    assert max(len(d) for d in uplink) == 50 - 3
    assert uplink_messages(radio, 1) == [hello]


def test_ble_downlink_is_reassembled_and_picks_the_gateway_connection():
    hal, radio, transport, rec = ble_setup()
    down = ble_service.DOWNLINK_UUID
    accept = envelope("accept", 7, size=120)

    async def main():
        await transport.start()
        radio.connect(1)  # a phone reading heart rate
        radio.connect(2)  # the gateway
        radio.exchange_mtu(2, 64)
        await hal.asleep_ms(400)
        await transport.send(envelope("hello", 1))  # no gateway known yet: both links
        for part in fragment(accept, 64, 0):
            radio.write(2, radio.handle_of(down), part)
        await hal.asleep_ms(50)
        assert rec.messages == [accept]
        await transport.send(envelope("sealed", 2))  # now only the gateway
        await transport.stop()

    asyncio.run(main())
    assert uplink_messages(radio, 1) == [envelope("hello", 1)]
    assert uplink_messages(radio, 2) == [envelope("hello", 1), envelope("sealed", 2)]
    assert transport.gateway_heard


def test_ble_standard_values_are_encoded_for_subscribers():
    hal, radio, transport, rec = ble_setup()

    async def main():
        await transport.start()
        assert not transport.publish_standard("sys", 120)
        assert not transport.publish_standard("hr", None)
        assert transport.publish_standard("hr", 71.6)
        assert transport.publish_standard("spo2", 96)
        assert transport.publish_standard("temp", 36.85)
        assert not transport.publish_standard("temp", "warm")  # unencodable
        await transport.stop()

    asyncio.run(main())
    by_handle = {}
    for handle, data in radio.updates:
        by_handle.setdefault(radio.chars[handle][0], []).append(data)
    hr = gatt_codecs.decode(0x2A37, by_handle[0x2A37][-1])
    assert hr["values"][0]["v"] == 72
    plx = gatt_codecs.decode(0x2A5F, by_handle[0x2A5F][-1])
    assert [(v["n"], v["v"]) for v in plx["values"]] == [("spo2", 96), ("pr", 72)]
    temp = gatt_codecs.decode(0x2A1C, by_handle[0x2A1C][-1])
    assert abs(temp["values"][0]["v"] - 36.85) < 1e-9
    assert transport.publish_errors == 1


def test_ble_stack_backpressure_is_retried_and_disconnect_mid_message_is_down():
    hal, radio, transport, rec = ble_setup(notify_retry_ms=5, notify_attempts=4)
    message = envelope("sealed", 1, size=200)

    async def main():
        await transport.start()
        radio.connect(1)
        await hal.asleep_ms(400)
        radio.fail_next = 3  # ENOMEM three times: the stack's buffers are full
        await transport.send(message)
        assert transport.notify_retries == 3
        radio.fail_next = 10
        await expect_error_async(TransportDown, transport.send(message))
        radio.fail_next = 0
        radio.fail_errno = 107  # the connection vanished under the send
        radio.fail_next = 1
        await expect_error_async(TransportDown, transport.send(message))
        await transport.stop()

    asyncio.run(main())
    assert uplink_messages(radio, 1)[0] == message


def test_ble_disconnect_resets_reassembly_and_takes_the_link_down():
    hal, radio, transport, rec = ble_setup()
    down = ble_service.DOWNLINK_UUID
    command = envelope("device-command", 3, size=100)

    async def main():
        await transport.start()
        radio.connect(1)
        await hal.asleep_ms(400)
        parts = fragment(command, 23, 9)
        radio.write(1, radio.handle_of(down), parts[0])
        await hal.asleep_ms(40)
        radio.disconnect(1)
        await hal.asleep_ms(40)
        assert not transport.connected and radio.advertising is not None
        await expect_error_async(TransportDown, transport.send(envelope("hello", 1)))
        radio.connect(4)
        await hal.asleep_ms(400)
        for part in parts[1:]:  # the rest of the old message is not a message
            radio.write(4, radio.handle_of(down), part)
        for part in fragment(command, 23, 10):
            radio.write(4, radio.handle_of(down), part)
        await hal.asleep_ms(40)
        await transport.stop()

    asyncio.run(main())
    assert rec.messages == [command]
    assert rec.links == [True, False, True, False]


def test_ble_bounded_event_queue_drops_writes_not_connections():
    hal, radio, transport, rec = ble_setup(max_events=4)
    down = ble_service.DOWNLINK_UUID

    async def main():
        await transport.start()
        radio.connect(1)
        for i in range(10):  # the task does not run in between: the queue fills
            radio.write(1, radio.handle_of(down), bytes((i, 0, 1)) + b"x")
        radio.disconnect(1)
        assert len(transport._events) <= 6
        await hal.asleep_ms(40)
        await transport.stop()

    asyncio.run(main())
    assert transport.events_dropped == 7
    assert transport.connections == 0


def test_ble_transport_needs_a_radio():
    hal = make_hal()
    expect_error(ble_transport.TransportUnavailable, BleTransport, hal)


# --- MQTT (experimental): message construction only, umqtt is not in the unix port ------------


def test_mqtt_plan_publishes_the_envelope_unchanged_and_filters_inbound():
    from firmware.transport.mqtt import MqttPlan

    plan = MqttPlan("vb-dev/ox-1/up", "vb-dev/ox-1/down", max_message=300)
    message = envelope("sealed", 4, size=200)
    assert plan.publication(message) == (b"vb-dev/ox-1/up", message, 1)
    expect_error(FrameError, plan.publication, envelope("sealed", 4, size=400))
    expect_error(FrameError, plan.publication, b"")
    ack = envelope("device-ack", 1)
    assert plan.inbound(b"vb-dev/ox-1/down", ack) == ack
    assert plan.inbound(b"vb-dev/ox-2/down", ack) is None
    assert plan.inbound(b"vb-dev/ox-1/down", b"x" * 301) is None
    expect_error(ValueError, MqttPlan, "vb-dev/+/up", "vb-dev/ox-1/down")
