"""The vitals vocabulary (protocol/vitals.py): table shape, codes, units and ranges."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import vitals
from protocol.errors import ValidationError

FIXED_NAMES = {
    "hr", "pr", "spo2", "temp", "sys", "dia", "map", "rr", "weight", "glucose", "pi", "bat", "sq",
}

# RFC 8428 Table 6 (SenML Units registry, initial contents), as published.
RFC8428_UNITS = {
    "m", "kg", "g", "s", "A", "K", "cd", "mol", "Hz", "rad", "sr", "N", "Pa", "J", "W", "C",
    "V", "F", "Ohm", "S", "Wb", "T", "H", "Cel", "lm", "lx", "Bq", "Gy", "Sv", "kat", "m2",
    "m3", "l", "m/s", "m/s2", "m3/s", "l/s", "W/m2", "cd/m2", "bit", "bit/s", "lat", "lon",
    "pH", "dB", "dBW", "Bspl", "count", "/", "%", "%RH", "%EL", "EL", "1/s", "1/min",
    "beat/min", "beats", "S/m",
}

# IEEE 11073-10101 (partition, term code) for each reference id the table uses, as found
# in public nomenclature headers (docs/vitals.md); context-free code = partition << 16 | term.
MDC_TERMS = {
    "MDC_ECG_HEART_RATE": (2, 16770),
    "MDC_PULS_OXIM_PULS_RATE": (2, 18458),
    "MDC_PULS_OXIM_SAT_O2": (2, 19384),
    "MDC_TEMP_BODY": (2, 19292),
    "MDC_PRESS_BLD_NONINV_SYS": (2, 18949),
    "MDC_PRESS_BLD_NONINV_DIA": (2, 18950),
    "MDC_PRESS_BLD_NONINV_MEAN": (2, 18951),
    "MDC_RESP_RATE": (2, 20490),
    "MDC_MASS_BODY_ACTUAL": (2, 57664),
    "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD": (2, 29112),
    "MDC_PULS_OXIM_PERF_REL": (2, 19376),
    "MDC_ATTR_VAL_BATT_CHARGE": (1, 2460),
}


def loinc_check_digit(body: str) -> int:
    """LOINC mod-10 check digit: double every other digit from the right, sum digits."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            total += d // 10 + d % 10
        else:
            total += d
    return (10 - total % 10) % 10


def test_table_has_exactly_the_fixed_names() -> None:
    assert set(vitals.QUANTITIES) == FIXED_NAMES


@pytest.mark.parametrize("name", sorted(FIXED_NAMES))
def test_entry_shape(name: str) -> None:
    entry = vitals.QUANTITIES[name]
    assert entry["description"]
    assert entry["units"] and set(entry["limits"]) == set(entry["units"])
    for low, high, resolution in entry["limits"].values():
        assert low < high and resolution > 0
    assert vitals.canonical_unit(name) == entry["units"][0]


@pytest.mark.parametrize("name", sorted(FIXED_NAMES))
def test_loinc_codes_are_well_formed(name: str) -> None:
    for code in vitals.QUANTITIES[name]["loinc"]:
        body, check = code.split("-")
        assert body.isdigit() and loinc_check_digit(body) == int(check), code


@pytest.mark.parametrize("name", sorted(FIXED_NAMES))
def test_mdc_codes_match_partition_and_term(name: str) -> None:
    mdc = vitals.QUANTITIES[name]["mdc"]
    if mdc is None:
        assert name == "sq"  # the only quantity without a verified 11073 term
        return
    refid, code = mdc
    partition, term = MDC_TERMS[refid]
    assert code == (partition << 16) | term


def test_senml_units_are_registered_and_percent_is_not_claimed() -> None:
    assert set(vitals.SENML_UNITS) <= RFC8428_UNITS
    # SenML "%" is a 0..1 ratio (RFC 8428 Note 2): percent must never travel as SenML "%".
    assert "%" not in vitals.SENML_UNITS


def test_units_not_in_senml_are_ucum_only_where_senml_has_none() -> None:
    ucum = {u for e in vitals.QUANTITIES.values() for u in e["units"]} - set(vitals.SENML_UNITS)
    assert ucum == {"%", "mm[Hg]", "mmol/L", "mg/dL"}


def test_unknown_quantity() -> None:
    with pytest.raises(ValidationError) as err:
        vitals.quantity("heartrate")
    assert err.value.field == "n"
    with pytest.raises(ValidationError):
        vitals.quantity(None)


def test_critical_values_pass_the_possible_range() -> None:
    # Asystole, apnoea and deep desaturation are alarms, not garbage.
    vitals.check_value("hr", 0)
    vitals.check_value("rr", 0)
    vitals.check_value("spo2", 40)
    vitals.check_value("temp", 13.7)  # lowest survived accidental hypothermia
    vitals.check_value("glucose", 1.0)


@pytest.mark.parametrize(
    ("name", "value", "unit", "field"),
    [
        ("hr", 351, None, "v"),
        ("hr", -1, None, "v"),
        ("spo2", 100.5, None, "v"),
        ("temp", 60, "Cel", "v"),
        ("glucose", 5.5, "mg/dL", "v"),  # 5.5 mg/dL is impossible: a wrong-unit tell
        ("glucose", 151, "mmol/L", "v"),
        ("sys", 120, "Pa", "u"),
        ("temp", 98.6, "degF", "u"),
        ("hr", float("nan"), None, "v"),
        ("hr", float("inf"), None, "v"),
        ("hr", True, None, "v"),
        ("hr", "72", None, "v"),
        ("nope", 1, None, "n"),
    ],
)
def test_check_value_names_the_field(name: str, value: object, unit: str, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        vitals.check_value(name, value, unit)
    assert err.value.field == field


@given(st.sampled_from(sorted(FIXED_NAMES)), st.data())
def test_range_is_inclusive_and_exact(name: str, data: st.DataObject) -> None:
    entry = vitals.QUANTITIES[name]
    unit = data.draw(st.sampled_from(entry["units"]))
    low, high, _ = entry["limits"][unit]
    inside = data.draw(st.floats(min_value=low, max_value=high, allow_nan=False))
    assert vitals.check_value(name, inside, unit) == unit
    outside = data.draw(
        st.one_of(
            st.floats(max_value=low, exclude_max=True, allow_nan=False),
            st.floats(min_value=high, exclude_min=True, allow_nan=False),
        )
    )
    with pytest.raises(ValidationError) as err:
        vitals.check_value(name, outside, unit)
    assert err.value.field == "v"


def test_is_finite() -> None:
    assert vitals.is_finite(2**70) and vitals.is_finite(-0.0)
    assert not vitals.is_finite(math.nan) and not vitals.is_finite(-math.inf)
    assert not vitals.is_finite(False)
