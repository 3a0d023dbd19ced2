"""Per-patient alarm limits: NEWS2 defaults, overrides with validity periods, provenance.

A `QuantityLimits` holds one band per clinical grade: the grade fires when the value is
below the band's `low` or above its `high`. Defaults come from the NEWS2 chart (score 3 ->
red, 2 -> orange, 1 -> yellow; see grades.py). A clinician overrides them per patient and
per quantity for a validity period, by a signed command from the monitoring centre or by
the gateway CLI; each override records who set it and how (`Provenance`).

`LimitsBook.resolve(patient, at)` answers "which limits are in force at this instant":
among the overrides valid at `at`, the one set last wins; otherwise the NEWS2 default. The
SpO2 scale (1 or 2) and whether the patient is on prescribed supplemental oxygen resolve
the same way (defaults: scale 1, air), because both change the default SpO2 bands. Pure
data, no I/O: the agent persists overrides and replays them into a book at start-up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache

from edge_agent.alarms import news2
from edge_agent.alarms.grades import CLINICAL_GRADES, Grade, score_for_grade
from protocol import limits as wire_limits
from protocol.errors import ValidationError

DEFAULT = "default"
CLI = "cli"
COMMAND = "command"
METHODS = (DEFAULT, CLI, COMMAND)
SPO2_SCALE = "spo2_scale"
SUPPLEMENTAL_OXYGEN = "oxygen"
SETTINGS = (SPO2_SCALE, SUPPLEMENTAL_OXYGEN)


@dataclass(frozen=True, slots=True)
class Band:
    """Alarm at `grade` when value < low or value > high (None: no bound on that side)."""

    grade: Grade
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class QuantityLimits:
    """The bands of one quantity, most severe first, validated by protocol.limits.check_bands
    (so the CLI and signed commands accept exactly the same limits)."""

    quantity: str
    unit: str
    bands: tuple[Band, ...]
    # Every value in [calm_low, calm_high] raises no band (NaN never is: it takes the loop).
    _calm_low: float = field(init=False, repr=False, compare=False)
    _calm_high: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lows = [band.low for band in self.bands if band.low is not None]
        highs = [band.high for band in self.bands if band.high is not None]
        object.__setattr__(self, "_calm_low", max(lows, default=-math.inf))
        object.__setattr__(self, "_calm_high", min(highs, default=math.inf))

    @classmethod
    def build(cls, quantity: str, unit: str | None,
              bands: Iterable[tuple[Grade | str, float | None, float | None]]) -> QuantityLimits:
        """Validated limits from (grade, low, high) triples. Raises ValidationError."""
        wire_bands = [(_grade_label(g), low, high) for g, low, high in bands]
        unit, checked = wire_limits.check_bands(quantity, unit, wire_bands)
        return cls(quantity, unit,
                   tuple(Band(Grade.from_label(g), low, high) for g, low, high in checked))

    def grade_low(self, value: float) -> Grade | None:
        """The most severe grade whose low bound `value` is below (None if none)."""
        for band in self.bands:  # most severe first
            if band.low is not None and value < band.low:
                return band.grade
        return None

    def grade_high(self, value: float) -> Grade | None:
        """The most severe grade whose high bound `value` is above (None if none)."""
        for band in self.bands:
            if band.high is not None and value > band.high:
                return band.grade
        return None

    def grades(self, value: float) -> tuple[Grade | None, Grade | None]:
        """(grade_low(value), grade_high(value)), at the cost of two comparisons for a value
        that raises neither (the common case)."""
        if self._calm_low <= value <= self._calm_high:
            return None, None
        return self.grade_low(value), self.grade_high(value)

    def grade(self, value: float) -> Grade | None:
        """The most severe grade `value` raises on either side."""
        low, high = self.grade_low(value), self.grade_high(value)
        if low is None or high is None:
            return low if high is None else high
        return max(low, high)

    def as_wire(self) -> tuple[str, tuple[tuple[str, float | None, float | None], ...]]:
        """(unit, ((grade label, low, high), ...)): the form protocol.limits carries."""
        return self.unit, tuple((b.grade.label, b.low, b.high) for b in self.bands)


def _grade_label(grade: Grade | str) -> str:
    return grade.label if isinstance(grade, Grade) else grade


@dataclass(frozen=True, slots=True)
class Provenance:
    """Who set a limit and how: method "default", "cli" (actor = operator) or "command"
    (actor = the command's issuer, command_id = its hex id); set_at = when it was set."""

    method: str
    actor: str
    set_at: float
    command_id: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValidationError("method", f"must be one of {', '.join(METHODS)}")
        if not self.actor:
            raise ValidationError("actor", "who set the limit must be named")
        if (self.command_id is None) == (self.method == COMMAND):
            raise ValidationError("command_id", "required for, and only for, signed commands")

    def describe(self) -> str:
        if self.method == COMMAND:
            return f"command {self.command_id} by {self.actor}"
        return f"{self.method} by {self.actor}"


NEWS2_PROVENANCE = Provenance(DEFAULT, "NEWS2 (RCP 2017)", 0.0)


@dataclass(frozen=True, slots=True)
class Validity:
    """valid_from <= t < valid_until (None: open-ended)."""

    valid_from: float
    valid_until: float | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.valid_from):
            raise ValidationError("valid_from", "must be a finite time")
        if self.valid_until is not None and not self.valid_until > self.valid_from:
            raise ValidationError("valid_until", "must be after valid_from")

    def contains(self, at: float) -> bool:
        return self.valid_from <= at and (self.valid_until is None or at < self.valid_until)


