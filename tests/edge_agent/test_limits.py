"""Per-patient limits: NEWS2 defaults, overrides in time, settings, provenance, commands."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.alarms.grades import Grade
from edge_agent.alarms.limits import (
    CLI,
    COMMAND,
    LimitOverride,
    LimitsBook,
    Provenance,
    QuantityLimits,
    SettingOverride,
    Validity,
    news2_default,
)
from protocol import crypto
from protocol import limits as wire_limits
from protocol.errors import ValidationError

R, OR, Y = Grade.RED, Grade.ORANGE, Grade.YELLOW
ALICE = Provenance(CLI, "alice", 100.0)
ORG_SEED = b"\x07" * 32


def bands(limits: QuantityLimits) -> list[tuple[Grade, float | None, float | None]]:
    return [(b.grade, b.low, b.high) for b in limits.bands]


def test_defaults_follow_the_news2_chart() -> None:
    assert bands(news2_default("spo2")) == [(R, 92, None), (OR, 94, None), (Y, 96, None)]
    assert bands(news2_default("rr")) == [(R, 9, 24), (OR, 9, 20), (Y, 12, 20)]
    assert bands(news2_default("sys")) == [(R, 91, 219), (OR, 101, 219), (Y, 111, 219)]
    assert bands(news2_default("pr")) == [(R, 41, 130), (OR, 41, 110), (Y, 51, 90)]
    assert news2_default("hr") == QuantityLimits("hr", "beat/min", news2_default("pr").bands)
    assert bands(news2_default("temp")) == [(R, 35.1, None), (OR, 35.1, 39.0), (Y, 36.1, 38.0)]
    assert bands(news2_default("spo2", 2, False)) == [(R, 84, None), (OR, 86, None), (Y, 88, None)]
    assert bands(news2_default("spo2", 2, True)) == [(R, 84, 96), (OR, 86, 94), (Y, 88, 92)]
    assert news2_default("glucose") is None and news2_default("dia") is None


def test_grades_of_values() -> None:
    spo2 = news2_default("spo2")
    assert [spo2.grade(v) for v in (97, 96, 95, 93.5, 92, 91.9, 70)] == [
        None, None, Y, OR, OR, R, R]
    pulse = news2_default("pr")
    assert (pulse.grade_low(45), pulse.grade_high(45)) == (Y, None)
    assert [pulse.grade(v) for v in (40, 41, 50, 51, 90, 91, 111, 131)] == [
        R, Y, Y, None, None, Y, OR, R]


def test_build_validates_like_the_wire() -> None:
    limits = QuantityLimits.build("spo2", None, [(R, 88, None), ("orange", 90, None)])
    assert limits.unit == "%" and limits.as_wire() == ("%", (("red", 88, None),
                                                             ("orange", 90, None)))
    for bad in ([(R, 90, 80)], [(Grade.BLUE, 80, None)], [(R, 95, None), (Y, None, 90)]):
        with pytest.raises(ValidationError):
            QuantityLimits.build("spo2", None, bad)


@st.composite
def quantity_limits(draw) -> QuantityLimits:
    grades = draw(st.lists(st.sampled_from([R, OR, Y]), min_size=1, max_size=3, unique=True))
    centre = draw(st.floats(20, 80))
    result = []
    for grade in grades:
        low = draw(st.one_of(st.none(), st.floats(0, centre)))
        high = draw(st.one_of(st.none(), st.floats(centre, 100)))
        if low is None and high is None:
            low = centre
        result.append((grade, low, high))
    return QuantityLimits.build("spo2", None, result)


@given(quantity_limits(), st.floats(0, 100), st.floats(0, 100))
def test_a_worse_value_never_yields_a_lower_grade(limits, a, b) -> None:
    lo, hi = min(a, b), max(a, b)
    rank = {None: -1, Y: 1, OR: 2, R: 3}
    assert rank[limits.grade_low(lo)] >= rank[limits.grade_low(hi)]
    assert rank[limits.grade_high(hi)] >= rank[limits.grade_high(lo)]


def override(quantity: str, band: list, start: float, end: float | None,
             provenance: Provenance = ALICE, patient: str = "P1") -> LimitOverride:
    return LimitOverride(patient, QuantityLimits.build(quantity, None, band),
                         Validity(start, end), provenance)


def test_overrides_apply_only_within_their_validity() -> None:
    book = LimitsBook()
    book.set_limits(override("spo2", [(R, 88, None)], 1000, 2000))
    assert book.resolve("P1", 999).for_quantity("spo2") == news2_default("spo2")
    at_start = book.resolve("P1", 1000)
    assert bands(at_start.for_quantity("spo2")) == [(R, 88, None)]
    assert at_start.provenance("spo2") == ALICE and at_start.provenance("pr").method == "default"
    assert at_start.for_quantity("pr") == news2_default("pr")
    assert book.resolve("P1", 1999.9).for_quantity("spo2").bands[0].low == 88
    assert book.resolve("P1", 2000).for_quantity("spo2") == news2_default("spo2")
    assert book.resolve("P2", 1500).for_quantity("spo2") == news2_default("spo2")


def test_the_override_set_last_wins_and_the_cache_follows_boundaries() -> None:
    book = LimitsBook()
    book.set_limits(override("spo2", [(R, 88, None)], 0, None, Provenance(CLI, "alice", 10)))
    book.set_limits(override("spo2", [(R, 85, None)], 500, 600, Provenance(CLI, "bob", 20)))
    first = book.resolve("P1", 100)
    assert first.for_quantity("spo2").bands[0].low == 88 and first.stable_until == 500
    assert book.resolve("P1", 200) is first  # cached while nothing changes
    during = book.resolve("P1", 550)
    assert during.for_quantity("spo2").bands[0].low == 85 and during.stable_until == 600
    assert during.provenance("spo2").actor == "bob"
    assert book.resolve("P1", 600).for_quantity("spo2").bands[0].low == 88
    assert book.resolve("P1", 50).for_quantity("spo2").bands[0].low == 88  # going back in time
    # an older prescription added later does not displace a newer one
    book.set_limits(override("spo2", [(R, 80, None)], 0, None, Provenance(CLI, "carol", 5)))
    assert book.resolve("P1", 700).for_quantity("spo2").bands[0].low == 88


def test_settings_change_the_default_spo2_bands() -> None:
    book = LimitsBook()
    book.set_setting(SettingOverride("P1", "spo2_scale", 2, Validity(0), ALICE))
    resolved = book.resolve("P1", 10)
    assert resolved.spo2_scale == 2 and not resolved.on_oxygen
    assert resolved.for_quantity("spo2") == news2_default("spo2", 2, False)
    assert resolved.for_quantity("spo2", on_oxygen=True) == news2_default("spo2", 2, True)
    book.set_setting(SettingOverride("P1", "oxygen", True, Validity(20, 30), ALICE))
    assert book.resolve("P1", 25).for_quantity("spo2") == news2_default("spo2", 2, True)
    assert book.resolve("P1", 25).setting_sources["oxygen"] == ALICE
    assert book.resolve("P1", 30).on_oxygen is False
    for setting, value in (("spo2_scale", 3), ("spo2_scale", True), ("oxygen", 1), ("x", 1)):
        with pytest.raises(ValidationError):
            SettingOverride("P1", setting, value, Validity(0), ALICE)


def test_provenance_and_validity_rules() -> None:
    assert ALICE.describe() == "cli by alice"
    signed = Provenance(COMMAND, "dr.ada", 1.0, "00ff")
    assert signed.describe() == "command 00ff by dr.ada"
    for bad in (lambda: Provenance("email", "x", 0), lambda: Provenance(CLI, "", 0),
                lambda: Provenance(COMMAND, "x", 0), lambda: Provenance(CLI, "x", 0, "00"),
                lambda: Validity(10, 10), lambda: Validity(float("nan"))):
        with pytest.raises(ValidationError):
            bad()
    assert Validity(0, 10).contains(0) and not Validity(0, 10).contains(10)


def test_verified_commands_become_overrides_with_their_provenance() -> None:
    data = wire_limits.build_command(
        ORG_SEED, b"\xab" * 16, "P1", 1000, 1000, {"spo2": (None, [("red", 86, None)])},
        "dr.ada@centre", valid_until=5000, spo2_scale=2)
    command = wire_limits.verify_command(data, crypto.ed25519_public_key(ORG_SEED))
    book = LimitsBook()
    added = book.apply_command(command, applied_at=1001.5)
    assert len(added) == 2
    resolved = book.resolve("P1", 2000)
    assert bands(resolved.for_quantity("spo2")) == [(R, 86, None)] and resolved.spo2_scale == 2
    source = resolved.provenance("spo2")
    assert (source.method, source.actor, source.command_id, source.set_at) == (
        "command", "dr.ada@centre", "ab" * 16, 1001.5)
    assert book.resolve("P1", 5000).spo2_scale == 1
    unverified = wire_limits.parse_command(data)
    with pytest.raises(ValidationError, match="verified"):
        LimitsBook().apply_command(unverified, applied_at=0)
