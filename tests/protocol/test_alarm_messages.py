"""Alarm transition, alarm-set and alarm-ack bodies: round trips, the agent's vocabulary,
named refusals and hostile bytes (MicroPython side: tests/mpy/test_alarm_messages.py)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.alarms import lifecycle
from edge_agent.alarms.grades import Grade
from protocol import alarm_messages as am
from protocol import cbor, messages
from protocol.errors import ProtocolError, ValidationError

# The same bytes are rebuilt on MicroPython (tests/mpy/test_alarm_messages.py).
GOLDEN_TRANSITION = bytes.fromhex(
    "830115aa017039613362386334643565366637303831020003667261697365640463726564056873706f"
    "323a6c6f77061b0000018bcfe5680007000866502d3030303109646f782d310a1858")
GOLDEN_ACK = bytes.fromhex(
    "8301181ba4017039613362386334643565366637303831026361636b036c6e757273653a632d31323334"
    "041b0000018bcfe56800")


def _transition(**overrides: object) -> am.AlarmTransition:
    fields: dict[str, object] = {
        "alarm_id": "9a3b8c4d5e6f7081", "seq": 0, "kind": "raised", "grade": "red",
        "key": "spo2:low", "time_ms": 1_700_000_000_000, "level": 0, "patient": "P-0001",
        "device": "ox-1", "value": 88}
    fields.update(overrides)
    return am.AlarmTransition(**fields)  # type: ignore[arg-type]


def test_vocabulary_is_the_lifecycles() -> None:
    assert am.STEP_KINDS == lifecycle.STEP_KINDS
    assert am.GRADES == tuple(g.label for g in sorted(Grade, reverse=True))


def test_golden_bytes() -> None:
    assert am.encode_transition(_transition()) == GOLDEN_TRANSITION
    transition = am.decode_transition(GOLDEN_TRANSITION)
    assert transition == _transition()
    assert am.encode_transition(transition) == GOLDEN_TRANSITION
    ack = am.decode_ack(GOLDEN_ACK)
    assert (ack.alarm_id, ack.action, ack.actor, ack.time_ms) == (
        "9a3b8c4d5e6f7081", "ack", "nurse:c-1234", 1_700_000_000_000)
    assert am.encode_ack(ack) == GOLDEN_ACK


def test_transition_round_trip_with_every_field() -> None:
    t = _transition(kind="escalated", level=2, value=87.5, actor="rules",
                    detail="unacknowledged for 240 s", seq=3)
    back = am.decode_transition(am.encode_transition(t))
    assert back == t and back.value == 87.5 and back.detail == "unacknowledged for 240 s"


def test_technical_alarm_without_patient_or_value() -> None:
    t = _transition(grade="blue", key="low-signal:sim-ox-1", patient=None, value=None)
    back = am.decode_transition(am.encode_transition(t))
    assert back.patient is None and back.value is None and back.grade == "blue"


def test_alarm_set_round_trip() -> None:
    items = [_transition(), _transition(alarm_id="0011223344556677", grade="orange",
                                        key="news2", seq=4, kind="resolved")]
    time_ms, back = am.decode_alarm_set(am.encode_alarm_set(1_700_000_001_000, items))
    assert time_ms == 1_700_000_001_000 and back == items
    assert am.decode_alarm_set(am.encode_alarm_set(5, []))[1] == []


def test_ack_round_trip_with_detail() -> None:
    ack = am.AlarmAck("9a3b8c4d5e6f7081", "close", "dr.ada@centre", 7, detail="resolved")
    assert am.decode_ack(am.encode_ack(ack)) == ack


def test_unknown_labels_ignored_in_alarms_refused_in_acks() -> None:
    body = _transition().to_map()
    body[40] = "a field from a newer gateway"
    assert am.decode_transition(messages.encode("alarm", body)) == _transition()
    ack = am.AlarmAck("9a3b8c4d5e6f7081", "ack", "n", 1).to_map()
    ack[9] = True
    with pytest.raises(ValidationError, match="unknown field 9"):
        am.decode_ack(messages.encode("alarm-ack", ack))


@pytest.mark.parametrize(("overrides", "field"), [
    ({"alarm_id": "a/b"}, "alarm_id"),
    ({"alarm_id": ""}, "alarm_id"),
    ({"seq": -1}, "seq"),
    ({"seq": True}, "seq"),
    ({"kind": "snoozed"}, "kind"),
    ({"grade": "purple"}, "grade"),
    ({"grade": Grade.RED}, "grade"),
    ({"key": "spo2\nlow"}, "key"),
    ({"key": "k" * 129}, "key"),
    ({"time_ms": 1.5}, "time"),
    ({"time_ms": 1 << 53}, "time"),
    ({"level": 256}, "level"),
    ({"patient": ""}, "patient"),
    ({"device": "ox+1"}, "device"),
    ({"value": float("nan")}, "value"),
    ({"value": float("inf")}, "value"),
    ({"value": b"\x00"}, "value"),
    ({"value": "v" * 65}, "value"),
    ({"actor": ""}, "actor"),
    ({"detail": "d" * 257}, "detail"),
])
def test_transition_refusals_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        _transition(**overrides)
    assert err.value.field == field


@pytest.mark.parametrize(("body", "field"), [
    ({1: "a1", 2: "ack", 3: "n"}, "alarm-ack"),
    ({1: "a1", 2: "snooze", 3: "n", 4: 1}, "action"),
    ({1: "a1", 2: "ack", 3: "", 4: 1}, "actor"),
    ({1: "a1", 2: "ack", 3: "n", 4: -5}, "time"),
    ({"1": "a1", 2: "ack", 3: "n", 4: 1}, "alarm-ack"),
    ([1, 2], "alarm-ack"),
])
def test_ack_refusals_name_the_field(body: object, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        am.decode_ack(messages.encode("alarm-ack", body))
    assert err.value.field == field


def test_missing_field_and_wrong_type_refused() -> None:
    body = _transition().to_map()
    del body[am.A_LEVEL]
    with pytest.raises(ValidationError, match="field 7 missing"):
        am.decode_transition(messages.encode("alarm", body))
    with pytest.raises(ValidationError, match="expected alarm-ack"):
        am.decode_ack(am.encode_transition(_transition()))
    with pytest.raises(ValidationError, match="at most 256"):
        am.decode_alarm_set(messages.encode("alarm-set", {1: 0, 2: [{}] * 257}))


def test_encoders_refuse_wrong_objects() -> None:
    with pytest.raises(ValidationError):
        am.encode_transition(_transition().to_map())  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        am.encode_ack("ack")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        am.encode_alarm_set(0, [_transition().to_map()])  # type: ignore[list-item]


ids = st.text("0123456789abcdef-_.XYZ", min_size=1, max_size=64)
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
                    max_size=128)
values = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 40), 1 << 40),
                   st.floats(allow_nan=False, allow_infinity=False),
                   st.text(max_size=am.VALUE_TEXT_MAX))


@given(ids, st.integers(0, am.MAX_STEP_SEQ), st.sampled_from(am.STEP_KINDS),
       st.sampled_from(am.GRADES), printable, st.integers(0, am.MAX_TIME_MS),
       st.integers(0, am.MAX_LEVEL), st.one_of(st.none(), st.text(min_size=1, max_size=64)),
       st.one_of(st.none(), ids), values)
def test_any_valid_transition_round_trips(alarm_id: str, seq: int, kind: str, grade: str,
                                          key: str, time_ms: int, level: int,
                                          patient: str | None, device: str | None,
                                          value: object) -> None:
    t = am.AlarmTransition(alarm_id, seq, kind, grade, key, time_ms, level, patient, device,
                           value)
    payload = am.encode_transition(t)
    assert am.decode_transition(payload) == t
    assert cbor.dumps(cbor.loads(payload)) == payload  # deterministic encoding


@given(ids, st.sampled_from(am.ACTIONS), st.text(min_size=1, max_size=128),
       st.integers(0, am.MAX_TIME_MS))
def test_any_valid_ack_round_trips(alarm_id: str, action: str, actor: str, time_ms: int
                                   ) -> None:
    ack = am.AlarmAck(alarm_id, action, actor, time_ms)
    assert am.decode_ack(am.encode_ack(ack)) == ack


cbor_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(1 << 64), (1 << 64) - 1), st.floats(),
              st.text(max_size=20), st.binary(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.integers(-2, 14), st.text(max_size=3)),
                                            inner, max_size=14)),
    max_leaves=30)


@given(st.sampled_from(("alarm", "alarm-set", "alarm-ack")), cbor_values)
def test_hostile_bodies_raise_only_protocol_errors(kind: str, body: object) -> None:
    payload = messages.encode(kind, body)
    for decode in (am.decode_transition, am.decode_alarm_set, am.decode_ack):
        try:
            decode(payload)
        except ProtocolError:
            pass


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    for decode in (am.decode_transition, am.decode_alarm_set, am.decode_ack):
        try:
            decode(data)
        except ProtocolError:
            pass
