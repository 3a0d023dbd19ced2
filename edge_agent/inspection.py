"""Pure analysis behind `vitalbridge inspect`: bytes in, a report (plain dict) out.

Peels the layers a captured message may have — serial frame, message envelope, COSE seal,
SenML pack, certificate, checkpoint — using only `protocol/` to read bytes. Every seal met
gets a verdict: "valid", "invalid" (with the reason) or "unverifiable" (no key given).
No I/O here: the command module reads input and prints.
"""

from __future__ import annotations

import time
from typing import Any

from protocol import cbor, checkpoint, cose, cwt, frames, messages, senml
from protocol.errors import ProtocolError

VALID = "valid"
INVALID = "invalid"
UNVERIFIABLE = "unverifiable"


class InspectionError(Exception):
    """The input is not anything VitalBridge speaks (exit status 2)."""


def _hex(raw: bytes | None) -> str | None:
    return raw.hex() if isinstance(raw, bytes | bytearray) else None


def _jsonable(value: Any) -> Any:
    """CBOR values as JSON-friendly data (bytes -> hex, tags -> {"tag", "value"})."""
    if isinstance(value, bytes | bytearray):
        return {"hex": bytes(value).hex()}
    if isinstance(value, cbor.Tag):
        return {"tag": value.tag, "value": _jsonable(value.value)}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return "NaN"
    return value


class Keys:
    """What the user gave to check seals with. A 32-byte `key` is a MAC key for COSE_Mac0
    and an Ed25519 public key for COSE_Sign1; `cert` supplies the device's Ed25519 key."""

    def __init__(self, key: bytes | None = None, cert: bytes | None = None,
                 kid: bytes | None = None) -> None:
        # parse_cwt only reads the certificate; whoever issued it is not checked here.
        self.key = key
        # COSE leaves the kid unprotected: only a kid the user expects makes it count.
        self.kid = kid
        self.cert = cwt.parse_cwt(cert) if cert is not None else None

    def signing_key(self) -> bytes | None:
        if self.cert is not None:
            return self.cert.public_key
        return self.key


def analyse(data: bytes, keys: Keys, now: float | None = None) -> dict[str, Any]:
    """Report on `data`. Raises InspectionError when no layer can be read at all."""
    now = time.time() if now is None else now
    layers: list[dict[str, Any]] = []
    seals: list[dict[str, Any]] = []
    payloads = _unframe(data, layers)
    items = [_analyse_item(p, keys, now, layers, seals) for p in payloads]
    if not seals and (keys.key is not None or keys.cert is not None):
        # The user expected a seal: a damaged tag or header that turned it into other
        # CBOR must not pass as "nothing to check".
        seals.append({"structure": None, "verdict": INVALID,
                      "reason": "a key was given but the input holds no COSE_Mac0 or "
                                "COSE_Sign1 (damaged or foreign structure)"})
    report: dict[str, Any] = {"layers": layers, "items": items, "seals": seals}
    if keys.cert is not None:
        report["given_certificate"] = _certificate_summary(keys.cert, now)
    return report


def exit_status(report: dict[str, Any]) -> int:
    return 1 if any(s["verdict"] == INVALID for s in report["seals"]) else 0


def _unframe(data: bytes, layers: list[dict[str, Any]]) -> list[bytes]:
    """One CBOR item is taken as it is; otherwise the input must be serial frames
    (0x00-delimited, or one frame captured without its delimiters)."""
    try:
        cbor.loads(data)
        return [data]
    except ProtocolError as err:
        cbor_error = str(err)
    decoder = frames.FrameDecoder()
    payloads = decoder.feed(b"\x00" + bytes(data) + b"\x00")
    errors = decoder.take_errors()
    if not payloads:
        raise InspectionError(
            f"neither CBOR ({cbor_error}) nor a valid serial frame ({'; '.join(errors) or 'empty'})"
        )
    layers.append({"layer": "serial frames", "frames": len(payloads),
                   "dropped": decoder.frames_bad, "errors": errors})
    return payloads


def _analyse_item(data: bytes, keys: Keys, now: float, layers: list[dict[str, Any]],
                  seals: list[dict[str, Any]]) -> dict[str, Any]:
    value = cbor.loads(data)
    envelope = _as_envelope(data, value)
    if envelope is not None:
        msg_type, body = envelope
        item: dict[str, Any] = {"kind": "message", "type": msg_type}
        if isinstance(body, bytes) and _looks_like_cose(body):
            item["content"] = _analyse_cose(body, keys, now, seals)
        else:
            item["body"] = _jsonable(body)
        return item
    if _looks_like_cose(data):
        return _analyse_cose(data, keys, now, seals)
    pack = _try_senml(data, now)
    if pack is not None:
        return {"kind": "senml", "readings": pack}
    return {"kind": "cbor", "value": _jsonable(value)}


