"""Message envelope for every VitalBridge payload on MQTT and on device links.

Wire form: the CBOR array [version, type, body]. The version comes first so a receiver can
refuse a message it does not speak before looking at anything else; the type is a small
integer so an envelope costs 3 bytes.
"""

from protocol import PROTOCOL_VERSION, cbor
from protocol.errors import DecodeError, ValidationError, VersionError

SUPPORTED_VERSIONS = (PROTOCOL_VERSION,)

# type code -> name. Codes are wire values: never renumber, only add.
TYPES = {
    # device link (serial frames / BLE VitalBridge service)
    1: "hello",            # device -> gateway: session handshake start
    2: "accept",           # gateway -> device: session established
    3: "sealed",           # device -> gateway: COSE_Mac0 over a SenML batch
    4: "checkpoint",       # device -> gateway: COSE_Sign1 over the tag hash chain
    5: "device-ack",       # gateway -> device: highest durable sequence numbers
    6: "enroll-request",   # device -> gateway: public keys, identity, proof of possession
    7: "certificate",      # gateway -> device: issued CWT
    8: "device-command",   # gateway -> device: rotate/destroy keys, feedback pattern, ...
    9: "device-event",     # device -> gateway: key events, tamper, sensor faults, battery
    # gateway <-> centre
    20: "readings",        # sealed batches relayed with their verification verdict
    21: "alarm",
    22: "alarm-set",
    23: "status",
    24: "event",
    25: "receipt",
    26: "limits",
    27: "alarm-ack",
    28: "command",
}
CODES = {}
for _code, _name in TYPES.items():
    CODES[_name] = _code


def encode(msg_type, body):
    """Envelope `body` (any CBOR-encodable value) as message `msg_type` (name or code)."""
    code = CODES.get(msg_type, msg_type)
    if code not in TYPES:
        raise ValidationError("type", "unknown message type %r" % (msg_type,))
    return cbor.dumps([PROTOCOL_VERSION, code, body])


def decode(data, max_size=65536):
    """Return (type name, body). Raises VersionError for a version we do not speak."""
    msg = cbor.loads(data, max_size=max_size)
    if not isinstance(msg, list) or len(msg) != 3:
        raise DecodeError("message: expected the array [version, type, body]")
    version, code, body = msg
    if not isinstance(version, int) or isinstance(version, bool):
        raise DecodeError("message: version must be an integer")
    if version not in SUPPORTED_VERSIONS:
        raise VersionError(
            "protocol version %d is not supported (this side speaks %s)"
            % (version, ", ".join([str(v) for v in SUPPORTED_VERSIONS]))
        )
    if not isinstance(code, int) or isinstance(code, bool) or code not in TYPES:
        raise ValidationError("type", "unknown message type %r" % (code,))
    return TYPES[code], body
