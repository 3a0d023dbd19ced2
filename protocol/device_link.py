"""Bodies of the device-link control messages: device-ack, device-command, device-event
(protocol.messages envelope types 5, 8, 9). docs/firmware-identity.md explains the choices.

    device-ack (gateway -> device): COSE_Mac0 under the current session's *gateway* MAC
        key (kid = current session id, external AAD "vitalbridge device-ack v1") over
        {0: 1, 1: id of the session the acknowledged messages were sealed under,
         [2: upto], [3: [[first, last], ...]], [4: checkpoints upto]}
        upto: every sealed seq <= upto of that session is durable at the gateway;
        3: further durable seq ranges (sorted, disjoint, not adjacent: "selective acks");
        4: every checkpoint of that session whose last seq <= it is durable.
    device-command (gateway -> device): COSE_Mac0 under the gateway MAC key (AAD
        "vitalbridge device-command v1") over {0: 1, 1: command id, 2: name, [3: args]}.
        Ids increase within a session (a replayed command is refused). Only the commands
        in UNSEALED_COMMANDS may travel as the bare map (there is no session before
        enrollment); they cannot harm the device.
    device-event (device -> gateway): COSE_Mac0 under the *device* MAC key (AAD
        "vitalbridge device-event v1") over {0: 1, 1: name, 2: time, [3: {text: scalar}]},
        or the bare map when no session exists yet (the gateway must then treat it as a
        hint: it is not authenticated).

An ack or command can only come from the gateway because only it and the device hold the
gateway MAC key; the AADs keep a MAC of one kind from passing as another (a sealed reading
batch has no AAD). Decoders raise only ProtocolError subclasses. Runs on MicroPython.
"""

from protocol import cbor, cose
from protocol.checks import fixed_bytes, is_int
from protocol.enrollment import (
    MAX_TIME,
    body_map,
    bytes_field,
    parse_challenge,
    required,
    text_field,
    uint_field,
)
from protocol.errors import SealError, ValidationError
from protocol.senml import SEQ_LIMIT

LINK_VERSION = 1
SESSION_ID_SIZE = 8
KID_SIZE = 8
MAX_RANGES = 32
MAX_BODY = 1024
COMMAND_ID_LIMIT = 1 << 32
MAX_DETAILS = 16
MAX_NAME = 32
MAX_DETAIL_TEXT = 128
MAX_DETAIL_BYTES = 64
INT64 = 1 << 63

ACK_AAD = b"vitalbridge device-ack v1"
COMMAND_AAD = b"vitalbridge device-command v1"
EVENT_AAD = b"vitalbridge device-event v1"

A_SESSION = 1
A_UPTO = 2
A_RANGES = 3
A_CHECKPOINTS = 4
_ACK_LABELS = (0, A_SESSION, A_UPTO, A_RANGES, A_CHECKPOINTS)

M_ID = 1
M_NAME = 2
M_ARGS = 3
_COMMAND_LABELS = (0, M_ID, M_NAME, M_ARGS)

E_NAME = 1
E_TIME = 2
E_DETAILS = 3
_EVENT_LABELS = (0, E_NAME, E_TIME, E_DETAILS)

_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_"

# ---------------------------------------------------------------- sealing helpers


def _seal(body, mac_key, kid, aad):
    return cose.mac0_create(mac_key, cbor.dumps(body), kid=kid, external_aad=aad)


def _open(data, mac_key, kid, aad, what):
    """Verify a sealed body -> the decoded map."""
    if mac_key is None:
        raise SealError("%s is sealed but there is no session key to check it" % what)
    msg = cose.mac0_verify(mac_key, bytes_field(what, data, MAX_BODY), external_aad=aad,
                           kid=kid, max_size=MAX_BODY)
    return cbor.loads(msg.payload, max_size=MAX_BODY)


def _name(field, value):
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise ValidationError(field, "must be text of 1..%d characters" % MAX_NAME)
    for ch in value:
        if ch not in _NAME_CHARS:
            raise ValidationError(field, "character %r not allowed (a-z 0-9 - _)" % ch)
    return value


# ---------------------------------------------------------------- device-ack


def normalise_ranges(ranges):
    """Sort and merge (first, last) seq ranges, joining adjacent ones -> list of tuples."""
    merged = []
    for first, last in sorted([(int(a), int(b)) for a, b in ranges]):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


