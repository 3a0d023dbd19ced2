"""The kinds of event the tamper-evident journal records, and the rule for their details.

Every kind declares its fields and their types; `validate(kind, actor, subject, details)`
returns a clean copy of the details or raises ValidationError naming the field. The usual
entry (a plain dict of exact str/int values: one per received batch and per transmission)
takes a fast path, `quick_details`, that answers only with the very copy the full rule
returns; anything else, every refusal included, is decided by the full rule.

The rule (docs/eventlog.md): the event journal is evidence an auditor may read, export and
hand on, so it NEVER holds key material or patient data.
- No secrets: a field named like key/secret/seed/private/token/password/credential/psk is
  refused unless the kind declares it as a public value (a key id, a public key or a
  digest); byte strings are refused outright (public keys and digests travel as lower-case
  hex, which also keeps the export plain JSON); a text value that looks like a 32+ byte blob
  (64+ hex digits, or 43+ base64 characters mixing cases and digits) is refused in every
  field that is not a declared public key or digest.
- No patient values or identity: field names like value/reading/measurement, any vital-sign
  quantity name (hr, spo2, ...), and personal data names (name, birth, address, phone,
  email ...) are refused, and no kind declares such a field. A patient appears only as a
  pseudonymous id (letters, digits, . _ -, with at least one digit: "p-4f7a2c").
Unknown kinds and undeclared fields are refused: a new field is added here, where the rule
is checked for it at import time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol import vitals
from protocol.errors import ValidationError

# ---------------------------------------------------------------- field types

MAX_TEXT = 200
MAX_LIST = 64
INT_LIMIT = 1 << 63

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_HEX16 = re.compile(r"[0-9a-f]{16}\Z")
_IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}\Z")
# Same shape as the registry's patient ids, plus the digit that keeps names out.
_PSEUDONYM = re.compile(r"(?=.*[0-9])[A-Za-z0-9][A-Za-z0-9._-]{3,63}\Z")
_ACTOR = re.compile(r"[a-z][a-z0-9-]{0,31}(:[A-Za-z0-9][A-Za-z0-9._@-]{0,63})?\Z")
_SUBJECT = re.compile(r"[\x21-\x7e]{1,200}\Z")
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}\Z")

_HEX_RUN = re.compile(r"[0-9a-fA-F]{64,}")
_B64_RUN = re.compile(r"[A-Za-z0-9+/_=-]{43,}")
_SECRET_NAME = re.compile(r"key|secret|seed|priv|token|passw|credential|psk")
_PATIENT_NAME = re.compile(
    r"value|reading|measure|result|birth|dob|address|phone|email|surname|first_name|"
    r"last_name|full_name|^name$|nhs|ssn|mrn|insurance")


def looks_like_blob(text: str) -> bool:
    """True when `text` contains what is probably 32+ bytes of key material or other binary:
    a run of 64+ hex digits, or a run of 43+ base64/base64url characters (32 bytes encode
    to 43) that mixes upper case, lower case and digits, as random bytes do (a topic or a
    dotted name in one case does not)."""
    if _HEX_RUN.search(text):
        return True
    for run in _B64_RUN.findall(text):
        if (re.search(r"[A-Z]", run) and re.search(r"[a-z]", run)
                and re.search(r"[0-9]", run)):
            return True
    return False


@dataclass(frozen=True, slots=True)
class FieldType:
    """A detail field's type: `check` returns the clean value or raises ValueError(why).
    `public_blob` marks the types that may hold 32 bytes in hex (public keys, digests)."""

    name: str
    check: Callable[[Any], Any]
    public_blob: bool = False
    secret_name_ok: bool = False  # may be named like "key" (key ids, public keys, digests)
    choices: tuple[str, ...] = ()  # for enumerations
    # Sufficient, never necessary: True only for a value `check` returns as it is and the
    # blob rule cannot refuse (validate's fast path); None: always the full rule.
    quick: Callable[[Any], bool] | None = None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be non-empty text")
    if len(value) > MAX_TEXT:
        raise ValueError(f"must be at most {MAX_TEXT} characters")
    if not value.isprintable():
        raise ValueError("must be printable text (no control characters)")
    return value


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[Any], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or not regex.match(value):
            raise ValueError(f"must be {what}")
        return value
    return check


def _count(value: object) -> int:
    if not _is_int(value) or not 0 <= value < INT_LIMIT:  # type: ignore[operator]
        raise ValueError("must be an integer >= 0")
    return value  # type: ignore[return-value]


def _byte(value: object) -> int:
    if not _is_int(value) or not 0 <= value <= 255:  # type: ignore[operator]
        raise ValueError("must be an integer 0..255")
    return value  # type: ignore[return-value]


def _number(value: object) -> int | float:
    if _is_int(value) and -INT_LIMIT <= value < INT_LIMIT:  # type: ignore[operator]
        return value  # type: ignore[return-value]
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise ValueError("must be a finite number")


def _enum(*choices: str) -> FieldType:
    def check(value: object) -> str:
        if value not in choices or not isinstance(value, str):
            raise ValueError("must be one of " + ", ".join(choices))
        return value
    short = frozenset(c for c in choices if len(c) < _SHORTEST_BLOB)

    def quick(value: object) -> bool:
        return type(value) is str and value in short
    return FieldType("one of " + "|".join(choices), check, choices=choices, quick=quick)


# Quick tests (FieldType.quick): exact types only (a subclass takes the full rule), and a
# text shorter than any blob unless the type may hold one (public keys, digests).
_SHORTEST_BLOB = 43  # looks_like_blob needs a run this long (base64 of 32 bytes; hex: 64)
_PASSED_QUICK_LIMIT = 1024


def _quick_pattern(regex: re.Pattern[str], blob_ok: bool = False) -> Callable[[Any], bool]:
    match = regex.match
    if blob_ok:  # digests and public keys: new values every time, nothing to remember
        return lambda value: type(value) is str and match(value) is not None
    # Names and key ids repeat (a device, a topic, a session on every entry): a text that
    # passed once passes again (exact str: equality is the text's). Bounded.
    passed: set[str] = set()

    def quick(value: object) -> bool:
        if type(value) is not str:
            return False
        if value in passed:
            return True
        if len(value) >= _SHORTEST_BLOB or match(value) is None:
            return False
        if len(passed) >= _PASSED_QUICK_LIMIT:
            passed.clear()
        passed.add(value)
        return True
    return quick


def _quick_text(value: object) -> bool:
    return type(value) is str and 0 < len(value) < _SHORTEST_BLOB and value.isprintable()


def _quick_count(value: object) -> bool:
    return type(value) is int and 0 <= value < INT_LIMIT


def _quick_byte(value: object) -> bool:
    return type(value) is int and 0 <= value <= 255


def _quick_number(value: object) -> bool:
    vtype = type(value)
    return ((vtype is int and -INT_LIMIT <= value < INT_LIMIT)  # type: ignore[operator]
            or (vtype is float and math.isfinite(value)))  # type: ignore[arg-type]


def _names(value: object) -> list[str]:
    if not isinstance(value, list | tuple) or not value or len(value) > MAX_LIST:
        raise ValueError(f"must be a list of 1..{MAX_LIST} names")
    return [_pattern(_IDENT, "a name")(item) for item in value]


TEXT = FieldType("text", _text, quick=_quick_text)
IDENT = FieldType("identifier", _pattern(_IDENT, "an identifier (letters, digits, . _ : / @ -)"),
                  quick=_quick_pattern(_IDENT))
PSEUDONYM = FieldType("pseudonym", _pattern(
    _PSEUDONYM, "a pseudonymous patient id (4-64 of letters, digits, . _ -, with a digit)"),
    quick=_quick_pattern(_PSEUDONYM))
COUNT = FieldType("count", _count, quick=_quick_count)
BYTE = FieldType("byte", _byte, quick=_quick_byte)
NUMBER = FieldType("number", _number, quick=_quick_number)
NAMES = FieldType("names", _names)  # its check returns a new list: always the full rule
DIGEST = FieldType("digest", _pattern(_HEX64, "a SHA-256 digest as 64 lower-case hex digits"),
                   public_blob=True, secret_name_ok=True,
                   quick=_quick_pattern(_HEX64, blob_ok=True))
PUBLIC_KEY = FieldType("public key", _pattern(_HEX64, "a 32-byte public key as 64 lower-case "
                                              "hex digits"), public_blob=True, secret_name_ok=True,
                       quick=_quick_pattern(_HEX64, blob_ok=True))
KID = FieldType("key id", _pattern(_HEX16, "a key id as 16 lower-case hex digits"),
                secret_name_ok=True, quick=_quick_pattern(_HEX16))

GRADE = _enum("red", "orange", "yellow", "blue")
# ALARM-2: "manual" = values a person entered through the inbox (docs/manual-entry.md)
TRANSPORT = _enum("ble", "serial", "wifi", "manual")


# ---------------------------------------------------------------- kinds


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    summary: str
    required: Mapping[str, FieldType]
    optional: Mapping[str, FieldType] = field(default_factory=dict)
    # Every declared field, required ones winning a clash: one lookup per detail.
    fields: Mapping[str, FieldType] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", {**self.optional, **self.required})

    def field_type(self, name: str) -> FieldType | None:
        return self.fields.get(name)


KINDS: dict[str, Kind] = {}


def _kind(name: str, summary: str, required: Mapping[str, FieldType],
          optional: Mapping[str, FieldType] | None = None) -> None:
    KINDS[name] = Kind(name, summary, dict(required), dict(optional or {}))


# Transmission to the centre. digest = SHA-256 of the payload = MQTT correlation data.
_kind("transmission.published", "a message handed to the MQTT client (queued, not yet sent)",
      {"topic": IDENT, "message_id": COUNT, "digest": DIGEST},
      {"count": COUNT, "priority": _enum("routine", "critical", "alarm")})
_kind("transmission.puback", "the broker acknowledged a publish (PUBACK success)",
      {"digest": DIGEST, "message_id": COUNT, "reason_code": BYTE})
_kind("transmission.refused", "the broker refused a publish (PUBACK reason code >= 0x80)",
      {"digest": DIGEST, "message_id": COUNT, "reason_code": BYTE, "reason": TEXT})
_kind("transmission.receipt", "the monitoring centre's application receipt: it stored it",
      {"digest": DIGEST}, {"lag_ms": NUMBER})

# Reception from devices.
_kind("reception.received", "a verified message from a device, journaled",
      {"device": IDENT, "transport": TRANSPORT, "verdict": _enum("sealed", "attested", "manual"),
       "count": COUNT},
      {"first_seq": COUNT, "last_seq": COUNT, "digest": DIGEST, "session": KID, "flags": NAMES})
_kind("reception.quarantined", "input that failed verification, kept in quarantine",
      {"reason": TEXT, "raw_digest": DIGEST, "raw_len": COUNT},
      {"device": IDENT, "source": IDENT, "transport": TRANSPORT})

# Keys and certificates (edge_agent.lifecycle): only ids, public keys and digests.
_KEY_PURPOSE = _enum("signing", "agreement", "session", "tls", "attestation")
_kind("key.generated", "a key pair generated where it is used",
      {"key_id": KID, "owner": IDENT, "purpose": _KEY_PURPOSE},
      {"public_key": PUBLIC_KEY, "algorithm": IDENT})
_kind("key.activated", "a key put into use", {"key_id": KID, "owner": IDENT})
_kind("key.renewal", "a key replaced by a new one",
      {"key_id": KID, "new_key_id": KID, "owner": IDENT}, {"reason": TEXT})
_kind("key.retired", "a key taken out of use", {"key_id": KID, "owner": IDENT}, {"reason": TEXT})
_kind("key.destroyed", "a retired key's private part erased", {"key_id": KID, "owner": IDENT})
# RENEWAL helper: before a retired key is destroyed, what only it could verify is re-sealed
# by the current gateway key (edge_agent/reseal, docs/keys-and-certificates.md).
_kind("key.resealed", "items verifiable only with a retired key re-sealed by the current one",
      {"key_id": KID, "new_key_id": KID, "owner": IDENT, "items": COUNT, "valid": COUNT},
      {"invalid": COUNT, "wiped": COUNT, "failed": COUNT, "digest": DIGEST, "reason": TEXT})
_kind("key.revoked", "a key withdrawn", {"key_id": KID, "owner": IDENT, "reason": TEXT})
_kind("key.compromised", "a key known or suspected exposed (e.g. broken tamper seal)",
      {"key_id": KID, "owner": IDENT, "reason": TEXT})
_kind("certificate.issued", "a certificate signed (CWT or X.509)",
      {"cert_digest": DIGEST, "subject_id": IDENT, "issuer": IDENT, "key_id": KID,
       "not_before": COUNT, "expires": COUNT},
      {"role": _enum("ca", "gateway", "device")})
_kind("certificate.activated", "a certificate put into use",
      {"cert_digest": DIGEST, "subject_id": IDENT})
_kind("certificate.renewal", "a certificate replaced by a new one",
      {"cert_digest": DIGEST, "new_cert_digest": DIGEST, "subject_id": IDENT})
_kind("certificate.retired", "a certificate taken out of use",
      {"cert_digest": DIGEST, "subject_id": IDENT}, {"reason": TEXT})
_kind("certificate.revoked", "a certificate withdrawn",
      {"cert_digest": DIGEST, "subject_id": IDENT, "reason": TEXT})
_kind("certificate.compromised", "a certificate whose key is known or suspected exposed",
      {"cert_digest": DIGEST, "subject_id": IDENT, "reason": TEXT})
_kind("certificate.expired", "a certificate reached its expiry",
      {"cert_digest": DIGEST, "subject_id": IDENT})
# The CA's decision on a gateway's certificate request (`ca sign-request`, the CA's journal).
_kind("certificate.request", "the CA accepted or refused a gateway's certificate request",
      {"decision": _enum("accepted", "refused"), "request_digest": DIGEST, "reason": TEXT},
      {"subject_id": IDENT, "mode": _enum("provisioning", "renewal", "replacement"),
       "key_id": KID, "countersigned_by": KID, "supersedes": IDENT})

# Alarm closed loop (edge_agent.alarms.lifecycle step kinds). Never the measured value.
_ALARM_REQUIRED = {"alarm_id": IDENT, "grade": GRADE}
_ALARM_OPTIONAL = {"patient": PSEUDONYM, "device": IDENT, "condition": IDENT,
                   "level": COUNT, "reason": TEXT}
for _step in ("raised", "notified", "acknowledged", "regraded", "recurred", "resolved",
              "closed"):
    _kind(f"alarm.{_step}", f"alarm step: {_step}", _ALARM_REQUIRED, _ALARM_OPTIONAL)
_kind("alarm.escalated", "alarm step: escalated (unacknowledged red alarm)",
      {**_ALARM_REQUIRED, "level": COUNT}, {k: v for k, v in _ALARM_OPTIONAL.items()
                                            if k != "level"})

# Configuration and limits: what changed and a digest of the new state, never the values
# (a configuration value may be a password; a limit is clinical data about a patient).
_kind("config.changed", "gateway configuration changed",
      {"source": IDENT, "digest": DIGEST, "settings": NAMES})
_kind("limits.changed", "a patient's alarm limits changed",
      {"patient": PSEUDONYM, "digest": DIGEST, "quantities": NAMES},
      {"version": COUNT, "reason": TEXT})

# Maintenance and the agent itself.
_SEVERITY = _enum("info", "warning", "error", "critical")
_kind("maintenance.fault", "a technical fault detected",
      {"component": IDENT, "fault": IDENT}, {"severity": _SEVERITY, "detail": TEXT})
_kind("maintenance.cleared", "a technical fault no longer present",
      {"component": IDENT, "fault": IDENT}, {"detail": TEXT})
_kind("agent.started", "the edge agent started", {"version": IDENT})
_kind("agent.stopped", "the edge agent stopped", {"reason": TEXT})
_kind("storage.deleted", "rows deleted from the reading journal (retention or disk budget)",
      {"action": IDENT, "rows": COUNT, "bytes": COUNT})
# BlueZ pairing (edge_agent/ble/pairing_agent.py, `vitalbridge ble`); subject
# "bluetooth:<address>". `suppressed` = repeated decisions not recorded since the last one.
_kind("pairing.decision", "the BlueZ pairing agent accepted or refused a pairing request",
      {"decision": _enum("accepted", "refused"), "method": IDENT, "reason": TEXT},
      {"capability": IDENT, "suppressed": COUNT})
_kind("pairing.bond", "`vitalbridge ble pair` finished: bonded, already bonded or failed",
      {"outcome": _enum("bonded", "already-bonded", "failed", "timed-out"), "adapter": IDENT},
      {"trusted": _enum("set", "already", "failed"), "reason": TEXT})


# ---------------------------------------------------------------- the rule


def _refusal(name: str, declared: FieldType | None) -> str | None:
    """Why a detail field of this name may never be journaled, or None."""
    if not _FIELD_NAME.match(name):
        return "field names are lower-case letters, digits and _ (at most 40)"
    if _SECRET_NAME.search(name) and not (declared and declared.secret_name_ok):
        return "named like secret material (key/secret/seed/private/token...): never journaled"
    if _PATIENT_NAME.search(name) or name in vitals.QUANTITIES:
        return "may carry a patient value or identity: never journaled"
    return None


def _check_schema() -> None:
    """The rule holds for every declared field (a careless addition fails at import)."""
    for kind in KINDS.values():
        for name, ftype in {**kind.required, **kind.optional}.items():
            reason = _refusal(name, ftype)
            if reason:
                raise AssertionError(f"{kind.name}.{name}: {reason}")


_check_schema()


_BLOB_REFUSED = ("looks like a 32+ byte blob (key material?): only declared public keys and "
                 "digests may hold one")
_BYTES_REFUSED = ("byte strings are not journaled (public keys and digests travel as "
                  "lower-case hex)")


def _check_blob(name: str, value: object) -> None:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, str) and looks_like_blob(item):
            raise ValidationError(name, _BLOB_REFUSED)


# Actors and subjects repeat ("agent", "gateway:gw-1" on every transmission entry): a text
# that passed its check once passes again (the checks depend on the text alone). Bounded.
_PASSED_LIMIT = 1024
_passed_actors: set[str] = set()
_passed_subjects: set[str] = set()


def _remember(passed: set[str], text: str) -> None:
    if len(passed) >= _PASSED_LIMIT:
        passed.clear()
    passed.add(text)


def validate_actor(actor: object) -> str:
    """Who caused the event: "agent", "centre", "clinician:c-1234", "technician:t-7"."""
    if type(actor) is str and actor in _passed_actors:
        return actor
    if not isinstance(actor, str) or not _ACTOR.match(actor):
        raise ValidationError("actor", "must be a role, optionally ':' and a pseudonymous id "
                                       "(e.g. 'agent', 'clinician:c-1234')")
    _check_blob("actor", actor)
    _remember(_passed_actors, actor)
    return actor


def validate_subject(subject: object) -> str:
    """What the event is about: "device:ox-1", "alarm:ab12", "key:0011223344556677"."""
    if type(subject) is str and subject in _passed_subjects:
        return subject
    if not isinstance(subject, str) or not _SUBJECT.match(subject):
        raise ValidationError("subject", "must be 1-200 printable characters without spaces")
    _check_blob("subject", subject)
    _remember(_passed_subjects, subject)
    return subject


def validate_details(kind_name: object, details: object) -> dict[str, Any]:
    """A clean copy of `details` for `kind_name`, or ValidationError naming the field."""
    if not isinstance(kind_name, str) or kind_name not in KINDS:
        raise ValidationError("kind", f"unknown event kind {kind_name!r}")
    kind = KINDS[kind_name]
    if type(details) is not dict and not isinstance(details, Mapping):
        raise ValidationError("details", "must be a mapping of field name to value")
    fields = kind.fields
    clean: dict[str, Any] = {}
    for name, value in details.items():
        # A declared name (exact str) passed the rule at import (_check_schema).
        declared = fields.get(name) if type(name) is str else None
        if declared is None:
            declared = _undeclared_name(kind, name, value)
        elif type(value) is not str and isinstance(value, bytes | bytearray | memoryview):
            raise ValidationError(name, _BYTES_REFUSED)
        try:
            value = declared.check(value)
        except ValueError as err:
            raise ValidationError(name, str(err)) from None
        if not declared.public_blob:
            vtype = type(value)
            if vtype is str:  # shorter than any blob: nothing to look for
                if len(value) >= _SHORTEST_BLOB and looks_like_blob(value):
                    raise ValidationError(name, _BLOB_REFUSED)
            elif vtype is not int:  # an int holds no text
                _check_blob(name, value)
        clean[name] = value
    if not kind.required.keys() <= clean.keys():
        missing = [name for name in kind.required if name not in clean]
        raise ValidationError(missing[0], f"required by {kind.name}")
    return clean


def _undeclared_name(kind: Kind, name: object, value: object) -> FieldType:
    """The field type of a detail name that is not an exact str of a declared field: a str
    subclass equal to one gets it; anything else is refused with the rule's reason."""
    if not isinstance(name, str):
        raise ValidationError("details", f"field name {name!r} is not text")
    declared = kind.field_type(name)
    reason = _refusal(name, None) if declared is None else None
    if reason:
        raise ValidationError(name, reason)
    if isinstance(value, bytes | bytearray | memoryview):
        raise ValidationError(name, _BYTES_REFUSED)
    if declared is None:
        raise ValidationError(name, f"not a field of {kind.name} (fields: "
                                    + ", ".join([*kind.required, *kind.optional]) + ")")
    return declared


