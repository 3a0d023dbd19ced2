"""UART blood-pressure module: Sunrom 1437 "Blood Pressure Sensor - Serial output".

A wrist cuff with automatic inflation whose board exposes TX-OUT (3 V logic), +5 V and
GND. What is publicly documented (Sunrom product page, part 1437): 9600 baud, 8 data
bits, no parity, 1 stop bit; transmit only; after each measurement it outputs three
parameters -- systolic, diastolic (mmHg) and pulse (beat/min) -- in ASCII, 15 bytes per
reading; values are 3-digit decimal 000..255. The byte positions are not spelled out on
the product page; public Arduino code for this module reads up to the line feed and takes
the digits at offsets 1-3, 6-8 and 11-13. That gives this frame, which the driver accepts:

    byte 0      one non-digit lead byte
    bytes 1-13  "SSS, DDD, PPP" -- three 3-digit fields, each pair of fields separated
                by two non-digit bytes (comma and space)
    byte 14     LF (0x0A)

"SSS, DDD, PPP\\r\\n" (the same 15 bytes with CR before LF instead of a lead byte) is
accepted too, since the lead byte's value is not documented. The module cannot be
commanded: a measurement starts with the button on the cuff. See
docs/firmware-hardware.md for the sources and what remains unverified.

Parsing is a resynchronising line reader: bytes accumulate until LF, and the last 15
bytes before the LF must form a frame; anything else is counted as garbage. A buffer
without LF never grows past 64 bytes. Readings with systolic <= diastolic or a zero
pressure are rejected as implausible (the module's own failures); low or high values
that are physically possible are passed on untouched for the alarm rules.
"""

from firmware.drivers import SensorAbsent, SensorFault

BAUDRATE = 9600
FRAME_LENGTH = 15
_LF = 0x0A
_CR = 0x0D
_MAX_BUFFER = 64
_READ_CHUNK = 128
_GARBAGE_LIMIT = 256  # bytes of noise without a good frame before SensorFault


def _is_digit(byte):
    return 0x30 <= byte <= 0x39


def _field(body, start):
    if not (_is_digit(body[start]) and _is_digit(body[start + 1]) and _is_digit(body[start + 2])):
        return None
    return (body[start] - 0x30) * 100 + (body[start + 1] - 0x30) * 10 + body[start + 2] - 0x30


class BpReading:
    """One measurement: sys and dia in mmHg, pulse in beat/min (None when the module sent 0)."""

    def __init__(self, sys, dia, pulse):
        self.sys = sys
        self.dia = dia
        self.pulse = pulse

    def __repr__(self):
        return "BpReading(sys=%d, dia=%d, pulse=%s)" % (self.sys, self.dia, self.pulse)


def parse_frame(frame):
    """BpReading from exactly 15 bytes ending in LF, or None when it is not a valid frame."""
    if len(frame) != FRAME_LENGTH or frame[-1] != _LF:
        return None
    if frame[13] == _CR and _is_digit(frame[0]):
        body = frame[0:13]  # "SSS, DDD, PPP\r\n"
    elif not _is_digit(frame[0]):
        body = frame[1:14]  # lead byte + "SSS, DDD, PPP" + "\n"
    else:
        return None
    for separator in (3, 4, 8, 9):
        if _is_digit(body[separator]) or body[separator] in (_LF, _CR):
            return None
    sys = _field(body, 0)
    dia = _field(body, 5)
    pulse = _field(body, 10)
    if sys is None or dia is None or pulse is None:
        return None
    if dia == 0 or sys <= dia:
        return None
    return BpReading(sys, dia, pulse or None)


class BpModule:
    """Driver on a HAL UART (9600 8N1). Call poll() regularly; it never blocks."""

    name = "bp"

    def __init__(self, uart, hal):
        self.uart = uart
        self.hal = hal
        self.buffer = b""
        self.frames = 0
        self.bad_frames = 0
        self.garbage_bytes = 0
        self._noise_run = 0
        self._deadline = None

    def expect(self, within_ms):
        """A measurement was started: poll() raises SensorAbsent if none arrives in time."""
        self._deadline = self.hal.ticks_add(self.hal.ticks_ms(), within_ms)

    def poll(self):
        """Every complete reading received since the last call (a list, often empty)."""
        readings = []
        for _ in range(8):  # bounded work per call
            chunk = self.uart.read(_READ_CHUNK)
            if not chunk:
                break
            self._consume(chunk, readings)
        if readings:
            self._deadline = None
            return readings
        if self._noise_run >= _GARBAGE_LIMIT:
            self._noise_run = 0
            raise SensorFault(self.name, "line noise and no valid frame: check 9600 8N1, wiring")
        now = self.hal.ticks_ms()
        if self._deadline is not None and self.hal.ticks_diff(now, self._deadline) > 0:
            self._deadline = None
            raise SensorAbsent(self.name, "no measurement arrived from the module")
        return readings

    def _consume(self, chunk, readings):
        data = self.buffer + chunk
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            line = data[start:end + 1]
            start = end + 1
            reading = parse_frame(line[-FRAME_LENGTH:])
            if reading is None:
                self.bad_frames += 1
                self._noise(len(line))
                continue
            self._noise(len(line) - FRAME_LENGTH)
            self._noise_run = 0
            self.frames += 1
            readings.append(reading)
        rest = data[start:]
        if len(rest) > _MAX_BUFFER:
            # No LF in sight: keep only what could still be the start of a frame.
            self._noise(len(rest) - (FRAME_LENGTH - 1))
            rest = rest[-(FRAME_LENGTH - 1):]
        self.buffer = rest

    def _noise(self, count):
        if count > 0:
            self.garbage_bytes += count
            self._noise_run += count
