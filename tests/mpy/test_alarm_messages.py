# Alarm transition / alarm-set / alarm-ack bodies on MicroPython: the CPython golden bytes
# decode and are rebuilt byte for byte, and bad fields are refused with the field named.
# (CPython side with hypothesis: tests/protocol/test_alarm_messages.py.)
# Run: .venv/bin/micropython -X heapsize=8M tests/mpy/run.py test_alarm_messages
from binascii import unhexlify

from protocol import alarm_messages as am
from protocol import messages
from protocol.errors import ProtocolError, ValidationError

GOLDEN_TRANSITION = unhexlify(
    "830115aa017039613362386334643565366637303831020003667261697365640463726564056873706f"
    "323a6c6f77061b0000018bcfe5680007000866502d3030303109646f782d310a1858")
GOLDEN_ACK = unhexlify(
    "8301181ba4017039613362386334643565366637303831026361636b036c6e757273653a632d31323334"
    "041b0000018bcfe56800")
T_MS = 1700000000000


def _transition(kind="raised", grade="red", value=88, detail=None):
    return am.AlarmTransition("9a3b8c4d5e6f7081", 0, kind, grade, "spo2:low", T_MS, 0,
                              "P-0001", "ox-1", value, detail=detail)


def _field(fn, *args):
    try:
        fn(*args)
    except ValidationError as exc:
        return exc.field
    raise AssertionError("expected ValidationError")


def test_golden_transition_both_ways():
    assert am.encode_transition(_transition()) == GOLDEN_TRANSITION
    t = am.decode_transition(GOLDEN_TRANSITION)
    assert t == _transition()
    assert t.time_ms == T_MS and t.value == 88 and t.device == "ox-1"


def test_golden_ack_both_ways():
    ack = am.AlarmAck("9a3b8c4d5e6f7081", "ack", "nurse:c-1234", T_MS)
    assert am.encode_ack(ack) == GOLDEN_ACK
    assert am.decode_ack(GOLDEN_ACK) == ack


def test_alarm_set_and_float_value_round_trip():
    items = [_transition(value=87.5), _transition(kind="resolved", grade="blue", value=None,
                                                  detail="sensor back")]
    time_ms, back = am.decode_alarm_set(am.encode_alarm_set(T_MS + 1, items))
    assert time_ms == T_MS + 1 and back == items and back[0].value == 87.5


def test_refusals_name_the_field():
    assert _field(_transition, "snoozed") == "kind"
    assert _field(_transition, "raised", "purple") == "grade"
    assert _field(_transition, "raised", "red", float("nan")) == "value"
    assert _field(am.AlarmAck, "a/b", "ack", "n", 1) == "alarm_id"
    assert _field(am.AlarmAck, "a1", "snooze", "n", 1) == "action"
    assert _field(am.encode_ack, "ack") == "alarm-ack"
    body = am.AlarmAck("a1", "ack", "n", 1).to_map()
    body[9] = 1
    assert _field(am.decode_ack, messages.encode("alarm-ack", body)) == "alarm-ack"


def test_unknown_alarm_label_ignored():
    body = _transition().to_map()
    body[40] = "newer"
    assert am.decode_transition(messages.encode("alarm", body)) == _transition()


def test_garbage_raises_protocol_errors_only():
    for data in (b"", b"\xff", GOLDEN_TRANSITION[:-3], GOLDEN_ACK + b"\x00",
                 messages.encode("alarm", [1, 2]), messages.encode("alarm-set", {1: 0, 2: 5})):
        for decode in (am.decode_transition, am.decode_alarm_set, am.decode_ack):
            try:
                decode(data)
            except ProtocolError:
                continue
            raise AssertionError("accepted %r" % (data,))
