"""Serial device drivers: turn the bytes of one port into transport-neutral events.

A driver owns the byte-level protocol of one kind of device and nothing else: no I/O, no
clock, no port. `feed(data)` takes whatever chunk the port delivered (any split, any
garbage) and returns the events it completes; it never raises. `encode_outgoing(payload)`
turns a message for the device (an ack, a command) into line bytes, for devices that
accept any. `reset()` forgets a partial packet when the port is reopened.

Events (shared with the other ingest paths, so verification consumes them the same way):
  Frame(payload)         one VitalBridge protocol message, CRC-checked (protocol.frames)
  Measurement(...)       a value from a device that cannot seal, in the vitals vocabulary
  DeviceStatus(...)      the device's own condition flags changed (sensor error, ...)
  LinkNote(reason)       bytes were dropped; reason starts with a stable keyword
  LinkStatus(...)        the port was opened or lost (emitted by the supervisor)

Drivers here: "vitalbridge" (our firmware's framing) and "contec-cms50" (the 5-byte live
data protocol of Contec CMS50-family pulse oximeters; sources in docs/serial.md).
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from protocol import vitals
from protocol.errors import FrameError
from protocol.frames import MAX_FRAME_PAYLOAD, FrameDecoder, encode_frame

# --- events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete, CRC-valid VitalBridge message (bytes of protocol.messages)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Measurement:
    """A reading from a device that cannot seal: the gateway must attest it.

    `quantity` and `unit` are protocol.vitals names (canonical unit); `model` names the
    driver that decoded it, so the reading can be marked with where it came from.
    """

    quantity: str
    value: int | float
    unit: str
    model: str


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """The set of conditions the device reports changed; empty means measuring normally."""

    conditions: frozenset[str]
    model: str


@dataclass(frozen=True, slots=True)
class LinkNote:
    """Bytes were dropped; `reason` starts with a stable keyword (see note_kind)."""

    reason: str


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """The port was opened (connected=True) or lost; `reason` says how."""

    connected: bool
    reason: str


SerialEvent = Frame | Measurement | DeviceStatus | LinkNote | LinkStatus


def note_kind(reason: str) -> str:
    """The stable keyword of a LinkNote reason ("crc mismatch", "garbage", ...)."""
    return reason.split(":", 1)[0].strip()


class DriverError(Exception):
    """A driver cannot do what was asked (unknown name, one-way protocol, bad payload)."""


# --- driver model ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """Line settings a driver needs; passed to pyserial when the port is opened."""

    baudrate: int = 115200
    bytesize: int = 8
    parity: str = "N"  # pyserial PARITY_* letter
    stopbits: float = 1

    def with_baudrate(self, baudrate: int | None) -> SerialSettings:
        return self if baudrate is None else dataclasses.replace(self, baudrate=baudrate)

    def pyserial_kwargs(self) -> dict[str, object]:
        # Flow control stays off: XON/XOFF would eat 0x11/0x13 data bytes.
        return {
            "baudrate": self.baudrate,
            "bytesize": self.bytesize,
            "parity": self.parity,
            "stopbits": self.stopbits,
            "xonxoff": False,
            "rtscts": False,
            "dsrdtr": False,
        }


class SerialDriver(abc.ABC):
    """Byte protocol of one kind of serial device. Subclasses set the class attributes."""

    name: ClassVar[str]
    settings: ClassVar[SerialSettings]
    # USB (vid, pid) pairs that identify this device kind on their own; empty when the
    # device sits behind a generic USB-serial bridge and must be configured explicitly.
    usb_ids: ClassVar[tuple[tuple[int, int], ...]] = ()

    @abc.abstractmethod
    def feed(self, data: bytes) -> list[SerialEvent]:
        """Consume a chunk; return the events it completes, in order. Never raises."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget any partial packet (the port was reopened); counters are kept."""

    @property
    @abc.abstractmethod
    def stats(self) -> dict[str, int]:
        """Counters for status pages (packets accepted, dropped, bytes discarded...)."""

    def encode_outgoing(self, payload: bytes) -> bytes:
        """Line bytes that carry `payload` to the device; DriverError if it takes none."""
        raise DriverError(f"{self.name}: this device does not accept messages")


