"""What an inbox entry may carry: its kinds and the schema of each body. Pure logic.

A body is JSON of plain values (objects with text keys, lists, text, finite numbers, true,
false, null), small and shallow. Each kind's body is checked twice: by the command that
enqueues it (so a person hears at once what is wrong) and by the agent that consumes it (the
file may have been written by anything that can open it). `validate` returns the body in its
normal form or raises ValidationError naming the field.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from edge_agent.registry.store import check_pseudonym
from protocol import topics, vitals
from protocol.errors import ValidationError

MANUAL_READING = "manual-reading"
DEVICE_COMPROMISED = "device-compromised"
KINDS = (MANUAL_READING, DEVICE_COMPROMISED)

MAX_BODY_BYTES = 4096
MAX_DEPTH = 4
MAX_REASON = 200
# Quantities a person may enter by hand, each with the unit the entry is in. Glucose has two
# units in use: the entry must name one (a unit is never assumed, see pipeline/attest.py).
MANUAL_QUANTITIES = ("spo2", "hr", "pr", "temp", "sys", "dia", "rr", "weight", "glucose")
# Who entered a reading: "role:name", lower case, so that it fits the reading journal's
# "entered-by:<actor>" flag (read back by the FHIR export) and the event journal's actors.
ACTOR_ROLES = ("clinician", "nurse", "carer", "patient", "technician")
_ACTOR = re.compile("(" + "|".join(ACTOR_ROLES) + r"):[a-z0-9][a-z0-9._-]{0,39}\Z")
_ISO_TIME_MAX = 253402300799  # 9999-12-31T23:59:59Z


def plain_json(value: object, depth: int = 0) -> None:
    """Refuse anything but plain JSON values (no NaN/infinity, text keys, bounded depth)."""
    if depth > MAX_DEPTH:
        raise ValidationError("body", f"nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationError("body", "numbers must be finite")
        return
    if isinstance(value, list):
        for item in value:
            plain_json(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError("body", "object keys must be text")
            plain_json(item, depth + 1)
        return
    raise ValidationError("body", f"{type(value).__name__} is not a plain JSON value")


def encode_body(body: object) -> str:
    """The stored form of a body (compact JSON); refuses what `plain_json` refuses."""
    plain_json(body)
    text = json.dumps(body, separators=(",", ":"), sort_keys=True, allow_nan=False)
    if len(text.encode()) > MAX_BODY_BYTES:
        raise ValidationError("body", f"longer than {MAX_BODY_BYTES} bytes")
    return text


def decode_body(text: object) -> Any:
    if not isinstance(text, str) or len(text.encode()) > MAX_BODY_BYTES:
        raise ValidationError("body", "not a stored body")
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise ValidationError("body", "not valid JSON") from None
    plain_json(body)
    return body


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def check_actor(actor: object) -> str:
    if not isinstance(actor, str) or not _ACTOR.match(actor):
        raise ValidationError("actor", "must be ROLE:NAME in lower case, ROLE one of "
                              f"{', '.join(ACTOR_ROLES)}, NAME 1-40 of a-z 0-9 . _ - "
                              "(e.g. nurse:n-0042)")
    return actor


def _object(body: object, required: tuple[str, ...], optional: tuple[str, ...]) -> dict:
    if not isinstance(body, dict):
        raise ValidationError("body", "must be an object")
    for key in required:
        if key not in body:
            raise ValidationError(key, "is missing")
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise ValidationError(unknown[0], "is not a field of this entry")
    return body


def _instant(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or not 0 <= value <= _ISO_TIME_MAX:
        raise ValidationError(field, "must be POSIX seconds")
    return float(value)


def manual_values(values: object, units: object) -> list[tuple[str, float, str]]:
    """[(quantity, value, unit)] of a manual entry, in MANUAL_QUANTITIES order. At least one
    value; each a possible value in its unit (protocol.vitals); systolic above diastolic."""
    if not isinstance(values, dict) or not values:
        raise ValidationError("values", "give at least one value")
    if units is None:
        units = {}
    if not isinstance(units, dict):
        raise ValidationError("units", "must be an object of quantity: unit")
    for name in (*values, *units):
        if name not in MANUAL_QUANTITIES:
            raise ValidationError(str(name)[:20], "cannot be entered by hand (allowed: "
                                  f"{', '.join(MANUAL_QUANTITIES)})")
    out: list[tuple[str, float, str]] = []
    for name in MANUAL_QUANTITIES:
        if name not in values:
            if name in units:
                raise ValidationError(name, "has a unit but no value")
            continue
        value, unit = values[name], units.get(name)
        if unit is None and len(vitals.quantity(name)["units"]) > 1:
            raise ValidationError(name, "needs its unit (one of "
                                  f"{', '.join(vitals.quantity(name)['units'])})")
        if isinstance(value, bool):
            raise ValidationError(name, "must be a number")
        try:
            unit = vitals.check_value(name, value, unit)
        except ValidationError as exc:
            raise ValidationError(name, exc.reason) from None
        out.append((name, float(value), unit))
    given = {name: value for name, value, _ in out}
    if "sys" in given and "dia" in given and not given["sys"] > given["dia"]:
        raise ValidationError("sys", "systolic must be above diastolic")
    return out


def validate(kind: object, body: object) -> dict[str, Any]:
    """The body of an entry of `kind` in normal form; ValidationError naming the field."""
    if kind == MANUAL_READING:
        _object(body, ("patient", "values", "at"), ("units",))
        assert isinstance(body, dict)
        entered = manual_values(body["values"], body.get("units"))
        return {"patient": check_pseudonym(body["patient"]),
                "values": {name: value for name, value, _ in entered},
                "units": {name: unit for name, _, unit in entered},
                "at": _instant("at", body["at"])}
    if kind == DEVICE_COMPROMISED:
        _object(body, ("device", "reason", "at"), ())
        assert isinstance(body, dict)
        reason = body["reason"]
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON \
                or not reason.isprintable():
            raise ValidationError("reason", f"must be 1..{MAX_REASON} printable characters")
        at = _instant("at", body["at"])
        if at != int(at):
            raise ValidationError("at", "must be whole seconds")
        return {"device": topics.check_id("device", body["device"]), "reason": reason,
                "at": int(at)}
    raise ValidationError("kind", f"unknown inbox entry kind {kind!r} (known: "
                          f"{', '.join(KINDS)})")