def _as_envelope(data: bytes, value: Any) -> tuple[str, Any] | None:
    if not (isinstance(value, list) and len(value) == 3 and isinstance(value[0], int)):
        return None
    try:
        return messages.decode(data)
    except ProtocolError:
        return None


def _looks_like_cose(data: bytes) -> bool:
    try:
        return cose.peek(data)["structure"] != "unknown"
    except ProtocolError:
        return False


def _try_senml(data: bytes, now: float) -> list[dict[str, Any]] | None:
    try:
        return [r.as_dict() for r in senml.decode_pack(data, now=now)]
    except ProtocolError:
        return None


def _analyse_cose(data: bytes, keys: Keys, now: float,
                  seals: list[dict[str, Any]]) -> dict[str, Any]:
    info = cose.peek(data)
    item: dict[str, Any] = {
        "kind": info["structure"],
        "tagged": info["tagged"],
        "alg": info["alg"],
        "kid": _hex(info["kid"]),
        "content_type": info["content_type"],
        "payload_size": info["payload_size"],
    }
    if info["structure"] == "COSE_Mac0":
        seal = _verify_mac0(data, keys)
        payload = seal.pop("payload", None)
        if payload is not None:
            item["readings"] = _try_senml(payload, now)
    else:
        seal, payload_kind = _verify_sign1(data, keys, now, item)
        item["payload_kind"] = payload_kind
    seal["structure"] = info["structure"]
    seals.append(seal)
    item["seal"] = seal
    return item


def _verify_mac0(data: bytes, keys: Keys) -> dict[str, Any]:
    try:
        msg = cose.mac0_parse(data)
    except ProtocolError as err:
        return {"verdict": INVALID, "reason": str(err)}
    if keys.key is None:
        return {"verdict": UNVERIFIABLE, "reason": "no MAC key given (--key)",
                "payload": msg.payload}
    try:
        verified = cose.mac0_verify(keys.key, data, kid=keys.kid)
    except ProtocolError as err:
        return {"verdict": INVALID, "reason": str(err), "payload": msg.payload}
    return {"verdict": VALID, "reason": "HMAC 256/256 tag matches" + _kid_note(keys),
            "payload": verified.payload}


def _kid_note(keys: Keys) -> str:
    return "" if keys.kid is not None else " (kid is unprotected: not checked, give --kid)"


def _verify_sign1(data: bytes, keys: Keys, now: float,
                  item: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A COSE_Sign1 is a certificate (CWT), a checkpoint, or something else signed."""
    try:
        cert = cwt.parse_cwt(data)
    except ProtocolError:
        cert = None
    if cert is not None:
        item["certificate"] = _certificate_summary(cert, now)
        return _verify_with(lambda k: cwt.verify_cwt(data, k), keys.key,
                            "issuer's Ed25519 public key (--key)"), "certificate"
    try:
        cp = checkpoint.parse_checkpoint(data)
    except ProtocolError:
        cp = None
    signer = keys.signing_key()
    if cp is not None:
        item["checkpoint"] = {
            "device_id": cp.device_id, "session_id": cp.session_id.hex(),
            "first_seq": cp.first_seq, "last_seq": cp.last_seq, "count": cp.count,
            "head": cp.head.hex(), "prev": cp.prev.hex(), "time": cp.time,
        }
        return _verify_with(
            lambda k: cose.sign1_verify(k, data, external_aad=checkpoint.CHECKPOINT_AAD,
                                        kid=cose.key_id(k)),
            signer, "device's Ed25519 public key (--key or --cert)"), "checkpoint"
    return _verify_with(lambda k: cose.sign1_verify(k, data, kid=keys.kid), signer,
                        "Ed25519 public key (--key or --cert)"), "other"


def _verify_with(check: Any, key: bytes | None, what: str) -> dict[str, Any]:
    if key is None:
        return {"verdict": UNVERIFIABLE, "reason": f"no {what} given"}
    try:
        check(key)
    except ProtocolError as err:
        return {"verdict": INVALID, "reason": str(err)}
    return {"verdict": VALID, "reason": "Ed25519 signature verifies"}


def _certificate_summary(cert: cwt.Certificate, now: float) -> dict[str, Any]:
    return {
        "subject": cert.subject, "issuer": cert.issuer, "role": cert.role,
        "model": cert.model, "serial": cert.serial,
        "not_before": cert.not_before, "expires": cert.expires,
        "public_key": cert.public_key.hex(), "key_id": cert.key_id.hex(),
        "state_now": cwt.validity_state(cert, int(now)),
        "renewal_due_at": cwt.renewal_due_at(cert), "expiring_at": cwt.expiring_at(cert),
    }
