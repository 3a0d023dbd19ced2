"""Serial framing: COBS over (payload || CRC-32 little-endian), delimited by 0x00.

Wire form of one frame (see docs/framing.md):

    [0x00]  COBS(payload || frame_crc(payload) as 4 bytes little-endian)  0x00

frame_crc(payload) is the standard CRC-32 of b"VitalBridge" + payload. The fixed prefix
breaks the CRC's trivial patterns (CRC-32(FF FF FF FF) = FFFFFFFF, CRC-32(FF) = FF000000,
CRC-32("") = 0) that otherwise let a truncated or noisy run of 0x00/0xFF-rich bytes pass
as a valid frame with certainty rather than by a 2^-32 coincidence.

COBS removes every 0x00 from the body, so 0x00 only ever means "frame boundary". The
optional leading 0x00 (on by default) closes whatever garbage or broken frame precedes it,
so a receiver that joins mid-stream, or a single corrupted delimiter, costs at most one
frame. Payloads must be non-empty, so the shortest valid frame decodes to 5 bytes.

Runs on MicroPython and CPython. `FrameDecoder.feed` never raises: garbage, truncation and
oversized runs are normal on a serial line and are counted, not thrown.
"""

import struct

from protocol.errors import FrameError

MAX_FRAME_PAYLOAD = 4096
CRC_SIZE = 4
DELIMITER = b"\x00"
MAX_KEPT_ERRORS = 32  # reasons kept between take_errors() calls; the rest are only counted
CRC_DOMAIN = b"VitalBridge"  # hashed ahead of every payload; never sent

_COBS_MAX_BLOCK = 254  # data bytes carried by a 0xFF code block


def _crc32_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return table


_table = None


def crc32_portable(data, value: int = 0) -> int:
    """CRC-32 (IEEE 802.3, as zlib) in pure Python, continuing from `value` like zlib does.

    The fallback for MicroPython builds whose binascii lacks crc32.
    """
    global _table
    if _table is None:
        _table = _crc32_table()
    table = _table
    c = value ^ 0xFFFFFFFF
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


try:
    from binascii import crc32 as _native_crc32
except ImportError:  # some MicroPython builds leave crc32 out of binascii
    _native_crc32 = None


def crc32(data, value: int = 0) -> int:
    """CRC-32 of `data` (continuing from `value`) as an unsigned 32-bit int."""
    if _native_crc32 is not None:
        return _native_crc32(data, value) & 0xFFFFFFFF
    return crc32_portable(data, value)


_domain_crc = None


def frame_crc(payload) -> int:
    """The CRC a frame carries: CRC-32 of CRC_DOMAIN + payload."""
    global _domain_crc
    if _domain_crc is None:
        _domain_crc = crc32(CRC_DOMAIN)
    return crc32(payload, _domain_crc)


def max_encoded_size(max_payload: int) -> int:
    """Upper bound on a frame body (without delimiters) carrying up to `max_payload` bytes."""
    n = max_payload + CRC_SIZE
    return n + n // _COBS_MAX_BLOCK + 1


def _as_bytes(data, what):
    if isinstance(data, memoryview):
        return bytes(data)
    if isinstance(data, (bytes, bytearray)):
        return data
    raise FrameError("%s is not bytes" % what)


def cobs_encode(data) -> bytes:
    """Consistent Overhead Byte Stuffing: the result contains no 0x00 (canonical encoding)."""
    data = _as_bytes(data, "data")
    out = bytearray()
    n = len(data)
    start = 0
    while True:
        zero = data.find(DELIMITER, start)
        end = n if zero < 0 else zero
        full_blocks = 0
        while end - start >= _COBS_MAX_BLOCK:
            out.append(0xFF)
            out.extend(data[start : start + _COBS_MAX_BLOCK])
            start += _COBS_MAX_BLOCK
            full_blocks += 1
        # A segment ending the input exactly after 0xFF blocks needs no closing block.
        if zero >= 0 or start < end or full_blocks == 0:
            out.append(end - start + 1)
            out.extend(data[start:end])
        if zero < 0:
            return bytes(out)
        start = zero + 1


def cobs_decode(body, limit: int) -> bytearray:
    """Undo COBS on a frame body without delimiters; FrameError if malformed or > limit bytes."""
    n = len(body)
    if n == 0:
        raise FrameError("cobs: empty frame")
    out = bytearray()
    i = 0
    while i < n:
        code = body[i]
        if code == 0:
            raise FrameError("cobs: zero byte inside frame")
        end = i + code
        if end > n:
            raise FrameError("cobs: block runs past end of frame")
        if body.find(DELIMITER, i + 1, end) >= 0:
            raise FrameError("cobs: zero byte inside frame")
        out.extend(body[i + 1 : end])
        i = end
        if code != 0xFF and i < n:
            out.append(0)
        if len(out) > limit:
            raise FrameError("oversized: frame decodes to more than %d bytes" % limit)
    return out


