"""Alarm messages between gateway and monitoring centre: transitions, the active set and
acknowledgements. Bodies of the envelope types "alarm", "alarm-set" and "alarm-ack".

    alarm      gateway -> centre (up/alarm), one per lifecycle step, priority path:
               {1: alarm id, 2: step seq, 3: step kind, 4: grade, 5: condition key,
                6: time (integer ms since the epoch), 7: escalation level,
                [8: patient], [9: device], [10: value], [11: actor], [12: detail]}
    alarm-set  gateway -> centre (up/alarms, retained), the open alarms now:
               {1: time (ms), 2: [alarm map as above, of each open alarm's latest step]}
    alarm-ack  centre -> gateway (down/alarm-ack):
               {1: alarm id, 2: action "ack" | "close", 3: actor, 4: time (ms), [5: detail]}

Step kinds and grades are the alarm lifecycle's (docs/alarms.md): a step's grade and level
are the alarm's after that step; seq numbers an alarm's steps from 0 without gaps, so the
centre can order them and see one missing.

Unknown integer labels: ignored in alarm and alarm-set (an alarm must never be dropped
because a newer gateway added a field; an ignored field cannot make the centre act), refused
in alarm-ack (a command: a field we do not understand might narrow what it means).
Decoders raise only ProtocolError subclasses. Runs on MicroPython.
"""

from protocol import messages, vitals
from protocol.checks import is_int
from protocol.errors import ValidationError
from protocol.topics import check_id

# The lifecycle's step kinds (edge_agent.alarms.lifecycle.STEP_KINDS), in loop order.
STEP_KINDS = ("raised", "notified", "acknowledged", "escalated", "regraded", "recurred",
              "resolved", "closed")
# Grades, most severe first (IEC 60601-1-8: high, medium, low, information/technical).
GRADES = ("red", "orange", "yellow", "blue")
ACK = "ack"
CLOSE = "close"
ACTIONS = (ACK, CLOSE)

A_ID = 1
A_SEQ = 2
A_KIND = 3
A_GRADE = 4
A_KEY = 5
A_TIME = 6
A_LEVEL = 7
A_PATIENT = 8
A_DEVICE = 9
A_VALUE = 10
A_ACTOR = 11
A_DETAIL = 12
_A_REQUIRED = (A_ID, A_SEQ, A_KIND, A_GRADE, A_KEY, A_TIME, A_LEVEL)

S_TIME = 1
S_ALARMS = 2

K_ID = 1
K_ACTION = 2
K_ACTOR = 3
K_TIME = 4
K_DETAIL = 5
_K_LABELS = (K_ID, K_ACTION, K_ACTOR, K_TIME, K_DETAIL)

KEY_MAX = 128
PATIENT_MAX = 64
ACTOR_MAX = 128
DETAIL_MAX = 256
VALUE_TEXT_MAX = 64
MAX_LEVEL = 255
MAX_STEP_SEQ = 0xFFFFFFFF
MAX_TIME_MS = (1 << 53) - 1
MAX_SET = 256


def _text(field, value, limit, printable=False):
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValidationError(field, "must be text of 1..%d characters" % limit)
    if printable:
        for ch in value:
            if ord(ch) < 0x20 or ord(ch) > 0x7E:
                raise ValidationError(field, "only printable ASCII is allowed")
    return value


def _uint(field, value, limit):
    if not is_int(value) or value < 0 or value > limit:
        raise ValidationError(field, "must be an integer in [0, %d]" % limit)
    return value


