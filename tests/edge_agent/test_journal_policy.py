"""The pure retention and disk-budget rules, over plain data (no database)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.journal import policy
from edge_agent.journal.policy import QuarantineInfo, RowInfo

DAY = 86400.0


def row(
    i: int,
    *,
    state: str = "stored",
    priority: int = 0,
    device: str | None = "d1",
    kind: str = "readings",
    at: float | None = None,
    size: int = 100,
) -> RowInfo:
    return RowInfo(i, device, kind, priority, state, float(i) if at is None else at, size)


def test_retention_needs_receipt_and_age() -> None:
    now = 1000 * DAY
    year = 365 * DAY
    assert policy.retention_elapsed("received", now - year, now, year)
    assert not policy.retention_elapsed("received", now - year + 1, now, year)
    assert not policy.retention_elapsed("sent", 0.0, now, year)
    assert not policy.retention_elapsed("stored", 0.0, now, year)
    with pytest.raises(ValueError):
        policy.retention_cutoff(now, 0)
    with pytest.raises(ValueError):
        policy.retention_cutoff(float("nan"), year)


def test_within_budget_deletes_nothing() -> None:
    plan = policy.plan_budget(
        1000, 1000, received=[row(1, state="received")], quarantine=[], unsent=[row(2)]
    )
    assert plan.actions == () and plan.need_bytes == 0 and plan.shortfall_bytes == 0


def test_need_goes_down_to_the_target_fraction() -> None:
    assert policy.bytes_to_free(1100, 1000, 0.9) == 200
    assert policy.bytes_to_free(1000, 1000, 0.9) == 0


def test_received_first_then_quarantine_then_thinning() -> None:
    received = [row(i, state="received", size=100) for i in range(1, 4)]
    evidence = [QuarantineInfo(10, 5.0, 100)]
    unsent = [row(i, size=100) for i in range(20, 32)]
    # need = 2000 - 900 = 1100: 300 from received, 100 from quarantine, 700 from thinning
    plan = policy.plan_budget(
        2000,
        1000,
        received=received,
        quarantine=evidence,
        unsent=unsent,
        keep_every=3,
        block_bytes=100,  # one message per block
    )
    steps = [a.step for a in plan.actions]
    assert steps == [policy.STEP_RECEIVED_EARLY, policy.STEP_QUARANTINE, policy.STEP_THINNED]
    assert plan.ids(policy.STEP_RECEIVED_EARLY) == (1, 2, 3)
    assert plan.ids(policy.STEP_QUARANTINE) == (10,)
    # keep 20, drop 21 22, keep 23, drop 24 25, keep 26, drop 27 28, keep 29, drop 30 (700 B)
    assert plan.ids(policy.STEP_THINNED) == (21, 22, 24, 25, 27, 28, 30)
    assert plan.shortfall_bytes == 0
    assert "NOT yet confirmed" in plan.actions[2].description


def test_stops_as_soon_as_enough_is_freed() -> None:
    received = [row(i, state="received", size=100) for i in range(1, 50)]
    plan = policy.plan_budget(1300, 1000, received=received, quarantine=[], unsent=[])
    assert plan.ids(policy.STEP_RECEIVED_EARLY) == (1, 2, 3, 4)  # need 400
    assert len(plan.actions) == 1


def test_thinning_drops_whole_blocks_of_consecutive_messages() -> None:
    # Three devices interleaved, 10 B each; blocks of 60 B = 6 messages = 2 per device.
    unsent = [row(i, device="abc"[i % 3], size=10) for i in range(30)]
    plan = policy.plan_budget(
        10_000, 1000, received=[], quarantine=[], unsent=unsent, keep_every=2, block_bytes=60
    )
    dropped = plan.ids(policy.STEP_THINNED)
    assert dropped == (*range(6, 12), *range(18, 24))  # blocks 1 and 3 of 0..4
    for device in "abc":  # every device keeps the same windows of time
        assert [r.id for r in unsent if r.device_id == device and r.id not in dropped]
    assert plan.shortfall_bytes > 0  # 10 000 bytes cannot come out of 300


def test_critical_and_alarms_are_never_candidates() -> None:
    rows = [
        row(i, priority=p, state=s)
        for i, (p, s) in enumerate(
            [(p, s) for p in (1, 2) for s in ("stored", "sent", "received")] * 5
        )
    ]
    plan = policy.plan_budget(10**9, 1, received=rows, quarantine=[], unsent=rows)
    assert plan.actions == ()
    assert plan.shortfall_bytes == plan.need_bytes


def test_keep_every_must_delete_something() -> None:
    with pytest.raises(ValueError):
        policy.plan_budget(2, 1, received=[], quarantine=[], unsent=[], keep_every=1)


def _thinnable(rows: list[RowInfo], keep_every: int, block_bytes: int) -> list[int]:
    """Independent model of thinning: unsent routine rows oldest first, cut into blocks of
    block_bytes; rows outside blocks 0, k, 2k... may go, in this order."""
    candidates = [r for r in rows if r.state in ("stored", "sent") and r.priority == 0]
    out = []
    block = filled = 0
    for r in candidates:
        if block % keep_every:
            out.append(r.id)
        filled += r.size
        if filled >= block_bytes:
            block, filled = block + 1, 0
    return out


_rows = st.lists(
    st.tuples(
        st.sampled_from(("stored", "sent", "received")),
        st.integers(0, 2),
        st.sampled_from(("d1", "d2", "d3", None)),
        st.sampled_from(("readings", "checkpoint", "alarm", "event")),
        st.integers(1, 5000),
    ),
    max_size=120,
)


@given(
    mix=_rows,
    quarantine_sizes=st.lists(st.integers(1, 3000), max_size=6),
    budget=st.integers(1, 5000),
    pressure=st.floats(0.0, 1.2),
    keep_every=st.integers(2, 6),
    block_bytes=st.integers(1, 20_000),
)
def test_budget_invariants_over_random_mixes(
    mix: list[tuple[str, int, str | None, str, int]],
    quarantine_sizes: list[int],
    budget: int,
    pressure: float,
    keep_every: int,
    block_bytes: int,
) -> None:
    rows = [
        RowInfo(i, device, kind, prio, state, float(i), size)
        for i, (state, prio, device, kind, size) in enumerate(mix)
    ]
    # Over budget by up to 1.2x what the policy may delete, so every step (and a shortfall)
    # gets exercised.
    deletable = sum(r.size for r in rows if r.priority == 0) + sum(quarantine_sizes)
    used = int(budget * 0.9) + int(deletable * pressure)
    by_id = {r.id: r for r in rows}
    evidence = [QuarantineInfo(1000 + i, float(i), s) for i, s in enumerate(quarantine_sizes)]
    # The store passes every row to both steps' iterables here, to prove the policy filters.
    plan = policy.plan_budget(
        used,
        budget,
        received=iter(rows),
        quarantine=iter(evidence),
        unsent=iter(rows),
        keep_every=keep_every,
        block_bytes=block_bytes,
    )
    need = policy.bytes_to_free(used, budget, 0.9)
    assert plan.need_bytes == need
    early = plan.ids(policy.STEP_RECEIVED_EARLY)
    thinned = plan.ids(policy.STEP_THINNED)
    dropped_evidence = plan.ids(policy.STEP_QUARANTINE)

    # Never a critical reading or an alarm, whatever the pressure.
    assert all(by_id[i].priority == 0 for i in early + thinned)
    # Each step only takes rows in its own states; nothing is taken twice.
    assert all(by_id[i].state == "received" for i in early)
    assert all(by_id[i].state in ("stored", "sent") for i in thinned)
    assert len(set(early + thinned)) == len(early) + len(thinned)

    if need == 0:
        assert plan.actions == ()
        return
    eligible_received = [r.id for r in rows if r.state == "received" and r.priority == 0]
    # Oldest first: the early deletions are a prefix of the eligible received rows.
    assert list(early) == eligible_received[: len(early)]
    assert list(dropped_evidence) == [q.id for q in evidence][: len(dropped_evidence)]
    early_bytes = sum(by_id[i].size for i in early)
    evidence_bytes = sum(q.size for q in evidence if q.id in dropped_evidence)
    # Later steps run only when the earlier ones could not cover the need.
    if dropped_evidence:
        assert early_bytes < need
        assert len(early) == len(eligible_received)
    if thinned:
        assert early_bytes + evidence_bytes < need
        assert len(dropped_evidence) == len(evidence)
    # Thinning takes the deletable blocks oldest first, without skipping any row.
    thinnable = _thinnable(rows, keep_every, block_bytes)
    assert list(thinned) == thinnable[: len(thinned)]
    # Freed estimate covers the need unless every allowed candidate is used up.
    assert plan.planned_bytes == early_bytes + evidence_bytes + sum(by_id[i].size for i in thinned)
    if plan.shortfall_bytes:
        assert plan.planned_bytes < need
        assert list(thinned) == thinnable
    else:
        assert plan.planned_bytes >= need
    # Every action can be raised as an alarm.
    for action in plan.actions:
        assert action.description.startswith("disk budget: ")
        assert action.ids


@given(
    mix=st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from(("d1", "d2", "d3")), st.integers(1, 400)),
        min_size=1,
        max_size=150,
    ),
    pressure=st.floats(0.05, 1.0),
    keep_every=st.integers(2, 6),
    block_bytes=st.integers(1, 3000),
)
def test_thinning_under_pressure_spares_non_routine_and_the_kept_blocks(
    mix: list[tuple[int, str, int]], pressure: float, keep_every: int, block_bytes: int
) -> None:
    rows = [row(i, priority=p, device=d, size=s) for i, (p, d, s) in enumerate(mix)]
    routine = [r for r in rows if r.priority == 0]
    budget = 10  # tiny, so that need == used - 9 > 0
    used = 11 + int(sum(r.size for r in routine) * pressure)
    plan = policy.plan_budget(
        used,
        budget,
        received=[],
        quarantine=[],
        unsent=rows,
        keep_every=keep_every,
        block_bytes=block_bytes,
    )
    thinned = plan.ids(policy.STEP_THINNED)
    by_id = {r.id: r for r in rows}
    assert all(by_id[i].priority == 0 for i in thinned)
    thinnable = _thinnable(rows, keep_every, block_bytes)
    assert list(thinned) == thinnable[: len(thinned)]
    if plan.shortfall_bytes:
        assert list(thinned) == thinnable
    else:
        # Enough, and no more than needed: without its last row the plan would fall short.
        assert plan.planned_bytes >= plan.need_bytes
        assert plan.planned_bytes - by_id[thinned[-1]].size < plan.need_bytes
