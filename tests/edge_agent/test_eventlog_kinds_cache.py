"""The event journal's rule with its shortcuts (declared field names checked once at import,
actors and subjects that passed remembered) decides exactly as the rule checked in full."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.eventlog import kinds
from protocol.errors import ValidationError


def reference_details(kind_name: object, details: object) -> dict[str, Any]:
    """validate_details as it was before the shortcuts: every name through the rule."""
    if not isinstance(kind_name, str) or kind_name not in kinds.KINDS:
        raise ValidationError("kind", f"unknown event kind {kind_name!r}")
    kind = kinds.KINDS[kind_name]
    if not isinstance(details, Mapping):
        raise ValidationError("details", "must be a mapping of field name to value")
    clean: dict[str, Any] = {}
    for name, value in details.items():
        if not isinstance(name, str):
            raise ValidationError("details", f"field name {name!r} is not text")
        declared = kind.required.get(name) or kind.optional.get(name)
        reason = kinds._refusal(name, declared)
        if reason:
            raise ValidationError(name, reason)
        if isinstance(value, bytes | bytearray | memoryview):
            raise ValidationError(name, "byte strings are not journaled (public keys and "
                                        "digests travel as lower-case hex)")
        if declared is None:
            raise ValidationError(name, f"not a field of {kind_name} (fields: "
                                        + ", ".join([*kind.required, *kind.optional]) + ")")
        try:
            value = declared.check(value)
        except ValueError as err:
            raise ValidationError(name, str(err)) from None
        if not declared.public_blob:
            kinds._check_blob(name, value)
        clean[name] = value
    missing = [name for name in kind.required if name not in clean]
    if missing:
        raise ValidationError(missing[0], f"required by {kind_name}")
    return clean


def reference(kind: object, actor: object, subject: object, details: object) -> tuple:
    clean = reference_details(kind, details)
    if not isinstance(actor, str) or not kinds._ACTOR.match(actor):
        raise ValidationError("actor", "bad actor")
    kinds._check_blob("actor", actor)
    if not isinstance(subject, str) or not kinds._SUBJECT.match(subject):
        raise ValidationError("subject", "bad subject")
    kinds._check_blob("subject", subject)
    return kind, actor, subject, clean


def outcome(call, *args: object) -> tuple:
    try:
        return ("ok", call(*args))
    except ValidationError as exc:
        return ("refused", exc.field)


KIND_NAMES = sorted(kinds.KINDS)
FIELD_NAMES = sorted({n for k in kinds.KINDS.values() for n in (*k.required, *k.optional)})
HOSTILE_NAMES = ["device_key", "seed", "spo2", "hr", "value", "name", "Bad-Name", "x" * 41,
                 "patient_name", "token", "unknown_field"]
BLOB = "a" * 64
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=True),
                   st.text(max_size=80), st.sampled_from([BLOB, "ab" * 32, "0011223344556677",
                                                          "p-4f7a2c", "ble", "serial", "red",
                                                          "vb/gw-1/up/readings/ox-1"]),
                   st.binary(max_size=8), st.lists(st.text(max_size=10), max_size=3))
DETAILS = st.dictionaries(st.sampled_from(FIELD_NAMES + HOSTILE_NAMES) | st.integers(0, 3),
                          VALUES, max_size=6)
ACTORS = st.sampled_from(["agent", "centre", "clinician:c-1234", "technician:t-7", "Agent",
                          "clinician:" + "Ab1" * 20, "", "agent:" + BLOB]) | st.text(max_size=20)
SUBJECTS = st.sampled_from(["gateway:gw-1", "device:ox-1", "key:0011223344556677",
                            "device:" + BLOB, "has space", ""]) | st.text(max_size=30)


@given(st.sampled_from(KIND_NAMES) | st.text(max_size=12), ACTORS, SUBJECTS, DETAILS)
def test_same_decision_as_the_full_rule_first_and_second_time(kind, actor, subject,
                                                              details) -> None:
    expected = outcome(reference, kind, actor, subject, details)
    assert outcome(kinds.validate, kind, actor, subject, details) == expected
    assert outcome(kinds.validate, kind, actor, subject, details) == expected  # remembered


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_declared_field_passed_the_rule_at_import(kind: str) -> None:
    declared = kinds.KINDS[kind]
    for name, ftype in {**declared.required, **declared.optional}.items():
        assert kinds._refusal(name, ftype) is None


def test_refused_actors_and_subjects_are_never_remembered() -> None:
    for _ in range(2):
        with pytest.raises(ValidationError):
            kinds.validate_actor("agent:" + BLOB)
        with pytest.raises(ValidationError):
            kinds.validate_subject("device:" + BLOB)
    assert "agent:" + BLOB not in kinds._passed_actors
    assert "device:" + BLOB not in kinds._passed_subjects


def test_a_str_subclass_is_checked_not_looked_up() -> None:
    class Sneaky(str):
        def __hash__(self) -> int:
            return hash("agent")

        def __eq__(self, other: object) -> bool:
            return True

    kinds.validate_actor("agent")
    with pytest.raises(ValidationError):
        kinds.validate_actor(Sneaky("Not An Actor"))


def test_memory_is_bounded() -> None:
    for index in range(3000):
        kinds.validate_subject(f"device:ox-{index}")
    assert len(kinds._passed_subjects) <= kinds._PASSED_LIMIT


GOOD = [
    ("transmission.published", "agent", "gateway:gw-1",
     {"topic": "vb/gw-1/up/readings/ox-1", "message_id": 7, "digest": "ab" * 32}),
    ("transmission.puback", "agent", "gateway:gw-1",
     {"digest": "ab" * 32, "message_id": 7, "reason_code": 16}),
    ("agent.started", "agent", "gateway:gw-1", {"version": "0.9.1"}),
]


@pytest.mark.parametrize("entry", GOOD)
def test_entries_the_agent_writes_pass_the_same_way_twice(entry: tuple) -> None:
    expected = reference(*entry)
    assert expected[3]  # the reference accepts it: the shortcut path is exercised
    assert kinds.validate(*entry) == expected
    assert kinds.validate(*entry) == expected


class Name(str):
    """A str subclass: takes the rule's long way, never the exact-str shortcut."""


