"""What the monitoring centre can prove about what a gateway relays. Pure: no I/O, no clock
(every instant is a parameter), so the same bytes always get the same verdict.

Trust chain (docs/centre.md):
    organisation CA key --signs--> gateway CWT (role gateway, sub = gateway id)
    gateway key         --signs--> device CWT  (role device, iss = gateway id)
    device key          --signs--> checkpoints over the hash chain of the MAC tags it sent
The anchor is the organisation CA public key and/or gateway keys configured by hand.

A device-sealed batch (COSE_Mac0) cannot be checked on arrival: the centre has no session
key, and the gateway, which has it, could forge a Mac0. It is stored as `pending` and
becomes `device-proven` only when a checkpoint signed by the device covers its seqs and the
chain of received tags reproduces the signed head. A checkpoint naming seqs that never
arrived is a gap: it stays pending until the batches arrive or its deadline passes, then
the seqs are reported lost. Gateway-signed batches (COSE_Sign1: attested or manual
readings) are verified against the gateway key and stored as not device-proven.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from edge_agent.eventlog.chain import CHECKPOINT_AAD as EVENTLOG_CHECKPOINT_AAD
from protocol import cbor, checkpoint, cose, cwt, messages, sealing, senml, uplink
from protocol.checks import hexstr, is_int
from protocol.errors import CertificateError, ProtocolError, SealError, ValidationError

# Reading verdicts.
PENDING = "pending"                  # device-sealed, waiting for the device's checkpoint
DEVICE_PROVEN = "device-proven"      # covered by a verified device checkpoint
TAG_MISMATCH = "tag-mismatch"        # its checkpoint's chain does not match what arrived
UNPROVEN = "unproven"                # its checkpoint could not be checked (gap, break, key)
ATTESTED = "attested"                # gateway-signed, signature verified
MANUAL = "manual"                    # entered by a person, gateway-signed, verified
UNVERIFIED = "unverified"            # gateway-signed, but no trusted key of that gateway
SIGNATURE_INVALID = "signature-invalid"  # gateway-signed with a bad signature: kept, flagged
READING_VERDICTS = (PENDING, DEVICE_PROVEN, TAG_MISMATCH, UNPROVEN, ATTESTED, MANUAL,
                    UNVERIFIED, SIGNATURE_INVALID)
NOT_DEVICE_PROVEN = tuple(v for v in READING_VERDICTS if v != DEVICE_PROVEN)

# Checkpoint statuses. GAP and NO_KEY wait for their deadline; LOST and UNVERIFIABLE are
# what they became when it passed, and are re-judged if the missing evidence still arrives.
CP_VERIFIED = "verified"
CP_GAP = "gap"
CP_LOST = "lost"
CP_NO_KEY = "no-key"
CP_UNVERIFIABLE = "unverifiable"
CP_TAG_MISMATCH = "tag-mismatch"
CP_CHAIN_BREAK = "chain-break"
CP_INVALID = "invalid"
CP_WAITING = (CP_GAP, CP_NO_KEY)
CP_REOPENABLE = (CP_GAP, CP_NO_KEY, CP_LOST, CP_UNVERIFIABLE)
# What a checkpoint's status makes of the readings it covers.
READING_VERDICT_FOR = {
    CP_VERIFIED: DEVICE_PROVEN,
    CP_TAG_MISMATCH: TAG_MISMATCH,
    CP_LOST: UNPROVEN,
    CP_UNVERIFIABLE: UNPROVEN,
    CP_CHAIN_BREAK: UNPROVEN,
}

# Keys of an `event` message body the centre understands (others are stored, not acted on).
EVENT_DEVICE_CERTIFICATE = "device-certificate"
EVENT_GATEWAY_CERTIFICATE = "gateway-certificate"
EVENT_EVENTLOG_CHECKPOINT = "eventlog-checkpoint"
ANCHOR = "anchor"  # issuer name of keys configured by hand
MAX_EVENTLOG_CHECKPOINT = 1024
_UNUSABLE_STATES = (cwt.EXPIRED, cwt.NOT_YET_VALID)


class IssuerUnknown(CertificateError):
    """A certificate's issuer key is not (yet) trusted: keep it and try again later."""