def _parse_ranges(value):
    if not isinstance(value, list) or len(value) > MAX_RANGES:
        raise ValidationError("ranges", "must be a list of at most %d [first, last]" % MAX_RANGES)
    ranges = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise ValidationError("ranges", "each range must be [first, last]")
        first = uint_field("ranges", item[0], SEQ_LIMIT)
        last = uint_field("ranges", item[1], SEQ_LIMIT)
        if last < first:
            raise ValidationError("ranges", "range %d..%d is reversed" % (first, last))
        if ranges and first <= ranges[-1][1] + 1:
            raise ValidationError("ranges", "ranges must be sorted, disjoint and not adjacent")
        ranges.append((first, last))
    return ranges


class Ack:
    """What the gateway holds durably of the messages sealed under `session_id`."""

    def __init__(self, session_id, upto=None, ranges=(), checkpoints_upto=None):
        self.session_id = fixed_bytes("session_id", session_id, SESSION_ID_SIZE)
        self.upto = None if upto is None else uint_field("upto", upto, SEQ_LIMIT)
        self.ranges = _parse_ranges([list(r) for r in normalise_ranges(ranges)])
        self.checkpoints_upto = (None if checkpoints_upto is None
                                 else uint_field("checkpoints_upto", checkpoints_upto, SEQ_LIMIT))

    def to_map(self):
        body = {0: LINK_VERSION, A_SESSION: self.session_id}
        if self.upto is not None:
            body[A_UPTO] = self.upto
        if self.ranges:
            body[A_RANGES] = [[a, b] for a, b in self.ranges]
        if self.checkpoints_upto is not None:
            body[A_CHECKPOINTS] = self.checkpoints_upto
        return body

    def __repr__(self):
        return "<Ack upto=%r ranges=%r checkpoints_upto=%r>" % (
            self.upto, self.ranges, self.checkpoints_upto)


def encode_ack(ack, mac_key, kid):
    """Gateway side: the device-ack body (Mac0 bytes) under the session's gateway MAC key."""
    return _seal(ack.to_map(), mac_key, kid, ACK_AAD)


def decode_ack(data, mac_key, kid):
    """Device side: verify and validate a device-ack body -> Ack."""
    body = body_map(_open(data, mac_key, kid, ACK_AAD, "device-ack"), _ACK_LABELS,
                    "device-ack", LINK_VERSION)
    ranges = _parse_ranges(body.get(A_RANGES, []))
    return Ack(required(body, A_SESSION, "session_id", "device-ack"), body.get(A_UPTO), ranges,
               body.get(A_CHECKPOINTS))


# ---------------------------------------------------------------- device-command


def _kid_arg(args):
    return fixed_bytes("args", args, KID_SIZE)


def _no_args(args):
    if args is not None:
        raise ValidationError("args", "this command takes no arguments")
    return None


def _floor_arg(args):
    return uint_field("args", args, SEQ_LIMIT)


def _pattern_arg(args):
    return text_field("args", args, MAX_NAME)


# name -> argument parser. Names are wire values: add, never rename.
COMMANDS = {
    "enroll": parse_challenge,        # start enrollment: args = enrollment challenge map
    "rotate-keys": parse_challenge,   # new key pair + endorsed request: args = challenge
    "destroy-key": _kid_arg,          # destroy a retired key: args = its 8-byte kid
    "seq-floor": _floor_arg,          # resume sequence numbers at >= args (after corruption)
    "identify": _no_args,             # blink so a technician can find the device
    "feedback": _pattern_arg,         # play a patient-feedback pattern by name
}
UNSEALED_COMMANDS = ("enroll", "identify")


class Command:
    """A validated command; `args` is parsed (a Challenge, kid bytes, int, text or None)."""

    def __init__(self, command_id, name, args, authenticated):
        self.command_id = command_id
        self.name = name
        self.args = args
        self.authenticated = authenticated

    def __repr__(self):
        return "<Command #%d %s%s>" % (self.command_id, self.name,
                                       "" if self.authenticated else " unsealed")


