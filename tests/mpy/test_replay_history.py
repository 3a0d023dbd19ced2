# SequenceTracker history below the window, on the MicroPython unix port.
from protocol import cbor
from protocol.errors import ValidationError
from protocol.replay import DUPLICATE, NEW, NEW_LATE, TOO_OLD, SequenceTracker


def test_far_behind_outbox_is_new_late_then_duplicate():
    t = SequenceTracker(window=64, max_runs=8)
    for seq in range(300, 600):
        assert t.record(seq) == NEW
    for seq in range(0, 300):
        assert t.record(seq) == NEW_LATE
    assert t.record(0) == DUPLICATE and t.record(300) == DUPLICATE
    assert t.runs == [[0, 599 - 64]]


def test_overflow_raises_the_horizon():
    t = SequenceTracker(window=8, max_runs=2)
    for seq in (0, 2, 4, 6, 8, 40):
        t.record(seq)
    assert t.horizon == 5 and t.runs == [[6, 6], [8, 8]]
    assert t.record(0) == TOO_OLD and t.record(5) == NEW_LATE and t.record(8) == DUPLICATE


def test_state_round_trip_and_refusal():
    t = SequenceTracker(window=8, max_runs=4)
    for seq in (0, 3, 30):
        t.record(seq)
    state = cbor.loads(cbor.dumps(t.to_state()))
    restored = SequenceTracker.from_state(state)
    assert restored.to_state() == t.to_state()
    assert restored.record(1) == NEW_LATE and restored.record(3) == DUPLICATE
    state["runs"] = [[5, 6], [1, 2]]
    try:
        SequenceTracker.from_state(state)
        raise AssertionError("unsorted runs accepted")
    except ValidationError:
        pass


def test_no_history_by_default():
    t = SequenceTracker(window=8)
    t.record(0)
    t.record(20)
    assert t.record(5) == TOO_OLD and "runs" not in t.to_state()
