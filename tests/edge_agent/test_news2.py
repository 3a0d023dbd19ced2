"""NEWS2 against the RCP 2017 chart, cell by cell, and the grade mapping built on it."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.alarms import news2
from edge_agent.alarms.grades import (
    CLINICAL_GRADES,
    Grade,
    grade_for_parameter_score,
    grade_for_risk,
    score_for_grade,
)
from protocol import limits as wire_limits

# Chart 1 of RCP NEWS2 (2017), written out independently of the module's tables: every
# printed cell's two edges, plus values between cells (which take the worse cell).
CHART_POINTS = {
    ("rr", 1, False): [(0, 3), (8, 3), (8.5, 3), (9, 1), (11, 1), (11.5, 1), (12, 0), (20, 0),
                       (20.5, 2), (21, 2), (24, 2), (24.5, 3), (25, 3), (60, 3)],
    ("spo2", 1, False): [(50, 3), (91, 3), (91.5, 3), (92, 2), (93, 2), (94, 1), (95, 1),
                         (95.9, 1), (96, 0), (100, 0)],
    ("spo2", 1, True): [(91, 3), (92, 2), (95, 1), (96, 0), (100, 0)],  # O2 scored separately
    ("spo2", 2, False): [(83, 3), (84, 2), (85, 2), (86, 1), (87, 1), (88, 0), (92, 0), (93, 0),
                         (100, 0)],
    ("spo2", 2, True): [(83, 3), (83.5, 3), (84, 2), (85, 2), (86, 1), (87, 1), (88, 0), (92, 0),
                        (92.5, 1), (93, 1), (94, 1), (95, 2), (96, 2), (97, 3), (100, 3)],
    ("sys", 1, False): [(60, 3), (90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (110.5, 1),
                        (111, 0), (219, 0), (219.5, 3), (220, 3)],
    ("pulse", 1, False): [(20, 3), (40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1),
                          (111, 2), (130, 2), (130.2, 3), (131, 3)],
    ("temp", 1, False): [(33, 3), (35.0, 3), (35.05, 3), (35.1, 1), (36.0, 1), (36.1, 0),
                         (38.0, 0), (38.05, 1), (38.1, 1), (39.0, 1), (39.1, 2), (41, 2)],
}


@pytest.mark.parametrize("row", sorted(CHART_POINTS), ids=str)
def test_every_chart_cell(row) -> None:
    parameter, scale, on_oxygen = row
    for value, expected in CHART_POINTS[row]:
        assert news2.score(parameter, value, scale, on_oxygen) == expected, (row, value)


def test_manual_parameters() -> None:
    assert news2.consciousness_score("A") == 0
    assert [news2.consciousness_score(level) for level in "CVPU"] == [3, 3, 3, 3]
    with pytest.raises(ValueError):
        news2.consciousness_score("X")
    assert news2.oxygen_score(True) == 2 and news2.oxygen_score(False) == 0
    with pytest.raises(ValueError):
        news2.cells("spo2", scale=3)
    with pytest.raises(ValueError):
        news2.cells("glucose")


@pytest.mark.parametrize("total, any_three, risk", [
    (0, False, "low"), (4, False, "low"), (3, True, "low-medium"), (4, True, "low-medium"),
    (5, False, "medium"), (6, True, "medium"), (7, False, "high"), (20, True, "high"),
])
def test_clinical_risk_thresholds(total, any_three, risk) -> None:
    assert news2.clinical_risk(total, any_three) == risk


def test_aggregate_examples() -> None:
    normal = news2.aggregate(rr=16, spo2=97, sys=125, pulse=72, temp=36.8)
    assert normal.total == 0 and normal.risk == "low" and not normal.any_three
    # rr 22 (2) + SpO2 93 (2) + oxygen (2) + pulse 95 (1) = 7
    sick = news2.aggregate(rr=22, spo2=93, sys=125, pulse=95, temp=37, on_oxygen=True)
    assert sick.total == 7 and sick.risk == "high"
    assert sick.parts == {"rr": 2, "spo2": 2, "o2": 2, "sys": 0, "pulse": 1, "acvpu": 0,
                          "temp": 0}
    confused = news2.aggregate(rr=16, spo2=97, sys=125, pulse=72, temp=36.8, consciousness="C")
    assert confused.total == 3 and confused.risk == "low-medium" and confused.any_three
    # Scale 2 on oxygen: SpO2 97 scores 3 (over-oxygenation), plus 2 for oxygen
    copd = news2.aggregate(rr=16, spo2=97, sys=125, pulse=72, temp=36.8, on_oxygen=True, scale=2)
    assert copd.parts["spo2"] == 3 and copd.total == 5 and copd.risk == "medium"
    worst = news2.aggregate(rr=30, spo2=80, sys=80, pulse=150, temp=34, consciousness="U",
                            on_oxygen=True)
    assert worst.total == 20


ROWS = [news2.RESPIRATION, news2.SPO2_SCALE_1, news2.SPO2_SCALE_2_AIR, news2.SPO2_SCALE_2_OXYGEN,
        news2.SYSTOLIC, news2.PULSE, news2.TEMPERATURE]


@given(st.sampled_from(ROWS), st.integers(1, 3), st.floats(0, 300, allow_nan=False))
def test_alarm_bounds_agree_with_scoring(row, threshold, value) -> None:
    low, high = news2.alarm_bounds(row, threshold)
    outside = (low is not None and value < low) or (high is not None and value > high)
    assert (news2.score_cells(row, value) >= threshold) == outside


@given(st.sampled_from(ROWS), st.floats(0, 300), st.floats(0, 300))
def test_scores_never_fall_moving_away_from_normal(row, a, b) -> None:
    zero_low = next(c for c in row if c[2] == 0)[0] or 0
    if a <= b <= zero_low:  # both below the normal cell: the lower value scores at least as high
        assert news2.score_cells(row, a) >= news2.score_cells(row, b)
    zero_high = next(c for c in row if c[2] == 0)[1]
    if zero_high is not None and zero_high <= a <= b:
        assert news2.score_cells(row, b) >= news2.score_cells(row, a)


def test_grade_mapping() -> None:
    assert [grade_for_parameter_score(s) for s in range(4)] == [
        None, Grade.YELLOW, Grade.ORANGE, Grade.RED]
    assert [score_for_grade(g) for g in (Grade.YELLOW, Grade.ORANGE, Grade.RED)] == [1, 2, 3]
    with pytest.raises(ValueError):
        score_for_grade(Grade.BLUE)
    assert [grade_for_risk(r) for r in news2.RISKS] == [
        None, Grade.ORANGE, Grade.ORANGE, Grade.RED]
    assert Grade.RED.latching and not Grade.ORANGE.latching and not Grade.BLUE.clinical
    assert [g.iec_priority for g in Grade] == ["information", "low", "medium", "high"]
    assert max(Grade.YELLOW, Grade.RED, Grade.BLUE) is Grade.RED
    assert tuple(g.label for g in CLINICAL_GRADES) == wire_limits.GRADES
    assert Grade.from_label("orange") is Grade.ORANGE
    with pytest.raises(ValueError):
        Grade.from_label("purple")
