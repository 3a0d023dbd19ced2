"""BLE fragmentation (protocol.fragments): round trips, disorder, loss and hostile input."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import FrameError
from protocol.fragments import (
    HEADER_SIZE,
    MAX_ATTRIBUTE_VALUE,
    MAX_FRAGMENTS,
    MAX_KEPT_ERRORS,
    MIN_ATT_MTU,
    Reassembler,
    fragment,
    fragment_capacity,
)


def sized_binary(min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    """Bytes whose length is drawn uniformly (plain st.binary stays mostly tiny)."""
    return st.integers(min_size, max_size).flatmap(lambda n: st.binary(min_size=n, max_size=n))


mtus = st.one_of(st.integers(MIN_ATT_MTU, 100), st.integers(MIN_ATT_MTU, 600))


def _feed_all(reassembler: Reassembler, fragments: list[bytes], now: float = 0.0) -> list:
    out = []
    for f in fragments:
        message = reassembler.add(f, now)
        if message is not None:
            out.append(message)
    return out


# -- fragment() ------------------------------------------------------------------------


@given(sized_binary(0, 4000), mtus, st.integers(0, 255))
def test_fragments_fit_the_mtu_and_carry_a_consistent_header(message, mtu, message_id):
    capacity = fragment_capacity(mtu)
    if len(message) > capacity * MAX_FRAGMENTS:
        with pytest.raises(FrameError, match="fragments"):
            fragment(message, mtu, message_id)
        return
    parts = fragment(message, mtu, message_id)
    assert 1 <= len(parts) <= MAX_FRAGMENTS
    for index, part in enumerate(parts):
        assert len(part) <= min(mtu - 3, MAX_ATTRIBUTE_VALUE)
        assert part[:HEADER_SIZE] == bytes((message_id, index, len(parts)))
    # Every fragment but the last is full, so no fragment is wasted.
    assert all(len(p) == capacity + HEADER_SIZE for p in parts[:-1])
    assert b"".join(p[HEADER_SIZE:] for p in parts) == message


def test_minimum_mtu_layout():
    parts = fragment(bytes(range(40)), 23, 9)
    assert parts == [
        b"\x09\x00\x03" + bytes(range(0, 17)),
        b"\x09\x01\x03" + bytes(range(17, 34)),
        b"\x09\x02\x03" + bytes(range(34, 40)),
    ]


def test_fragment_rejects_what_cannot_be_carried():
    with pytest.raises(FrameError, match="mtu"):
        fragment(b"x", 22, 0)
    with pytest.raises(FrameError, match="mtu"):
        fragment(b"x", "23", 0)
    with pytest.raises(FrameError, match="message id"):
        fragment(b"x", 23, 256)
    with pytest.raises(FrameError, match="message id"):
        fragment(b"x", 23, -1)
    with pytest.raises(FrameError, match="not bytes"):
        fragment("x", 23, 0)
    with pytest.raises(FrameError, match="fragments"):
        fragment(b"x" * (17 * 255 + 1), 23, 0)
    assert len(fragment(b"x" * (17 * 255), 23, 0)) == 255
    # Above 515 the 512-byte attribute limit, not the MTU, sets the size.
    assert fragment_capacity(517) == fragment_capacity(5000) == 509


def test_empty_message_is_one_header_only_fragment():
    assert fragment(b"", 23, 4) == [b"\x04\x00\x01"]
    assert Reassembler().add(b"\x04\x00\x01", 0.0) == b""


# -- Reassembler: normal and disordered delivery --------------------------------------


@given(sized_binary(0, 3000), mtus, st.integers(0, 255), st.randoms(use_true_random=False))
def test_round_trip_in_any_order_with_duplicates(message, mtu, message_id, rnd):
    if len(message) > fragment_capacity(mtu) * MAX_FRAGMENTS:
        return
    parts = fragment(message, mtu, message_id)
    delivery = parts + [rnd.choice(parts) for _ in range(rnd.randint(0, len(parts)))]
    rnd.shuffle(delivery)
    reassembler = Reassembler()
    assert _feed_all(reassembler, delivery) == [message]
    assert reassembler.take_errors() == []
    assert reassembler.messages_ok == 1
    assert reassembler.fragments_duplicate == len(delivery) - len(parts)
    assert reassembler.pending_count == 0


@given(
    st.lists(sized_binary(0, 600), min_size=1, max_size=4),
    st.integers(MIN_ATT_MTU, 60),
    st.integers(0, 255),
    st.randoms(use_true_random=False),
)
def test_interleaved_messages_up_to_max_pending_all_arrive_once(messages, mtu, first_id, rnd):
    # Up to max_pending messages may be in flight at once (e.g. an alarm overtaking a batch).
    by_id = {(first_id + i) % 256: m for i, m in enumerate(messages)}
    delivery = [f for mid, m in by_id.items() for f in fragment(m, mtu, mid)]
    delivery += [rnd.choice(delivery) for _ in range(rnd.randint(0, 10))]
    rnd.shuffle(delivery)
    reassembler = Reassembler(max_pending=4)
    out = _feed_all(reassembler, delivery)
    assert sorted(out) == sorted(messages)
    assert reassembler.take_errors() == []


def test_whole_message_resent_after_completion_is_ignored():
    reassembler = Reassembler()
    parts = fragment(b"a" * 50, 23, 3)
    assert _feed_all(reassembler, parts) == [b"a" * 50]
    assert _feed_all(reassembler, parts, now=1.0) == []
    assert reassembler.add(b"\x08\x00\x01single", 1.0) == b"single"
    assert reassembler.add(b"\x08\x00\x01single", 1.5) is None
    assert reassembler.fragments_duplicate == len(parts) + 1
    assert reassembler.messages_ok == 2
    assert reassembler.take_errors() == []


def test_reused_id_with_new_content_after_completion_is_delivered():
    reassembler = Reassembler()
    assert _feed_all(reassembler, fragment(b"first message!" * 3, 23, 7)) == [b"first message!" * 3]
    assert _feed_all(reassembler, fragment(b"second message" * 3, 23, 7)) == [b"second message" * 3]
    assert reassembler.add(b"\x07\x00\x01new", 0.0) == b"new"


def test_duplicate_record_expires_with_the_timeout():
    reassembler = Reassembler(timeout_s=5.0)
    assert reassembler.add(b"\x01\x00\x01x", 0.0) == b"x"
    assert reassembler.add(b"\x01\x00\x01x", 5.0) is None
    # After the timeout the same bytes are a new message (the id may have come round).
    assert reassembler.add(b"\x01\x00\x01x", 5.5) == b"x"


# -- Reassembler: loss, interruption, conflicts -----------------------------------------


def test_new_message_interrupts_when_pending_table_is_full():
    reassembler = Reassembler(max_pending=1)
    old = fragment(b"o" * 60, 23, 1)
    new = fragment(b"n" * 60, 23, 2)
    assert _feed_all(reassembler, old[:2] + new) == [b"n" * 60]
    assert reassembler.take_errors() == [
        "interrupted: message 1 had 2 of 4 fragments when message 2 began"
    ]
    assert reassembler.messages_dropped == 1
    assert reassembler.bytes_discarded == 34


def test_oldest_partial_is_evicted_beyond_max_pending():
    reassembler = Reassembler(max_pending=4)
    for mid in range(5):
        assert reassembler.add(fragment(b"z" * 40, 23, mid)[0], float(mid)) is None
    assert reassembler.pending_count == 4
    assert reassembler.take_errors() == [
        "interrupted: message 0 had 1 of 3 fragments when message 4 began"
    ]


def test_single_fragment_message_never_evicts_a_partial():
    reassembler = Reassembler(max_pending=1)
    big = fragment(b"b" * 40, 23, 1)
    assert reassembler.add(big[0], 0.0) is None
    assert reassembler.add(b"\x02\x00\x01alarm", 0.1) == b"alarm"
    assert _feed_all(reassembler, big[1:], 0.2) == [b"b" * 40]
    assert reassembler.take_errors() == []


def test_missing_fragment_times_out_using_caller_time():
    reassembler = Reassembler(timeout_s=5.0)
    parts = fragment(b"m" * 60, 23, 5)
    reassembler.add(parts[0], 10.0)
    reassembler.add(parts[1], 11.0)
    reassembler.expire(16.0)  # 5.0 s after the last progress: not yet
    assert reassembler.pending_count == 1
    reassembler.expire(16.01)
    assert reassembler.pending_count == 0
    assert reassembler.take_errors() == ["timeout: message 5 had 2 of 4 fragments"]
    assert reassembler.messages_dropped == 1
    # The stragglers start a fresh partial that times out in turn; nothing is delivered.
    assert _feed_all(reassembler, parts[2:], 17.0) == []
    reassembler.add(b"\x06\x00\x01x", 30.0)
    assert reassembler.take_errors() == ["timeout: message 5 had 2 of 4 fragments"]


def test_add_expires_stale_partials_before_storing():
    reassembler = Reassembler(timeout_s=1.0)
    parts = fragment(b"q" * 40, 23, 9)
    reassembler.add(parts[0], 0.0)
    assert _feed_all(reassembler, parts[1:], 2.0) == []
    assert reassembler.take_errors() == ["timeout: message 9 had 1 of 3 fragments"]


def test_count_change_for_a_pending_id_drops_the_old_partial():
    reassembler = Reassembler()
    reassembler.add(fragment(b"c" * 40, 23, 4)[0], 0.0)
    assert _feed_all(reassembler, fragment(b"d" * 20, 23, 4)) == [b"d" * 20]
    assert reassembler.take_errors() == ["conflict: message 4 count changed from 3 to 2"]


def test_different_bytes_for_a_received_index_restart_the_message():
    reassembler = Reassembler()
    first = fragment(b"e" * 40, 23, 4)
    second = fragment(b"f" * 40, 23, 4)
    reassembler.add(first[0], 0.0)
    assert _feed_all(reassembler, second) == [b"f" * 40]
    assert reassembler.take_errors() == [
        "conflict: message 4 fragment 0 differs from an earlier copy"
    ]


def test_oversized_message_is_dropped_and_its_rest_discarded_quietly():
    reassembler = Reassembler(max_message=100)
    parts = fragment(b"o" * 150, 23, 1)
    assert _feed_all(reassembler, parts) == []
    assert reassembler.take_errors() == ["oversized: message 1 exceeds 100 bytes"]
    assert reassembler.messages_dropped == 1
    assert reassembler.bytes_discarded == 150
    assert reassembler.pending_bytes == 0
    # The rejected entry expires silently; a later message with that id is fine.
    assert _feed_all(reassembler, fragment(b"k" * 30, 23, 1), 10.0) == [b"k" * 30]
    assert reassembler.take_errors() == []
    assert reassembler.add(b"\x02\x00\x01" + b"s" * 101, 10.0) is None
    assert reassembler.take_errors() == ["oversized: message 2 exceeds 100 bytes"]


@pytest.mark.parametrize(
    "bad,reason",
    [
        (b"", "malformed: 0 bytes, shorter than the header"),
        (b"\x01\x00", "malformed: 2 bytes, shorter than the header"),
        (b"\x01\x00\x00data", "malformed: message 1 has fragment count 0"),
        (b"\x01\x03\x03data", "malformed: message 1 fragment index 3 >= count 3"),
        ("\x01\x00\x01", "malformed: fragment is not bytes"),
        (None, "malformed: fragment is not bytes"),
    ],
)
def test_malformed_fragments_are_counted_with_a_reason(bad, reason):
    reassembler = Reassembler()
    assert reassembler.add(bad, 0.0) is None
    assert reassembler.take_errors() == [reason]
    assert reassembler.fragments_bad == 1


def test_reset_reports_partials_and_forgets_everything():
    reassembler = Reassembler()
    reassembler.add(fragment(b"r" * 40, 23, 1)[0], 0.0)
    assert reassembler.add(b"\x02\x00\x01x", 0.0) == b"x"
    reassembler.reset()
    assert reassembler.pending_count == 0
    assert reassembler.take_errors() == ["reset: message 1 had 1 of 3 fragments"]
    assert reassembler.add(b"\x02\x00\x01x", 0.0) == b"x"  # no duplicate memory either


def test_error_list_is_bounded():
    reassembler = Reassembler()
    for _ in range(50):
        reassembler.add(b"\x00", 0.0)
    assert len(reassembler.errors) == MAX_KEPT_ERRORS
    assert reassembler.errors_overflow == 50 - MAX_KEPT_ERRORS
    assert reassembler.fragments_bad == 50


# -- Reassembler: hostile input ----------------------------------------------------------

hostile_fragment = st.one_of(
    sized_binary(0, 80),
    st.tuples(st.integers(0, 7), st.integers(0, 12), st.integers(0, 12), sized_binary(0, 70)).map(
        lambda t: bytes(t[:3]) + t[3]
    ),
)


@given(st.lists(st.tuples(hostile_fragment, st.floats(0, 30)), min_size=20, max_size=300))
def test_hostile_fragments_never_raise_and_memory_stays_bounded(stream):
    reassembler = Reassembler(max_message=200, max_pending=3, timeout_s=2.0)
    now = 0.0
    for data, step in stream:
        now += step / 10
        message = reassembler.add(data, now)
        assert message is None or len(message) <= 200
        assert reassembler.pending_count <= 3
        assert reassembler.pending_bytes <= 3 * 200
        assert len(reassembler._completed) <= 3
        assert len(reassembler.errors) <= MAX_KEPT_ERRORS


@given(st.integers(0, 255), sized_binary(1, 400), st.randoms(use_true_random=False))
def test_valid_message_survives_interleaved_malformed_fragments(message_id, message, rnd):
    parts = fragment(message, 23, message_id)
    junk = [b"", b"\x01", b"\x05\x00\x00", b"\x05\x09\x02zz", b"\xff\xff\xff"]
    delivery = parts + [rnd.choice(junk) for _ in range(20)]
    rnd.shuffle(delivery)
    reassembler = Reassembler()
    assert _feed_all(reassembler, delivery) == [message]
    assert reassembler.fragments_bad == 20


def test_random_messages_many_ids_sequential_sender():
    # A long sequential session: ids roll over 255 -> 0 and every message arrives once.
    rnd = random.Random(7)
    reassembler = Reassembler()
    now = 0.0
    for n in range(600):
        message = rnd.randbytes(rnd.randint(0, 300))
        parts = fragment(message, rnd.choice([23, 27, 185, 247, 517]), n % 256)
        now += 0.01
        assert _feed_all(reassembler, parts, now) == [message]
    assert reassembler.messages_ok == 600
    assert reassembler.take_errors() == []