def _choice(field, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValidationError(field, "must be one of %s" % ", ".join(allowed))
    return value


MAX_EXACT_INT = (1 << 53) - 1


def _value(value):
    """The measured value that triggered the step: a finite number, short text or a bool."""
    if value is None or isinstance(value, bool):
        return value
    if vitals.is_number(value):
        if not vitals.is_finite(value):
            raise ValidationError("value", "must be finite")
        # Exact in a double and in every store's 64-bit integer column (a fuzzer found
        # 2**64-1 crashing the centre's SQLite insert).
        if isinstance(value, int) and not -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
            raise ValidationError("value", "integer outside +-(2**53-1)")
        return value
    if isinstance(value, str) and len(value) <= VALUE_TEXT_MAX:
        return value
    raise ValidationError("value", "must be a number, a bool or text of <= %d characters"
                          % VALUE_TEXT_MAX)


def _body(body, what):
    if not isinstance(body, dict):
        raise ValidationError(what, "body must be a map")
    for label in body:
        if not is_int(label):
            raise ValidationError(what, "labels must be integers, not %r" % (label,))
    return body


def _payload(payload, expected):
    kind, body = messages.decode(payload)
    if kind != expected:
        raise ValidationError("type", "expected %s, got %s" % (expected, kind))
    return body


class AlarmTransition:
    """One lifecycle step of one alarm, as the centre sees it. Validated on construction."""

    def __init__(self, alarm_id, seq, kind, grade, key, time_ms, level=0, patient=None,
                 device=None, value=None, actor=None, detail=None):
        self.alarm_id = check_id("alarm_id", alarm_id)
        self.seq = _uint("seq", seq, MAX_STEP_SEQ)
        self.kind = _choice("kind", kind, STEP_KINDS)
        self.grade = _choice("grade", grade, GRADES)
        self.key = _text("key", key, KEY_MAX, printable=True)
        self.time_ms = _uint("time", time_ms, MAX_TIME_MS)
        self.level = _uint("level", level, MAX_LEVEL)
        self.patient = None if patient is None else _text("patient", patient, PATIENT_MAX)
        self.device = None if device is None else check_id("device", device)
        self.value = _value(value)
        self.actor = None if actor is None else _text("actor", actor, ACTOR_MAX)
        self.detail = None if detail is None else _text("detail", detail, DETAIL_MAX)

    def to_map(self):
        body = {A_ID: self.alarm_id, A_SEQ: self.seq, A_KIND: self.kind, A_GRADE: self.grade,
                A_KEY: self.key, A_TIME: self.time_ms, A_LEVEL: self.level}
        for label, value in ((A_PATIENT, self.patient), (A_DEVICE, self.device),
                             (A_VALUE, self.value), (A_ACTOR, self.actor),
                             (A_DETAIL, self.detail)):
            if value is not None:
                body[label] = value
        return body

    @classmethod
    def from_map(cls, body):
        body = _body(body, "alarm")
        for label in _A_REQUIRED:
            if label not in body:
                raise ValidationError("alarm", "field %d missing" % label)
        return cls(body[A_ID], body[A_SEQ], body[A_KIND], body[A_GRADE], body[A_KEY],
                   body[A_TIME], body[A_LEVEL], patient=body.get(A_PATIENT),
                   device=body.get(A_DEVICE), value=body.get(A_VALUE),
                   actor=body.get(A_ACTOR), detail=body.get(A_DETAIL))

    def __eq__(self, other):
        return isinstance(other, AlarmTransition) and self.to_map() == other.to_map()

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "<AlarmTransition %s #%d %s %s %s>" % (
            self.alarm_id, self.seq, self.kind, self.grade, self.key)


def _encode(kind, cls, obj):
    if not isinstance(obj, cls):
        raise ValidationError(kind, "expected an %s" % cls.__name__)
    return messages.encode(kind, obj.to_map())


def encode_transition(transition):
    """AlarmTransition -> "alarm" message bytes."""
    return _encode("alarm", AlarmTransition, transition)


def decode_transition(payload):
    """"alarm" message bytes -> AlarmTransition."""
    return AlarmTransition.from_map(_payload(payload, "alarm"))


def encode_alarm_set(time_ms, transitions):
    """The gateway's open alarms (each as its latest step) -> "alarm-set" message bytes."""
    _uint("time", time_ms, MAX_TIME_MS)
    if not isinstance(transitions, (list, tuple)) or len(transitions) > MAX_SET:
        raise ValidationError("alarms", "must be a list of at most %d alarms" % MAX_SET)
    items = []
    for transition in transitions:
        if not isinstance(transition, AlarmTransition):
            raise ValidationError("alarms", "expected AlarmTransition items")
        items.append(transition.to_map())
    return messages.encode("alarm-set", {S_TIME: time_ms, S_ALARMS: items})


def decode_alarm_set(payload):
    """"alarm-set" message bytes -> (time_ms, [AlarmTransition, ...])."""
    body = _body(_payload(payload, "alarm-set"), "alarm-set")
    if S_TIME not in body or S_ALARMS not in body:
        raise ValidationError("alarm-set", "fields 1 and 2 are required")
    time_ms = _uint("time", body[S_TIME], MAX_TIME_MS)
    items = body[S_ALARMS]
    if not isinstance(items, list) or len(items) > MAX_SET:
        raise ValidationError("alarms", "must be a list of at most %d alarms" % MAX_SET)
    return time_ms, [AlarmTransition.from_map(item) for item in items]


class AlarmAck:
    """A person's acknowledgement or closure of an alarm, sent by the centre."""

    def __init__(self, alarm_id, action, actor, time_ms, detail=None):
        self.alarm_id = check_id("alarm_id", alarm_id)
        self.action = _choice("action", action, ACTIONS)
        self.actor = _text("actor", actor, ACTOR_MAX)
        self.time_ms = _uint("time", time_ms, MAX_TIME_MS)
        self.detail = None if detail is None else _text("detail", detail, DETAIL_MAX)

    def to_map(self):
        body = {K_ID: self.alarm_id, K_ACTION: self.action, K_ACTOR: self.actor,
                K_TIME: self.time_ms}
        if self.detail is not None:
            body[K_DETAIL] = self.detail
        return body

    @classmethod
    def from_map(cls, body):
        body = _body(body, "alarm-ack")
        for label in body:
            if label not in _K_LABELS:
                raise ValidationError("alarm-ack", "unknown field %d" % label)
        for label in (K_ID, K_ACTION, K_ACTOR, K_TIME):
            if label not in body:
                raise ValidationError("alarm-ack", "field %d missing" % label)
        return cls(body[K_ID], body[K_ACTION], body[K_ACTOR], body[K_TIME],
                   body.get(K_DETAIL))

    def __eq__(self, other):
        return isinstance(other, AlarmAck) and self.to_map() == other.to_map()

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "<AlarmAck %s %s by %s>" % (self.alarm_id, self.action, self.actor)


def encode_ack(ack):
    """AlarmAck -> "alarm-ack" message bytes."""
    return _encode("alarm-ack", AlarmAck, ack)


def decode_ack(payload):
    """"alarm-ack" message bytes -> AlarmAck."""
    return AlarmAck.from_map(_payload(payload, "alarm-ack"))