def _check_payload(decoded, max_payload):
    """Split decoded (payload || crc) and verify it; returns the payload as bytes."""
    if len(decoded) <= CRC_SIZE:
        raise FrameError(
            "short frame: %d bytes after COBS, need at least %d" % (len(decoded), CRC_SIZE + 1)
        )
    payload = bytes(decoded[:-CRC_SIZE])
    if len(payload) > max_payload:
        raise FrameError("oversized: payload %d bytes > %d" % (len(payload), max_payload))
    (sent,) = struct.unpack("<I", bytes(decoded[-CRC_SIZE:]))
    if frame_crc(payload) != sent:
        raise FrameError("crc mismatch")
    return payload


def encode_frame(payload, max_payload: int = MAX_FRAME_PAYLOAD, leading_zero: bool = True) -> bytes:
    """Frame one payload for a byte stream; FrameError if empty, not bytes or > max_payload."""
    payload = _as_bytes(payload, "payload")
    if not payload:
        raise FrameError("empty payload")
    if len(payload) > max_payload:
        raise FrameError("oversized: payload %d bytes > %d" % (len(payload), max_payload))
    body = cobs_encode(bytes(payload) + struct.pack("<I", frame_crc(payload)))
    if leading_zero:
        return DELIMITER + body + DELIMITER
    return body + DELIMITER


def decode_frame(frame, max_payload: int = MAX_FRAME_PAYLOAD) -> bytes:
    """Decode one frame, with or without its 0x00 delimiters; FrameError on any fault."""
    frame = _as_bytes(frame, "frame")
    start = 0
    end = len(frame)
    while start < end and frame[start] == 0:
        start += 1
    while end > start and frame[end - 1] == 0:
        end -= 1
    body = frame[start:end]
    if len(body) > max_encoded_size(max_payload):
        raise FrameError("oversized: frame body %d bytes" % len(body))
    return _check_payload(cobs_decode(body, max_payload + CRC_SIZE), max_payload)


class FrameDecoder:
    """Incremental receiver: feed() any bytes, get back every valid payload in order.

    Memory stays bounded: a run without 0x00 longer than a maximal frame body is discarded
    (and counted) up to the next 0x00 instead of being buffered.
    """

    def __init__(self, max_payload: int = MAX_FRAME_PAYLOAD):
        self.max_payload = max_payload
        self._limit = max_encoded_size(max_payload)
        self._buf = bytearray()
        self._discarding = False
        self._errors = []
        self.frames_ok = 0
        self.frames_bad = 0
        self.bytes_discarded = 0
        self.errors_overflow = 0  # reasons counted but not kept (list was full)

    @property
    def errors(self) -> list:
        """Reasons for dropped frames since the last take_errors() (a copy)."""
        return list(self._errors)

    @property
    def pending_bytes(self) -> int:
        """Bytes held for the frame in progress (never more than max_encoded_size)."""
        return len(self._buf)

    def take_errors(self) -> list:
        """Return and clear the kept reasons."""
        errors = self._errors
        self._errors = []
        return errors

    def reset(self):
        """Forget a partial frame (e.g. after the port was reopened); counters are kept."""
        self.bytes_discarded += len(self._buf)
        self._buf = bytearray()
        self._discarding = False

    def _note(self, reason):
        if len(self._errors) < MAX_KEPT_ERRORS:
            self._errors.append(reason)
        else:
            self.errors_overflow += 1

    def feed(self, data) -> list:
        """Consume bytes; return the payloads of all frames completed by them. Never raises."""
        if isinstance(data, memoryview):
            data = bytes(data)
        elif not isinstance(data, (bytes, bytearray)):
            self._note("input is not bytes")
            return []
        out = []
        n = len(data)
        start = 0
        while start < n:
            zero = data.find(DELIMITER, start)
            end = n if zero < 0 else zero
            if end > start:
                self._collect(data, start, end)
            if zero < 0:
                break
            self._close_frame(out)
            start = zero + 1
        return out

    def _collect(self, data, start, end):
        size = end - start
        if self._discarding:
            self.bytes_discarded += size
        elif len(self._buf) + size > self._limit:
            self.bytes_discarded += len(self._buf) + size
            self._buf = bytearray()
            self._discarding = True
            self.frames_bad += 1
            self._note("oversized: more than %d bytes without a delimiter" % self._limit)
        else:
            self._buf.extend(data[start:end])

    def _close_frame(self, out):
        if self._discarding:
            self._discarding = False  # already counted when the run overflowed
            return
        body = self._buf
        if not body:
            return  # back-to-back delimiters: the optional leading 0x00
        self._buf = bytearray()
        try:
            payload = _check_payload(
                cobs_decode(body, self.max_payload + CRC_SIZE), self.max_payload
            )
        except FrameError as exc:
            self.frames_bad += 1
            self.bytes_discarded += len(body)
            self._note(str(exc))
            return
        self.frames_ok += 1
        out.append(payload)
