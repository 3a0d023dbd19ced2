"""Serial ingest against real PTYs: pyserial on both ends, no mocks.

The simulated device (simulator.serial_devices.PtySerialDevice) holds the PTY master and
the agent's SerialSupervisor opens the slave through a symlink, as it would open a
/dev/serial/by-id link on a gateway. Unplugging closes the master for real, so the agent
sees the kernel's hang-up. Port discovery is tested as a pure function over pyserial
ListPortInfo objects built here. The Contec driver is checked against golden packets
worked out by hand from the documented bit layout, and with random bytes (hypothesis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aio_harness import run_bounded
from hypothesis import given
from hypothesis import strategies as st
from serial.tools.list_ports_common import ListPortInfo

from edge_agent.serial_ingest import (
    Backoff,
    DeviceStatus,
    DriverError,
    Frame,
    LinkError,
    LinkLost,
    LinkNote,
    LinkStatus,
    Measurement,
    PortConfig,
    PortEvent,
    PortNotFound,
    PortState,
    PortUnavailable,
    SerialLink,
    SerialSettings,
    SerialSupervisor,
    UsbMatch,
    find_ports,
)
from edge_agent.serial_ingest.drivers import (
    CMS50_PULSE_RATE_VALID,
    CMS50_SPO2_VALID,
    Cms50Sample,
    ContecCms50Driver,
    VitalBridgeFrameDriver,
    decode_cms50_packet,
    driver_for_usb,
    encode_cms50_packet,
)
from edge_agent.serial_ingest.ports import PortInfo, resolve_usb
from protocol import vitals
from protocol.errors import FrameError
from protocol.frames import encode_frame, max_encoded_size
from simulator.serial_devices import PtySerialDevice, oximeter_samples

TEST_TIMEOUT_S = 8.0
WAIT_S = 3.0
FAST_BACKOFF = Backoff(initial=0.02, factor=2.0, maximum=0.1)
SUPERVISOR_LOG = "edge_agent.serial_ingest.supervisor"


# --- harness -----------------------------------------------------------------------


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    run_bounded(scenario, TEST_TIMEOUT_S)


async def eventually(condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Poll `condition` until it holds (TimeoutError after `timeout` seconds)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


class Collector:
    """The supervisor's event sink: keeps every PortEvent."""

    def __init__(self) -> None:
        self.received: list[PortEvent] = []

    def __call__(self, event: PortEvent) -> None:
        self.received.append(event)

    def events(self, kind: type | None = None) -> list[Any]:
        return [e.event for e in self.received if kind is None or isinstance(e.event, kind)]

    def payloads(self) -> list[bytes]:
        return [frame.payload for frame in self.events(Frame)]


@pytest.fixture
def device(tmp_path: Path) -> Any:
    with PtySerialDevice(tmp_path / "ttyVB0") as dev:
        yield dev


@contextlib.asynccontextmanager
async def supervised(*configs: PortConfig, **options: Any) -> AsyncIterator[
    tuple[SerialSupervisor, Collector]
]:
    """A running supervisor whose ports are all open before the body runs."""
    events = Collector()
    options.setdefault("backoff", FAST_BACKOFF)
    options.setdefault("watch_interval", 0.05)
    supervisor = SerialSupervisor(configs, events, **options)
    async with supervisor:
        async with asyncio.timeout(WAIT_S):
            for config in configs:
                await supervisor.wait_for_state(config.name, PortState.OPEN)
        yield supervisor, events


def bed(device: PtySerialDevice, driver: str = "vitalbridge") -> PortConfig:
    return PortConfig("bed", driver, path=str(device.path))


def usb_port(device: str, vid: int | None, pid: int | None,
             serial_number: str | None = None) -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid, info.serial_number = vid, pid, serial_number
    return info


# --- frames over a real PTY --------------------------------------------------------