def _key32(what: str, key: object) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != 32:
        raise ValueError(f"{what} must be a 32-byte Ed25519 public key")
    return bytes(key)


@dataclass(frozen=True, slots=True)
class TrustAnchor:
    """What the centre trusts before any message arrives."""

    org_ca_public: bytes | None = None
    gateway_keys: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.org_ca_public is not None:
            object.__setattr__(self, "org_ca_public", _key32("org CA key", self.org_ca_public))
        keys = {}
        for gateway, key in self.gateway_keys.items():
            keys[gateway] = _key32(f"key of gateway {gateway}", key)
        object.__setattr__(self, "gateway_keys", keys)

    def configured_keys(self) -> list[TrustedKey]:
        return [TrustedKey(gw, "gateway", key, cose.key_id(key), ANCHOR)
                for gw, key in sorted(self.gateway_keys.items())]


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key the centre accepts for `owner` (a gateway or device id), and why."""

    owner: str
    role: str  # "gateway" | "device"
    public_key: bytes
    kid: bytes
    issuer: str  # ANCHOR, the organisation CA's name, or the issuing gateway id
    not_before: int | None = None
    expires: int | None = None
    certificate: bytes | None = None

    def valid_at(self, instant: float) -> bool:
        if self.not_before is not None and instant < self.not_before:
            return False
        return self.expires is None or instant < self.expires


def _key_for(keys: Iterable[TrustedKey], owner: str, role: str, kid: bytes | None
             ) -> TrustedKey | None:
    for key in keys:
        if key.owner == owner and key.role == role and key.kid == kid:
            return key
    return None


def _usable(cert: cwt.Certificate, now: int) -> None:
    state = cwt.validity_state(cert, now)
    if state in _UNUSABLE_STATES:
        raise CertificateError(f"certificate of {cert.subject} is {state}")


def trust_gateway_certificate(data: bytes, gateway_id: str, anchor: TrustAnchor, now: int
                              ) -> TrustedKey:
    """A gateway CWT, checked against the organisation CA -> the gateway's key.

    It must name the gateway that published it (a gateway cannot vouch for another).
    Raises CertificateError (IssuerUnknown when no CA key is configured) or SealError."""
    if anchor.org_ca_public is None:
        raise IssuerUnknown("no organisation CA key is configured")
    cert = cwt.verify_cwt(data, anchor.org_ca_public)
    if cert.role != "gateway":
        raise CertificateError(f"role {cert.role!r} is not gateway")
    if cert.subject != gateway_id:
        raise CertificateError(f"certificate is for {cert.subject!r}, published by "
                               f"{gateway_id!r}")
    _usable(cert, now)
    return TrustedKey(gateway_id, "gateway", cert.public_key, cert.key_id, cert.issuer,
                      cert.not_before, cert.expires, bytes(data))


def trust_device_certificate(data: bytes, gateway_id: str, gateway_keys: Iterable[TrustedKey],
                             now: int) -> TrustedKey:
    """A device CWT issued by the publishing gateway's key -> the device's signing key.

    IssuerUnknown when that gateway key is not trusted yet (its certificate may still be on
    its way); CertificateError/SealError when the certificate is bad."""
    parsed = cwt.parse_cwt(data)
    issuer_kid = parsed.issuer_kid if isinstance(parsed.issuer_kid, bytes) else None
    issuer = _key_for(gateway_keys, gateway_id, "gateway", issuer_kid)
    if issuer is None:
        shown = hexstr(issuer_kid) if issuer_kid else "none"
        raise IssuerUnknown(f"issuer key {shown} is not a trusted key of gateway {gateway_id}")
    cert = cwt.verify_cwt(data, issuer.public_key, issuer=gateway_id)
    if cert.role != "device":
        raise CertificateError(f"role {cert.role!r} is not device")
    _usable(cert, now)
    return TrustedKey(cert.subject, "device", cert.public_key, cert.key_id, gateway_id,
                      cert.not_before, cert.expires, bytes(data))


# ---------------------------------------------------------------- readings


@dataclass(frozen=True, slots=True)
class Batch:
    """A relayed batch as far as the centre can check it on arrival.

    session: hex of the COSE kid (the session id for sealed batches, the gateway key id for
    gateway-signed ones), so (device, session, seq) names a reading. tag: the Mac0 tag or
    the Sign1 signature: two different copies of one seq differ in it."""

    device: str
    session: str
    kind: str  # "sealed" | "attested" | "manual"
    verdict: str
    gateway_verdict: str
    flags: tuple[str, ...]
    readings: tuple[senml.Reading, ...]
    tag: bytes
    gateway_received_ms: int
    reason: str = ""

    @property
    def seqs(self) -> list[int]:
        return [r.seq for r in self.readings]


def _consecutive(readings: Sequence[senml.Reading]) -> None:
    if not readings:
        raise ValidationError("records", "a batch needs at least one record")
    for before, after in zip(readings, readings[1:], strict=False):
        if after.seq != before.seq + 1:
            raise ValidationError("records", f"seq {after.seq} does not follow {before.seq}")


def _gateway_flags(verdict: str) -> tuple[str, ...]:
    prefix = "flagged:"
    return tuple(verdict[len(prefix):].split()) if verdict.startswith(prefix) else ()


def open_readings(payload: bytes, gateway_id: str, topic_device: str,
                  gateway_keys: Iterable[TrustedKey], now: float | None = None) -> Batch:
    """Decode a readings message and check what can be checked now -> Batch.

    Raises ProtocolError when the message is not a readings batch at all (the centre
    rejects it); a gateway signature that fails is a verdict, not an error, so the
    evidence is kept."""
    device, sealed, gateway_verdict, received_ms = uplink.decode_readings(payload)
    if device != topic_device:
        raise ValidationError("device", f"body names {device!r}, topic {topic_device!r}")
    structure = cose.peek(sealed)["structure"]
    if structure == "COSE_Mac0":
        msg = cose.mac0_parse(sealed)
        kind, verdict, reason = "sealed", PENDING, ""
        if not isinstance(msg.kid, bytes) or len(msg.kid) != checkpoint.SESSION_ID_SIZE:
            raise ValidationError("kid", "a sealed batch's kid must be its 8-byte session id")
    elif structure == "COSE_Sign1":
        msg = cose.sign1_parse(sealed)
        kind = "manual" if gateway_verdict.startswith("manual") else "attested"
        verdict, reason = _gateway_signature(sealed, msg, gateway_id, gateway_keys, kind)
    else:
        raise SealError("readings must be a COSE_Mac0 or COSE_Sign1")
    if msg.content_type != cose.CT_SENML_CBOR:
        raise ValidationError("content_type", f"expected {cose.CT_SENML_CBOR} (SenML CBOR), "
                              f"got {msg.content_type!r}")
    if msg.payload is None:
        raise SealError("payload detached")
    readings = senml.decode_pack(msg.payload, max_records=sealing.MAX_BATCH,
                                 now=None if now is None else int(now))
    _consecutive(readings)
    flags = list(_gateway_flags(gateway_verdict))
    if any(r.device != f"urn:dev:vb:{device}:" for r in readings):
        flags.append("name-mismatch")
    return Batch(device, hexstr(msg.kid), kind, verdict, gateway_verdict, tuple(flags),
                 tuple(readings), bytes(msg.tag), received_ms, reason)


def _gateway_signature(sealed: bytes, msg: cose.Sign1, gateway_id: str,
                       gateway_keys: Iterable[TrustedKey], kind: str) -> tuple[str, str]:
    key = _key_for(gateway_keys, gateway_id, "gateway", msg.kid)
    if key is None:
        return UNVERIFIED, f"no trusted key of gateway {gateway_id} for this signature"
    try:
        cose.sign1_verify(key.public_key, sealed, kid=key.kid)
    except SealError as exc:
        return SIGNATURE_INVALID, str(exc)
    return (MANUAL if kind == "manual" else ATTESTED), ""


@dataclass(frozen=True, slots=True)
class SeqOutcome:
    """How a batch's seqs relate to what is already stored for (device, session)."""

    new: tuple[int, ...]
    duplicates: tuple[int, ...]  # same seq, same tag: the same reading again
    conflicts: tuple[int, ...]  # same seq, another tag: a second, different copy


