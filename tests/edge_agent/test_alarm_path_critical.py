"""AlarmPath.is_critical (the verifier's priority callback) decides exactly as before its
fast path: the patient's limits in force at the reading's time (overrides, validity
periods, prescribed SpO2 scale and oxygen), graded on both sides, against the configured
grade. The reference is the previous implementation."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.agent.alarm_path import AlarmPath
from edge_agent.alarms.evaluator import Evaluator, Reading
from edge_agent.alarms.grades import Grade
from edge_agent.alarms.limits import (
    CLI,
    SPO2_SCALE,
    SUPPLEMENTAL_OXYGEN,
    LimitOverride,
    LimitsBook,
    Provenance,
    QuantityLimits,
    SettingOverride,
    Validity,
)

PATIENTS = ("p-1", "p-2")


def reference(book: LimitsBook, critical: Grade, reading: Reading) -> bool:
    if isinstance(reading.value, bool) or not isinstance(reading.value, int | float):
        return False
    limits = book.resolve(reading.patient, reading.time).for_quantity(reading.quantity)
    if limits is None:
        return False
    grade = limits.grade(float(reading.value))
    return grade is not None and grade >= critical


def alarm_path(book: LimitsBook, critical: Grade) -> AlarmPath:
    return AlarmPath(evaluator=Evaluator(book), lifecycle=None, store=None,  # type: ignore
                     store_executor=None, journal=None, recorder=None,  # type: ignore
                     limit_store=None, organisation_keys=list,  # type: ignore
                     critical_grade=critical)


def window(start: float | None, length: float | None) -> Validity:
    """From `start` (None: always) for `length` seconds (None: open-ended)."""
    begin = -1e12 if start is None else start
    return Validity(begin, None if length is None else begin + length)


overrides = st.lists(st.one_of(
    st.builds(lambda patient, low, start, length, at: LimitOverride(
        patient, QuantityLimits.build("spo2", None, [("red", low - 6, None),
                                                     ("yellow", low, None)]),
        window(start, length), Provenance(CLI, "alice", at)),
        st.sampled_from(PATIENTS), st.integers(86, 95), st.one_of(st.none(), st.integers(0, 50)),
        st.one_of(st.none(), st.integers(1, 30)), st.integers(0, 100)),
    st.builds(lambda patient, high, start, length, at: LimitOverride(
        patient, QuantityLimits.build("pr", None, [("orange", None, high)]),
        window(start, length), Provenance(CLI, "bob", at)),
        st.sampled_from(PATIENTS), st.integers(90, 140), st.one_of(st.none(), st.integers(0, 50)),
        st.one_of(st.none(), st.integers(1, 30)), st.integers(0, 100)),
    st.builds(lambda patient, setting, start, length, at: SettingOverride(
        patient, setting[0], setting[1], window(start, length), Provenance(CLI, "carol", at)),
        st.sampled_from(PATIENTS), st.sampled_from([(SPO2_SCALE, 2), (SPO2_SCALE, 1),
                                                    (SUPPLEMENTAL_OXYGEN, True)]),
        st.one_of(st.none(), st.integers(0, 50)), st.one_of(st.none(), st.integers(1, 30)),
        st.integers(0, 100))), max_size=6)
readings = st.lists(st.tuples(
    st.sampled_from(PATIENTS), st.sampled_from(["spo2", "pr", "hr", "rr", "temp", "bat", "o2"]),
    st.one_of(st.integers(0, 250), st.floats(0, 250), st.just(math.nan), st.booleans()),
    st.floats(0, 100)), max_size=40)


def build(patient: str, quantity: str, value: Any, at: float) -> Reading | None:
    if quantity == "o2":
        value = bool(value)
    elif isinstance(value, bool):
        return None
    try:
        return Reading(patient, "ox-1", quantity, value, at)
    except Exception:  # noqa: BLE001 - a value the rules refuse is not a reading
        return None


@settings(deadline=None, max_examples=200)
@given(overrides, readings, st.sampled_from(list(Grade)), st.integers(0, 20))
def test_is_critical_decides_as_before(changes, rows, critical, apply_after) -> None:
    book = LimitsBook()
    path = alarm_path(book, critical)
    pending = list(changes)
    for index, row in enumerate(rows):
        if index == apply_after:  # overrides arriving while readings flow: caches dropped
            for change in pending:
                (book.set_limits if isinstance(change, LimitOverride) else book.set_setting)(
                    change)
            pending = []
        reading = build(*row)
        if reading is not None:
            assert path.is_critical(reading) == reference(book, critical, reading)


def test_a_validity_period_starts_and_ends_criticality() -> None:
    book = LimitsBook()
    path = alarm_path(book, Grade.YELLOW)
    book.set_limits(LimitOverride("p-1", QuantityLimits.build("spo2", None, [
        ("yellow", 97, None)]), Validity(100, 200), Provenance(CLI, "alice", 1)))
    verdicts = [path.is_critical(Reading("p-1", "ox-1", "spo2", 96, at))
                for at in (99.0, 100.0, 199.0, 200.0)]
    assert verdicts == [False, True, True, False]  # NEWS2 defaults: 96 is no alarm
    assert path.is_critical(Reading("p-1", "ox-1", "spo2", 85, 99.0)) is True  # red anyway
