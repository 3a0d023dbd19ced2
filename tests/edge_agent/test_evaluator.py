"""The rules engine: thresholds, persistence, rates, NEWS2, artefact guards, technical state."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.alarms.evaluator import (
    Condition,
    DeviceStatus,
    Evaluator,
    EvaluatorConfig,
    GatewayStatus,
    Reading,
)
from edge_agent.alarms.grades import Grade
from edge_agent.alarms.limits import (
    CLI,
    LimitOverride,
    LimitsBook,
    Provenance,
    QuantityLimits,
    SettingOverride,
    Validity,
)
from protocol import vitals
from protocol.errors import ValidationError

R, OR, Y, B = Grade.RED, Grade.ORANGE, Grade.YELLOW, Grade.BLUE
NORMAL = {"rr": 15, "spo2": 97, "sys": 125, "pr": 72, "temp": 36.8}


def reading(quantity: str, value, t: float, **kw) -> Reading:
    kw.setdefault("patient", "P1")
    kw.setdefault("device", "D1")
    return Reading(quantity=quantity, value=value, time=t, **kw)


def run(ev: Evaluator, readings) -> list[Condition]:
    out = []
    for r in readings:
        out.extend(ev.evaluate(r))
    return out


def series(quantity: str, values, start: float = 0.0, step: float = 1.0, **kw) -> list[Reading]:
    return [reading(quantity, v, start + i * step, **kw) for i, v in enumerate(values)]


def changes(conditions, key: str) -> list[tuple[float, Grade | None]]:
    return [(c.time, c.grade) for c in conditions if c.key == key]


def test_red_fires_at_once_and_lower_grades_after_their_persistence() -> None:
    ev = Evaluator(LimitsBook())
    assert changes(run(ev, series("spo2", [97, 91])), "spo2:low") == [(1, R)]
    ev = Evaluator(LimitsBook())
    out = run(ev, series("spo2", [93] * 12))  # orange band (92-93)
    assert changes(out, "spo2:low") == [(10, OR)]
    ev = Evaluator(LimitsBook())
    out = run(ev, series("spo2", [95] * 32))  # yellow band (94-95)
    assert changes(out, "spo2:low") == [(30, Y)]


def test_a_normal_reading_restarts_persistence_and_clearing_needs_clear_after() -> None:
    ev = Evaluator(LimitsBook())
    out = run(ev, series("spo2", [93] * 8 + [96] + [93] * 11))
    assert changes(out, "spo2:low") == [(19, OR)]
    more = run(ev, series("spo2", [97] * 7, start=20))
    assert changes(more, "spo2:low") == [(25, None)]  # normal since 20, clear_after 5 s
    c = more[0]
    assert (c.kind, c.patient, c.device, c.quantity, c.value) == ("threshold", "P1", "D1",
                                                                  "spo2", 97)


def test_grade_moves_down_at_once_and_up_only_after_persistence() -> None:
    ev = Evaluator(LimitsBook())
    out = run(ev, series("spo2", [93] * 11 + [95] * 3 + [93] * 11))
    assert changes(out, "spo2:low") == [(10, OR), (11, Y), (24, OR)]
    out = run(ev, [reading("spo2", 90, 25)])
    assert changes(out, "spo2:low") == [(25, R)]


def test_high_and_low_sides_are_separate_conditions() -> None:
    ev = Evaluator(LimitsBook())
    out = run(ev, series("pr", [35, 140], manual=True))
    assert changes(out, "pr:low") == [(0, R), (1, None)] and changes(out, "pr:high") == [(1, R)]
    assert "pulse" not in {c.key for c in out}


def test_spot_and_manual_readings_fire_and_clear_at_once() -> None:
    ev = Evaluator(LimitsBook())
    out = run(ev, [reading("sys", 105, 0, device="cuff"), reading("sys", 125, 600, device="cuff")])
    assert changes(out, "sys:low") == [(0, Y), (600, None)]
    out = run(ev, [reading("spo2", 93, 700, manual=True)])
    assert changes(out, "spo2:low") == [(700, OR)]


def test_rate_of_change_rule() -> None:
    ev = Evaluator(LimitsBook())
    assert run(ev, series("spo2", [99, 99, 98, 97, 96, 95, 95])) == []  # 4 points: not yet
    # the default rule is a drop of >= 5 points within 30 s
    ev = Evaluator(LimitsBook())
    out = run(ev, series("spo2", [99, 99, 97, 96, 95, 94, 94]))
    assert changes(out, "spo2:fall") == [(5, OR)]
    slow = Evaluator(LimitsBook())
    out = run(slow, series("spo2", [100, 99, 98, 97, 96, 95], step=8))  # 5 points in 40 s
    assert changes(out, "spo2:fall") == []


def test_news2_needs_every_vital_fresh() -> None:
    ev = Evaluator(LimitsBook(), EvaluatorConfig(news2_freshness=100))
    vitals = [reading(q, v, 0) for q, v in NORMAL.items() if q != "temp"]
    sick = [reading("rr", 22, 1), reading("pr", 115, 2), reading("spo2", 95, 3)]
    assert not [c for c in run(ev, vitals + sick) if c.key == "news2"]  # no temperature yet
    out = run(ev, [reading("temp", 38.5, 4)])  # rr 2 + pr 2 + spo2 1 + temp 1 = 6
    assert changes(out, "news2") == []  # medium -> orange needs 10 s
    out = run(ev, [reading("pr", 115, 14)])
    assert changes(out, "news2") == [(14, OR)] and out[-1].value == 6
    assert "consciousness not assessed" in out[-1].detail
    # the blood pressure of t=0 goes stale after 100 s: no aggregate, the condition stays
    assert run(ev, [reading("rr", 16, 101)]) == []


def test_consciousness_and_oxygen() -> None:
    ev = Evaluator(LimitsBook())
    run(ev, [reading(q, v, 0) for q, v in NORMAL.items()])
    out = run(ev, [reading("acvpu", "V", 1, manual=True)])
    assert changes(out, "acvpu") == [(1, R)]
    assert changes(out, "news2") == [(1, OR)]  # a 3 in one parameter: low-medium
    out = run(ev, [reading("o2", True, 2, manual=True)])  # +2 -> total 5: still orange
    assert changes(out, "news2") == []
    out = run(ev, [reading("acvpu", "A", 3, manual=True)])
    assert changes(out, "acvpu") == [(3, None)]
    with pytest.raises(ValidationError, match="person"):
        reading("acvpu", "V", 0)
    with pytest.raises(ValidationError):
        reading("acvpu", "Z", 0, manual=True)
    with pytest.raises(ValidationError):
        reading("o2", 1, 0)


def test_observed_oxygen_switches_scale_2_bands() -> None:
    book = LimitsBook()
    book.set_setting(SettingOverride("P1", "spo2_scale", 2, Validity(0), Provenance(CLI, "a", 0)))
    ev = Evaluator(book)
    assert run(ev, [reading("spo2", 97, 0)]) == []  # scale 2 on air: >= 88 scores 0
    run(ev, [reading("o2", True, 1, manual=True)])
    out = run(ev, [reading("spo2", 97, 2)])  # on oxygen, >= 97 scores 3
    assert changes(out, "spo2:high") == [(2, R)]


def test_patient_overrides_change_thresholds() -> None:
    book = LimitsBook()
    limits = QuantityLimits.build("spo2", None, [(R, 85, None)])
    book.set_limits(LimitOverride("P1", limits, Validity(0, 100), Provenance(CLI, "alice", 0)))
    ev = Evaluator(book)
    assert [c for c in run(ev, series("spo2", [88] * 40)) if c.key == "spo2:low"] == []
    out = run(ev, [reading("spo2", 84, 41)])
    assert changes(out, "spo2:low") == [(41, R)] and "cli by alice" in out[0].detail
    other = run(ev, [reading("spo2", 91, 42, patient="P2", device="D2")])
    assert changes(other, "spo2:low") == [(42, R)] and "default by NEWS2" in other[0].detail


def test_low_signal_quality_suppresses_and_raises_a_technical_alarm() -> None:
    ev = Evaluator(LimitsBook())
    out = run(ev, series("spo2", [70] * 8, signal_quality=20))
    assert [c.key for c in out] == ["low-signal:D1"]
    assert (out[0].grade, out[0].time, out[0].kind) == (B, 5, "artefact")
    out = run(ev, series("spo2", [97] * 6, start=8, signal_quality=90))
    assert changes(out, "low-signal:D1") == [(13, None)]


def test_finger_off_and_sensor_off_flags() -> None:
    ev = Evaluator(LimitsBook())
    out = run(ev, series("spo2", [0] * 6, finger_off=True))
    # At once, as the device's sensor-off event raises it: no persistence for a device's own
    # statement that nothing is measured.
    assert [(c.key, c.grade, c.time) for c in out] == [("sensor-off:D1", B, 0)]
    assert out[0].detail == "finger-off reported by sensor"  # the cause, in the detail
    out = run(ev, series("pr", [0] * 6, start=10, sensor_off=True, device="D2"))
    assert [(c.key, c.grade, c.time) for c in out] == [("sensor-off:D2", B, 10)]


def test_implausible_jumps_are_suppressed_until_the_new_level_holds() -> None:
    ev = Evaluator(LimitsBook())
    out = run(ev, series("spo2", [97, 97, 80, 97, 97]))  # one spike
    assert out == []
    # a step to a new level that holds: accepted after jump_confirm_after (5 s)
    out = run(ev, series("spo2", [70, 70, 69, 70, 70, 70, 70], start=5))
    assert changes(out, "spo2:low") == [(10, R)]
    assert changes(out, "implausible:D1") == []  # 5 s of suspicion, confirmed, never alarmed
    ev = Evaluator(LimitsBook())
    out = run(ev, [reading("spo2", 97, 0)] + series("spo2", [60, 40, 65, 30, 70, 35, 60, 40],
                                                    start=1))
    assert changes(out, "implausible:D1") == [(6, B)]  # erratic values never confirm a level
    assert not [c for c in out if c.grade is not None and c.grade.clinical]


def test_impossible_values_are_artefacts_not_alarms() -> None:
    ev = Evaluator(LimitsBook())
    out = run(ev, series("temp", [math.nan] * 6) + series("temp", [55.0] * 2, start=6))
    assert [(c.key, c.grade, c.time) for c in out] == [("implausible:D1", B, 5)]


def test_unit_mismatch_is_a_technical_alarm() -> None:
    book = LimitsBook()
    glucose = QuantityLimits.build("glucose", "mmol/L", [(R, 3.0, 20.0)])
    book.set_limits(LimitOverride("P1", glucose, Validity(0), Provenance(CLI, "a", 0)))
    ev = Evaluator(book)
    out = run(ev, [reading("glucose", 40, 0, unit="mg/dL", manual=True)])
    assert [(c.key, c.grade) for c in out] == [("unit-mismatch:glucose:D1", B)]
    out = run(ev, [reading("glucose", 2.5, 1, manual=True)])
    assert changes(out, "glucose:low") == [(1, R)]
    assert changes(out, "unit-mismatch:glucose:D1") == [(1, None)]


def test_device_and_gateway_technical_conditions() -> None:
    ev = Evaluator(LimitsBook())
    run(ev, [reading("spo2", 97, 0)])
    assert ev.tick(60) == []
    out = ev.tick(61)
    assert [(c.key, c.grade, c.patient) for c in out] == [("offline:D1", B, "P1")]
    assert ev.tick(62) == []
    assert changes(run(ev, [reading("spo2", 97, 63)]), "offline:D1") == [(63, None)]
    out = ev.device_status(DeviceStatus("D1", None, 70, battery=15, sensor_off=True,
                                        certificate_state="expiring",
                                        calibration_due=70 + 10 * 86400))
    assert sorted((c.key, c.grade) for c in out) == [
        ("battery-low:D1", B), ("calibration:D1", B), ("certificate:D1", B),
        ("sensor-off:D1", B)]
    assert "due in 10 days" in next(c.detail for c in out if c.key == "calibration:D1")
    out = ev.device_status(DeviceStatus("D1", None, 80, battery=80, sensor_off=False,
                                        certificate_state="valid",
                                        calibration_due=80 + 100 * 86400))
    assert sorted((c.key, c.grade) for c in out) == [
        ("battery-low:D1", None), ("calibration:D1", None), ("certificate:D1", None),
        ("sensor-off:D1", None)]
    out = run(ev, [reading("bat", 10, 90, unit="%EL")])
    assert changes(out, "battery-low:D1") == [(90, B)]
    out = ev.device_status(DeviceStatus("D2", "P2", 100, last_seen=0))
    assert [(c.key, c.patient) for c in out] == [("offline:D2", "P2")]
    out = ev.gateway_status(GatewayStatus(100, broker_refusing=True, disk_used=95,
                                          disk_budget=100))
    assert sorted((c.key, c.grade, c.patient) for c in out) == [
        ("broker-refusing", B, None), ("disk-budget", B, None)]
    out = ev.gateway_status(GatewayStatus(101, broker_refusing=False, disk_used=10,
                                          disk_budget=100))
    assert sorted((c.key, c.grade) for c in out) == [("broker-refusing", None),
                                                     ("disk-budget", None)]


def test_reading_validation() -> None:
    for bad in (dict(patient=""), dict(device=None), dict(quantity="lactate"),
                dict(value="97"), dict(value=True), dict(time=math.inf), dict(unit="Cel"),
                dict(signal_quality=101), dict(finger_off=1)):
        args = dict(patient="P1", device="D1", quantity="spo2", value=97, time=0.0)
        args.update(bad)
        with pytest.raises(ValidationError):
            Reading(**args)
    assert reading("spo2", 97, 0).unit == "%"
    with pytest.raises(ValidationError):
        EvaluatorConfig(persistence={Grade.RED: 1.0, OR: 1.0, Y: 1.0, B: 1.0})


_quantities = st.sampled_from(["spo2", "pr", "hr", "rr", "temp", "sys", "bat"])


@st.composite
def readings(draw) -> list[Reading]:
    out, t = [], 0.0
    for _ in range(draw(st.integers(1, 60))):
        t += draw(st.sampled_from([0.0, 0.5, 1.0, 3.0, 40.0]))
        quantity = draw(st.one_of(_quantities, st.just("acvpu"), st.just("o2")))
        kw = dict(patient=draw(st.sampled_from(["P1", "P2"])),
                  device=draw(st.sampled_from(["D1", "D2"])))
        if quantity == "acvpu":
            out.append(reading(quantity, draw(st.sampled_from("ACVPU")), t, manual=True, **kw))
            continue
        if quantity == "o2":
            out.append(reading(quantity, draw(st.booleans()), t, **kw))
            continue
        value = draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                               st.integers(-10, 400), st.floats(0, 300)))
        out.append(reading(
            quantity, value, t, unit="%EL" if quantity == "bat" else None,
            signal_quality=draw(st.one_of(st.none(), st.floats(0, 100))),
            finger_off=draw(st.booleans()), sensor_off=draw(st.booleans()),
            manual=draw(st.booleans()), **kw))
    return out


@given(readings())
def test_random_reading_streams_never_crash(stream) -> None:
    ev = Evaluator(LimitsBook())
    for r in stream:
        for c in ev.evaluate(r):
            assert c.kind in ("threshold", "news2", "rate", "artefact", "technical")
            assert c.grade is None or isinstance(c.grade, Grade)
        ev.tick(r.time)
    assert all(isinstance(g, Grade) for g in ev.active_conditions().values())


@given(st.sampled_from(["spo2", "pr", "rr", "temp", "sys"]), st.floats(0, 300), st.floats(0, 300))
def test_a_worse_value_never_yields_a_lower_grade(quantity, a, b) -> None:
    """Two fresh evaluators, one manual reading each: moving further below (or above) the
    normal range never lowers the grade of that side's condition."""
    def grade(value: float, side: str) -> int:
        ev = Evaluator(LimitsBook())
        try:
            out = ev.evaluate(reading(quantity, value, 0, manual=True))
        except ValidationError:
            return -1
        found = [c.grade for c in out if c.key == f"{quantity}:{side}"]
        return found[0] if found else -1

    lo, hi = min(a, b), max(a, b)
    low_possible, high_possible, _ = vitals.quantity(quantity)["limits"][
        vitals.canonical_unit(quantity)]
    if low_possible <= lo and hi <= high_possible:
        assert grade(lo, "low") >= grade(hi, "low")
        assert grade(hi, "high") >= grade(lo, "high")
