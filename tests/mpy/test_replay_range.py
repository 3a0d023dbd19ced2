# SequenceTracker.record_range and seen_through on the MicroPython unix port: the same
# state as per-seq recording, the same answer as stepping classify.
from protocol.errors import ValidationError
from protocol.replay import DUPLICATE, SequenceTracker


def _per_seq(tracker, first, last):
    for seq in range(first, last + 1):
        tracker.record(seq)


def _pair(window, max_runs, start=None):
    return (SequenceTracker(window, start=start, max_runs=max_runs),
            SequenceTracker(window, start=start, max_runs=max_runs))


def test_batches_past_the_window_match_per_seq():
    ranged, model = _pair(64, 4)
    for batch in range(100):
        ranged.record_range(batch * 10, batch * 10 + 9)
        _per_seq(model, batch * 10, batch * 10 + 9)
    assert ranged.to_state() == model.to_state()
    assert ranged.runs == [[0, 999 - 64]]


def test_jumps_overlaps_and_long_runs_match_per_seq():
    ranged, model = _pair(16, 2, start=3)
    for first, last in ((3, 7), (12, 14), (9, 11), (40, 90), (85, 95), (200, 201), (2, 5)):
        ranged.record_range(first, last)
        _per_seq(model, first, last)
        assert ranged.to_state() == model.to_state()


def test_seen_through_matches_classify():
    tracker = SequenceTracker(16, max_runs=4)
    for first, last in ((0, 20), (22, 30), (60, 70)):
        _per_seq(tracker, first, last)
    for start in range(0, 75):
        seq = start
        while seq <= tracker.high and tracker.classify(seq) == DUPLICATE:
            seq += 1
        assert tracker.seen_through(start) == seq - 1


def test_bad_bounds_are_refused():
    tracker = SequenceTracker(16)
    for first, last in ((-1, 3), (3, 2)):
        try:
            tracker.record_range(first, last)
        except ValidationError:
            pass
        else:
            raise AssertionError("accepted %r..%r" % (first, last))
    assert tracker.high is None