def classify_seqs(batch: Batch, stored_tags: Mapping[int, bytes]) -> SeqOutcome:
    new, duplicates, conflicts = [], [], []
    for seq in batch.seqs:
        stored = stored_tags.get(seq)
        if stored is None:
            new.append(seq)
        elif stored == batch.tag:
            duplicates.append(seq)
        else:
            conflicts.append(seq)
    return SeqOutcome(tuple(new), tuple(duplicates), tuple(conflicts))


def missing_count(seqs: Iterable[int]) -> int:
    """Seqs missing between the lowest and highest of `seqs` (a session's gaps)."""
    unique = set(seqs)
    return max(unique) - min(unique) + 1 - len(unique) if unique else 0


# ---------------------------------------------------------------- device checkpoints


@dataclass(frozen=True, slots=True)
class CheckpointClaim:
    """What a checkpoint says, read without a key (for routing and storage)."""

    device: str
    session: str  # hex session id
    first_seq: int
    last_seq: int
    kid: bytes | None
    time: int
    head: bytes
    prev: bytes
    starts_session: bool  # prev is the chain start of its session


def read_checkpoint(payload: bytes, topic_device: str) -> tuple[CheckpointClaim, bytes]:
    """A checkpoint message -> (claims, COSE_Sign1 bytes). Raises ProtocolError."""
    kind, body = messages.decode(payload)
    if kind != "checkpoint" or not isinstance(body, bytes):
        raise ValidationError("checkpoint", "expected a checkpoint message carrying bytes")
    claims = checkpoint.parse_checkpoint(body)
    if claims.device_id != topic_device:
        raise ValidationError("device_id", f"checkpoint is for {claims.device_id!r}, topic "
                              f"names {topic_device!r}")
    kid = cose.sign1_parse(body).kid
    start = checkpoint.chain_start(claims.session_id)
    return CheckpointClaim(claims.device_id, hexstr(claims.session_id), claims.first_seq,
                           claims.last_seq, kid if isinstance(kid, bytes) else None,
                           claims.time, claims.head, claims.prev,
                           claims.prev == start), body


