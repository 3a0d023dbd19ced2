# Serial frames and BLE fragments on the real MicroPython interpreter.
# Run: .venv/bin/micropython -X heapsize=8M tests/mpy/run.py test_frames
import binascii

from protocol.errors import FrameError
from protocol.fragments import Reassembler, fragment
from protocol.frames import (
    FrameDecoder,
    cobs_decode,
    cobs_encode,
    crc32,
    crc32_portable,
    decode_frame,
    encode_frame,
    frame_crc,
    max_encoded_size,
)


class _Lcg:
    """Deterministic pseudo-random bytes, identical on every interpreter."""

    def __init__(self, seed):
        self.state = seed

    def next(self, bound):
        self.state = (self.state * 1103515245 + 12345) & 0x7FFFFFFF
        return self.state % bound

    def bytes(self, n, alphabet=None):
        if alphabet is None:
            return bytes([self.next(256) for _ in range(n)])
        return bytes([alphabet[self.next(len(alphabet))] for _ in range(n)])


def _payloads():
    rng = _Lcg(1)
    out = [b"x", b"\x00", b"\x00" * 300, bytes(range(1, 255)), bytes(range(256)) * 3]
    for n in (1, 5, 253, 254, 255, 508, 1000):
        out.append(rng.bytes(n))
        out.append(rng.bytes(n, b"\x00\x01\xff"))
    return out


def test_cobs_known_vectors():
    assert cobs_encode(b"") == b"\x01"
    assert cobs_encode(b"\x00") == b"\x01\x01"
    assert cobs_encode(b"\x11\x22\x00\x33") == b"\x03\x11\x22\x02\x33"
    assert cobs_encode(bytes(range(1, 255))) == b"\xff" + bytes(range(1, 255))
    assert cobs_encode(bytes(range(1, 256))) == b"\xff" + bytes(range(1, 255)) + b"\x02\xff"
    assert bytes(cobs_decode(b"\x03\x11\x22\x02\x33", 10)) == b"\x11\x22\x00\x33"


def test_crc32_native_and_portable_agree():
    assert crc32(b"123456789") == 0xCBF43926
    assert crc32_portable(b"123456789") == 0xCBF43926
    rng = _Lcg(2)
    for n in (0, 1, 7, 300):
        data = rng.bytes(n)
        assert crc32_portable(data) == binascii.crc32(data) & 0xFFFFFFFF
        assert crc32_portable(data, 0xDEADBEEF) == binascii.crc32(data, 0xDEADBEEF) & 0xFFFFFFFF
    assert frame_crc(b"abc") == binascii.crc32(b"VitalBridgeabc") & 0xFFFFFFFF


def test_plain_crc32_fixed_patterns_are_rejected():
    for data in (b"\xff" * 8, b"\xff\x00\x00\x00\xff", b"\x00" * 4):
        decoder = FrameDecoder()
        assert decoder.feed(b"\x00" + cobs_encode(data) + b"\x00") == []
        assert decoder.frames_bad == 1


def test_frame_round_trips():
    decoder = FrameDecoder()
    for payload in _payloads():
        frame = encode_frame(payload)
        assert decode_frame(frame) == payload
        assert decode_frame(frame[1:-1]) == payload
        assert decoder.feed(frame) == [payload]
    assert decoder.frames_bad == 0


def test_byte_at_a_time_matches_one_feed():
    stream = b"junk" + b"".join(encode_frame(p) for p in _payloads()) + b"\x03\x01"
    whole = FrameDecoder().feed(stream)
    decoder = FrameDecoder()
    trickled = []
    for i in range(len(stream)):
        trickled += decoder.feed(stream[i : i + 1])
    assert trickled == whole == _payloads()


def test_garbage_between_frames_resyncs():
    rng = _Lcg(3)
    items = _payloads()
    stream = b""
    for payload in items:
        stream += rng.bytes(rng.next(60)) + encode_frame(payload)
    decoder = FrameDecoder()
    assert decoder.feed(stream) == items
    assert decoder.frames_bad > 0
    assert len(decoder.take_errors()) == min(decoder.frames_bad, 32)