def encode_command(command_id, name, args=None, mac_key=None, kid=None):
    """Gateway side: the device-command body; sealed when mac_key is given (required for
    every command outside UNSEALED_COMMANDS). args: the wire value (a challenge map, ...)."""
    if name not in COMMANDS:
        raise ValidationError("name", "unknown command %r" % (name,))
    COMMANDS[name](args)
    body = {0: LINK_VERSION, M_ID: uint_field("command_id", command_id, COMMAND_ID_LIMIT),
            M_NAME: name}
    if args is not None:
        body[M_ARGS] = args
    if mac_key is None:
        if name not in UNSEALED_COMMANDS:
            raise ValidationError("mac_key", "command %r must be sealed" % name)
        return body
    return _seal(body, mac_key, kid, COMMAND_AAD)


def decode_command(data, mac_key=None, kid=None, last_id=None):
    """Device side: a device-command body -> Command. A bare map is accepted only for
    UNSEALED_COMMANDS; a sealed one must verify under mac_key/kid and, when last_id is
    given, carry a larger id (else SealError: replayed)."""
    sealed = not isinstance(data, dict)
    body = _open(data, mac_key, kid, COMMAND_AAD, "device-command") if sealed else data
    body_map(body, _COMMAND_LABELS, "device-command", LINK_VERSION)
    command_id = uint_field("command_id", required(body, M_ID, "command_id", "device-command"),
                            COMMAND_ID_LIMIT)
    name = required(body, M_NAME, "name", "device-command")
    if not isinstance(name, str) or name not in COMMANDS:
        raise ValidationError("name", "unknown command %r" % (name,))
    if not sealed and name not in UNSEALED_COMMANDS:
        raise SealError("command %r must be sealed under the session key" % name)
    if sealed and last_id is not None and command_id <= last_id:
        raise SealError("command %d replayed (last was %d)" % (command_id, last_id))
    return Command(command_id, name, COMMANDS[name](body.get(M_ARGS)), sealed)


# ---------------------------------------------------------------- device-event


def _detail_value(key, value):
    if value is None or isinstance(value, bool):
        return value
    if is_int(value):
        if not -INT64 <= value < INT64:
            raise ValidationError(key, "integer out of range")
        return value
    if isinstance(value, str):
        if len(value) > MAX_DETAIL_TEXT:
            raise ValidationError(key, "text longer than %d" % MAX_DETAIL_TEXT)
        return value
    return bytes_field(key, value, MAX_DETAIL_BYTES)


def _details(value):
    if not isinstance(value, dict) or len(value) > MAX_DETAILS:
        raise ValidationError("details", "must be a map of at most %d entries" % MAX_DETAILS)
    details = {}
    for key in value:
        details[_name("details", key)] = _detail_value(key, value[key])
    return details


class Event:
    """A validated device event. `authenticated` is True only when it was sealed."""

    def __init__(self, name, time, details, authenticated=False):
        self.name = _name("event", name)
        self.time = uint_field("time", time, MAX_TIME)
        self.details = _details(details)
        self.authenticated = authenticated

    def to_dict(self):
        """The firmware's event dict form: {"event": name, "time": t, **details}."""
        out = dict(self.details)
        out["event"] = self.name
        out["time"] = self.time
        return out

    def __repr__(self):
        return "<Event %s t=%d %r>" % (self.name, self.time, self.details)


def event_from_dict(event):
    """{"event": name, "time": t, **details} (as the firmware emits) -> Event."""
    if not isinstance(event, dict):
        raise ValidationError("event", "must be a dict")
    details = dict(event)
    name = details.pop("event", None)
    time = details.pop("time", None)
    return Event(name, time, details)


def encode_event(event, mac_key=None, kid=None):
    """Device side: the device-event body for an event dict; sealed when mac_key is given."""
    ev = event_from_dict(event)
    body = {0: LINK_VERSION, E_NAME: ev.name, E_TIME: ev.time}
    if ev.details:
        body[E_DETAILS] = ev.details
    if mac_key is None:
        return body
    return _seal(body, mac_key, kid, EVENT_AAD)


def decode_event(data, mac_key=None, kid=None):
    """Gateway side: a device-event body -> Event (authenticated only if sealed)."""
    sealed = not isinstance(data, dict)
    body = _open(data, mac_key, kid, EVENT_AAD, "device-event") if sealed else data
    body_map(body, _EVENT_LABELS, "device-event", LINK_VERSION)
    return Event(required(body, E_NAME, "event", "device-event"),
                 required(body, E_TIME, "time", "device-event"),
                 body.get(E_DETAILS, {}), sealed)