@dataclass(frozen=True, slots=True)
class CheckpointJudgement:
    status: str
    reason: str
    missing: tuple[tuple[int, int], ...] = ()
    flags: tuple[str, ...] = ()

    @property
    def missing_seqs(self) -> list[int]:
        return [s for first, last in self.missing for s in range(first, last + 1)]

    @property
    def reading_verdict(self) -> str | None:
        """The verdict the covered readings get, None while it is still open."""
        return READING_VERDICT_FOR.get(self.status)


def judge_checkpoint(data: bytes, claim: CheckpointClaim, device_keys: Iterable[TrustedKey],
                     tags: Mapping[int, bytes], previous_head: bytes | None, now: float,
                     deadline: float) -> CheckpointJudgement:
    """Verify a device checkpoint against the tags received for its session.

    previous_head: head of the verified checkpoint ending at first_seq - 1 in this session,
    if the centre has one; the link to it is then checked too."""
    key = _key_for(device_keys, claim.device, "device", claim.kid)
    expired = now >= deadline
    if key is None:
        status = CP_UNVERIFIABLE if expired else CP_NO_KEY
        return CheckpointJudgement(status, f"no trusted certificate of {claim.device} for key "
                                   f"{hexstr(claim.kid) if claim.kid else 'none'}")
    flags = [] if key.valid_at(claim.time) else ["certificate-not-valid-at-checkpoint-time"]
    if previous_head is None and not claim.starts_session:
        flags.append("previous-checkpoint-missing")
    try:
        verdict = checkpoint.verify_checkpoint(data, key.public_key, tags,
                                               expected_prev=previous_head,
                                               device_id=claim.device)
    except ProtocolError as exc:
        return CheckpointJudgement(CP_INVALID, str(exc), flags=tuple(flags))
    if verdict.status == checkpoint.GAP:
        status = CP_LOST if expired else CP_GAP
        return CheckpointJudgement(status, verdict.reason, tuple(verdict.missing), tuple(flags))
    status = {checkpoint.VERIFIED: CP_VERIFIED, checkpoint.TAG_MISMATCH: CP_TAG_MISMATCH,
              checkpoint.CHAIN_BREAK: CP_CHAIN_BREAK}[verdict.status]
    return CheckpointJudgement(status, verdict.reason, flags=tuple(flags))