def b64ish(length: int) -> str:
    return ("Ab1" * 30)[:length]


EDGE_TEXTS = st.sampled_from([b64ish(42), b64ish(43), b64ish(44), "a" * 63 + "0", "f" * 64,
                              "x" * 42 + "Y1", "vb/" + b64ish(43), "ok"])
EDGE_VALUES = (VALUES | EDGE_TEXTS | st.builds(Name, EDGE_TEXTS) | st.lists(EDGE_TEXTS, max_size=3)
               | st.tuples(EDGE_TEXTS) | st.sampled_from([True, False, 2**63, -1, 1.5]))
EDGE_NAMES = (st.sampled_from(FIELD_NAMES + HOSTILE_NAMES)
              | st.builds(Name, st.sampled_from(FIELD_NAMES + HOSTILE_NAMES)) | st.none())
EDGE_DETAILS = st.dictionaries(EDGE_NAMES, EDGE_VALUES, max_size=7)


@given(st.sampled_from(KIND_NAMES), EDGE_DETAILS, st.booleans())
def test_same_decision_on_subclasses_mappings_and_blob_lengths(kind: str, details: dict,
                                                               as_proxy: bool) -> None:
    from types import MappingProxyType
    given_details = MappingProxyType(details) if as_proxy else details
    expected = outcome(reference_details, kind, given_details)
    assert outcome(kinds.validate_details, kind, given_details) == expected


def test_every_kind_with_all_fields_gives_the_reference_clean_copy() -> None:
    samples = {"identifier": "ox-1", "pseudonym": "p-4f7a2c", "count": 7, "byte": 16,
               "number": 1.5, "names": ("a", "b"), "digest": "ab" * 32, "public key": "cd" * 32,
               "key id": "0011223344556677", "text": "because"}
    for kind in kinds.KINDS.values():
        details = {name: ftype.choices[0] if ftype.choices else samples[ftype.name]
                   for name, ftype in {**kind.required, **kind.optional}.items()}
        assert kinds.validate_details(kind.name, details) == reference_details(kind.name, details)
        for name in kind.required:  # and each required field missing is named
            partial = {k: v for k, v in details.items() if k != name}
            assert outcome(kinds.validate_details, kind.name, partial) == ("refused", name)


BOUNDARY_TEXTS = [b64ish(42), b64ish(43), "q" + b64ish(43), "0" * 63, "0" * 64, "a" * 43,
                  "x" * 42 + "Y1", "vb/" + b64ish(43) + "/x"]


@pytest.mark.parametrize("text", BOUNDARY_TEXTS)
def test_blob_boundaries_in_every_text_field_decide_as_the_full_rule(text: str) -> None:
    checked = 0
    for kind in kinds.KINDS.values():
        for name, ftype in {**kind.required, **kind.optional}.items():
            for value in (text, Name(text), [text]):
                expected = outcome(reference_details, kind.name, {name: value})
                assert outcome(kinds.validate_details, kind.name, {name: value}) == expected
                checked += expected == ("refused", name) and ftype.name in ("text", "identifier")
    assert checked or not kinds.looks_like_blob(text)  # a blob is refused somewhere
