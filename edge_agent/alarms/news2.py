"""NEWS2, the Royal College of Physicians' National Early Warning Score 2 (RCP, 2017).

Chart 1 (the scoring system) as data, the aggregate score, Chart 2's clinical-risk
thresholds, and the alarm bounds each score implies. The full table with its source is in
docs/alarms.md. Pure functions, no state.

Each parameter's chart row is a tuple of cells (low, high, score), bounds inclusive as
printed on the chart (None = open-ended), in ascending order. The chart is printed at a
resolution (integers; 0.1 Cel for temperature); a measured value that falls between two
printed cells (SpO2 91.5 %, pulse 130.4/min) takes the more abnormal of the two cells, so a
value is never scored better than the chart's rounding could have scored it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Quantity names of the two manual observations NEWS2 needs beside the measured vitals.
CONSCIOUSNESS = "acvpu"  # value: one of ACVPU_LEVELS, entered by a person only
OXYGEN = "o2"  # value: True on supplemental oxygen, False on air
ACVPU_LEVELS = ("A", "C", "V", "P", "U")  # Alert, new Confusion, Voice, Pain, Unresponsive

Cell = tuple[float | None, float | None, int]

RESPIRATION: tuple[Cell, ...] = ((None, 8, 3), (9, 11, 1), (12, 20, 0), (21, 24, 2), (25, None, 3))
SPO2_SCALE_1: tuple[Cell, ...] = ((None, 91, 3), (92, 93, 2), (94, 95, 1), (96, None, 0))
# Scale 2 (target 88-92 %, e.g. hypercapnic respiratory failure, on clinical direction only):
# >= 93 scores 0 on air; on oxygen 93-94 scores 1, 95-96 scores 2, >= 97 scores 3.
SPO2_SCALE_2_AIR: tuple[Cell, ...] = ((None, 83, 3), (84, 85, 2), (86, 87, 1), (88, None, 0))
SPO2_SCALE_2_OXYGEN: tuple[Cell, ...] = (
    (None, 83, 3), (84, 85, 2), (86, 87, 1), (88, 92, 0), (93, 94, 1), (95, 96, 2), (97, None, 3))
SYSTOLIC: tuple[Cell, ...] = ((None, 90, 3), (91, 100, 2), (101, 110, 1), (111, 219, 0),
                              (220, None, 3))
PULSE: tuple[Cell, ...] = ((None, 40, 3), (41, 50, 1), (51, 90, 0), (91, 110, 1), (111, 130, 2),
                           (131, None, 3))
TEMPERATURE: tuple[Cell, ...] = ((None, 35.0, 3), (35.1, 36.0, 1), (36.1, 38.0, 0),
                                 (38.1, 39.0, 1), (39.1, None, 2))
OXYGEN_SCORE = 2  # "Air or oxygen?": oxygen scores 2, air 0
CONSCIOUSNESS_SCORE = 3  # any of C, V, P, U scores 3; Alert 0

# The five measured parameters and the vitals quantities that feed them (a pulse from an
# oximeter "pr" and a heart rate from ECG "hr" are both NEWS2's pulse).
MEASURED = ("rr", "spo2", "sys", "pulse", "temp")
QUANTITY_PARAMETER = {"rr": "rr", "spo2": "spo2", "sys": "sys", "hr": "pulse", "pr": "pulse",
                      "temp": "temp"}
_ROWS = {"rr": RESPIRATION, "sys": SYSTOLIC, "pulse": PULSE, "temp": TEMPERATURE}

RISKS = ("low", "low-medium", "medium", "high")


def spo2_cells(scale: int, on_oxygen: bool) -> tuple[Cell, ...]:
    """The SpO2 row for `scale` (1 or 2); only scale 2 depends on oxygen."""
    if scale == 1:
        return SPO2_SCALE_1
    if scale == 2:
        return SPO2_SCALE_2_OXYGEN if on_oxygen else SPO2_SCALE_2_AIR
    raise ValueError(f"SpO2 scale must be 1 or 2, not {scale!r}")


def cells(parameter: str, scale: int = 1, on_oxygen: bool = False) -> tuple[Cell, ...]:
    """The chart row of a measured parameter (one of MEASURED)."""
    if parameter == "spo2":
        return spo2_cells(scale, on_oxygen)
    try:
        return _ROWS[parameter]
    except KeyError:
        raise ValueError(f"not a measured NEWS2 parameter: {parameter!r}") from None


def score_cells(row: Sequence[Cell], value: float) -> int:
    """The score of `value` in a chart row; between two printed cells, the higher score."""
    previous = None
    for low, high, score in row:
        if high is None or value <= high:
            if low is None or value >= low:
                return score
            return score if previous is None else max(previous, score)
        previous = score
    raise AssertionError("a chart row ends with an open-ended cell")


def score(parameter: str, value: float, scale: int = 1, on_oxygen: bool = False) -> int:
    """NEWS2 score (0..3) of one measured parameter."""
    return score_cells(cells(parameter, scale, on_oxygen), value)


def consciousness_score(level: str) -> int:
    """0 for Alert, 3 for new Confusion, Voice, Pain or Unresponsive."""
    if level not in ACVPU_LEVELS:
        raise ValueError(f"consciousness must be one of {''.join(ACVPU_LEVELS)}")
    return 0 if level == "A" else CONSCIOUSNESS_SCORE


def oxygen_score(on_oxygen: bool) -> int:
    return OXYGEN_SCORE if on_oxygen else 0


def clinical_risk(total: int, any_three: bool) -> str:
    """Chart 2: 0-4 low, a 3 in any single parameter low-medium, 5-6 medium, >= 7 high."""
    if total >= 7:
        return "high"
    if total >= 5:
        return "medium"
    if any_three:
        return "low-medium"
    return "low"


@dataclass(frozen=True, slots=True)
class News2Score:
    total: int
    parts: dict[str, int]  # parameter -> score, including "o2" and "acvpu"
    risk: str  # one of RISKS

    @property
    def any_three(self) -> bool:
        return any(part == 3 for part in self.parts.values())


def aggregate(rr: float, spo2: float, sys: float, pulse: float, temp: float,
              consciousness: str = "A", on_oxygen: bool = False, scale: int = 1) -> News2Score:
    """The NEWS2 aggregate of one complete set of observations."""
    parts = {
        "rr": score("rr", rr),
        "spo2": score("spo2", spo2, scale, on_oxygen),
        OXYGEN: oxygen_score(on_oxygen),
        "sys": score("sys", sys),
        "pulse": score("pulse", pulse),
        CONSCIOUSNESS: consciousness_score(consciousness),
        "temp": score("temp", temp),
    }
    total = sum(parts.values())
    return News2Score(total, parts, clinical_risk(total, any(p == 3 for p in parts.values())))


def alarm_bounds(row: Sequence[Cell], threshold: int) -> tuple[float | None, float | None]:
    """(low, high) such that a value scores >= `threshold` exactly when value < low or
    value > high (None = no bound on that side), given scores that never fall moving away
    from the 0 cell, as on every NEWS2 row."""
    zero = next(i for i, cell in enumerate(row) if cell[2] == 0)
    low_index = zero
    while low_index > 0 and row[low_index - 1][2] < threshold:
        low_index -= 1
    high_index = zero
    while high_index < len(row) - 1 and row[high_index + 1][2] < threshold:
        high_index += 1
    low = row[low_index][0] if low_index > 0 else None
    high = row[high_index][1] if high_index < len(row) - 1 else None
    return low, high
