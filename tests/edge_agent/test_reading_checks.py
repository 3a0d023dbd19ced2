"""The rules' Reading: its fast path and `Reading.checked` accept exactly what the full
checks accept, refuse with the same ValidationError (field and reason) and build the same
reading. The reference below is the validation as it was before the fast path."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.alarms import news2
from edge_agent.alarms.evaluator import Reading
from protocol import vitals
from protocol.errors import ValidationError


class Text(str):
    """A str subclass: the full checks accept it, the fast path must leave it to them."""


def reference(patient: Any, device: Any, quantity: Any, value: Any, time: Any, unit: Any,
              signal_quality: Any, finger_off: Any, sensor_off: Any, manual: Any) -> Any:
    """-> the unit the old __post_init__ set, or the ValidationError it raised."""
    try:
        for name, text in (("patient", patient), ("device", device)):
            if not isinstance(text, str) or not text:
                raise ValidationError(name, "must be non-empty text")
        if not vitals.is_finite(time):
            raise ValidationError("time", "must be a finite number of seconds")
        if quantity == news2.CONSCIOUSNESS:
            if value not in news2.ACVPU_LEVELS or not isinstance(value, str):
                raise ValidationError("v", "consciousness must be one of A, C, V, P, U")
            if not manual:
                raise ValidationError("manual", "consciousness is assessed by a person only")
        elif quantity == news2.OXYGEN:
            if not isinstance(value, bool):
                raise ValidationError("v", "oxygen must be true (oxygen) or false (air)")
        else:
            unit = vitals.check_unit(quantity, unit)
            if not vitals.is_number(value):
                raise ValidationError("v", "value must be a number")
        if signal_quality is not None and (not vitals.is_finite(signal_quality)
                                           or not 0 <= signal_quality <= 100):
            raise ValidationError("signal_quality", "must be 0..100 or None")
        for name, flag in (("finger_off", finger_off), ("sensor_off", sensor_off),
                           ("manual", manual)):
            if not isinstance(flag, bool):
                raise ValidationError(name, "must be a bool")
    except ValidationError as exc:
        return exc
    return unit


def outcome(make: Any) -> Any:
    try:
        return make()
    except ValidationError as exc:
        return exc


texts = st.one_of(st.sampled_from(["p-1", "ox-1", "", "x"]), st.builds(Text, st.just("p-2")),
                  st.none(), st.integers(0, 2))
quantities = st.one_of(st.sampled_from(sorted(vitals.QUANTITIES)),
                       st.sampled_from([news2.CONSCIOUSNESS, news2.OXYGEN, "nope", ""]),
                       st.builds(Text, st.sampled_from(["spo2", "hr"])), st.none())
units = st.one_of(st.none(), st.sampled_from(sorted({u for q in vitals.QUANTITIES.values()
                                                     for u in q["units"]}) + ["bogus"]),
                  st.builds(Text, st.just("%")), st.integers(0, 1))
numbers = st.one_of(st.integers(-10, 300), st.floats(allow_nan=True, allow_infinity=True),
                    st.booleans(), st.sampled_from(["A", "V", "97"]), st.none())
qualities = st.one_of(st.none(), st.integers(-5, 105), st.floats(allow_nan=True), st.booleans())
flags = st.one_of(st.booleans(), st.sampled_from([0, 1, None]))


@settings(deadline=None, max_examples=300)
@given(texts, texts, quantities, numbers, numbers, units, qualities, flags, flags, flags)
def test_construction_refuses_and_accepts_as_the_full_checks(
        patient, device, quantity, value, time, unit, quality, finger, sensor, manual) -> None:
    for _ in range(2):  # cold, then with the unit cache warm
        expected = reference(patient, device, quantity, value, time, unit, quality, finger,
                             sensor, manual)
        got = outcome(lambda: Reading(patient, device, quantity, value, time, unit, quality,
                                      finger, sensor, manual))
        if isinstance(expected, ValidationError):
            assert isinstance(got, ValidationError)
            assert (got.field, got.reason) == (expected.field, expected.reason)
        else:
            assert isinstance(got, Reading)
            assert got.unit == (unit if quantity in (news2.CONSCIOUSNESS, news2.OXYGEN)
                                else expected)
            assert (got.patient, got.device, got.quantity, got.value, got.time,
                    got.signal_quality, got.finger_off, got.sensor_off, got.manual) == (
                patient, device, quantity, value, time, quality, finger, sensor, manual)


@settings(deadline=None, max_examples=300)
@given(texts, texts, quantities, numbers, numbers, units, qualities, flags)
def test_checked_is_the_constructor(patient, device, quantity, value, time, unit, quality,
                                    manual) -> None:
    for _ in range(2):
        expected = outcome(lambda: Reading(patient, device, quantity, value, time, unit,
                                           quality, manual=manual))
        got = outcome(lambda: Reading.checked(patient, device, quantity, value, time, unit,
                                              quality, manual))
        if isinstance(expected, ValidationError):
            assert isinstance(got, ValidationError)
            assert (got.field, got.reason) == (expected.field, expected.reason)
        else:
            assert type(got) is Reading
            same_nan = isinstance(value, float) and math.isnan(value)
            if not same_nan:
                assert got == expected and hash(got) == hash(expected)
            assert repr(got) == repr(expected)


def test_checked_builds_a_frozen_reading_with_the_canonical_unit() -> None:
    Reading("p", "ox", "spo2", 97, 1.0)  # the (quantity, unit) pair is known from here on
    reading = Reading.checked("p-1", "ox-1", "spo2", 97, 10.0)
    assert reading == Reading("p-1", "ox-1", "spo2", 97, 10.0, "%")
    assert reading.unit == "%" and reading.finger_off is False and reading.manual is False
    with pytest.raises(AttributeError):
        reading.value = 50  # type: ignore[misc]


@pytest.mark.parametrize("fields, field", [
    (("", "ox-1", "spo2", 97, 1.0), "patient"),
    (("p", "ox-1", "spo2", True, 1.0), "v"),
    (("p", "ox-1", "spo2", 97, math.inf), "time"),
    (("p", "ox-1", "spo2", 97, 1.0, "beat/min"), "u"),
    (("p", "ox-1", news2.CONSCIOUSNESS, "A", 1.0), "manual"),
])
def test_checked_refuses_like_the_constructor(fields, field) -> None:
    Reading("p", "ox", "spo2", 97, 1.0)  # warm cache
    with pytest.raises(ValidationError) as refused:
        Reading.checked(*fields)
    assert refused.value.field == field


@st.composite
def near_valid(draw: Any) -> tuple[Any, ...]:
    """A usual vitals reading with at most one field drawn from the hostile strategies
    (the fast path's boundaries: quality 0..100, finite time, exact types)."""
    quantity = draw(st.sampled_from(sorted(vitals.QUANTITIES)))
    fields = ["p-1", "ox-1", quantity, draw(st.integers(0, 200) | st.floats(0, 200)),
              draw(st.floats(0, 2e9)), draw(st.sampled_from(
                  [None, *vitals.QUANTITIES[quantity]["units"]])),
              draw(st.none() | st.floats(-1, 101) | st.sampled_from([0, 100, 100.5, -0.0])),
              False, False, False]
    index = draw(st.integers(0, 10))
    if index < 10:
        fields[index] = draw([texts, texts, quantities, numbers, numbers, units, qualities,
                              flags, flags, flags][index])
    return tuple(fields)


@settings(deadline=None, max_examples=300)
@given(near_valid())
def test_near_valid_readings_refuse_and_accept_as_the_full_checks(fields) -> None:
    for _ in range(2):
        expected = reference(*fields)
        got = outcome(lambda: Reading(*fields))
        # checked() builds readings without finger_off/sensor_off (both False)
        checked = outcome(lambda: Reading.checked(*fields[:7], fields[9])) if (
            fields[7] is False and fields[8] is False) else None
        for result in (got, checked):
            if result is None:
                continue
            if isinstance(expected, ValidationError):
                assert isinstance(result, ValidationError)
                assert (result.field, result.reason) == (expected.field, expected.reason)
            else:
                assert isinstance(result, Reading) and result.unit == expected


@pytest.mark.parametrize("quality, accepted", [
    (None, True), (0, True), (100, True), (100.0, True), (-0.0, True), (100.01, False),
    (101, False), (-1, False), (math.nan, False), (math.inf, False), (True, False)])
def test_signal_quality_bounds(quality, accepted) -> None:
    Reading("p", "ox", "spo2", 97, 1.0)  # warm cache: the fast path decides
    for make in (lambda: Reading("p", "ox", "spo2", 97, 1.0, None, quality),
                 lambda: Reading.checked("p", "ox", "spo2", 97, 1.0, None, quality)):
        result = outcome(make)
        assert isinstance(result, Reading) is accepted