# kind -> (quick test per declared field that has one, required names): the fast path.
_QUICK: dict[str, tuple[dict[str, Callable[[Any], bool]], frozenset[str]]] = {
    kind.name: ({name: ftype.quick for name, ftype in kind.fields.items() if ftype.quick},
                frozenset(kind.required))
    for kind in KINDS.values()}


def quick_details(kind_name: object, details: object) -> dict[str, Any] | None:
    """The fast path of `validate_details`: the same clean copy when every field is declared
    and passes its type's quick test (the usual entry: a plain dict of exact str/int values),
    else None and the full rule decides (it alone refuses, and says why)."""
    if type(kind_name) is not str or type(details) is not dict:
        return None
    plan = _QUICK.get(kind_name)
    if plan is None:
        return None
    quick, required = plan
    for name, value in details.items():
        test = quick.get(name) if type(name) is str else None
        if test is None or not test(value):
            return None
    if not details.keys() >= required:
        return None
    return dict(details)  # every value is what its check returns: same keys, order, values


def validate(kind: object, actor: object, subject: object, details: object
             ) -> tuple[str, str, str, dict[str, Any]]:
    """(kind, actor, subject, details) checked together; details is a clean copy."""
    clean = quick_details(kind, details)
    if clean is None:
        clean = validate_details(kind, details)
    return kind, validate_actor(actor), validate_subject(subject), clean  # type: ignore[return-value]
