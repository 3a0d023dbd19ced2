"""validate()'s fast path (kinds.quick_details, FieldType.quick) never decides anything the
full rule would decide otherwise: when it answers, the answer is the full rule's clean copy
(same keys, order and value objects); everything else, refusals included, goes to the full
rule. And the entries the agent writes on every batch do take it."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.eventlog import kinds
from protocol.errors import ValidationError
from tests.edge_agent.test_eventlog_kinds_cache import (
    EDGE_DETAILS,
    HOSTILE_NAMES,
    KIND_NAMES,
    Name,
    b64ish,
    outcome,
    reference,
    reference_details,
)


class Count(int):
    """An int subclass: the quick tests take exact types only."""


# Values around every quick test's edges: lengths 42/43 (the shortest blob), hex case and
# length, the integer limits, bool (an int the rule refuses), non-finite floats, control
# characters, subclasses, bytes.
EDGES: list[Any] = [
    "ab" * 32, "AB" * 32, "ab" * 31 + "a", "ab" * 32 + "0", "0011223344556677",
    "001122334455667", "00112233445566778", "ox-1", "vb/gw-1/up/readings/ox-1", "p-4f7a2c",
    "pxyz", "p-1", "a" * 42, "a" * 43, "a" * 200, "a" * 201, b64ish(42), b64ish(43),
    b64ish(44), "x" * 42 + "Y1", "ab\x00c", "tab\there", "", " ", "red", "serial", "sealed",
    "attested", "manual", "routine", "because it failed", Name("ox-1"), Name("ab" * 32),
    0, 1, 16, 255, 256, -1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, True, False,
    Count(3), 1.5, -0.0, 12.5, math.inf, -math.inf, math.nan, 9.0e18, None, b"ab",
    bytearray(b"ab"), ["ox-1"], ("ox-1",), [],
]
VALUES = st.sampled_from(EDGES) | st.text(max_size=50) | st.integers(-(2**64), 2**64) | st.floats()


@st.composite
def entries(draw: st.DrawFn) -> tuple[str, dict[Any, Any]]:
    """A kind and details made mostly of its own fields (so the fast path is often taken),
    sometimes with a field missing, an extra or hostile name, or a name subclass."""
    kind = kinds.KINDS[draw(st.sampled_from(KIND_NAMES))]
    names = list(kind.fields)
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    if draw(st.booleans()):
        chosen = list(dict.fromkeys([*kind.required, *chosen]))  # every required one too
    details: dict[Any, Any] = {name: draw(VALUES) for name in chosen}
    extra = draw(st.sampled_from([None, None, None, "hostile", "subclass", "int"]))
    if extra == "hostile":
        details[draw(st.sampled_from(HOSTILE_NAMES))] = draw(VALUES)
    elif extra == "subclass" and chosen:
        name = draw(st.sampled_from(chosen))
        details[Name(name)] = details.pop(name)
    elif extra == "int":
        details[0] = 1
    return kind.name, details


def assert_fast_path_agrees(kind: object, details: object) -> bool:
    """The fast path answers only with the full rule's clean copy -> whether it answered."""
    quick = kinds.quick_details(kind, details)
    full = outcome(kinds.validate_details, kind, details)
    assert full == outcome(reference_details, kind, details)
    if quick is None:
        return False
    assert full == ("ok", quick)
    assert list(quick.items()) == list(full[1].items())  # same order
    assert all(a is b for a, b in zip(quick.values(), full[1].values(), strict=True))
    assert quick is not details  # a copy: the caller's dict may change later
    return True


@settings(deadline=None)
@given(entries())
def test_the_fast_path_answers_only_with_the_full_rules_clean_copy(entry: tuple) -> None:
    assert_fast_path_agrees(*entry)


@settings(deadline=None)
@given(st.sampled_from(KIND_NAMES) | st.text(max_size=12) | st.builds(Name, st.sampled_from(
    KIND_NAMES)) | st.none(), EDGE_DETAILS)
def test_hostile_kinds_names_and_shapes_take_the_full_rule(kind: object, details: dict) -> None:
    assert_fast_path_agrees(kind, details)


@settings(deadline=None)
@given(entries(), st.sampled_from(["agent", "centre", "Agent", "agent:" + "ab" * 32, ""]),
       st.sampled_from(["gateway:gw-1", "device:ox-1", "has space", "device:" + "ab" * 32]))
def test_validate_decides_as_the_reference(entry: tuple, actor: str, subject: str) -> None:
    kind, details = entry
    assert outcome(kinds.validate, kind, actor, subject, details) == \
        outcome(reference, kind, actor, subject, details)


