"""Pure lifecycle states: precedence, agreement with protocol.cwt, transitions, scheduling."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.lifecycle import states
from edge_agent.lifecycle.states import Facts, TransitionError
from protocol import cwt
from protocol.errors import ValidationError

DAY = states.DAY
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
YEAR = 365 * DAY


def active(**steps: int) -> Facts:
    """A one-year key created and activated at T0, plus the given steps."""
    return Facts(T0, T0 + YEAR, created=T0, activated=T0, **steps)


# -- precedence -------------------------------------------------------------------------------


@pytest.mark.parametrize(("facts", "now", "expected"), [
    (Facts(T0, T0 + YEAR, created=T0), T0 + 10, states.PENDING),  # not activated
    (Facts(T0 + DAY, T0 + YEAR, created=T0, activated=T0), T0, states.PENDING),  # before nbf
    (active(), T0, states.ACTIVE),
    (active(), T0 + YEAR * 2 // 3 + 1, states.RENEWAL_DUE),
    (active(), T0 + YEAR - 30 * DAY, states.EXPIRING),
    (active(), T0 + YEAR - 1, states.EXPIRING),
    (active(), T0 + YEAR, states.EXPIRED),
    (Facts(T0, T0 + YEAR, created=T0), T0 + YEAR, states.EXPIRED),  # expired beats pending
    (active(retired=T0 + 5), T0 + 5, states.RETIRED),
    (active(retired=T0 + 5), T0 + 2 * YEAR, states.RETIRED),  # a decision beats expiry
    (active(retired=T0 + 5, revoked=T0 + 6), T0 + 6, states.REVOKED),
    (active(revoked=T0 + 6, compromised=T0 + 7), T0 + 7, states.COMPROMISED),
    (active(retired=T0 + 1, compromised=T0 + 2, destroyed=T0 + 3), T0 + 3, states.DESTROYED),
])
def test_state_precedence(facts: Facts, now: int, expected: str) -> None:
    assert states.state(facts, now) == expected


def test_steps_after_now_are_not_known_yet() -> None:
    facts = active(compromised=T0 + 100, destroyed=T0 + 200)
    assert states.state(facts, T0 + 99) == states.ACTIVE
    assert states.state(facts, T0 + 100) == states.COMPROMISED
    assert states.state(facts, T0 + 200) == states.DESTROYED
    assert states.state(Facts(T0, T0 + YEAR, created=T0, activated=T0 + 50), T0 + 49) \
        == states.PENDING


def test_boundaries_match_protocol_cwt() -> None:
    facts = active()
    due = states.renewal_due_at(facts)
    assert states.state(facts, due - 1) == states.ACTIVE
    assert states.state(facts, due) == states.RENEWAL_DUE
    assert states.expiring_at(facts) == T0 + YEAR - 30 * DAY


windows = st.tuples(st.integers(0, 2**40), st.integers(1, 5 * YEAR)).map(
    lambda t: (t[0], t[0] + t[1]))
step_time = st.one_of(st.none(), st.integers(0, 2**41))


@st.composite
def any_facts(draw: st.DrawFn) -> Facts:
    nbf, exp = draw(windows)
    return Facts(nbf, exp, **{s: draw(step_time) for s in states.STEPS})


@given(windows, st.integers(0, 2**41))
def test_time_part_is_protocol_cwt_validity_state(window: tuple[int, int], now: int) -> None:
    facts = Facts(window[0], window[1], created=0, activated=0)
    expected = {cwt.VALID: states.ACTIVE, cwt.RENEWAL_DUE: states.RENEWAL_DUE,
                cwt.EXPIRING: states.EXPIRING, cwt.EXPIRED: states.EXPIRED,
                cwt.NOT_YET_VALID: states.PENDING}[cwt.validity_state(facts, now)]
    assert states.state(facts, now) == expected


@given(any_facts(), st.integers(0, 2**41))
def test_usable_only_when_activated_unended_and_in_window(facts: Facts, now: int) -> None:
    current = states.state(facts, now)
    assert current in states.STATES
    if current in states.USABLE:
        assert facts.activated is not None and facts.activated <= now
        assert facts.not_before <= now < facts.expires
        for step in (*states.END_STEPS, states.DESTROYED):
            at = getattr(facts, step)
            assert at is None or at > now


@given(any_facts(), st.integers(0, 2**41))
def test_state_is_constant_until_next_change(facts: Facts, now: int) -> None:
    current = states.state(facts, now)
    change = states.next_change(facts, now)
    if change is None:
        far = max([now, facts.expires, *facts.step_times().values()]) + 10 * YEAR
        assert states.state(facts, far) == current
        return
    assert change > now
    for probe in {now + 1, (now + change) // 2, change - 1}:
        if now <= probe < change:
            assert states.state(facts, probe) == current


# -- transitions ------------------------------------------------------------------------------


def test_created_must_come_first() -> None:
    blank = Facts(T0, T0 + YEAR)
    with pytest.raises(TransitionError, match="created first") as info:
        states.check_step(blank, states.ACTIVATED, T0)
    assert info.value.field == "step"
    assert states.allowed_steps(blank, T0) == (states.CREATED,)


def test_each_step_is_recorded_once() -> None:
    with pytest.raises(TransitionError, match="already retired"):
        states.check_step(active(retired=T0 + 1), states.RETIRED, T0 + 2)


def test_journal_never_moves_back_in_time() -> None:
    with pytest.raises(TransitionError, match="check the clock") as info:
        states.check_step(active(retired=T0 + 100), states.DESTROYED, T0 + 50)
    assert info.value.field == "at"


def test_destroying_a_key_in_use_is_refused() -> None:
    with pytest.raises(TransitionError, match="retire, revoke or declare it compromised"):
        states.check_step(active(), states.DESTROYED, T0 + 1)
    for end in states.END_STEPS:
        states.check_step(active(**{end: T0 + 1}), states.DESTROYED, T0 + 2)


def test_nothing_follows_destruction() -> None:
    gone = active(retired=T0 + 1, destroyed=T0 + 2)
    assert states.allowed_steps(gone, T0 + 3) == ()
    with pytest.raises(TransitionError, match="destroyed"):
        states.check_step(gone, states.COMPROMISED, T0 + 3)


def test_activation_rules() -> None:
    with pytest.raises(TransitionError, match="enroll a new key"):
        states.check_step(Facts(T0, T0 + YEAR, created=T0, retired=T0 + 1), states.ACTIVATED,
                          T0 + 2)
    with pytest.raises(TransitionError, match="expired"):
        states.check_step(Facts(T0, T0 + YEAR, created=T0), states.ACTIVATED, T0 + YEAR)
    # Activating ahead of not_before is allowed: the key is pending until then.
    early = states.apply_step(Facts(T0 + DAY, T0 + YEAR, created=T0), states.ACTIVATED, T0)
    assert states.state(early, T0) == states.PENDING
    assert states.state(early, T0 + DAY) == states.ACTIVE


def test_compromise_includes_revocation_but_not_the_reverse() -> None:
    with pytest.raises(TransitionError, match="includes revocation"):
        states.check_step(active(compromised=T0 + 1), states.REVOKED, T0 + 2)
    revoked = states.apply_step(active(revoked=T0 + 1), states.COMPROMISED, T0 + 2)
    assert states.state(revoked, T0 + 2) == states.COMPROMISED


def test_withdrawal_from_any_live_state() -> None:
    for now in (T0, T0 + YEAR * 2 // 3 + 1, T0 + YEAR - DAY, T0 + YEAR + 1):
        for step in (states.REVOKED, states.COMPROMISED, states.RETIRED):
            states.check_step(active(), step, now)
    states.check_step(Facts(T0, T0 + YEAR, created=T0), states.COMPROMISED, T0)  # pending
    states.check_step(active(retired=T0 + 1), states.COMPROMISED, T0 + 2)  # retired


def test_unknown_step_and_bad_times() -> None:
    with pytest.raises(TransitionError, match="unknown step"):
        states.check_step(active(), "paused", T0)
    with pytest.raises(ValidationError):
        states.check_step(active(), states.RETIRED, -1)
    with pytest.raises(ValidationError):
        states.state(active(), True)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Facts(T0, T0)
    with pytest.raises(ValidationError):
        Facts(T0, T0 + 1, created=1.5)  # type: ignore[arg-type]


@given(any_facts(), st.sampled_from(states.STEPS), st.integers(0, 2**41))
def test_applied_steps_lead_to_their_state(facts: Facts, step: str, at: int) -> None:
    try:
        after = states.apply_step(facts, step, at)
    except TransitionError:
        assert step not in states.allowed_steps(facts, at)
        return
    assert step in states.allowed_steps(facts, at)
    current = states.state(after, at)
    if step == states.DESTROYED:
        assert current == states.DESTROYED
    elif step in (states.COMPROMISED, states.REVOKED, states.RETIRED):
        assert current not in states.USABLE and current != states.PENDING


# -- destruction window and device currency ----------------------------------------------------


def test_destruction_deadline_counts_from_the_first_end() -> None:
    assert states.destruction_deadline(active()) is None
    facts = active(retired=T0 + 500, compromised=T0 + 100)
    assert states.ended_at(facts) == T0 + 100
    assert states.destruction_deadline(facts) == T0 + 100 + 10 * DAY


def test_device_currency_flags() -> None:
    now = T0
    assert states.device_currency_flags(now, "REG-1", now + YEAR, now + YEAR) == ()
    assert states.device_currency_flags(now, None, None, None) == (
        "registration-missing", "registration-unknown", "calibration-unknown")
    assert states.device_currency_flags(now, "REG-1", now, now + 10 * DAY) == (
        "registration-expired", "calibration-due-soon")
    assert states.device_currency_flags(now, "REG-1", now + 31 * DAY, now - 1) == (
        "calibration-overdue",)
