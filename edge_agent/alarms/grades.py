"""The four alarm grades and how NEWS2 results map onto them.

Grades follow IEC 60601-1-8 alarm priorities: red = high priority (latching: the alarm
signal stays until a person acknowledges it, even if the condition has gone), orange =
medium, yellow = low, blue = information / technical alarm. The order of the enum is the
order of severity, so `max()` of grades is the most severe one.

Clinical mapping (reasons in docs/alarms.md):
- a single NEWS2 parameter score of 3 -> red, 2 -> orange, 1 -> yellow;
- the NEWS2 aggregate: high risk (>= 7) -> red; medium (5-6) and low-medium (a 3 in one
  parameter, total < 5) -> orange; low (0-4 without a 3) -> no aggregate alarm.
"""

from __future__ import annotations

from enum import IntEnum

from protocol import limits as wire_limits


class Grade(IntEnum):
    # Values start at 1 so that no grade is falsy: `if grade:` must never drop blue.
    BLUE = 1
    YELLOW = 2
    ORANGE = 3
    RED = 4

    @property
    def label(self) -> str:
        """The lower-case name used on the wire and in the journal: "red", "blue", ..."""
        return self.name.lower()

    @property
    def iec_priority(self) -> str:
        """The IEC 60601-1-8 alarm priority this grade stands for."""
        return _IEC_PRIORITY[self]

    @property
    def latching(self) -> bool:
        """A latching alarm signal persists until acknowledged, even if the condition ends."""
        return self is Grade.RED

    @property
    def clinical(self) -> bool:
        """True for physiological alarms; blue is the information/technical grade."""
        return self is not Grade.BLUE

    @classmethod
    def from_label(cls, label: str) -> Grade:
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"unknown grade {label!r}") from None


_IEC_PRIORITY = {
    Grade.RED: "high",
    Grade.ORANGE: "medium",
    Grade.YELLOW: "low",
    Grade.BLUE: "information",
}

# Wire grade names of protocol.limits match the enum labels (checked in tests).
CLINICAL_GRADES = tuple(Grade.from_label(name) for name in wire_limits.GRADES)

# NEWS2 single-parameter score -> grade of the single-parameter alarm.
_PARAMETER_SCORE_GRADE = {3: Grade.RED, 2: Grade.ORANGE, 1: Grade.YELLOW}

# NEWS2 clinical risk (news2.clinical_risk) -> grade of the aggregate alarm.
_RISK_GRADE = {"high": Grade.RED, "medium": Grade.ORANGE, "low-medium": Grade.ORANGE}


def grade_for_parameter_score(score: int) -> Grade | None:
    """The grade a single NEWS2 parameter score raises (None for 0)."""
    return _PARAMETER_SCORE_GRADE.get(score)


def score_for_grade(grade: Grade) -> int:
    """The lowest NEWS2 parameter score that raises `grade` (clinical grades only)."""
    for score, mapped in _PARAMETER_SCORE_GRADE.items():
        if mapped is grade:
            return score
    raise ValueError(f"{grade.label} is not a clinical grade")


def grade_for_risk(risk: str) -> Grade | None:
    """The grade of the NEWS2 aggregate alarm for a clinical risk (None for "low")."""
    return _RISK_GRADE.get(risk)