@pytest.mark.parametrize("value", EDGES, ids=repr)
def test_every_quick_test_is_sufficient_for_its_check(value: Any) -> None:
    """quick(value) -> check returns the very value and the blob rule lets it through."""
    for kind in kinds.KINDS.values():
        for name, ftype in kind.fields.items():
            if ftype.quick is not None and ftype.quick(value):
                assert ftype.check(value) is value
                assert kinds.validate_details(kind.name, {
                    **{n: _sample(kind.fields[n]) for n in kind.required}, name: value}
                )[name] is value


def _sample(ftype: kinds.FieldType) -> Any:
    samples = {"identifier": "ox-1", "pseudonym": "p-4f7a2c", "count": 7, "byte": 16,
               "number": 1.5, "names": ["a"], "digest": "ab" * 32, "public key": "cd" * 32,
               "key id": "0011223344556677", "text": "because"}
    return ftype.choices[0] if ftype.choices else samples[ftype.name]


# What the agent records for every batch and every transmission (service.py observers).
AGENT_ENTRIES = [
    ("reception.received", {"device": "ox-1", "transport": "serial", "verdict": "sealed",
                            "count": 10, "digest": "ab" * 32, "first_seq": 120,
                            "last_seq": 129, "session": "0011223344556677"}),
    ("reception.received", {"device": "ox-1", "transport": "ble", "verdict": "attested",
                            "count": 1, "digest": "cd" * 32, "flags": ["finger-off"]}),
    ("transmission.published", {"topic": "vb/gw-1/up/readings/ox-1", "message_id": 7,
                                "digest": "ab" * 32}),
    ("transmission.puback", {"digest": "ab" * 32, "message_id": 7, "reason_code": 16}),
    ("transmission.refused", {"digest": "ab" * 32, "message_id": 7, "reason_code": 0x87,
                              "reason": "not authorized"}),
    ("transmission.receipt", {"digest": "ab" * 32, "lag_ms": 12.5}),
    ("transmission.receipt", {"digest": "ab" * 32}),
]


@pytest.mark.parametrize(("kind", "details"), AGENT_ENTRIES)
def test_the_agents_usual_entries_take_the_fast_path(kind: str, details: dict) -> None:
    fast = assert_fast_path_agrees(kind, details)
    assert fast == ("flags" not in details)  # names lists always take the full rule


def test_a_refusal_still_names_the_field() -> None:
    for details, field in (({"digest": "AB" * 32, "message_id": 7, "reason_code": 16}, "digest"),
                           ({"digest": "ab" * 32, "message_id": True, "reason_code": 16},
                            "message_id"),
                           ({"digest": "ab" * 32, "message_id": 7}, "reason_code"),
                           ({"digest": "ab" * 32, "message_id": 7, "reason_code": 16,
                             "seed": "x"}, "seed")):
        assert kinds.quick_details("transmission.puback", details) is None
        with pytest.raises(ValidationError) as refused:
            kinds.validate("transmission.puback", "agent", "gateway:gw-1", details)
        assert refused.value.field == field


def test_a_key_that_only_pretends_to_be_a_field_name_is_refused() -> None:
    class Sneaky:
        """Not text, yet hashes and compares like the field name "digest"."""

        def __hash__(self) -> int:
            return hash("digest")

        def __eq__(self, other: object) -> bool:
            return other == "digest"

    details = {Sneaky(): "ab" * 32, "message_id": 7, "reason_code": 16}
    assert not assert_fast_path_agrees("transmission.puback", details)
    assert outcome(kinds.validate_details, "transmission.puback", details) == \
        ("refused", "details")


def test_remembered_names_decide_the_same_and_stay_bounded() -> None:
    ident = kinds.IDENT.quick
    assert ident is not None
    for _ in range(2):  # the second time from memory
        assert ident("ox-1") and ident("vb/gw-1/up/readings/ox-1")
        assert not ident("a" * 43) and not ident("bad name") and not ident(Name("ox-1"))
    for index in range(3000):
        assert ident(f"ox-{index}")
    memory = [cell.cell_contents for cell in ident.__closure__ or ()
              if isinstance(cell.cell_contents, set)]
    assert memory and len(memory[0]) <= kinds._PASSED_QUICK_LIMIT


@settings(deadline=None)
@given(st.floats() | st.sampled_from([0.0, -0.0, 9.0e12, 9.0e12 - 0.001, 9.007e12, -1e-4,
                                      -6e-4, 1.7e9]))
def test_recorder_takes_a_time_exactly_when_the_full_time_check_does(at: float) -> None:
    from edge_agent.agent.recorder import EventRecorder, _check_time
    recorder = EventRecorder(None, None)  # type: ignore[arg-type]
    try:
        _check_time(at)
        expected = True
    except ValidationError:
        expected = False
    assert recorder.record("agent.started", "agent", "gateway:gw-1", {"version": "1"},
                           at=at) is expected
