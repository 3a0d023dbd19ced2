"""SequenceTracker history below the window (max_runs > 0): exact answers for seqs far behind
the live traffic, bounded memory, and persistence; properties against a set model."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import cbor
from protocol.errors import ValidationError
from protocol.replay import DUPLICATE, NEW, NEW_LATE, TOO_OLD, SequenceTracker


def test_outbox_far_behind_live_traffic_is_new_late_and_its_repeat_a_duplicate() -> None:
    t = SequenceTracker(window=4096, max_runs=64)
    for seq in range(5000, 15000):  # live traffic first
        assert t.record(seq) == NEW
    assert t.lost == 0  # nothing before the first seq counts as lost
    for seq in range(0, 5000):  # the outbox, 10,000 seqs behind
        assert t.record(seq) == NEW_LATE, seq
    assert t.record(0) == DUPLICATE and t.record(4999) == DUPLICATE
    assert t.record(5000) == DUPLICATE  # fell out of the window seen: still known
    assert t.runs == [[0, 14999 - 4096]]  # one run: memory stays tiny


def test_without_history_everything_below_the_window_stays_too_old() -> None:
    t = SequenceTracker(window=8)
    t.record(0)
    t.record(20)
    assert t.record(5) == TOO_OLD and t.record(0) == TOO_OLD
    assert "runs" not in t.to_state()


def test_late_arrival_below_the_window_is_no_longer_lost() -> None:
    t = SequenceTracker(window=8, max_runs=4)
    t.record(0)
    t.record(20)
    assert t.lost == 12
    assert t.record(5) == NEW_LATE and t.lost == 11
    assert t.record(5) == DUPLICATE and t.lost == 11
    assert t.runs == [[0, 0], [5, 5]]


def test_floor_still_refuses_seqs_before_the_session_start() -> None:
    t = SequenceTracker(window=8, start=100, max_runs=4)
    t.record(130)
    assert t.record(99) == TOO_OLD
    assert t.record(100) == NEW_LATE and t.record(100) == DUPLICATE


def test_run_overflow_raises_the_horizon_and_stays_safe() -> None:
    t = SequenceTracker(window=8, max_runs=2)
    for seq in (0, 2, 4, 6, 8, 40):  # 0, 2, 4, 6, 8 leave the window as five runs
        t.record(seq)
    assert len(t.runs) == 2 and t.runs == [[6, 6], [8, 8]]
    assert t.horizon == 5
    assert t.record(0) == TOO_OLD  # forgotten: refused, never accepted twice
    assert t.record(3) == TOO_OLD  # unknown below the horizon: refused as before
    assert t.record(5) == NEW_LATE  # known missing above the horizon
    assert t.record(8) == DUPLICATE


class HistoryModel:
    """Reference: every seq ever accepted is remembered (a plain set)."""

    def __init__(self, window: int, start: int | None) -> None:
        self.window, self.floor, self.seen = window, start, set()
        self.high = None if start is None else start - 1

    def record(self, seq: int) -> str:
        if self.high is None or seq > self.high:
            self.high = seq
            self.seen.add(seq)
            return NEW
        if self.floor is not None and seq < self.floor:
            return TOO_OLD
        if seq in self.seen:
            return DUPLICATE
        self.seen.add(seq)
        return NEW_LATE


@given(st.sampled_from([8, 16, 64]), st.one_of(st.none(), st.integers(0, 40)),
       st.lists(st.integers(0, 400), max_size=150))
def test_unbounded_history_matches_the_set_model(window, start, seqs) -> None:
    t = SequenceTracker(window=window, start=start, max_runs=4096)
    model = HistoryModel(window, start)
    for seq in seqs:
        assert t.record(seq) == model.record(seq), seq
    assert len(t.runs) <= 4096


@given(st.sampled_from([8, 16]), st.integers(1, 4), st.lists(st.integers(0, 300), max_size=150))
def test_bounded_history_is_exact_above_the_horizon_and_never_accepts_twice(
        window, max_runs, seqs) -> None:
    t = SequenceTracker(window=window, max_runs=max_runs)
    model = HistoryModel(window, None)
    accepted: set[int] = set()
    for seq in seqs:
        horizon = t.horizon
        verdict = t.record(seq)
        expected = model.record(seq)
        if verdict in (NEW, NEW_LATE):
            assert seq not in accepted
            accepted.add(seq)
        if seq >= horizon:
            assert verdict == expected, seq
        else:
            assert verdict == TOO_OLD
            model.seen.add(seq)  # a refused seq must not count as accepted by the model
        assert len(t.runs) <= max_runs


@given(st.lists(st.integers(0, 3000), max_size=80), st.lists(st.integers(0, 3000), max_size=40))
def test_history_survives_the_state_round_trip_through_cbor(before, after) -> None:
    t = SequenceTracker(window=64, max_runs=8)
    for seq in before:
        t.record(seq)
    state = cbor.loads(cbor.dumps(t.to_state()))
    restored = SequenceTracker.from_state(state)
    assert restored.to_state() == t.to_state()
    for seq in after:
        assert restored.record(seq) == t.record(seq)
    assert restored.to_state() == t.to_state()


def test_state_without_history_keys_loads_as_no_history() -> None:
    t = SequenceTracker(window=8)
    t.record(3)
    assert SequenceTracker.from_state(t.to_state()).max_runs == 0


@pytest.mark.parametrize("change", [
    {"runs": [[1, 2], [3, 4]]},           # touching: would have been merged
    {"runs": [[5, 6], [1, 2]]},           # unsorted
    {"runs": [[1, 2]], "horizon": 2},     # below the horizon
    {"runs": [[1, 95]]},                  # reaches into the window
    {"runs": [[1, 2], [4, 5], [7, 8]]},   # more than max_runs
    {"runs": [[2, 1]]},
    {"runs": [[1]]},
    {"runs": "x"},
    {"max_runs": -1},
    {"max_runs": 5000},
    {"horizon": -1},
])
def test_from_state_refuses_inconsistent_history(change) -> None:
    t = SequenceTracker(window=8, max_runs=2)
    t.record(100)
    state = t.to_state()
    state.update(change)
    with pytest.raises(ValidationError):
        SequenceTracker.from_state(state)