@dataclass(frozen=True, slots=True)
class LimitOverride:
    patient: str
    limits: QuantityLimits
    validity: Validity
    provenance: Provenance


@dataclass(frozen=True, slots=True)
class SettingOverride:
    """A prescribed SpO2 scale (1 or 2) or supplemental oxygen (True/False)."""

    patient: str
    setting: str
    value: int | bool
    validity: Validity
    provenance: Provenance

    def __post_init__(self) -> None:
        if self.setting == SPO2_SCALE:
            if type(self.value) is not int or self.value not in wire_limits.SPO2_SCALES:
                raise ValidationError(SPO2_SCALE, "must be 1 or 2")
        elif self.setting == SUPPLEMENTAL_OXYGEN:
            if not isinstance(self.value, bool):
                raise ValidationError(SUPPLEMENTAL_OXYGEN, "must be true or false")
        else:
            raise ValidationError("setting", f"must be one of {', '.join(SETTINGS)}")


@cache
def news2_default(quantity: str, scale: int = 1, on_oxygen: bool = False) -> QuantityLimits | None:
    """Default limits of a vitals quantity from its NEWS2 row (None: NEWS2 does not score it)."""
    parameter = news2.QUANTITY_PARAMETER.get(quantity)
    if parameter is None:
        return None
    row = news2.cells(parameter, scale, on_oxygen)
    bands = []
    for grade in CLINICAL_GRADES:
        low, high = news2.alarm_bounds(row, score_for_grade(grade))
        if low is not None or high is not None:
            bands.append((grade, low, high))
    return QuantityLimits.build(quantity, None, bands)


@dataclass(frozen=True, slots=True)
class ResolvedLimits:
    """The limits in force for one patient over [at, stable_until)."""

    patient: str
    at: float
    stable_until: float | None  # next instant an override starts or ends (None: never)
    spo2_scale: int
    on_oxygen: bool
    overrides: dict[str, LimitOverride] = field(default_factory=dict)
    setting_sources: dict[str, Provenance] = field(default_factory=dict)
    # for_quantity's answers: valid as long as this object, which LimitsBook replaces when
    # an override is added or the next validity boundary is reached
    _answers: dict[tuple[str, bool | None], QuantityLimits | None] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def for_quantity(self, quantity: str, on_oxygen: bool | None = None) -> QuantityLimits | None:
        """Limits of `quantity` (None if it has none). `on_oxygen`: an observed oxygen
        state that replaces the prescribed one for the default SpO2 scale-2 bands."""
        key = (quantity, on_oxygen)
        try:
            return self._answers[key]
        except KeyError:
            pass
        override = self.overrides.get(quantity)
        if override is not None:
            limits: QuantityLimits | None = override.limits
        else:
            oxygen = self.on_oxygen if on_oxygen is None else on_oxygen
            limits = news2_default(quantity, self.spo2_scale, oxygen)
        self._answers[key] = limits
        return limits

    def provenance(self, quantity: str) -> Provenance:
        override = self.overrides.get(quantity)
        return NEWS2_PROVENANCE if override is None else override.provenance