# --- VitalBridge firmware: COBS + CRC frames ---------------------------------------

ESPRESSIF_VID = 0x303A  # Espressif's USB vendor id (native USB-Serial/JTAG, USB-OTG)
ESP_USB_SERIAL_JTAG_PID = 0x1001  # the fixed-function USB-Serial/JTAG controller (C3/S3/C6)


class VitalBridgeFrameDriver(SerialDriver):
    """Our firmware's framed protocol (protocol.frames): Frame per message, notes for junk."""

    name = "vitalbridge"
    settings = SerialSettings(baudrate=115200)
    usb_ids = ((ESPRESSIF_VID, ESP_USB_SERIAL_JTAG_PID),)

    def __init__(self, max_payload: int = MAX_FRAME_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._decoder = FrameDecoder(max_payload)
        self._overflow_reported = 0

    def feed(self, data: bytes) -> list[SerialEvent]:
        decoder = self._decoder
        events: list[SerialEvent] = [Frame(payload) for payload in decoder.feed(data)]
        # The decoder keeps reasons apart from payloads: a chunk's notes follow its frames.
        events.extend(LinkNote(reason) for reason in decoder.take_errors())
        unlisted = decoder.errors_overflow - self._overflow_reported
        if unlisted:
            self._overflow_reported = decoder.errors_overflow
            events.append(LinkNote(f"unlisted: {unlisted} more frames dropped in one burst"))
        return events

    def reset(self) -> None:
        self._decoder.reset()

    @property
    def stats(self) -> dict[str, int]:
        decoder = self._decoder
        return {
            "frames_ok": decoder.frames_ok,
            "frames_bad": decoder.frames_bad,
            "bytes_discarded": decoder.bytes_discarded,
            "pending_bytes": decoder.pending_bytes,
        }

    def encode_outgoing(self, payload: bytes) -> bytes:
        try:
            return encode_frame(payload, self.max_payload)
        except FrameError as exc:
            raise DriverError(f"{self.name}: cannot frame payload: {exc}") from exc


# --- Contec CMS50 family: 5-byte live data packets ---------------------------------

CMS50_PACKET_SIZE = 5
_SYNC = 0x80
# Values the device uses when it has none: the display shows "--". 0 is sent before the
# first result; 127 (SpO2, 7 bits all ones) and 255 (pulse rate, 8 bits all ones) are the
# all-ones "invalid" markers. Anything outside the valid span is treated as "no value".
CMS50_SPO2_VALID = (1, 100)
CMS50_PULSE_RATE_VALID = (1, 254)
_GARBAGE_REPORT_BYTES = 256  # a garbage run is reported at least this often


@dataclass(frozen=True, slots=True)
class Cms50Sample:
    """One decoded live-data packet (bit layout: docs/serial.md, "Contec CMS50")."""

    signal_strength: int  # byte 1 bits 0-3 (0..8 documented)
    searching_too_long: bool  # byte 1 bit 4
    spo2_dropping: bool  # byte 1 bit 5
    beep: bool  # byte 1 bit 6: pulse beep
    pleth: int  # byte 2 bits 0-6: plethysmogram sample
    bar: int  # byte 3 bits 0-3: pulse bar graph
    probe_error: bool  # byte 3 bit 4: sensor error (also finger out)
    searching: bool  # byte 3 bit 5: searching for a pulse
    pulse_rate: int  # byte 3 bit 6 = bit 7, byte 4 bits 0-6 = bits 0-6
    spo2: int  # byte 5 bits 0-6


def decode_cms50_packet(packet: bytes) -> Cms50Sample:
    """Decode one 5-byte packet; FrameError if the length or the sync bits are wrong."""
    if len(packet) != CMS50_PACKET_SIZE:
        raise FrameError(f"cms50: packet is {len(packet)} bytes, need {CMS50_PACKET_SIZE}")
    b1, b2, b3, b4, b5 = packet
    if not b1 & _SYNC or (b2 | b3 | b4 | b5) & _SYNC:
        raise FrameError("cms50: sync bit must be set in byte 1 only")
    return Cms50Sample(
        signal_strength=b1 & 0x0F,
        searching_too_long=bool(b1 & 0x10),
        spo2_dropping=bool(b1 & 0x20),
        beep=bool(b1 & 0x40),
        pleth=b2,
        bar=b3 & 0x0F,
        probe_error=bool(b3 & 0x10),
        searching=bool(b3 & 0x20),
        pulse_rate=((b3 & 0x40) << 1) | b4,
        spo2=b5,
    )


def _field(value: int, limit: int, name: str) -> int:
    if not 0 <= value <= limit:
        raise ValueError(f"cms50 {name} {value} outside 0..{limit}")
    return value


def encode_cms50_packet(sample: Cms50Sample) -> bytes:
    """The 5 bytes a CMS50 sends for `sample` (the simulator's side); ValueError if a field
    does not fit its bits."""
    b1 = _SYNC | _field(sample.signal_strength, 0x0F, "signal_strength")
    b1 |= 0x10 * sample.searching_too_long | 0x20 * sample.spo2_dropping | 0x40 * sample.beep
    pulse_rate = _field(sample.pulse_rate, 0xFF, "pulse_rate")
    b3 = _field(sample.bar, 0x0F, "bar") | 0x10 * sample.probe_error | 0x20 * sample.searching
    b3 |= (pulse_rate & 0x80) >> 1
    return bytes(
        (b1, _field(sample.pleth, 0x7F, "pleth"), b3, pulse_rate & 0x7F,
         _field(sample.spo2, 0x7F, "spo2"))
    )


def cms50_conditions(sample: Cms50Sample) -> frozenset[str]:
    """Device conditions a sample reports; values are usable only if none blocks them."""
    conditions = set()
    if sample.probe_error:
        conditions.add("sensor-error")
    if sample.searching:
        conditions.add("searching")
    if sample.searching_too_long:
        conditions.add("searching-too-long")
    if sample.spo2_dropping:
        conditions.add("spo2-dropping")  # the device's own trend warning: values stay valid
    if not CMS50_SPO2_VALID[0] <= sample.spo2 <= CMS50_SPO2_VALID[1]:
        conditions.add("no-spo2")
    if not CMS50_PULSE_RATE_VALID[0] <= sample.pulse_rate <= CMS50_PULSE_RATE_VALID[1]:
        conditions.add("no-pulse-rate")
    return frozenset(conditions)


# The valid spans above lie inside protocol.vitals' possible ranges (a test checks it).
_CMS50_UNITS = {"spo2": vitals.canonical_unit("spo2"), "pr": vitals.canonical_unit("pr")}

# Conditions under which the numbers on the wire are stale or meaningless.
_BLOCKING = frozenset({"sensor-error", "searching", "searching-too-long"})


def cms50_values(sample: Cms50Sample) -> dict[str, int]:
    """The vitals a sample carries that may be reported: {"spo2": %, "pr": beat/min}."""
    conditions = cms50_conditions(sample)
    if conditions & _BLOCKING:
        return {}
    values = {}
    if "no-spo2" not in conditions:
        values["spo2"] = sample.spo2
    if "no-pulse-rate" not in conditions:
        values["pr"] = sample.pulse_rate
    return values


class ContecCms50Driver(SerialDriver):
    """Contec CMS50-family live stream: 60 packets/s of 5 bytes, bit 7 set only in byte 1.

    Resynchronises on every byte with bit 7 set. Reports each value when it first becomes
    valid, when it changes and otherwise every `repeat_every` packets (60 = once a
    second), so a steady patient still produces a heartbeat of readings. Condition changes
    (sensor error, searching, no value) are reported as DeviceStatus.
    """

    name = "contec-cms50"
    # 19200 baud, 8 data bits, odd parity (CMS50D+/CMS50E write-ups); some models use
    # 4800 8N1: override the baud rate per port in the configuration.
    settings = SerialSettings(baudrate=19200, parity="O")

    def __init__(self, repeat_every: int = 60) -> None:
        if repeat_every < 1:
            raise ValueError("repeat_every must be at least 1")
        self.repeat_every = repeat_every
        self._packet = bytearray()
        self._garbage_run = 0
        self._conditions: frozenset[str] | None = None
        self._last_sent: dict[str, tuple[int, int]] = {}  # quantity -> (value, packet no.)
        self.packets = 0
        self.packets_truncated = 0
        self.bytes_discarded = 0
        self.last_sample: Cms50Sample | None = None

    def feed(self, data: bytes) -> list[SerialEvent]:
        events: list[SerialEvent] = []
        if not isinstance(data, bytes | bytearray | memoryview):
            return [LinkNote("input is not bytes")]
        packet = self._packet
        for byte in bytes(data):
            if byte & _SYNC:
                self._end_garbage_run(events)
                if packet:
                    self._drop_truncated(events)
                packet.append(byte)
            elif not packet:
                self._garbage_run += 1
                if self._garbage_run >= _GARBAGE_REPORT_BYTES:
                    self._end_garbage_run(events)
            else:
                packet.append(byte)
                if len(packet) == CMS50_PACKET_SIZE:
                    sample = decode_cms50_packet(bytes(packet))
                    packet.clear()
                    self._on_sample(sample, events)
        return events

    def _end_garbage_run(self, events: list[SerialEvent]) -> None:
        if self._garbage_run:
            self.bytes_discarded += self._garbage_run
            events.append(LinkNote(f"garbage: {self._garbage_run} bytes before a sync byte"))
            self._garbage_run = 0

    def _drop_truncated(self, events: list[SerialEvent]) -> None:
        size = len(self._packet)
        self.packets_truncated += 1
        self.bytes_discarded += size
        events.append(LinkNote(f"truncated packet: {size} of {CMS50_PACKET_SIZE} bytes"))
        self._packet.clear()

    def _on_sample(self, sample: Cms50Sample, events: list[SerialEvent]) -> None:
        self.packets += 1
        self.last_sample = sample
        conditions = cms50_conditions(sample)
        if conditions != self._conditions:
            self._conditions = conditions
            events.append(DeviceStatus(conditions, self.name))
        values = cms50_values(sample)
        for quantity in ("spo2", "pr"):
            value = values.get(quantity)
            if value is None:
                self._last_sent.pop(quantity, None)
                continue
            last = self._last_sent.get(quantity)
            if last is None or last[0] != value or self.packets - last[1] >= self.repeat_every:
                self._last_sent[quantity] = (value, self.packets)
                events.append(Measurement(quantity, value, _CMS50_UNITS[quantity], self.name))

    def reset(self) -> None:
        # A partial packet or garbage run cut by a reconnect is counted as discarded.
        self.bytes_discarded += len(self._packet) + self._garbage_run
        self._packet.clear()
        self._garbage_run = 0
        self._conditions = None
        self._last_sent.clear()

    @property
    def pending_bytes(self) -> int:
        return len(self._packet) + self._garbage_run

    @property
    def stats(self) -> dict[str, int]:
        return {
            "packets": self.packets,
            "packets_truncated": self.packets_truncated,
            "bytes_discarded": self.bytes_discarded,
            "pending_bytes": self.pending_bytes,
        }


# --- registry ----------------------------------------------------------------------

DRIVERS: dict[str, type[SerialDriver]] = {
    VitalBridgeFrameDriver.name: VitalBridgeFrameDriver,
    ContecCms50Driver.name: ContecCms50Driver,
}


def make_driver(name: str) -> SerialDriver:
    """A fresh driver instance by name; DriverError naming the known drivers otherwise."""
    try:
        return DRIVERS[name]()
    except KeyError:
        known = ", ".join(sorted(DRIVERS))
        raise DriverError(f"unknown serial driver {name!r} (known: {known})") from None


def driver_for_usb(vid: int | None, pid: int | None) -> str | None:
    """The driver whose own USB ids are (vid, pid), or None (configure it explicitly)."""
    for name, driver in DRIVERS.items():
        if (vid, pid) in driver.usb_ids:
            return name
    return None