def test_frames_sent_by_the_device_arrive_in_order(device: PtySerialDevice) -> None:
    payloads = [b"reading-%03d" % i + bytes(i % 7) for i in range(200)]

    async def scenario() -> None:
        async with supervised(bed(device)) as (supervisor, events):
            def send() -> None:  # from a thread, like a device: a PTY holds a few KiB only
                for payload in payloads[:100]:  # one write per frame
                    device.send_frame(payload)
                device.write(b"".join(encode_frame(p) for p in payloads[100:]))  # one burst

            await asyncio.to_thread(send)
            await eventually(lambda: len(events.payloads()) == len(payloads))
            status = supervisor.status("bed")
        assert events.payloads() == payloads
        assert events.events(LinkNote) == []
        assert events.events()[0] == LinkStatus(True, f"opened {device.path}")
        assert {e.port for e in events.received} == {"bed"}
        assert status.frames == 200 and status.notes == {}
        assert status.driver_stats["frames_ok"] == 200

    run(scenario)


def test_garbage_between_frames_is_skipped_counted_and_logged(
    device: PtySerialDevice, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SUPERVISOR_LOG)
    corrupted = bytearray(encode_frame(b"A" * 20))
    corrupted[5] ^= 0x01  # a payload byte: COBS still parses, the CRC does not match
    no_zeros = bytes(b or 1 for b in random.Random(7).randbytes(10_000))
    assert len(no_zeros) > max_encoded_size(4096)
    stream = [
        encode_frame(b"frame-0"),
        b"\xff\xfe noise \x00\x13\x37",  # two broken COBS runs (the 0x00 splits them)
        encode_frame(b"frame-1"),
        bytes(corrupted),
        encode_frame(b"frame-2"),
        no_zeros,  # longer than any frame can be
        encode_frame(b"frame-3"),
    ]

    async def scenario() -> None:
        async with supervised(bed(device), report_interval=3600) as (supervisor, events):
            for piece in stream:  # from a thread: the PTY holds less than no_zeros
                await asyncio.to_thread(device.write, piece)
            await eventually(lambda: len(events.payloads()) == 4)
            await asyncio.sleep(0.05)  # nothing else is on its way
            status = supervisor.status("bed")
        assert events.payloads() == [b"frame-0", b"frame-1", b"frame-2", b"frame-3"]
        kinds = sorted(note.reason.split(":")[0] for note in events.events(LinkNote))
        assert kinds == ["cobs", "cobs", "crc mismatch", "oversized"]
        assert status.notes == {"cobs": 2, "crc mismatch": 1, "oversized": 1}
        assert status.driver_stats["frames_bad"] == 4
        assert status.driver_stats["bytes_discarded"] >= len(no_zeros)

    run(scenario)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    firsts = [m for m in warnings if "dropped bytes" in m]
    assert len(firsts) == 3  # once per kind at first sight...
    assert any("1 more drops (cobs x1)" in m for m in warnings)  # ...then summarised


def test_a_frame_split_across_many_writes_arrives(device: PtySerialDevice) -> None:
    big = random.Random(3).randbytes(3000)
    stream = encode_frame(big) + encode_frame(b"next")

    async def scenario() -> None:
        async with supervised(bed(device)) as (supervisor, events):
            reads_before = supervisor.status("bed").reads
            writes = await asyncio.to_thread(
                device.write_in_pieces, stream, [1, 2, 3, 5, 7, 11, 13], 0.0005
            )
            await eventually(lambda: len(events.payloads()) == 2)
            reads = supervisor.status("bed").reads - reads_before
        assert writes > 400
        assert reads > 10, "the agent should have seen the frame in many pieces"
        assert events.payloads() == [big, b"next"]
        assert events.events(LinkNote) == []

    run(scenario)


# --- unplug, replug, vanishing paths -----------------------------------------------


