"""SequenceTracker: classification, gaps, loss, persistence; properties against a set model."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import replay
from protocol.errors import ValidationError
from protocol.replay import DUPLICATE, NEW, NEW_LATE, TOO_OLD, SequenceTracker


def test_basic_classification_and_gaps() -> None:
    t = SequenceTracker()
    assert [t.record(s) for s in (1, 2, 5)] == [NEW, NEW, NEW]
    assert t.missing() == [(3, 4)]
    assert t.record(2) == DUPLICATE
    assert t.record(3) == NEW_LATE
    assert t.missing() == [(4, 4)] and t.missing_count() == 1
    assert t.record(3) == DUPLICATE
    assert t.record(0) == NEW_LATE  # below the first seen, still in the window
    assert t.missing() == [(4, 4)]
    assert t.classify(4) == NEW_LATE and t.missing() == [(4, 4)]  # classify changes nothing


def test_start_sets_a_hard_floor_and_counts_gaps_from_it() -> None:
    t = SequenceTracker(start=100)
    assert t.missing() == []
    assert t.record(99) == TOO_OLD
    assert t.record(103) == NEW
    assert t.missing() == [(100, 102)]
    assert t.record(100) == NEW_LATE


def test_window_slides_and_counts_lost_seqs() -> None:
    t = SequenceTracker(window=8)
    t.record(0)
    assert t.record(20) == NEW
    assert t.lost == 12  # 1..12 fell below the window [13, 20] unseen
    assert t.missing() == [(13, 19)]
    assert t.record(12) == TOO_OLD
    assert t.record(13) == NEW_LATE
    t.record(21)  # 13 leaves seen, nothing lost
    assert t.lost == 12
    t.record(22)  # 14 leaves unseen
    assert t.lost == 13
    assert t.record(14) == TOO_OLD


def test_extreme_seqs() -> None:
    t = SequenceTracker()
    top = 2**64 - 1
    assert t.record(top - 1) == NEW and t.record(top) == NEW and t.record(top) == DUPLICATE
    for bad in (-1, 2**64, True, 1.0, "1", None):
        with pytest.raises(ValidationError):
            t.record(bad)


def test_invalid_windows() -> None:
    for window in (0, 7, 12, 65544, 1.5, True):
        with pytest.raises(ValidationError):
            SequenceTracker(window=window)


@given(st.lists(st.integers(0, 1023), min_size=1, max_size=300), st.randoms())
def test_any_order_with_duplicates_yields_each_seq_new_once(seqs, rnd) -> None:
    arrivals = seqs + rnd.sample(seqs, len(seqs) // 2)
    rnd.shuffle(arrivals)
    t = SequenceTracker(window=1024)
    firsts = {}
    for seq in arrivals:
        verdict = t.record(seq)
        assert verdict != TOO_OLD
        if verdict in (NEW, NEW_LATE):
            assert seq not in firsts
            firsts[seq] = verdict
        else:
            assert verdict == DUPLICATE and seq in firsts
    assert set(firsts) == set(seqs)


class Model:
    """Reference semantics with a plain set."""

    def __init__(self, window, start):
        self.window, self.floor, self.seen, self.high = window, start, set(), None
        self.base = start
        if start is not None:
            self.high = start - 1

    def record(self, seq):
        if self.high is None or seq > self.high:
            if self.high is None:
                self.base = seq
            self.high = seq
            self.seen.add(seq)
            return NEW
        if (self.floor is not None and seq < self.floor) or seq <= self.high - self.window:
            return TOO_OLD
        if seq in self.seen:
            return DUPLICATE
        self.seen.add(seq)
        self.base = min(self.base, seq)
        return NEW_LATE

    def lost(self):
        if self.high is None:
            return 0
        below = range(self.base, self.high - self.window + 1)
        return len([s for s in below if s not in self.seen])

    def missing(self):
        if self.high is None:
            return []
        lo = max(self.base, self.high - self.window + 1)
        return [s for s in range(lo, self.high + 1) if s not in self.seen]


def _expand(runs):
    return [s for first, last in runs for s in range(first, last + 1)]


@given(st.sampled_from([8, 16, 64]), st.one_of(st.none(), st.integers(0, 40)),
       st.lists(st.integers(0, 200), max_size=120))
def test_tracker_matches_set_model(window, start, seqs) -> None:
    t = SequenceTracker(window=window, start=start)
    model = Model(window, start)
    for seq in seqs:
        assert t.record(seq) == model.record(seq), seq
        assert t.lost == model.lost()
    assert _expand(t.missing(limit=10_000)) == model.missing()


@given(st.lists(st.integers(0, 3000), max_size=80), st.lists(st.integers(0, 3000), max_size=40))
def test_state_round_trip_preserves_behaviour(before, after) -> None:
    t = SequenceTracker()
    for seq in before:
        t.record(seq)
    state = t.to_state()
    assert len(state["bits"]) == 128
    restored = SequenceTracker.from_state(state)
    assert restored.to_state() == state
    for seq in after:
        assert restored.record(seq) == t.record(seq)
    assert restored.to_state() == t.to_state()


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"window": 12},
        {"bits": b"\x00" * 3},
        {"lost": -1},
        {"high": None},
        {"base": None},
        {"high": 3, "base": 10},
        {"floor": 50, "base": 40, "high": 60},
    ],
)
def test_from_state_refuses_inconsistent_state(change) -> None:
    t = SequenceTracker(start=40)
    t.record(45)
    state = t.to_state()
    state.update(change)
    with pytest.raises(ValidationError):
        SequenceTracker.from_state(state)


def test_from_state_refuses_non_dict() -> None:
    with pytest.raises(ValidationError):
        SequenceTracker.from_state([1])
    assert replay.SequenceTracker.from_state(SequenceTracker().to_state()).high is None