# ---------------------------------------------------------------- gateway events


def read_event(payload: bytes) -> dict[str, object]:
    """An event message -> its body (a map with text keys). Raises ProtocolError."""
    kind, body = messages.decode(payload)
    if kind != "event":
        raise ValidationError("type", f"expected event, got {kind}")
    if not isinstance(body, dict) or not all(isinstance(k, str) for k in body):
        raise ValidationError("event", "body must be a map with text keys")
    return body


@dataclass(frozen=True, slots=True)
class EventlogCheckpoint:
    """A gateway's signed statement "my event journal seq first..last ends in head"."""

    gateway: str
    first: int
    last: int
    head: bytes
    time_ms: int
    status: str  # CP_VERIFIED | CP_NO_KEY | CP_INVALID
    reason: str = ""


def judge_eventlog_checkpoint(data: object, gateway_id: str,
                              gateway_keys: Iterable[TrustedKey]) -> EventlogCheckpoint:
    """Verify a gateway event-journal checkpoint (docs/eventlog.md). Raises ProtocolError
    when it is not one at all; a bad signature or unknown key is a status."""
    if not isinstance(data, bytes) or len(data) > MAX_EVENTLOG_CHECKPOINT:
        raise ValidationError("eventlog-checkpoint", "must be COSE_Sign1 bytes (<= 1 KiB)")
    msg = cose.sign1_parse(data)
    if msg.payload is None:
        raise SealError("payload detached")
    claims = cbor.loads(msg.payload)
    if not isinstance(claims, dict) or set(claims) != {"gateway", "first", "last", "head",
                                                       "time"}:
        raise ValidationError("eventlog-checkpoint", "payload is not an event-log checkpoint")
    first, last, head, time_ms = claims["first"], claims["last"], claims["head"], claims["time"]
    if not (is_int(first) and is_int(last) and 1 <= first <= last and is_int(time_ms)
            and isinstance(head, bytes) and len(head) == 32):
        raise ValidationError("eventlog-checkpoint", "fields out of range")
    if claims["gateway"] != gateway_id:
        return EventlogCheckpoint(gateway_id, first, last, head, time_ms, CP_INVALID,
                                  f"signed for gateway {claims['gateway']!r}")
    key = _key_for(gateway_keys, gateway_id, "gateway", msg.kid)
    if key is None:
        return EventlogCheckpoint(gateway_id, first, last, head, time_ms, CP_NO_KEY,
                                  "no trusted key of this gateway")
    try:
        cose.sign1_verify(key.public_key, data, external_aad=EVENTLOG_CHECKPOINT_AAD,
                          kid=key.kid)
    except SealError as exc:
        return EventlogCheckpoint(gateway_id, first, last, head, time_ms, CP_INVALID, str(exc))
    return EventlogCheckpoint(gateway_id, first, last, head, time_ms, CP_VERIFIED)
