"""The verifier's per-batch shortcuts against the per-seq / per-reading code they replace:
`DeviceSession.classify_batch` (all-new batches), `remember_tags` (no move for new keys)
and `rule_readings` (one `patient_at` per second of the batch)."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.alarms.evaluator import Reading
from edge_agent.pipeline import MemoryDirectory
from edge_agent.pipeline.sessions import DeviceSession
from edge_agent.pipeline.verifier import quality_at, rule_readings, signal_quality_by_time
from protocol import replay, senml
from protocol.errors import ValidationError


def session(durable: list[int], pending: set[int]) -> DeviceSession:
    tracker = replay.SequenceTracker(64, max_runs=4)
    for seq in durable:
        tracker.record(seq)
    return DeviceSession(b"k" * 8, "ox-1", 0.0, b"d" * 32, b"g" * 32, None,  # type: ignore[arg-type]
                         tracker, pending=set(pending))


@settings(max_examples=300, deadline=None)
@given(durable=st.lists(st.integers(0, 400), max_size=60),
       pending=st.sets(st.integers(0, 400), max_size=20),
       first=st.integers(0, 420), count=st.integers(1, 12))
def test_classify_batch_equals_classify_per_seq(durable: list[int], pending: set[int],
                                                first: int, count: int) -> None:
    sess = session(durable, pending)
    seqs = list(range(first, first + count))
    assert sess.classify_batch(seqs) == [sess.classify(seq) for seq in seqs]


def test_classify_batch_shortcut_is_all_new_and_checks_like_classify() -> None:
    sess = session([1, 2, 3], {5})
    assert sess.classify_batch([6, 7]) == [replay.NEW, replay.NEW]
    assert sess.classify_batch([4, 5]) == [replay.NEW, "in-flight"]
    assert sess.classify_batch([]) == []
    for bad in ([True, 9], [2**64]):  # not ints / out of range: classify's error, not NEW
        try:
            expected: object = [sess.classify(seq) for seq in bad]
        except Exception as exc:  # noqa: BLE001 - compared below
            expected = (type(exc), str(exc))
        try:
            got: object = sess.classify_batch(bad)
        except Exception as exc:  # noqa: BLE001
            got = (type(exc), str(exc))
        assert got == expected


def remember_tags_reference(tags: OrderedDict, tags_from: int | None, seqs: list[int],
                            tag: bytes, limit: int) -> int | None:
    """The previous remember_tags, step by step."""
    for seq in seqs:
        tags[seq] = tag
        tags.move_to_end(seq)
        if tags_from is None or seq < tags_from:
            tags_from = seq
    while len(tags) > limit:
        dropped, _ = tags.popitem(last=False)
        tags_from = max(tags_from or 0, dropped + 1)
    return tags_from


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(st.lists(st.integers(0, 50), max_size=8), max_size=12),
       limit=st.integers(1, 20))
def test_remember_tags_equals_the_previous_code(batches: list[list[int]], limit: int) -> None:
    sess = session([], set())
    tags: OrderedDict[int, bytes] = OrderedDict()
    tags_from = None
    for index, seqs in enumerate(batches):
        tag = bytes((index,)) * 4
        sess.remember_tags(seqs, tag, limit)
        tags_from = remember_tags_reference(tags, tags_from, seqs, tag, limit)
        assert list(sess.tags.items()) == list(tags.items())
        assert sess.tags_from == tags_from


class CountingDirectory(MemoryDirectory):
    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.asked: list[int] = []

    def patient_at(self, device_id: str, at: int) -> str | None:
        self.asked.append(at)
        return super().patient_at(device_id, at)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["hr", "spo2", "sq", "pr"]), st.integers(0, 100),
                          st.floats(1_700_000_000, 1_700_000_040)), min_size=1, max_size=12),
       st.integers(1_700_000_000, 1_700_000_040))
def test_rule_readings_asks_once_per_second_and_equals_per_reading(
        items: list[tuple[str, int, float]], bound_from: int) -> None:
    from edge_agent.pipeline import GatewayKeys
    directory = CountingDirectory(GatewayKeys("gw-1", bytes(32), bytes(range(32))))
    directory.add_device("ox-1", None)
    directory.bind("ox-1", "P-1", since=bound_from)
    readings = [senml.Reading("urn:dev:vb:ox-1:" + q, q, "%" if q != "hr" else "beat/min",
                              value, time, i) for i, (q, value, time) in enumerate(items)]
    got = rule_readings(directory, "ox-1", readings)
    assert sorted(directory.asked) == sorted({int(r.time) for r in readings})
    assert got == rule_readings_reference(directory, "ox-1", readings)


def rule_readings_reference(directory: MemoryDirectory, device_id: str,
                            readings: list[senml.Reading]) -> tuple[list, list]:
    """The previous rule_readings: patient_at per reading."""
    out, flags = [], []
    quality = signal_quality_by_time(readings)
    for reading in readings:
        owner = MemoryDirectory.patient_at(directory, device_id, int(reading.time))
        if owner is None:
            flags.append("unbound")
            continue
        try:
            out.append(Reading(patient=owner, device=device_id, quantity=reading.quantity,
                               value=reading.value, time=float(reading.time), unit=reading.unit,
                               manual=False,
                               signal_quality=quality_at(quality, float(reading.time))))
        except ValidationError:
            flags.append("not-evaluable")
    return out, flags