class LimitsBook:
    """All limit and setting overrides of the gateway's patients, resolved at an instant."""

    def __init__(self) -> None:
        self._limits: dict[str, list[LimitOverride]] = {}
        self._settings: dict[str, list[SettingOverride]] = {}
        self._cache: dict[str, ResolvedLimits] = {}

    def set_limits(self, override: LimitOverride) -> None:
        self._limits.setdefault(override.patient, []).append(override)
        self._cache.pop(override.patient, None)

    def set_setting(self, override: SettingOverride) -> None:
        self._settings.setdefault(override.patient, []).append(override)
        self._cache.pop(override.patient, None)

    def apply_command(self, command: wire_limits.LimitsCommand, applied_at: float) -> list[
            LimitOverride | SettingOverride]:
        """Turn a verified limit command into overrides and add them; returns them."""
        if not command.verified:
            raise ValidationError("command", "only a verified limit command may set limits")
        provenance = Provenance(COMMAND, command.issuer, applied_at, command.command_id.hex())
        validity = Validity(command.valid_from, command.valid_until)
        added: list[LimitOverride | SettingOverride] = []
        for quantity, (unit, bands) in sorted(command.limits.items()):
            limits = QuantityLimits.build(quantity, unit, bands)
            added.append(LimitOverride(command.patient, limits, validity, provenance))
        for setting, value in ((SPO2_SCALE, command.spo2_scale),
                               (SUPPLEMENTAL_OXYGEN, command.oxygen)):
            if value is not None:
                added.append(SettingOverride(command.patient, setting, value, validity, provenance))
        for item in added:
            if isinstance(item, LimitOverride):
                self.set_limits(item)
            else:
                self.set_setting(item)
        return added

    def overrides(self, patient: str) -> Sequence[LimitOverride]:
        return tuple(self._limits.get(patient, ()))

    def resolve(self, patient: str, at: float) -> ResolvedLimits:
        """The limits in force for `patient` at `at` (cached until the next boundary)."""
        cached = self._cache.get(patient)
        if cached is not None and cached.at <= at and (
                cached.stable_until is None or at < cached.stable_until):
            return cached
        resolved = self._resolve(patient, at)
        self._cache[patient] = resolved
        return resolved

    def _resolve(self, patient: str, at: float) -> ResolvedLimits:
        boundaries: list[float] = []
        chosen: dict[str, LimitOverride] = {}
        for override in self._limits.get(patient, ()):
            _note_boundaries(override.validity, at, boundaries)
            if override.validity.contains(at):
                # later entries were set later (or replayed in order): the last one wins
                if _newer(override.provenance, chosen.get(override.limits.quantity)):
                    chosen[override.limits.quantity] = override
        settings: dict[str, SettingOverride] = {}
        for setting in self._settings.get(patient, ()):
            _note_boundaries(setting.validity, at, boundaries)
            if setting.validity.contains(at) and _newer(setting.provenance,
                                                       settings.get(setting.setting)):
                settings[setting.setting] = setting
        scale = settings.get(SPO2_SCALE)
        oxygen = settings.get(SUPPLEMENTAL_OXYGEN)
        return ResolvedLimits(
            patient=patient,
            at=at,
            stable_until=min(boundaries) if boundaries else None,
            spo2_scale=1 if scale is None else int(scale.value),
            on_oxygen=False if oxygen is None else bool(oxygen.value),
            overrides=chosen,
            setting_sources={name: s.provenance for name, s in settings.items()},
        )


def _note_boundaries(validity: Validity, at: float, boundaries: list[float]) -> None:
    for edge in (validity.valid_from, validity.valid_until):
        if edge is not None and edge > at:
            boundaries.append(edge)


def _newer(candidate: Provenance, current: LimitOverride | SettingOverride | None) -> bool:
    return current is None or candidate.set_at >= current.provenance.set_at
