"""Serial framing (protocol.frames): COBS vectors, CRC, round trips and hostile streams."""

import binascii
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol import frames
from protocol.errors import FrameError
from protocol.frames import (
    MAX_FRAME_PAYLOAD,
    MAX_KEPT_ERRORS,
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


def sized_binary(min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    """Bytes whose length is drawn uniformly (plain st.binary stays mostly tiny)."""
    return st.integers(min_size, max_size).flatmap(lambda n: st.binary(min_size=n, max_size=n))


def zero_heavy(min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    """Bytes made of 0x00, 0x01 and 0xFF only, to stress COBS block and code boundaries."""
    return st.integers(min_size, max_size).flatmap(
        lambda n: st.lists(st.sampled_from([0, 1, 0xFF]), min_size=n, max_size=n).map(bytes)
    )


# Long enough to cross the 254-byte COBS block size several times.
payloads = st.one_of(sized_binary(1, 1200), zero_heavy(1, 800))


def _split_points(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for p in points + [len(data)]:
        chunks.append(data[last:p])
        last = p
    return chunks


def _is_valid_frame(piece: bytes) -> bool:
    try:
        decode_frame(piece)
    except FrameError:
        return False
    return True


# -- COBS ------------------------------------------------------------------------------

# Examples from the COBS article (Cheshire & Baker encoding), delimiter not included.
COBS_VECTORS = [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255))),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


@pytest.mark.parametrize("raw,encoded", COBS_VECTORS)
def test_cobs_known_vectors(raw, encoded):
    assert cobs_encode(raw) == encoded
    assert bytes(cobs_decode(encoded, 10_000)) == raw


@given(st.one_of(sized_binary(0, 2000), zero_heavy(0, 1000)))
def test_cobs_round_trip_has_no_zero_and_bounded_overhead(data):
    encoded = cobs_encode(data)
    assert b"\x00" not in encoded
    assert len(encoded) <= len(data) + len(data) // 254 + 1
    assert bytes(cobs_decode(encoded, len(data))) == data


def test_cobs_decode_rejects_malformed():
    with pytest.raises(FrameError, match="cobs: empty"):
        cobs_decode(b"", 10)
    with pytest.raises(FrameError, match="past end"):
        cobs_decode(b"\x05\x11\x22", 10)
    with pytest.raises(FrameError, match="zero byte"):
        cobs_decode(b"\x03\x11\x00", 10)
    with pytest.raises(FrameError, match="zero byte"):
        cobs_decode(b"\x02\x11\x00\x01", 10)
    with pytest.raises(FrameError, match="oversized"):
        cobs_decode(b"\x05\x11\x22\x33\x44", 3)


# -- CRC -------------------------------------------------------------------------------


def test_crc32_check_value():
    # The CRC-32/ISO-HDLC check value for the ASCII string "123456789".
    assert crc32(b"123456789") == 0xCBF43926
    assert crc32_portable(b"123456789") == 0xCBF43926


@given(sized_binary(0, 600))
def test_portable_crc_matches_binascii(data):
    assert crc32_portable(data) == binascii.crc32(data) == crc32(data)


@given(sized_binary(0, 300), st.integers(0, 0xFFFFFFFF))
def test_portable_crc_continues_from_a_value_like_binascii(data, value):
    assert crc32_portable(data, value) == binascii.crc32(data, value) == crc32(data, value)


def test_frame_layout_is_cobs_of_payload_and_domain_crc_le():
    frame = encode_frame(b"hello")
    crc = binascii.crc32(b"VitalBridge" + b"hello")
    assert frame_crc(b"hello") == crc
    expected = cobs_encode(b"hello" + struct.pack("<I", crc))
    assert frame == b"\x00" + expected + b"\x00"
    assert encode_frame(b"hello", leading_zero=False) == expected + b"\x00"


# -- single frames ---------------------------------------------------------------------


@given(payloads, st.booleans())
def test_round_trip_through_decode_frame_and_decoder(payload, leading_zero):
    frame = encode_frame(payload, leading_zero=leading_zero)
    assert frame.endswith(b"\x00")
    assert b"\x00" not in frame.strip(b"\x00")
    assert decode_frame(frame) == payload
    assert decode_frame(frame.strip(b"\x00")) == payload
    decoder = FrameDecoder()
    assert decoder.feed(frame) == [payload]
    assert (decoder.frames_ok, decoder.frames_bad, decoder.bytes_discarded) == (1, 0, 0)
    assert decoder.errors == []


def test_maximum_payload_boundary():
    biggest = bytes(range(256)) * (MAX_FRAME_PAYLOAD // 256)
    assert len(biggest) == MAX_FRAME_PAYLOAD
    frame = encode_frame(biggest)
    assert len(frame.strip(b"\x00")) <= max_encoded_size(MAX_FRAME_PAYLOAD)
    assert FrameDecoder().feed(frame) == [biggest]
    with pytest.raises(FrameError, match="oversized"):
        encode_frame(biggest + b"x")
    # A payload that COBS cannot shrink (no zeros) also fits the decoder's bound.
    no_zeros = b"\x01" * MAX_FRAME_PAYLOAD
    assert FrameDecoder().feed(encode_frame(no_zeros)) == [no_zeros]


def test_encode_frame_rejects_bad_payloads():
    with pytest.raises(FrameError, match="empty"):
        encode_frame(b"")
    with pytest.raises(FrameError, match="not bytes"):
        encode_frame("text")
    with pytest.raises(FrameError, match="oversized"):
        encode_frame(b"x" * 17, max_payload=16)
    assert decode_frame(encode_frame(bytearray(b"ab"))) == b"ab"
    assert decode_frame(memoryview(encode_frame(b"ab"))) == b"ab"


def test_decode_frame_rejects_each_fault():
    good = encode_frame(b"payload")
    with pytest.raises(FrameError, match="empty"):
        decode_frame(b"\x00\x00")
    with pytest.raises(FrameError, match="not bytes"):
        decode_frame("\x00abc\x00")
    with pytest.raises(FrameError, match="crc mismatch"):
        decode_frame(good[:3] + bytes([good[3] ^ 0x01]) + good[4:])
    with pytest.raises(FrameError, match="short frame"):
        decode_frame(cobs_encode(b"\x01\x02\x03\x04"))
    with pytest.raises(FrameError, match="zero byte"):
        body = good.strip(b"\x00")
        decode_frame(body[:3] + b"\x00" + body[3:])
    with pytest.raises(FrameError, match="oversized"):
        decode_frame(encode_frame(b"x" * 17), max_payload=16)


def test_plain_crc32_fixed_patterns_are_not_valid_frames():
    # With a plain CRC-32 these bodies would be valid frames (CRC-32(FF FF FF FF) is
    # FFFFFFFF, CRC-32(FF) is FF000000); the domain prefix makes them ordinary garbage.
    for data in (b"\xff" * 8, b"\xff\x00\x00\x00\xff", b"\x00" * 4):
        body = cobs_encode(data)
        with pytest.raises(FrameError):
            decode_frame(body)
        decoder = FrameDecoder()
        assert decoder.feed(b"\x00" + body + b"\x00") == []
        assert decoder.frames_bad == 1


def test_run_of_0x01_noise_is_not_an_empty_frame():
    # 01 01 01 01 01 decodes to four zero bytes: too short to hold a payload and a CRC.
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00" + b"\x01" * 5 + b"\x00") == []
    assert decoder.frames_bad == 1
    assert decoder.take_errors() == ["short frame: 4 bytes after COBS, need at least 5"]


@given(st.one_of(sized_binary(0, 600), zero_heavy(0, 600)))
def test_decode_frame_raises_only_frame_error(data):
    try:
        decode_frame(data)
    except FrameError:
        pass


# -- streams ---------------------------------------------------------------------------


@given(st.lists(payloads, max_size=6), st.lists(st.integers(min_value=0), max_size=8))
def test_stream_round_trip_any_chunking(items, cuts):
    stream = b"".join(encode_frame(p) for p in items)
    decoder = FrameDecoder()
    out = []
    for chunk in _split_points(stream, cuts):
        out += decoder.feed(chunk)
    assert out == items
    assert decoder.frames_ok == len(items)
    assert decoder.frames_bad == 0
    assert decoder.pending_bytes == 0


@given(
    st.lists(sized_binary(1, 300), min_size=1, max_size=6),
    st.lists(sized_binary(0, 80), min_size=7, max_size=7),
)
def test_garbage_between_frames_loses_no_frame(items, garbage):
    # Garbage (any bytes, 0x00 included) inserted at frame boundaries sits between two
    # delimiters, so it can only form frames of its own. Each 0x00-free piece of it is one
    # dropped frame, unless it happens to be a valid frame (a CRC-32 match), excluded here.
    garbage = garbage[: len(items) + 1]
    for g in garbage:
        assume(not any(_is_valid_frame(piece) for piece in g.split(b"\x00") if piece))
    frames_and_garbage = zip(items, garbage[1:], strict=True)
    stream = garbage[0] + b"".join(encode_frame(p) + g for p, g in frames_and_garbage)
    decoder = FrameDecoder()
    assert decoder.feed(stream + b"\x00") == items
    pieces = [piece for g in garbage for piece in g.split(b"\x00") if piece]
    assert decoder.frames_bad == len(pieces)
    assert decoder.bytes_discarded == sum(len(p) for p in pieces)
    assert len(decoder.take_errors()) == min(len(pieces), MAX_KEPT_ERRORS)


@given(st.lists(sized_binary(1, 300), min_size=1, max_size=5), st.data())
def test_receiver_joining_mid_stream_gets_every_frame_that_starts_after(items, data):
    encoded = [encode_frame(p) for p in items]
    stream = b"".join(encoded)
    join = data.draw(st.integers(min_value=0, max_value=len(stream)))
    expected, offset = [], 0
    for payload, frame in zip(items, encoded, strict=True):
        # Recoverable: the frame's body starts at or after the join point.
        if offset + 1 >= join:
            expected.append(payload)
        offset += len(frame)
    assert FrameDecoder().feed(stream[join:]) == expected


@settings(max_examples=25)
@given(st.one_of(sized_binary(1, 520), zero_heavy(1, 520)), sized_binary(1, 40))
def test_every_single_bit_flip_is_detected(payload, neighbour):
    # Flip each bit of the middle frame, both delimiters included. Data-byte flips are
    # caught by CRC-32 with certainty; code-byte and delimiter flips reshape the frame and
    # are caught by COBS checks or the CRC (a miss would need a 2^-32 coincidence).
    # One flip is harmless by design: when the body ends with a 0xFF block, turning the
    # trailing 0x00 into 0x01 appends an empty final block, which decodes to the same bytes
    # (the decoder accepts that non-canonical form), so the intact payload is delivered.
    before, target, after = encode_frame(neighbour), encode_frame(payload), encode_frame(b"n")
    harmless = (len(target) - 1, 0) if _last_block_code(target.strip(b"\x00")) == 0xFF else None
    for byte_index in range(len(target)):
        for bit in range(8):
            flipped = bytearray(target)
            flipped[byte_index] ^= 1 << bit
            decoder = FrameDecoder()
            out = decoder.feed(before + bytes(flipped) + after)
            if (byte_index, bit) == harmless:
                assert out == [neighbour, payload, b"n"]
                continue
            assert out == [neighbour, b"n"], (byte_index, bit)
            assert decoder.frames_bad >= 1
            assert decoder.errors


def test_trailing_delimiter_flip_after_full_block_keeps_payload():
    # The one flip the decoder does not report: see test_every_single_bit_flip_is_detected.
    payload = next(
        p
        for p in (b"\x01" * 249 + bytes([i]) for i in range(1, 256))
        if b"\x00" not in struct.pack("<I", frame_crc(p))
    )
    body = encode_frame(payload, leading_zero=False)[:-1]
    assert body[0] == 0xFF and len(body) == 255  # 254 non-zero bytes: one full block
    assert decode_frame(body + b"\x01") == payload  # non-canonical trailing empty block
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00" + body + b"\x01" + encode_frame(b"n")) == [payload, b"n"]
    assert decoder.frames_bad == 0


def _last_block_code(body: bytes) -> int:
    i = 0
    while i + body[i] < len(body):
        i += body[i]
    return body[i]


@settings(max_examples=50)
@given(st.one_of(sized_binary(1, 520), zero_heavy(1, 520)))
def test_truncation_at_every_point(payload):
    frame = encode_frame(payload)
    follower = encode_frame(b"next")
    for cut in range(len(frame)):
        decoder = FrameDecoder()
        out = decoder.feed(frame[:cut] + follower)
        if cut <= 1:  # nothing of the body arrived
            assert out == [b"next"]
            assert decoder.frames_bad == 0
        elif cut == len(frame) - 1:  # whole body, only the trailing delimiter missing
            assert out == [payload, b"next"]
        else:
            assert out == [b"next"], cut
            assert decoder.frames_bad == 1
            assert decoder.bytes_discarded == cut - 1
            with pytest.raises(FrameError):
                decode_frame(frame[:cut])


@given(
    st.one_of(sized_binary(0, 3000), zero_heavy(0, 600)),
    st.lists(st.integers(min_value=0), max_size=10),
)
def test_random_bytes_never_raise_and_memory_stays_bounded(data, cuts):
    decoder = FrameDecoder(max_payload=64)
    for chunk in _split_points(data, cuts):
        decoder.feed(chunk)
        assert decoder.pending_bytes <= max_encoded_size(64)
    assert decoder.frames_bad >= len(decoder.errors)
    assert len(decoder.errors) <= MAX_KEPT_ERRORS
    assert decoder.bytes_discarded <= len(data)


@given(
    st.lists(st.one_of(payloads.map(encode_frame), sized_binary(0, 300)), max_size=8),
    st.integers(min_value=8, max_value=MAX_FRAME_PAYLOAD),
)
def test_byte_at_a_time_equals_one_feed(pieces, max_payload):
    stream = b"".join(pieces)
    whole = FrameDecoder(max_payload)
    one_shot = whole.feed(stream)
    single = FrameDecoder(max_payload)
    trickled = []
    for i in range(len(stream)):
        trickled += single.feed(stream[i : i + 1])
    assert trickled == one_shot
    assert single.take_errors() == whole.take_errors()
    assert (single.frames_ok, single.frames_bad, single.bytes_discarded) == (
        whole.frames_ok,
        whole.frames_bad,
        whole.bytes_discarded,
    )
    assert single.pending_bytes == whole.pending_bytes


def test_endless_run_without_delimiter_is_discarded_then_resyncs():
    decoder = FrameDecoder(max_payload=100)
    limit = max_encoded_size(100)
    for _ in range(1000):
        assert decoder.feed(b"\x55" * 97) == []
        assert decoder.pending_bytes <= limit
    assert decoder.frames_bad == 1
    assert decoder.take_errors() == [f"oversized: more than {limit} bytes without a delimiter"]
    assert decoder.feed(encode_frame(b"back")) == [b"back"]
    assert decoder.bytes_discarded == 97 * 1000


def test_per_decoder_max_payload():
    small = FrameDecoder(max_payload=16)
    assert small.feed(encode_frame(b"x" * 16) + encode_frame(b"y" * 17)) == [b"x" * 16]
    (reason,) = small.take_errors()
    assert reason.startswith("oversized")


def test_error_list_is_bounded_and_take_errors_clears():
    decoder = FrameDecoder()
    bad = b"\x00\x02\x11\x00"
    for _ in range(100):
        decoder.feed(bad)
    assert decoder.frames_bad == 100
    assert len(decoder.errors) == MAX_KEPT_ERRORS
    assert decoder.errors_overflow == 100 - MAX_KEPT_ERRORS
    assert decoder.take_errors() == ["short frame: 1 bytes after COBS, need at least 5"] * 32
    assert decoder.errors == []


def test_feed_accepts_byte_likes_and_reports_other_types():
    decoder = FrameDecoder()
    frame = encode_frame(b"abc")
    assert decoder.feed(bytearray(frame)) == [b"abc"]
    assert decoder.feed(memoryview(frame)) == [b"abc"]
    assert decoder.feed("\x00abc\x00") == []
    assert decoder.feed(None) == []
    assert decoder.take_errors() == ["input is not bytes", "input is not bytes"]


def test_reset_drops_partial_frame():
    decoder = FrameDecoder()
    frame = encode_frame(b"abc")
    decoder.feed(frame[:4])
    assert decoder.pending_bytes == 3
    decoder.reset()
    assert decoder.pending_bytes == 0
    assert decoder.bytes_discarded == 3
    assert decoder.feed(frame[4:] + frame) == [b"abc"]


def test_frames_work_without_native_crc32(monkeypatch):
    # Some MicroPython builds lack binascii.crc32: the table fallback must give equal bytes.
    native = encode_frame(b"same bytes\x00either way")
    monkeypatch.setattr(frames, "_native_crc32", None)
    assert encode_frame(b"same bytes\x00either way") == native
    assert FrameDecoder().feed(native) == [b"same bytes\x00either way"]