def test_every_bit_flip_is_detected():
    payload = bytes(range(1, 40)) + b"\x00\x00" + bytes(range(200, 256))
    target = encode_frame(payload)
    neighbour = encode_frame(b"before")
    follower = encode_frame(b"after")
    for i in range(len(target)):
        for bit in range(8):
            flipped = bytearray(target)
            flipped[i] ^= 1 << bit
            decoder = FrameDecoder()
            out = decoder.feed(neighbour + bytes(flipped) + follower)
            assert out == [b"before", b"after"], (i, bit)
            assert decoder.errors


def test_truncation_then_next_frame():
    frame = encode_frame(bytes(range(100)))
    for cut in range(2, len(frame) - 1):
        decoder = FrameDecoder()
        assert decoder.feed(frame[:cut] + encode_frame(b"next")) == [b"next"]
        assert decoder.frames_bad == 1
        try:
            decode_frame(frame[:cut])
            raise AssertionError(cut)
        except FrameError:
            pass


def test_random_bytes_never_raise_and_memory_is_bounded():
    rng = _Lcg(4)
    decoder = FrameDecoder(max_payload=64)
    for _ in range(200):
        decoder.feed(rng.bytes(rng.next(90), b"\x00\x01\x02\x05\xfe\xff\x41"))
        decoder.feed(rng.bytes(rng.next(90)))
        assert decoder.pending_bytes <= max_encoded_size(64)
    assert decoder.feed(encode_frame(b"ok")) == [b"ok"]


def test_fragments_round_trip_shuffled_and_duplicated():
    rng = _Lcg(5)
    reassembler = Reassembler()
    for n, mtu in ((0, 23), (17, 23), (18, 23), (1000, 23), (3000, 185), (3000, 517)):
        message = rng.bytes(n)
        parts = fragment(message, mtu, n % 256)
        delivery = parts + [parts[rng.next(len(parts))] for _ in range(3)]
        for i in range(len(delivery) - 1, 0, -1):
            j = rng.next(i + 1)
            delivery[i], delivery[j] = delivery[j], delivery[i]
        got = [m for m in (reassembler.add(f, 1.0) for f in delivery) if m is not None]
        assert got == [message], n
    assert reassembler.take_errors() == []


def test_reassembler_timeout_interrupt_and_hostile_headers():
    reassembler = Reassembler(max_pending=1, timeout_s=5.0)
    old = fragment(b"o" * 60, 23, 1)
    reassembler.add(old[0], 0.0)
    assert reassembler.add(b"\x02\x00\x02ab", 1.0) is None
    assert reassembler.add(b"\x02\x01\x02cd", 1.0) == b"abcd"
    reassembler.add(b"\x03\x00\x02ab", 2.0)
    reassembler.expire(7.5)
    for bad in (b"", b"\x01", b"\x01\x00\x00x", b"\x01\x05\x02x", None):
        assert reassembler.add(bad, 8.0) is None
    assert reassembler.take_errors() == [
        "interrupted: message 1 had 1 of 4 fragments when message 2 began",
        "timeout: message 3 had 1 of 2 fragments",
        "malformed: 0 bytes, shorter than the header",
        "malformed: 1 bytes, shorter than the header",
        "malformed: message 1 has fragment count 0",
        "malformed: message 1 fragment index 5 >= count 2",
        "malformed: fragment is not bytes",
    ]
    try:
        fragment(b"x", 22, 0)
        raise AssertionError("mtu 22 accepted")
    except FrameError:
        pass


def test_frames_work_without_native_crc32():
    import protocol.frames as frames

    native = encode_frame(b"same bytes\x00either way")
    saved = frames._native_crc32
    frames._native_crc32 = None
    try:
        assert encode_frame(b"same bytes\x00either way") == native
        assert FrameDecoder().feed(native) == [b"same bytes\x00either way"]
    finally:
        frames._native_crc32 = saved