def test_unplug_is_detected_and_the_port_reopened_when_the_device_returns(
    device: PtySerialDevice,
) -> None:
    async def scenario() -> None:
        async with supervised(bed(device)) as (supervisor, events):
            await asyncio.to_thread(device.send_frame, b"before")
            await eventually(lambda: events.payloads() == [b"before"])
            received = supervisor.status("bed").bytes_in
            device.write(encode_frame(b"cut short")[:6])  # half a frame, then the cable goes
            await eventually(lambda: supervisor.status("bed").bytes_in == received + 6)
            first_tty = device.tty
            device.unplug()
            async with asyncio.timeout(WAIT_S):
                lost = await supervisor.wait_for_state("bed", PortState.WAITING)
            assert lost.disconnects == 1 and lost.device is None
            await eventually(lambda: supervisor.status("bed").open_failures >= 2)
            assert "ENOENT" in (supervisor.status("bed").last_error or "")
            with pytest.raises(PortUnavailable):
                supervisor.send("bed", b"ack")

            device.plug()
            async with asyncio.timeout(WAIT_S):
                back = await supervisor.wait_for_state("bed", PortState.OPEN)
            await asyncio.to_thread(device.send_frame, b"after")
            await eventually(lambda: events.payloads() == [b"before", b"after"])
            assert back.opens == 2 and back.disconnects == 1
            assert first_tty is not None
        statuses = events.events(LinkStatus)
        assert [s.connected for s in statuses] == [True, False, True]
        assert "unplugged" in statuses[1].reason or "read failed" in statuses[1].reason
        order = [type(e).__name__ for e in events.events() if not isinstance(e, LinkNote)]
        assert order == ["LinkStatus", "Frame", "LinkStatus", "LinkStatus", "Frame"]
        assert events.events(LinkNote) == [], "the half frame must be dropped on reopen"

    run(scenario)


def test_a_path_that_comes_to_name_another_device_is_reopened(tmp_path: Path) -> None:
    first = PtySerialDevice(tmp_path / "ttyVB0")
    second = PtySerialDevice(tmp_path / "ttyVB0")
    first.plug()

    async def scenario() -> None:
        async with supervised(PortConfig("bed", "vitalbridge", path=str(first.path))) as (
            supervisor, events,
        ):
            await asyncio.to_thread(first.send_frame, b"from first")
            await eventually(lambda: events.payloads() == [b"from first"])
            second.plug()  # re-points the link; the first device never hangs up
            await eventually(lambda: supervisor.status("bed").opens == 2)
            await asyncio.to_thread(second.send_frame, b"from second")
            await eventually(lambda: len(events.payloads()) == 2)
        assert events.payloads() == [b"from first", b"from second"]
        lost = [s for s in events.events(LinkStatus) if not s.connected]
        assert len(lost) == 1 and lost[0].reason.startswith("vanished")

    try:
        run(scenario)
    finally:
        first.close()
        second.close()


def test_two_configured_ports_never_share_one_device(device: PtySerialDevice) -> None:
    async def scenario() -> None:
        twin = PortConfig("twin", "vitalbridge", path=str(device.path))
        supervisor = SerialSupervisor([bed(device), twin], Collector(), backoff=FAST_BACKOFF)
        async with supervisor:
            await eventually(lambda: supervisor.status("bed").open_failures
                             + supervisor.status("twin").open_failures >= 2)
            states = sorted(s.state for s in supervisor.statuses())
            errors = [s.last_error or "" for s in supervisor.statuses() if s.state != "open"]
        assert states == [PortState.OPEN, PortState.WAITING]
        assert "is already open as serial port" in errors[0]

    run(scenario)


# --- outgoing ------------------------------------------------------------------------


def test_outgoing_acks_reach_the_device_end(device: PtySerialDevice) -> None:
    acks = [b"device-ack %d" % i for i in range(20)]

    async def scenario() -> None:
        async with supervised(bed(device)) as (supervisor, _events):
            for ack in acks:
                supervisor.send("bed", ack)
            received = await asyncio.to_thread(device.receive_frames, len(acks), WAIT_S)
            assert received == acks
            assert supervisor.status("bed").bytes_out == sum(len(encode_frame(a)) for a in acks)
            with pytest.raises(PortUnavailable):
                supervisor.send("nobody", b"x")
            with pytest.raises(DriverError):
                supervisor.send("bed", b"")  # frames carry non-empty payloads only

    run(scenario)


