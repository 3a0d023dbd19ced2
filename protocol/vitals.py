"""The VitalBridge vitals vocabulary: every quantity name a SenML record may carry.

One table, `QUANTITIES`, maps each fixed quantity name ("hr", "spo2", ...) to what it
means (description, LOINC and IEEE 11073-10101 codes), which units it may be expressed in
(canonical first) and, per unit, the range of values that is physically possible for a
living patient or a working sensor, plus the resolution the wire carries. The possible
range is deliberately wide: it rejects garbage, never a real critical value (asystole
hr 0, apnoea rr 0 and SpO2 40 % must all reach the alarm engine). Clinical limits live
in the alarm rules, not here. Sources and reasoning: docs/vitals.md.

Units are identified by the token that travels on the wire. Tokens in `SENML_UNITS` are
registered SenML units (RFC 8428 section 12.1) and travel in the SenML Unit field; the
others are UCUM codes that SenML has no unit for ("%" percent, "mm[Hg]", "mg/dL",
"mmol/L") and travel in the VitalBridge UCUM-unit extension field (docs/senml.md).
Note that SenML's own "%" is a 0..1 ratio, not a percentage, so it is not used here.

Runs on MicroPython: plain dicts and tuples only.
"""

from protocol.errors import ValidationError

# Registered SenML units this vocabulary uses; they must travel in the SenML `u` field.
SENML_UNITS = ("beat/min", "1/min", "Cel", "kg", "%EL")


def _entry(description, units, ranges, resolution, loinc, mdc):
    # units: canonical first; ranges/resolution: one value per unit, same order.
    table = {}
    for i in range(len(units)):
        table[units[i]] = (ranges[i][0], ranges[i][1], resolution[i])
    return {
        "description": description,
        "units": units,
        "limits": table,  # unit -> (lowest possible, highest possible, resolution)
        "loinc": loinc,  # LOINC codes, most specific first; () if none is verified
        "mdc": mdc,  # (IEEE 11073-10101 reference id, context-free code) or None
    }


QUANTITIES = {
    "hr": _entry(
        "Heart rate (beats per minute, e.g. from ECG)",
        ("beat/min",), ((0, 350),), (1,),
        ("8867-4",), ("MDC_ECG_HEART_RATE", 147842),
    ),
    "pr": _entry(
        "Pulse rate from a pulse oximeter or cuff",
        ("beat/min",), ((0, 350),), (1,),
        ("8889-8", "8867-4"), ("MDC_PULS_OXIM_PULS_RATE", 149530),
    ),
    "spo2": _entry(
        "Peripheral oxygen saturation by pulse oximetry, percent",
        ("%",), ((0, 100),), (1,),
        ("59408-5", "2708-6"), ("MDC_PULS_OXIM_SAT_O2", 150456),
    ),
    "temp": _entry(
        "Body temperature",
        ("Cel",), ((10, 47),), (0.1,),
        ("8310-5",), ("MDC_TEMP_BODY", 150364),
    ),
    "sys": _entry(
        "Systolic blood pressure (non-invasive)",
        ("mm[Hg]",), ((20, 300),), (1,),
        ("8480-6",), ("MDC_PRESS_BLD_NONINV_SYS", 150021),
    ),
    "dia": _entry(
        "Diastolic blood pressure (non-invasive)",
        ("mm[Hg]",), ((10, 250),), (1,),
        ("8462-4",), ("MDC_PRESS_BLD_NONINV_DIA", 150022),
    ),
    "map": _entry(
        "Mean arterial pressure (non-invasive)",
        ("mm[Hg]",), ((15, 270),), (1,),
        ("8478-0",), ("MDC_PRESS_BLD_NONINV_MEAN", 150023),
    ),
    "rr": _entry(
        "Respiratory rate (breaths per minute)",
        ("1/min",), ((0, 150),), (1,),
        ("9279-1",), ("MDC_RESP_RATE", 151562),
    ),
    "weight": _entry(
        "Body weight",
        ("kg",), ((0.2, 650),), (0.01,),
        ("29463-7",), ("MDC_MASS_BODY_ACTUAL", 188736),
    ),
    "glucose": _entry(
        "Blood glucose concentration (capillary whole blood from a meter)",
        ("mmol/L", "mg/dL"), ((0.5, 150), (9, 2700)), (0.1, 1),
        ("15074-8", "2339-0"), ("MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD", 160184),
    ),
    "pi": _entry(
        "Perfusion index (pulsatile / non-pulsatile signal, percent)",
        ("%",), ((0, 100),), (0.01,),
        (), ("MDC_PULS_OXIM_PERF_REL", 150448),
    ),
    "bat": _entry(
        "Sensor battery: remaining energy, percent",
        ("%EL",), ((0, 100),), (1,),
        (), ("MDC_ATTR_VAL_BATT_CHARGE", 67996),
    ),
    "sq": _entry(
        "Sensor signal quality, 0 (unusable) to 100 (best), percent",
        ("%",), ((0, 100),), (1,),
        (), None,
    ),
}


def quantity(name):
    """The table entry for quantity `name`; ValidationError("n", ...) if unknown."""
    if type(name) is not str:
        raise ValidationError("n", "quantity name must be a text string")
    entry = QUANTITIES.get(name)
    if entry is None:
        raise ValidationError("n", "unknown quantity %r" % (name,))
    return entry


def canonical_unit(name):
    """The unit `name` is expressed in when a record names none."""
    return quantity(name)["units"][0]


def is_number(value):
    """True for int and float, False for bool (an int subclass on CPython) and all else."""
    kind = type(value)
    return kind is int or kind is float


def is_finite(value):
    """True if `value` is a number that is neither NaN nor an infinity."""
    # x - x is 0 for every finite number and NaN for NaN and the infinities.
    return is_number(value) and value - value == 0


def check_unit(name, unit=None):
    """The unit `unit` (default: canonical) if quantity `name` allows it; else ValidationError
    with field "n" (unknown quantity) or "u" (unit not allowed)."""
    entry = quantity(name)
    if unit is None:
        return entry["units"][0]
    if unit not in entry["limits"]:
        raise ValidationError(
            "u",
            "unit %r is not allowed for %s (allowed: %s)"
            % (unit, name, ", ".join(entry["units"])),
        )
    return unit


def check_value(name, value, unit=None):
    """Check that `value` in `unit` (default: canonical) is possible for quantity `name`.

    Returns the unit checked against. Raises ValidationError with field "n" (unknown
    quantity), "u" (unit not allowed) or "v" (not a finite number, or outside the range a
    living patient or working sensor can produce).
    """
    unit = check_unit(name, unit)
    limits = quantity(name)["limits"][unit]
    if not is_number(value):
        raise ValidationError("v", "value must be a number, not %s" % type(value).__name__)
    if not is_finite(value):
        raise ValidationError("v", "value is not finite")
    low, high = limits[0], limits[1]
    if value < low or value > high:
        raise ValidationError(
            "v", "%s %r %s is outside the possible range %r..%r" % (name, value, unit, low, high)
        )
    return unit
