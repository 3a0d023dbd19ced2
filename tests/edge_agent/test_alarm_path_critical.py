"""AlarmPath.is_critical (the verifier's priority callback) grades a reading with exactly the
limits the evaluator would grade it with at that moment: the patient's limits in force at
the reading's time (overrides, validity periods, prescribed SpO2 scale and oxygen) and, for
SpO2 on scale 2, the oxygen state observed within the NEWS2 freshness window
(Evaluator.limits_for, the evaluator's own rule). The oracles: the previous implementation
where no oxygen is observed, the NEWS2 chart by hand, and the grade the evaluator itself
raises for the same reading."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.agent.alarm_path import AlarmPath
from edge_agent.alarms.evaluator import UNIT_MISMATCH, Evaluator, EvaluatorConfig, Reading
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
    news2_default,
)

PATIENTS = ("p-1", "p-2")


def reference(book: LimitsBook, critical: Grade, reading: Reading) -> bool:
    """The previous implementation (no oxygen observed: the prescribed state decides)."""
    if isinstance(reading.value, bool) or not isinstance(reading.value, int | float):
        return False
    limits = book.resolve(reading.patient, reading.time).for_quantity(reading.quantity)
    if limits is None:
        return False
    grade = limits.grade(float(reading.value))
    return grade is not None and grade >= critical


def alarm_path(book: LimitsBook, critical: Grade,
               evaluator: Evaluator | None = None) -> AlarmPath:
    return AlarmPath(evaluator=evaluator or Evaluator(book), lifecycle=None, store=None,  # type: ignore
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


# -- observed oxygen (scale 2) ------------------------------------------------------------

FRESH = EvaluatorConfig().news2_freshness  # 900 s


def scale_2(book: LimitsBook, patient: str = "p-1", prescribed_oxygen: bool | None = None
            ) -> None:
    """A patient on SpO2 scale 2 (by the CLI), optionally with a prescribed oxygen state."""
    always = Validity(-1e12, None)
    book.set_setting(SettingOverride(patient, SPO2_SCALE, 2, always, Provenance(CLI, "al", 1)))
    if prescribed_oxygen is not None:
        book.set_setting(SettingOverride(patient, SUPPLEMENTAL_OXYGEN, prescribed_oxygen,
                                         always, Provenance(CLI, "al", 2)))


def oxygen(patient: str, on: bool, at: float) -> Reading:
    return Reading(patient, f"manual-{patient}", "o2", on, at, manual=True)


def spo2(patient: str, value: float, at: float) -> Reading:
    # manual: fires and clears at once, so the evaluator's active grade is this reading's
    return Reading(patient, f"manual-{patient}", "spo2", value, at, manual=True)


def raised_grade(evaluator: Evaluator, reading: Reading) -> Grade | None:
    """Evaluate `reading` (manual: no persistence, no jump guard) and return the threshold
    grade the evaluator then holds for it: None when it did not grade the value (a unit
    mismatch), else the worse of the low and high sides."""
    evaluator.evaluate(reading)
    active = evaluator.active_conditions()
    p, q = reading.patient, reading.quantity
    if (p, f"{UNIT_MISMATCH}:{q}:{reading.device}") in active:
        return None
    sides = [g for g in (active.get((p, f"{q}:low")), active.get((p, f"{q}:high"))) if g]
    return max(sides, default=None)


# SpO2 values where scale 2 on oxygen and scale 2 on air (or scale 1) disagree (NEWS2 Chart 1)
ON_OXYGEN = {97: Grade.RED, 95: Grade.ORANGE, 93: Grade.YELLOW, 90: None, 85: Grade.ORANGE}
ON_AIR = {97: None, 95: None, 93: None, 90: None, 85: Grade.ORANGE}


def at_least(grade: Grade | None, critical: Grade) -> bool:
    return grade is not None and grade >= critical


def test_observed_oxygen_makes_a_scale_2_reading_critical_as_the_evaluator_grades_it() -> None:
    # prescribed air (the default), observed on oxygen: 97 % is red, not calm
    for critical in (Grade.RED, Grade.ORANGE, Grade.YELLOW):
        for value, expected in ON_OXYGEN.items():
            book = LimitsBook()
            scale_2(book)
            evaluator = Evaluator(book)
            path = alarm_path(book, critical, evaluator)
            evaluator.evaluate(oxygen("p-1", True, 1000.0))
            reading = spo2("p-1", value, 1000.0 + FRESH)  # still fresh at the boundary
            verdict = path.is_critical(reading)
            assert verdict == at_least(expected, critical), (critical, value)
            assert raised_grade(evaluator, reading) == expected, value
    book = LimitsBook()
    scale_2(book)
    path = alarm_path(book, Grade.RED)
    assert path.is_critical(spo2("p-1", 97, 1000.0)) is False  # nothing observed: air


def test_observed_air_makes_a_prescribed_oxygen_reading_routine() -> None:
    for value, expected in ON_AIR.items():
        book = LimitsBook()
        scale_2(book, prescribed_oxygen=True)
        evaluator = Evaluator(book)
        path = alarm_path(book, Grade.YELLOW, evaluator)
        assert path.is_critical(spo2("p-1", value, 500.0)) == at_least(
            ON_OXYGEN[value], Grade.YELLOW)  # nothing observed yet: the prescription
        evaluator.evaluate(oxygen("p-1", False, 1000.0))
        reading = spo2("p-1", value, 1010.0)
        assert path.is_critical(reading) == at_least(expected, Grade.YELLOW), value
        assert raised_grade(evaluator, reading) == expected, value


def test_a_stale_oxygen_observation_falls_back_to_the_prescription_as_the_evaluator() -> None:
    for prescribed, stale_grade in ((None, None), (True, Grade.RED), (False, None)):
        book = LimitsBook()
        scale_2(book, prescribed_oxygen=prescribed)
        evaluator = Evaluator(book)
        path = alarm_path(book, Grade.RED, evaluator)
        evaluator.evaluate(oxygen("p-1", True, 1000.0))
        fresh = spo2("p-1", 97, 1000.0 + FRESH)
        stale = spo2("p-1", 97, 1000.0 + FRESH + 0.5)
        assert path.is_critical(fresh) is True
        assert raised_grade(evaluator, fresh) is Grade.RED
        assert path.is_critical(stale) is (stale_grade is Grade.RED), prescribed
        assert raised_grade(evaluator, stale) is stale_grade, prescribed
        # another patient's observation is not this one's
        scale_2(book, "p-2", prescribed_oxygen=prescribed)
        other = spo2("p-2", 97, 1010.0)
        assert path.is_critical(other) is (stale_grade is Grade.RED)


def test_a_value_in_another_unit_than_its_limits_is_not_graded_as_in_the_evaluator() -> None:
    book = LimitsBook()
    book.set_limits(LimitOverride("p-1", QuantityLimits.build("glucose", "mmol/L", [
        ("red", 3.0, 25.0)]), Validity(-1e12, None), Provenance(CLI, "alice", 1)))
    evaluator = Evaluator(book)
    path = alarm_path(book, Grade.RED, evaluator)
    mg = Reading("p-1", "manual-p-1", "glucose", 90, 10.0, "mg/dL", manual=True)
    assert path.is_critical(mg) is False  # 90 mg/dL is 5 mmol/L: calm, never "90 > 25"
    assert raised_grade(evaluator, mg) is None
    mmol = Reading("p-1", "manual-p-1", "glucose", 30, 11.0, "mmol/L", manual=True)
    assert path.is_critical(mmol) is True
    assert raised_grade(evaluator, mmol) is Grade.RED


GLUCOSE_LIMITS = QuantityLimits.build("glucose", "mmol/L", [("red", 3.0, 25.0),
                                                            ("yellow", 4.0, 11.0)])
# SpO2 around every scale-1 and scale-2 band edge (where the oxygen state decides)
SPO2_EDGES = [83, 84, 85, 86, 87, 88, 91, 92, 93, 94, 95, 96, 97, 100]
patients = st.sampled_from(PATIENTS)
spo2_readings = st.tuples(st.just("spo2"), patients, st.one_of(
    st.sampled_from(SPO2_EDGES), st.floats(80, 100)))
oxygen_observations = st.tuples(st.just("o2"), patients, st.booleans())
events = st.lists(st.tuples(
    # time step before the event: on and around the freshness boundary, some backwards
    st.one_of(st.sampled_from([0.0, 1.0, 30.0, -45.0]),
              st.sampled_from([FRESH - 0.5, FRESH, FRESH + 0.5]), st.floats(-60, 1000)),
    st.one_of(
        oxygen_observations, spo2_readings, oxygen_observations, spo2_readings, spo2_readings,
        st.tuples(st.just("pr"), patients, st.integers(30, 150)),
        st.tuples(st.just("temp"), patients, st.floats(34, 41)),
        st.tuples(st.just("glucose"), patients,
                  st.sampled_from([("mmol/L", 2.5), ("mmol/L", 8.0), ("mmol/L", 12.0),
                                   ("mmol/L", 30.0), ("mg/dL", 90.0), ("mg/dL", 600.0)])),
        st.tuples(st.just("setting"), patients, st.sampled_from(
            [(SPO2_SCALE, 2), (SPO2_SCALE, 1), (SUPPLEMENTAL_OXYGEN, True),
             (SUPPLEMENTAL_OXYGEN, False)]), st.one_of(st.none(), st.integers(0, 5000)),
            st.one_of(st.none(), st.integers(1, 5000))),
        st.tuples(st.just("glucose-limits"), patients))), min_size=2, max_size=40)
prescriptions = st.tuples(st.sampled_from([1, 2, 2]), st.sampled_from([None, True, False]))


@settings(deadline=None, max_examples=200)
@given(st.tuples(prescriptions, prescriptions), events, st.sampled_from(list(Grade)))
def test_is_critical_is_the_evaluators_threshold_grade_against_the_configured_grade(
        prescribed, stream, critical) -> None:
    """Random streams from prescribed scales and oxygen: oxygen observations fresh and
    stale, settings with validity periods arriving mid-stream, units that do and do not
    match their limits. Before each reading reaches the evaluator, is_critical must equal
    "the grade the evaluator then raises for it >= the configured grade"."""
    book = LimitsBook()
    for patient, (scale, on_oxygen) in zip(PATIENTS, prescribed, strict=True):
        if scale == 2:
            scale_2(book, patient, on_oxygen)
        elif on_oxygen is not None:
            book.set_setting(SettingOverride(patient, SUPPLEMENTAL_OXYGEN, on_oxygen,
                                             window(None, None), Provenance(CLI, "al", 0)))
    evaluator = Evaluator(book)
    path = alarm_path(book, critical, evaluator)
    t = 0.0
    for index, (step, event) in enumerate(stream):
        t += step
        kind, patient = event[0], event[1]
        device = f"manual-{patient}"
        if kind == "o2":
            evaluator.evaluate(oxygen(patient, event[2], t))
            continue
        if kind == "setting":
            (setting, value), start, length = event[2], event[3], event[4]
            book.set_setting(SettingOverride(patient, setting, value, window(start, length),
                                             Provenance(CLI, "carol", 10 + index)))
            continue
        if kind == "glucose-limits":
            book.set_limits(LimitOverride(patient, GLUCOSE_LIMITS, window(None, None),
                                          Provenance(CLI, "alice", 10 + index)))
            continue
        if kind == "glucose":
            unit, value = event[2]
            reading = Reading(patient, device, kind, value, t, unit, manual=True)
        else:
            reading = Reading(patient, device, kind, event[2], t, manual=True)
        verdict = path.is_critical(reading)
        assert verdict == at_least(raised_grade(evaluator, reading), critical), (reading, t)


@settings(deadline=None, max_examples=200)
@given(st.sampled_from([1, 2]), st.sampled_from([None, True, False]),
       st.lists(st.tuples(st.booleans(), st.floats(-100, 1000)), max_size=3),
       st.one_of(st.sampled_from(SPO2_EDGES), st.floats(80, 100)),
       st.one_of(st.sampled_from([0.0, FRESH - 0.5, FRESH, FRESH + 0.5]),
                 st.floats(-100, 2 * FRESH)),
       st.sampled_from(list(Grade)))
def test_is_critical_follows_the_observed_oxygen_as_the_evaluator_does(
        scale, prescribed, observations, value, delay, critical) -> None:
    """One patient, a prescribed scale and oxygen state, up to three `o2` observations
    (the last one received counts, whatever its time), then one SpO2 reading `delay`
    seconds after the last of them: is_critical agrees with the evaluator's grade, and that
    grade is the chart's for the oxygen state the freshness rule picks."""
    book = LimitsBook()
    if scale == 2:
        scale_2(book, prescribed_oxygen=prescribed)
    evaluator = Evaluator(book)
    path = alarm_path(book, critical, evaluator)
    t = 10_000.0
    for on, at in observations:
        evaluator.evaluate(oxygen("p-1", on, t + at))
    seen = t + observations[-1][1] if observations else t
    reading = spo2("p-1", value, seen + delay)
    fresh = bool(observations) and seen >= reading.time - FRESH  # within the window
    observed = observations[-1][0] if fresh else None
    state = observed if observed is not None else bool(prescribed)
    chart = news2_default("spo2", scale, state)
    assert chart is not None
    verdict = path.is_critical(reading)
    grade = raised_grade(evaluator, reading)
    assert grade == chart.grade(float(value))
    assert verdict == at_least(grade, critical)