def test_the_link_queues_what_the_device_has_not_read_and_drains_it(
    device: PtySerialDevice,
) -> None:
    block = bytes(range(256)) * 4

    async def scenario() -> None:
        link = SerialLink.open(str(device.path), SerialSettings())
        try:
            accepted = 0
            with pytest.raises(LinkError, match="device not reading"):
                while True:  # the device reads nothing: kernel buffers fill, then the queue
                    link.write(block)
                    accepted += len(block)
            assert link.bytes_out < accepted  # some of it is still queued in the link
            reader = asyncio.create_task(asyncio.to_thread(device.read, 0.5))
            async with asyncio.timeout(WAIT_S):
                await link.drain()
            assert link.bytes_out == accepted
            received = await reader
            assert len(received) == accepted and received == block * (accepted // len(block))
        finally:
            link.close()
        with pytest.raises(LinkLost):
            await link.read()

    run(scenario)


# --- discovery by USB VID/PID --------------------------------------------------------

LISTING = [
    usb_port("/dev/ttyS0", None, None),
    usb_port("/dev/ttyUSB0", 0x10C4, 0xEA60, "0001"),
    usb_port("/dev/ttyACM1", 0x303A, 0x1001, "AA:BB"),
    usb_port("/dev/ttyACM0", 0x303A, 0x1001, "CC:DD"),
]


def test_discovery_by_vid_pid_is_a_pure_function_over_port_descriptions() -> None:
    esp = UsbMatch.parse("303A:1001")
    assert [p.device for p in find_ports(LISTING, esp)] == ["/dev/ttyACM0", "/dev/ttyACM1"]
    one = UsbMatch.parse("303a:1001:AA:BB")  # serial numbers may contain colons
    assert one == UsbMatch(0x303A, 0x1001, "AA:BB")
    assert resolve_usb(LISTING, one).device == "/dev/ttyACM1"
    assert find_ports(LISTING, UsbMatch(0x10C4, 0xEA60, "9999")) == []
    with pytest.raises(PortNotFound, match="2 serial ports .*ttyACM0, /dev/ttyACM1"):
        resolve_usb(LISTING, esp)
    with pytest.raises(PortNotFound, match="no serial port with usb id 1a86:7523"):
        resolve_usb(LISTING, UsbMatch(0x1A86, 0x7523))
    assert PortInfo.from_listing(LISTING[0]).usb_id == "not USB"
    assert PortInfo.from_listing(LISTING[1]).usb_id == "10c4:ea60"
    for bad in ("303a", "xyz:1001", "10000:1", "303a:-1"):
        with pytest.raises(ValueError):
            UsbMatch.parse(bad)


def test_drivers_are_matched_by_usb_id_and_configs_are_validated() -> None:
    assert driver_for_usb(0x303A, 0x1001) == "vitalbridge"
    assert driver_for_usb(0x10C4, 0xEA60) is None  # a generic bridge names no device
    assert PortConfig("esp", usb=UsbMatch(0x303A, 0x1001)).driver_name == "vitalbridge"
    cases = {
        "exactly one of 'path' or 'usb'": dict(driver="vitalbridge"),
        "'driver' is required": dict(usb=UsbMatch(0x10C4, 0xEA60)),
        "unknown driver 'modem'": dict(driver="modem", path="/dev/ttyUSB0"),
        "'baudrate' must be a positive": dict(driver="vitalbridge", path="/x", baudrate=0),
    }
    for message, fields in cases.items():
        with pytest.raises(ValueError, match=message):
            PortConfig("p", **fields)
    with pytest.raises(ValueError, match="unique"):
        SerialSupervisor([PortConfig("p", "vitalbridge", path="/a")] * 2, lambda e: None)


def test_the_supervisor_finds_the_device_by_usb_id_and_follows_it_to_a_new_node(
    tmp_path: Path,
) -> None:
    first = PtySerialDevice(tmp_path / "ttyACM0")
    moved = PtySerialDevice(tmp_path / "ttyACM1")
    listing = [usb_port(str(first.path), 0x303A, 0x1001, "SIM-1"),
               usb_port("/dev/ttyS0", None, None)]
    first.plug()
    config = PortConfig("esp", usb=UsbMatch(0x303A, 0x1001, "SIM-1"))

    async def scenario() -> None:
        async with supervised(config, lister=lambda: list(listing)) as (supervisor, events):
            assert supervisor.status("esp").device == str(first.path)
            await asyncio.to_thread(first.send_frame, b"on ACM0")
            await eventually(lambda: len(events.payloads()) == 1)
            first.unplug()
            listing[0] = usb_port(str(moved.path), 0x303A, 0x1001, "SIM-1")  # re-enumerated
            moved.plug()
            await eventually(lambda: supervisor.status("esp").opens == 2)
            assert supervisor.status("esp").device == str(moved.path)
            await asyncio.to_thread(moved.send_frame, b"on ACM1")
            await eventually(lambda: len(events.payloads()) == 2)
        assert events.payloads() == [b"on ACM0", b"on ACM1"]
        assert [e.device for e in events.received if isinstance(e.event, Frame)] == [
            str(first.path), str(moved.path)]

    try:
        run(scenario)
    finally:
        first.close()
        moved.close()


# --- Contec CMS50 driver --------------------------------------------------------------

MODEL = ContecCms50Driver.name


def sample(**fields: Any) -> Cms50Sample:
    base = dict(signal_strength=5, searching_too_long=False, spo2_dropping=False, beep=False,
                pleth=16, bar=3, probe_error=False, searching=False, pulse_rate=72, spo2=97)
    base.update(fields)
    return Cms50Sample(**base)


# Worked out by hand from the bit layout in docs/serial.md.
GOLDEN_PACKETS = {
    # 0xE8 = sync | beep | spo2 dropping | signal 8; 0x47 = pulse-rate bit 7 | bar 7
    bytes([0xE8, 0x32, 0x47, 0x05, 0x61]): sample(
        signal_strength=8, spo2_dropping=True, beep=True, pleth=50, bar=7,
        pulse_rate=133, spo2=97),
    # 0x94 = sync | searching too long | signal 4; 0x10 = sensor error; 127 / 127
    bytes([0x94, 0x00, 0x10, 0x7F, 0x7F]): sample(
        signal_strength=4, searching_too_long=True, pleth=0, bar=0, probe_error=True,
        pulse_rate=127, spo2=127),
    # 0x83 = sync | signal 3; 0x25 = searching | bar 5
    bytes([0x83, 0x40, 0x25, 0x48, 0x62]): sample(
        signal_strength=3, pleth=64, bar=5, searching=True, pulse_rate=72, spo2=98),
    bytes([0x80, 0x7F, 0x4F, 0x7F, 0x64]): sample(
        signal_strength=0, pleth=127, bar=15, pulse_rate=255, spo2=100),
}


def test_cms50_golden_packets_decode_and_encode() -> None:
    for packet, expected in GOLDEN_PACKETS.items():
        assert decode_cms50_packet(packet) == expected, packet.hex()
        assert encode_cms50_packet(expected) == packet
    for bad in (b"\x80\x00\x00\x00", b"\x00\x00\x00\x00\x00", b"\x80\x00\x80\x00\x00",
                b"\x80\x00\x00\x00\x00\x00"):
        with pytest.raises(FrameError):
            decode_cms50_packet(bad)
    with pytest.raises(ValueError, match="spo2 128"):
        encode_cms50_packet(sample(spo2=128))


def test_cms50_valid_spans_are_possible_vitals() -> None:
    for value in CMS50_SPO2_VALID:
        vitals.check_value("spo2", value)
    for value in CMS50_PULSE_RATE_VALID:
        vitals.check_value("pr", value)


def test_cms50_driver_reports_values_conditions_and_resyncs() -> None:
    driver = ContecCms50Driver(repeat_every=3)
    normal = encode_cms50_packet(sample())
    lower = encode_cms50_packet(sample(spo2=96))
    sensor_off = encode_cms50_packet(sample(probe_error=True))
    no_values = encode_cms50_packet(sample(spo2=0, pulse_rate=0))
    spo2, pr = Measurement("spo2", 97, "%", MODEL), Measurement("pr", 72, "beat/min", MODEL)

    assert driver.feed(b"\x05\x06" + normal) == [
        LinkNote("garbage: 2 bytes before a sync byte"),
        DeviceStatus(frozenset(), MODEL), spo2, pr,
    ]
    assert driver.feed(normal) == []  # unchanged, not yet due again
    assert driver.feed(normal[:3] + lower) == [
        LinkNote("truncated packet: 3 of 5 bytes"), Measurement("spo2", 96, "%", MODEL),
    ]
    assert driver.feed(normal) == [spo2, pr]  # spo2 changed back; pr due (3 packets)
    assert driver.feed(sensor_off) == [DeviceStatus(frozenset({"sensor-error"}), MODEL)]
    assert driver.feed(normal) == [DeviceStatus(frozenset(), MODEL), spo2, pr]
    assert driver.feed(no_values) == [DeviceStatus(frozenset({"no-spo2", "no-pulse-rate"}), MODEL)]
    assert driver.feed(encode_cms50_packet(sample(spo2=127, pulse_rate=255))) == []
    assert driver.stats == {"packets": 8, "packets_truncated": 1, "bytes_discarded": 5,
                            "pending_bytes": 0}
    with pytest.raises(DriverError):
        driver.encode_outgoing(b"start")


def test_cms50_oximeter_over_a_real_pty(device: PtySerialDevice) -> None:
    async def scenario() -> None:
        async with supervised(bed(device, ContecCms50Driver.name)) as (supervisor, events):
            steady = oximeter_samples(120, spo2=95, pulse_rate=80)
            sensor_off = oximeter_samples(10, spo2=95, pulse_rate=80, probe_error=True)
            await asyncio.to_thread(device.send_cms50, steady + sensor_off)
            await eventually(lambda: len(events.events(DeviceStatus)) == 2)
            status = supervisor.status("bed")
        assert events.events(Measurement) == [
            Measurement("spo2", 95, "%", MODEL), Measurement("pr", 80, "beat/min", MODEL),
            Measurement("spo2", 95, "%", MODEL), Measurement("pr", 80, "beat/min", MODEL),
        ]  # first sight, then once a second (60 packets)
        assert [s.conditions for s in events.events(DeviceStatus)] == [
            frozenset(), frozenset({"sensor-error"})]
        assert status.driver_stats["packets"] == 130 and status.notes == {}

    run(scenario)


# --- hostile input (hypothesis) ---------------------------------------------------------

chunks = st.lists(st.binary(max_size=64), max_size=40)


@given(chunks)
def test_cms50_driver_never_raises_and_accounts_for_every_byte(pieces: list[bytes]) -> None:
    driver = ContecCms50Driver()
    events = [event for piece in pieces for event in driver.feed(piece)]
    for event in events:
        assert isinstance(event, Measurement | DeviceStatus | LinkNote)
        if isinstance(event, Measurement):
            vitals.check_value(event.quantity, event.value, event.unit)
    total = sum(map(len, pieces))
    assert driver.packets * 5 + driver.bytes_discarded + driver.pending_bytes == total
    whole = ContecCms50Driver()
    assert whole.feed(b"".join(pieces)) == events  # how the bytes were split is irrelevant


@given(st.binary(max_size=300), st.lists(st.integers(0, 255), min_size=5, max_size=5))
def test_cms50_driver_resynchronises_after_any_garbage(garbage: bytes, raw: list[int]) -> None:
    wanted = decode_cms50_packet(bytes([raw[0] | 0x80] + [b & 0x7F for b in raw[1:]]))
    driver = ContecCms50Driver()
    driver.feed(garbage)
    driver.feed(encode_cms50_packet(wanted))
    assert driver.last_sample == wanted


@given(chunks)
def test_vitalbridge_driver_never_raises_on_random_bytes(pieces: list[bytes]) -> None:
    driver = VitalBridgeFrameDriver(max_payload=256)
    for piece in pieces:
        for event in driver.feed(piece):
            assert isinstance(event, Frame | LinkNote)


@given(st.lists(st.binary(min_size=1, max_size=40), max_size=8), st.binary(max_size=80),
       st.integers(1, 17))
def test_vitalbridge_driver_recovers_every_frame_around_garbage(
    payloads: list[bytes], garbage: bytes, piece: int
) -> None:
    stream = garbage + b"".join(encode_frame(p) for p in payloads)
    driver = VitalBridgeFrameDriver()
    events = [e for i in range(0, len(stream), piece) for e in driver.feed(stream[i:i + piece])]
    frames = [e.payload for e in events if isinstance(e, Frame)]
    # garbage may itself hold a valid frame by chance; every real frame follows it in order
    assert frames[len(frames) - len(payloads):] == payloads
