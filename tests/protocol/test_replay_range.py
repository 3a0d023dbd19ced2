"""SequenceTracker.record_range and seen_through against the one-seq-at-a-time model:
record_range(first, last) leaves exactly the state per-seq `record` calls leave (bitmap,
lost count, runs, horizon, base, high), on every path (the usual run above everything, jumps
over unseen seqs, overlaps, long runs, trackers with and without history); seen_through
answers what stepping `classify` until a seq is not "duplicate" answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ValidationError
from protocol.replay import DUPLICATE, MAX_SEQ, SequenceTracker

windows = st.sampled_from([8, 16, 64])
starts = st.one_of(st.none(), st.integers(0, 40))
histories = st.integers(0, 4)
# (first, length) steps: short runs mostly, sometimes longer than the window
steps = st.lists(st.tuples(st.integers(0, 600), st.integers(1, 80)), max_size=30)


def per_seq(tracker: SequenceTracker, first: int, last: int) -> None:
    for seq in range(first, last + 1):
        tracker.record(seq)


def seen_through_model(tracker: SequenceTracker, start: int) -> int:
    seq = start
    while tracker.high is not None and seq <= tracker.high and \
            tracker.classify(seq) == DUPLICATE:
        seq += 1
    return seq - 1


@settings(deadline=None)
@given(windows, starts, histories, steps, st.booleans())
def test_record_range_leaves_the_state_per_seq_recording_leaves(
        window, start, max_runs, runs, contiguous) -> None:
    ranged = SequenceTracker(window, start=start, max_runs=max_runs)
    model = SequenceTracker(window, start=start, max_runs=max_runs)
    next_first = 0
    for first, length in runs:
        if contiguous:  # the agent's case: batch after batch, sometimes a gap
            first = next_first + first % 3
        last = first + length - 1
        ranged.record_range(first, last)
        per_seq(model, first, last)
        assert ranged.to_state() == model.to_state()
        next_first = last + 1


@settings(deadline=None)
@given(windows, starts, histories, steps, st.lists(st.integers(0, 700), max_size=20))
def test_seen_through_matches_stepping_classify(window, start, max_runs, runs, probes) -> None:
    tracker = SequenceTracker(window, start=start, max_runs=max_runs)
    for first, length in runs:
        per_seq(tracker, first, first + length - 1)
        for probe in probes:
            assert tracker.seen_through(probe) == seen_through_model(tracker, probe)


def test_the_usual_batch_after_batch_case() -> None:
    ranged = SequenceTracker(64, max_runs=4)
    model = SequenceTracker(64, max_runs=4)
    for batch in range(100):  # far past the window: seqs leave it as runs
        ranged.record_range(batch * 10, batch * 10 + 9)
        per_seq(model, batch * 10, batch * 10 + 9)
    assert ranged.to_state() == model.to_state()
    assert ranged.runs == [[0, 999 - 64]] and ranged.lost == 0
    assert ranged.seen_through(0) == 999


def test_seen_through_stops_at_a_gap_and_below_the_floor() -> None:
    tracker = SequenceTracker(16, start=5)
    per_seq(tracker, 5, 9)
    per_seq(tracker, 11, 12)
    assert tracker.seen_through(5) == 9 and tracker.seen_through(11) == 12
    assert tracker.seen_through(4) == 3  # below the session's first seq: too old
    assert tracker.seen_through(13) == 12  # above everything: nothing
    assert SequenceTracker(16).seen_through(0) == -1


@pytest.mark.parametrize("first, last", [(-1, 3), (3, 2), (0, MAX_SEQ + 1), (1.0, 2),
                                         (True, 2)])
def test_record_range_refuses_bad_bounds(first, last) -> None:
    tracker = SequenceTracker(16)
    with pytest.raises(ValidationError):
        tracker.record_range(first, last)
    assert tracker.high is None


def test_seen_through_refuses_a_bad_start() -> None:
    with pytest.raises(ValidationError):
        SequenceTracker(16).seen_through(-1)
