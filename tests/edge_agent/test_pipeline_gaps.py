"""The verifier's gap check takes a shortcut (no scan of the pending seqs) whenever the seq
just before a batch is known; it must report exactly what the full computation reports."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.pipeline.sessions import DeviceSession
from edge_agent.pipeline.verifier import Gap, _gaps_before
from protocol import replay


def reference(sess: DeviceSession, first: int) -> tuple[Gap, ...]:
    top = sess.highest()
    if top is None or first <= top + 1:
        return ()
    return (Gap(sess.device_id, sess.kid, top + 1, first - 1),)


@given(durable=st.lists(st.integers(0, 300), max_size=40),
       pending=st.sets(st.integers(0, 300), max_size=40),
       first=st.integers(0, 320))
def test_the_shortcut_reports_what_the_full_scan_reports(durable: list[int], pending: set[int],
                                                         first: int) -> None:
    tracker = replay.SequenceTracker()
    for seq in durable:
        tracker.record(seq)
    sess = DeviceSession(b"k" * 8, "ox-1", 0.0, b"d" * 32, b"g" * 32, None,  # type: ignore[arg-type]
                         tracker, pending=set(pending))
    assert _gaps_before(sess, first) == reference(sess, first)
