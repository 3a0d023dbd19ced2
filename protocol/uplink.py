"""Bodies of the gateway <-> centre messages that carry readings and their receipts.

    readings  {1: device id, 2: sealed batch (COSE_Mac0 bytes, exactly as the device sent
               it), 3: verdict text ("sealed", "attested", "flagged:<reason>"),
               4: gateway receive time (integer ms since the epoch)}
    receipt   {1: digest of the readings payload it confirms (32 bytes), 2: status
               ("stored" or "rejected"), [3: reason text]}

The MQTT 5 correlation data of a readings publish is `digest(payload)`; the centre's
receipt echoes it, so a gateway can match receipts to journal rows without trusting
anything else in the message. Runs on MicroPython and CPython.
"""

from protocol import crypto, messages
from protocol.errors import ValidationError
from protocol.topics import check_id

R_DEVICE = 1
R_SEALED = 2
R_VERDICT = 3
R_RECEIVED_MS = 4

C_DIGEST = 1
C_STATUS = 2
C_REASON = 3
RECEIPT_STATUSES = ("stored", "rejected")
DIGEST_SIZE = 32


def digest(payload):
    """Correlation data for a readings publish: SHA-256 of the exact payload bytes."""
    return crypto.sha256(payload)


def _int(field, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValidationError(field, "must be a non-negative integer")
    return value


def _map(body, labels, what):
    if not isinstance(body, dict):
        raise ValidationError(what, "body must be a map")
    for label in body:
        if label not in labels:
            raise ValidationError(what, "unknown field %r" % (label,))
    return body


def encode_readings(device_id, sealed, verdict, received_ms):
    check_id("device", device_id)
    if not isinstance(sealed, (bytes, bytearray)) or not sealed:
        raise ValidationError("sealed", "must be non-empty bytes")
    if not isinstance(verdict, str) or not verdict:
        raise ValidationError("verdict", "must be non-empty text")
    return messages.encode("readings", {
        R_DEVICE: device_id, R_SEALED: bytes(sealed), R_VERDICT: verdict,
        R_RECEIVED_MS: _int("received_ms", received_ms),
    })


def decode_readings(payload):
    """-> (device id, sealed bytes, verdict, received_ms). Raises ProtocolError subclasses."""
    kind, body = messages.decode(payload)
    if kind != "readings":
        raise ValidationError("type", "expected readings, got %s" % kind)
    body = _map(body, (R_DEVICE, R_SEALED, R_VERDICT, R_RECEIVED_MS), "readings")
    for label in (R_DEVICE, R_SEALED, R_VERDICT, R_RECEIVED_MS):
        if label not in body:
            raise ValidationError("readings", "field %d missing" % label)
    sealed = body[R_SEALED]
    if not isinstance(sealed, bytes) or not sealed:
        raise ValidationError("sealed", "must be non-empty bytes")
    verdict = body[R_VERDICT]
    if not isinstance(verdict, str) or not verdict:
        raise ValidationError("verdict", "must be non-empty text")
    return (check_id("device", body[R_DEVICE]), sealed, verdict,
            _int("received_ms", body[R_RECEIVED_MS]))


def encode_receipt(digest_bytes, status="stored", reason=None):
    if not isinstance(digest_bytes, (bytes, bytearray)) or len(digest_bytes) != DIGEST_SIZE:
        raise ValidationError("digest", "must be %d bytes" % DIGEST_SIZE)
    if status not in RECEIPT_STATUSES:
        raise ValidationError("status", "must be one of %s" % ", ".join(RECEIPT_STATUSES))
    body = {C_DIGEST: bytes(digest_bytes), C_STATUS: status}
    if reason is not None:
        body[C_REASON] = str(reason)
    return messages.encode("receipt", body)


def decode_receipt(payload):
    """-> (digest, status, reason or None)."""
    kind, body = messages.decode(payload)
    if kind != "receipt":
        raise ValidationError("type", "expected receipt, got %s" % kind)
    body = _map(body, (C_DIGEST, C_STATUS, C_REASON), "receipt")
    dig = body.get(C_DIGEST)
    if not isinstance(dig, bytes) or len(dig) != DIGEST_SIZE:
        raise ValidationError("digest", "must be %d bytes" % DIGEST_SIZE)
    status = body.get(C_STATUS)
    if status not in RECEIPT_STATUSES:
        raise ValidationError("status", "must be one of %s" % ", ".join(RECEIPT_STATUSES))
    reason = body.get(C_REASON)
    if reason is not None and not isinstance(reason, str):
        raise ValidationError("reason", "must be text")
    return dig, status, reason
