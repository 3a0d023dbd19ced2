"""The rules engine's caches never answer with stale data (docs/alarms.md, "Performance").

- ResolvedLimits.for_quantity remembers its answers; LimitsBook replaces the ResolvedLimits
  when an override is added and when a validity period starts or ends, so a reading after
  either uses the new limits. Checked against a book that never caches.
- QuantityLimits.grades answers (grade_low, grade_high) with a shortcut for calm values.
- The evaluator's NEWS2 re-scores only what changed: the same total and risk as
  news2.aggregate on every step of a sequence.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.alarms import news2
from edge_agent.alarms.evaluator import Evaluator, Reading, _News2Parts
from edge_agent.alarms.grades import Grade
from edge_agent.alarms.limits import (
    LimitOverride,
    LimitsBook,
    Provenance,
    QuantityLimits,
    ResolvedLimits,
    SettingOverride,
    Validity,
    news2_default,
)

T0 = 1_700_000_000.0
NURSE = Provenance("cli", "nurse", T0)


class UncachedBook(LimitsBook):
    """Resolves from scratch on every call: a new ResolvedLimits, an empty memo."""

    def resolve(self, patient: str, at: float) -> ResolvedLimits:
        return self._resolve(patient, at)


def _spo2_override(red_below: float, start: float, until: float | None,
                   set_at: float = T0) -> LimitOverride:
    limits = QuantityLimits.build("spo2", None, [("red", red_below, None)])
    return LimitOverride("P1", limits, Validity(start, until), Provenance("cli", "nurse", set_at))


def test_a_new_override_applies_to_the_next_reading() -> None:
    evaluator = Evaluator(LimitsBook())
    assert evaluator.evaluate(Reading("P1", "ox", "spo2", 97, T0)) == []
    evaluator.limits.set_limits(_spo2_override(98, T0 - 100, None))
    [raised] = evaluator.evaluate(Reading("P1", "ox", "spo2", 97, T0 + 1))
    assert (raised.key, raised.grade) == ("spo2:low", Grade.RED)
    assert "cli by nurse" in raised.detail


def test_validity_start_and_end_apply_without_any_change_to_the_book() -> None:
    evaluator = Evaluator(LimitsBook())
    evaluator.limits.set_limits(_spo2_override(98, T0 + 10, T0 + 20))
    decided = {}
    for second in range(40):
        for condition in evaluator.evaluate(Reading("P1", "ox", "spo2", 97, T0 + second)):
            decided[second] = condition.grade
    # red from the start of validity; after its end 97 % is normal again and the red
    # condition clears after clear_after (5 s) of normal readings
    assert decided == {10: Grade.RED, 25: None}


def test_a_late_reading_before_a_validity_start_uses_the_limits_of_its_own_time() -> None:
    evaluator = Evaluator(LimitsBook())
    evaluator.limits.set_limits(_spo2_override(98, T0 + 10, None))
    [raised] = evaluator.evaluate(Reading("P1", "ox", "spo2", 95, T0 + 10))
    assert raised.grade is Grade.RED  # 95 < 98
    # a late 95 % from before the override: the NEWS2 default grades it yellow, and an
    # active condition follows a lower grade down at once
    [regraded] = evaluator.evaluate(Reading("P1", "ox", "spo2", 95, T0 + 5))
    assert regraded.grade is Grade.YELLOW and "default" in regraded.detail
    assert evaluator.limits.resolve("P1", T0 + 5).for_quantity("spo2") == news2_default("spo2")


_TIMES = st.floats(min_value=-50, max_value=150, allow_nan=False).map(lambda x: T0 + round(x, 1))
_BOUND = st.integers(min_value=85, max_value=99)


@st.composite
def _operations(draw: st.DrawFn) -> list[tuple]:
    ops = []
    for _ in range(draw(st.integers(min_value=1, max_value=25))):
        kind = draw(st.sampled_from(("limits", "setting", "read", "read", "read")))
        at = draw(_TIMES)
        patient = draw(st.sampled_from(("P1", "P2")))
        if kind == "limits":
            quantity = draw(st.sampled_from(("spo2", "pr", "rr")))
            low = draw(_BOUND) if quantity == "spo2" else draw(st.integers(5, 60))
            until = draw(st.none() | st.floats(0.5, 80, allow_nan=False))
            ops.append(("limits", patient, quantity, low, at, until, draw(_TIMES)))
        elif kind == "setting":
            setting, value = draw(st.sampled_from((("spo2_scale", 2), ("spo2_scale", 1),
                                                   ("oxygen", True), ("oxygen", False))))
            until = draw(st.none() | st.floats(0.5, 80, allow_nan=False))
            ops.append(("setting", patient, setting, value, at, until, draw(_TIMES)))
        else:
            quantity = draw(st.sampled_from(("spo2", "pr", "rr", "temp", "sys")))
            oxygen = draw(st.none() | st.booleans())
            ops.append(("read", patient, quantity, oxygen, at))
    return ops


def _apply(book: LimitsBook, op: tuple) -> None:
    kind, patient, what, value, at, until, set_at = op
    validity = Validity(at, None if until is None else at + until)
    provenance = Provenance("cli", "nurse", set_at)
    if kind == "limits":
        limits = QuantityLimits.build(what, None, [("orange", value, None)])
        book.set_limits(LimitOverride(patient, limits, validity, provenance))
    else:
        book.set_setting(SettingOverride(patient, what, value, validity, provenance))


@given(_operations())
def test_cached_resolution_equals_a_fresh_one(ops: list[tuple]) -> None:
    cached, fresh = LimitsBook(), UncachedBook()
    for op in ops:
        if op[0] == "read":
            _, patient, quantity, oxygen, at = op
            got = cached.resolve(patient, at)
            want = fresh.resolve(patient, at)
            assert got.for_quantity(quantity, oxygen) == want.for_quantity(quantity, oxygen)
            assert got.provenance(quantity) == want.provenance(quantity)
            assert (got.spo2_scale, got.on_oxygen) == (want.spo2_scale, want.on_oxygen)
        else:
            _apply(cached, op)
            _apply(fresh, op)


@given(_operations(), st.lists(st.integers(80, 100), min_size=1, max_size=8))
def test_evaluator_decides_the_same_with_and_without_caches(
        ops: list[tuple], values: list[int]) -> None:
    cached, fresh = Evaluator(LimitsBook()), Evaluator(UncachedBook())
    for index, op in enumerate(ops):
        if op[0] != "read":
            _apply(cached.limits, op)
            _apply(fresh.limits, op)
            continue
        _, patient, quantity, oxygen, at = op
        value = values[index % len(values)]
        if quantity == "temp":
            value = 30 + value / 10
        readings = [Reading(patient, "ox-" + patient, quantity, value, at)]
        if oxygen is not None:
            readings.insert(0, Reading(patient, "nurse", "o2", oxygen, at, manual=True))
        for reading in readings:
            assert cached.evaluate(reading) == fresh.evaluate(reading)
    assert cached.active_conditions() == fresh.active_conditions()


_VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 400),
                    st.sampled_from((0.0, -0.0, 90.0, 91.0, 91.5, 92.0, 95.0, 96.0)))


@given(st.lists(st.tuples(st.sampled_from(("red", "orange", "yellow")),
                          st.none() | st.integers(30, 70), st.none() | st.integers(90, 200)),
                min_size=1, max_size=3, unique_by=lambda band: band[0]),
       st.lists(_VALUES, min_size=1, max_size=20))
def test_grades_equals_grade_low_and_grade_high(bands: list[tuple], values: list[float]) -> None:
    bands = [band for band in bands if band[1] is not None or band[2] is not None]
    if not bands:
        return
    limits = QuantityLimits.build("pr", None, bands)
    for value in values:
        assert limits.grades(value) == (limits.grade_low(value), limits.grade_high(value))


_SCORED = {"rr": st.integers(0, 40), "spo2": st.integers(80, 100),
           "sys": st.integers(70, 230), "pulse": st.integers(30, 150),
           "temp": st.integers(340, 400).map(lambda x: x / 10)}


@given(st.lists(st.tuples(st.fixed_dictionaries(_SCORED), st.sampled_from(news2.ACVPU_LEVELS),
                          st.booleans(), st.sampled_from((1, 2)),
                          st.sets(st.sampled_from(news2.MEASURED))),
                min_size=1, max_size=30))
def test_incremental_news2_equals_aggregate(steps: list[tuple]) -> None:
    """Each step keeps the previous values of the parameters outside its `changed` set, as
    a stream of readings does (one vital moves at a time)."""
    parts = _News2Parts()
    current: dict[str, float] = {}
    for fresh, level, oxygen, scale, changed in steps:
        for name in news2.MEASURED:
            if name in changed or name not in current:
                current[name] = float(fresh[name])
        values = [current[name] for name in news2.MEASURED]
        result = news2.aggregate(*values, consciousness=level, on_oxygen=oxygen, scale=scale)
        assert parts.total_and_risk(values, level, oxygen, scale) == (result.total, result.risk)


def test_not_a_number_is_never_calm() -> None:
    limits = QuantityLimits.build("spo2", None, [("red", 91, None)])
    assert limits.grades(math.nan) == (None, None) == (limits.grade_low(math.nan),
                                                        limits.grade_high(math.nan))
    assert limits.grades(-math.inf) == (Grade.RED, None)
