"""Verification of every message a device sends, decided at the moment it is received.

`Verifier.handle(raw, received_at=..., link_device=...)` takes one protocol.messages
message from a device link and returns a `Verdict`: what to journal, what to quarantine
(with the reason), the readings for the rules engine, gap reports, an immediate reply
(the handshake's accept) and what to acknowledge. The service then does, in this order:

    verdict = verifier.handle(raw, received_at=t, link_device=dev)
    await journal.append_many(verdict.journal); quarantine verdict.quarantine
    ack = verifier.committed(verdict)            # after the commit returned, never before
    if ack: send(ack)                            # device-ack message bytes
    (on a failed append: verifier.abandoned(verdict); nothing is acknowledged)

No input makes `handle` raise: undecodable, forged, replayed or misrouted input becomes a
quarantine entry with the reason. Only `DirectoryUnavailable` and state-store failures
(sqlite3.Error, OSError) pass through: those are the gateway's problems, not the input's,
and quarantining good data for them would be wrong. docs/verification.md has the rules.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_agent.alarms.evaluator import Reading
from edge_agent.journal import NewMessage, Priority, QuarantineEntry
from edge_agent.pipeline.directory import DeviceDirectory, DirectoryUnavailable
from edge_agent.pipeline.sessions import PENDING, DeviceSession, SessionRefused, SessionTable
from edge_agent.pipeline.state_store import StateStoreError
from protocol import (
    checkpoint,
    cose,
    cwt,
    device_link,
    messages,
    replay,
    sealing,
    senml,
    topics,
    uplink,
)
from protocol import session as handshake
from protocol.checks import hexstr
from protocol.errors import ProtocolError, SealError, ValidationError

SESSION_ID_SIZE = 8

# Verdict outcomes
OPENED = "session-opened"
REFUSED = "refused"
STORED = "stored"
DUPLICATE = "duplicate"
IN_FLIGHT = "in-flight"
RELAYED = "relayed"
EVENT = "event"
FORWARD = "forward"
QUARANTINED = "quarantined"

# Flags (journal `flags`, lower-case tokens)
CERT_EXPIRED = "cert-expired"
CERT_NOT_YET_VALID = "cert-not-yet-valid"
NOT_ACCEPTED = "not-accepted"
SESSION_EXPIRED = "session-expired"
NAME_MISMATCH = "name-mismatch"
UNBOUND = "unbound"
NOT_EVALUABLE = "not-evaluable"
SEQ_OVERLAP = "seq-overlap"
SEQ_TOO_OLD = "seq-too-old"
DEVICE_WITHDRAWN = "device-withdrawn"
CHECKPOINT_GAP = "checkpoint-gap"
CHECKPOINT_TAG_MISMATCH = "checkpoint-tag-mismatch"
INVALID_FLAG = "invalid-flag"

_FLAG = re.compile(r"[a-z0-9][a-z0-9._:-]{0,63}\Z")  # what the journal accepts
_PASS_THROUGH = (DirectoryUnavailable, StateStoreError, sqlite3.Error, OSError)

CriticalCheck = Callable[[Reading], bool]


# ---------------------------------------------------------------- verdict types


@dataclass(frozen=True, slots=True)
class Gap:
    """Seqs first..last of a session that were skipped: not received (yet)."""

    device_id: str
    session: bytes
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class AckPlan:
    """What to acknowledge to the device once the verdict is durable.

    session: the session the acknowledged messages were sealed under (the device-ack
    itself is sealed under the device's newest session); seqs: this batch's range.
    """

    device_id: str
    session: bytes
    seqs: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class _Commit:
    """Bookkeeping applied by `committed`: seqs to record, a checkpoint to mark."""

    session: DeviceSession
    seqs: tuple[int, ...] = ()
    checkpoint: checkpoint.Checkpoint | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Everything the service must do about one received message."""

    kind: str | None
    outcome: str
    device_id: str | None = None
    journal: tuple[NewMessage, ...] = ()
    quarantine: tuple[QuarantineEntry, ...] = ()
    readings: tuple[Reading, ...] = ()
    gaps: tuple[Gap, ...] = ()
    flags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # reasons for logs: never keys, never measured values
    reply: bytes | None = None  # to send at once (accept); needs no durability
    ack: AckPlan | None = None
    events: tuple[device_link.Event, ...] = ()
    forward: object = None  # body for another service (enroll-request)
    commit: _Commit | None = field(default=None, repr=False)

    @property
    def reason(self) -> str | None:
        """The quarantine reason, if the message was quarantined."""
        return self.quarantine[0].reason if self.quarantine else None


@dataclass(frozen=True, slots=True)
class _Received:
    raw: bytes
    received_at: float
    link_device: str | None
    source: str | None

    @property
    def now(self) -> int:
        return int(self.received_at)

    @property
    def received_ms(self) -> int:
        return int(self.received_at * 1000)


# ---------------------------------------------------------------- helpers shared with attest


def clean_flags(flags: Iterable[str]) -> tuple[str, ...]:
    """Deduplicated flags in order; anything the journal would refuse becomes INVALID_FLAG."""
    out: list[str] = []
    for flag in flags:
        token = flag if isinstance(flag, str) and _FLAG.match(flag) else INVALID_FLAG
        if token not in out:
            out.append(token)
    return tuple(out)


def verdict_text(verdict: str, flags: Sequence[str]) -> str:
    """The uplink verdict text: "sealed", or "sealed flagged:cert-expired,unbound"."""
    return f"{verdict} flagged:{','.join(flags)}" if flags else verdict


def rule_readings(directory: DeviceDirectory, device_id: str, readings: Iterable[senml.Reading],
                  manual: bool = False, patient: str | None = None,
                  ) -> tuple[list[Reading], list[str]]:
    """Readings for the rules engine, with the patient bound at each reading's time.
    -> (readings, flags): UNBOUND when some reading has no patient, NOT_EVALUABLE when the
    rules' Reading refuses one (it is journaled all the same)."""
    out: list[Reading] = []
    flags: list[str] = []
    readings = list(readings)
    quality = signal_quality_by_time(readings)
    owners: dict[int, str | None] = {}  # a batch holds a few seconds: ask once per second
    make = Reading.checked
    for reading in readings:
        owner = patient
        if not owner:
            second = int(reading.time)
            if second in owners:
                owner = owners[second]
            else:
                owner = owners[second] = directory.patient_at(device_id, second)
        if owner is None:
            flags.append(UNBOUND)
            continue
        at = float(reading.time)
        try:
            out.append(make(owner, device_id, reading.quantity, reading.value, at, reading.unit,
                            quality_at(quality, at) if quality else None, manual))
        except ValidationError:
            flags.append(NOT_EVALUABLE)
    return out, flags


def signal_quality_by_time(readings: Sequence[senml.Reading]) -> list[tuple[float, float]]:
    """The batch's signal-quality records ("sq") as sorted (time, quality) pairs. A sensor
    reports sq beside the values it qualifies; the rules need it on each value, or an
    artefact (motion, poor contact) would reach the clinical limits as if it were real."""
    pairs = []
    for reading in readings:
        value = reading.value
        if reading.quantity == "sq" and isinstance(value, (int, float)) \
                and not isinstance(value, bool) and 0 <= value <= 100:
            pairs.append((float(reading.time), float(value)))
    pairs.sort()
    return pairs


def quality_at(pairs: Sequence[tuple[float, float]], time: float) -> float | None:
    """The quality the sensor reported at `time`, else its latest report before it in the
    same batch; None when it reported none (the rules then apply no quality guard)."""
    chosen = None
    for at, value in pairs:
        if at > time:
            break
        chosen = value
    return chosen


def priority_for(readings: Iterable[Reading], critical: CriticalCheck | None,
                 notes: list[str]) -> Priority:
    """CRITICAL when the callback calls any reading critical. A callback that fails counts
    as critical: the only cost of a wrong CRITICAL is an earlier place in the queue."""
    if critical is None:
        return Priority.ROUTINE
    for reading in readings:
        try:
            if critical(reading):
                return Priority.CRITICAL
        except Exception as exc:  # noqa: BLE001 - fail safe, reported in the notes
            notes.append(f"critical check failed ({type(exc).__name__}); treated as critical")
            return Priority.CRITICAL
    return Priority.ROUTINE


def base_names(device_id: str, certificate: cwt.Certificate | None) -> tuple[str, ...]:
    """SenML base names a device may use: urn:dev:vb:<device id>: or <serial>:."""
    names = [f"urn:dev:vb:{device_id}:"]
    if certificate is not None and certificate.serial:
        names.append(f"urn:dev:vb:{certificate.serial}:")
    return tuple(names)


# ---------------------------------------------------------------- the verifier


class Verifier:
    """Decides about device messages; holds no I/O but the session table's state store.

    critical: called with each rules Reading; True makes the journal entry priority 1.
    Not thread-safe: call handle/committed/abandoned from one thread (the event loop).
    """

    def __init__(self, directory: DeviceDirectory, sessions: SessionTable, *,
                 critical: CriticalCheck | None = None) -> None:
        self.directory = directory
        self.sessions = sessions
        self.critical = critical

    # -- entry points ---------------------------------------------------------------------

    def handle(self, raw: bytes, *, received_at: float, link_device: str | None = None,
               source: str | None = None) -> Verdict:
        """Verify one message. `link_device`: the device the link belongs to (a configured
        serial port or BLE device), None when the link does not say."""
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise TypeError("raw must be bytes")
        if not isinstance(received_at, int | float) or not math.isfinite(received_at):
            raise ValueError("received_at must be finite POSIX seconds")
        ctx = _Received(bytes(raw), float(received_at), link_device, source)
        try:
            return self._dispatch(ctx)
        except _PASS_THROUGH:
            raise
        except Exception as exc:  # noqa: BLE001 - nothing a device sends may stop ingest
            return self._quarantined(ctx, None, f"verifier error ({type(exc).__name__}): {exc}")

    def committed(self, verdict: Verdict) -> bytes | None:
        """The verdict's journal entries are durable: record its seqs, persist the replay
        state, and return the device-ack message to send (None: nothing to acknowledge)."""
        return self.committed_many([verdict])[0]

    def committed_many(self, verdicts: Sequence[Verdict]) -> list[bytes | None]:
        """`committed` for a group of verdicts with one state-store transaction."""
        touched: dict[bytes, DeviceSession] = {}
        for verdict in verdicts:
            commit = verdict.commit
            if commit is None:
                continue
            sess = commit.session
            seqs = commit.seqs
            sess.pending.difference_update(seqs)
            if self.sessions.get(sess.kid) is not sess:
                continue  # ended meanwhile: its keys are gone, nothing to record
            # A batch's new seqs ascend (a subsequence of its consecutive seqs): spanning
            # len - 1 they are all of them, recorded as one range
            if len(seqs) > 1 and seqs[-1] - seqs[0] == len(seqs) - 1:
                sess.tracker.record_range(seqs[0], seqs[-1])
            else:
                for seq in seqs:
                    sess.tracker.record(seq)
            if commit.checkpoint is not None:
                _mark_checkpoint(sess, commit.checkpoint)
            sess.advance_upto()
            touched[sess.kid] = sess
        self.sessions.save(touched.values())
        # After the commit every ack of one session says the same (its durable watermark),
        # so a pass of many batches MACs and encodes each distinct ack once.
        built: dict[tuple[Any, ...], bytes] = {}
        return [self._ack_message(v.ack, built) for v in verdicts]

    def abandoned(self, verdict: Verdict) -> None:
        """The journal refused the verdict: forget its pending seqs (a re-send is new)."""
        if verdict.commit is not None:
            for seq in verdict.commit.seqs:
                verdict.commit.session.pending.discard(seq)

    def withdraw_device(self, device_id: str, reason: str, now: float) -> list[bytes]:
        """End every session of a compromised device at once -> their kids."""
        return self.sessions.withdraw_device(device_id, reason, now)

    def tick(self, now: float) -> list[bytes]:
        """Housekeeping (about once a minute): end sessions past lifetime + grace."""
        return self.sessions.expire(now)

    # -- dispatch -------------------------------------------------------------------------

    def _dispatch(self, ctx: _Received) -> Verdict:
        try:
            kind, body = messages.decode(ctx.raw)
        except ProtocolError as exc:
            return self._quarantined(ctx, None, f"envelope: {exc}")
        if kind == "hello":
            return self._hello(ctx, body)
        if kind == "sealed":
            return self._sealed(ctx, body)
        if kind == "checkpoint":
            return self._checkpoint(ctx, body)
        if kind == "device-event":
            return self._event(ctx, body)
        if kind == "enroll-request":
            return Verdict(kind, FORWARD, ctx.link_device, forward=body)
        return self._quarantined(ctx, kind, f"a device does not send {kind!r} messages")

    def _quarantined(self, ctx: _Received, kind: str | None, reason: str,
                     device_id: str | None = None, outcome: str = QUARANTINED,
                     ack: AckPlan | None = None) -> Verdict:
        claimed = device_id or ctx.link_device
        entry = QuarantineEntry(ctx.raw, reason, claimed, ctx.source, ctx.received_at)
        return Verdict(kind, outcome, claimed, quarantine=(entry,), notes=(entry.reason,),
                       ack=ack)

    def _link_mismatch(self, ctx: _Received, device_id: str) -> str | None:
        if ctx.link_device is not None and device_id != ctx.link_device:
            return f"message for device {device_id} arrived on the link of {ctx.link_device}"
        return None

    # -- certificates and trust -----------------------------------------------------------

    def _certificate(self, device_id: str, at: int) -> tuple[cwt.Certificate | None, str]:
        """The device's certificate, verified against this gateway's issuing keys."""
        raw = self.directory.certificate(device_id, at)
        if raw is None:
            return None, f"no certificate for device {device_id}"
        keys = self.directory.gateway_keys()
        problem = "no issuer key"
        for issuer in keys.issuer_keys:
            try:
                cert = cwt.verify_cwt(raw, issuer, issuer=keys.gateway_id)
            except ProtocolError as exc:
                problem = str(exc)
                continue
            if cert.subject != device_id or cert.role != "device":
                return None, (f"certificate is for {cert.role} {cert.subject!r}, "
                              f"not device {device_id}")
            return cert, ""
        return None, f"device certificate does not verify: {problem}"

    def _trust_flags(self, device_id: str, cert: cwt.Certificate, key_id: bytes, now: int,
                     notes: list[str]) -> list[str]:
        """Certificate, key and device currency at the moment of receipt."""
        flags: list[str] = []
        validity = cwt.validity_state(cert, now)
        if validity == cwt.EXPIRED:
            flags.append(CERT_EXPIRED)
        elif validity == cwt.NOT_YET_VALID:
            flags.append(CERT_NOT_YET_VALID)
        ended = self.directory.certificate_status(device_id, now)
        if ended is not None:
            flags.append(f"cert-{ended}")
        accepted, why = self.directory.may_accept(device_id, key_id, now)
        if not accepted:
            flags.append(NOT_ACCEPTED)
            notes.append(f"not accepted: {why}")
        flags += [f for f in self.directory.currency_flags(device_id, now)
                  if not f.endswith("-due-soon")]  # due soon is still current
        return flags

    # -- hello ----------------------------------------------------------------------------

    def _hello(self, ctx: _Received, body: object) -> Verdict:
        try:
            hello = handshake.parse_hello(body)
        except ProtocolError as exc:
            return self._quarantined(ctx, "hello", f"hello: {exc}", outcome=REFUSED)
        device = hello.device_id

        def refuse(reason: str) -> Verdict:
            return self._quarantined(ctx, "hello", f"hello refused: {reason}", device, REFUSED)

        mismatch = self._link_mismatch(ctx, device)
        if mismatch:
            return refuse(mismatch)
        withdrawn = self.directory.withdrawn(device, ctx.now)
        if withdrawn is not None:
            return refuse(f"device {device} is withdrawn ({withdrawn})")
        cert, problem = self._certificate(device, ctx.now)
        if cert is None:
            return refuse(problem)
        if cert.agreement_key is None:
            return refuse("device certificate carries no agreement (X25519) key")
        try:
            opened = self.sessions.open(hello, cert, self.directory.gateway_keys(),
                                        ctx.received_at)
        except (ProtocolError, SessionRefused) as exc:
            return refuse(str(exc))
        kid = opened.session.kid
        notes = [f"session {hexstr(kid)} opened for {device}"]
        if opened.evicted:
            notes.append("ended sessions " + ", ".join(hexstr(k) for k in opened.evicted))
        try:
            self.directory.session_started(device, kid, ctx.now)
        except ProtocolError as exc:
            notes.append(f"registry did not record the session: {exc}")
        flags = self._trust_flags(device, cert, cert.key_id, ctx.now, notes)
        return Verdict("hello", OPENED, device, flags=clean_flags(flags), notes=tuple(notes),
                       reply=messages.encode("accept", opened.accept))

    # -- sealed batches -------------------------------------------------------------------

    def _live_session(self, ctx: _Received, kind: str, body: object
                      ) -> tuple[DeviceSession, cose.Mac0] | Verdict:
        """The live session a Mac0 body names by kid with the parsed (not yet verified)
        Mac0, or the quarantine verdict why not."""
        if not isinstance(body, bytes):
            return self._quarantined(ctx, kind, f"{kind}: body must be COSE_Mac0 bytes")
        try:
            msg = cose.mac0_parse(body)
        except ProtocolError as exc:
            return self._quarantined(ctx, kind, f"{kind}: {exc}")
        kid = msg.kid
        if not isinstance(kid, bytes) or len(kid) != SESSION_ID_SIZE:
            return self._quarantined(ctx, kind, f"{kind}: kid is not a session id")
        sess = self.sessions.get(kid)
        if sess is None:
            ended = self.sessions.ended(kid)
            reason = (f"session {hexstr(kid)} has ended ({ended[0]})" if ended
                      else f"unknown session {hexstr(kid)}")
            return self._quarantined(ctx, kind, f"{kind}: {reason}")
        mismatch = self._link_mismatch(ctx, sess.device_id)
        if mismatch:
            return self._quarantined(
                ctx, kind, f"{kind}: session {hexstr(kid)} belongs to device {sess.device_id}; "
                + mismatch, sess.device_id)
        withdrawn = self.directory.withdrawn(sess.device_id, ctx.now)
        if withdrawn is not None:
            self.sessions.withdraw_device(sess.device_id, withdrawn, ctx.received_at)
            return self._quarantined(
                ctx, kind, f"{kind}: session {hexstr(kid)} withdrawn ({withdrawn})",
                sess.device_id)
        return sess, msg

    def _sealed(self, ctx: _Received, body: object) -> Verdict:
        found = self._live_session(ctx, "sealed", body)
        if isinstance(found, Verdict):
            return found
        sess, msg = found
        assert isinstance(body, bytes)  # _live_session refuses anything else
        device = sess.device_id
        try:
            # The Mac0 parsed once above (for its kid) is verified here, not decoded again.
            batch = sealing.open_parsed(sess.device_mac_key, sess.kid, msg, now=ctx.now)
        except SealError as exc:
            return self._quarantined(ctx, "sealed", f"sealed: seal refused: {exc}", device)
        except ProtocolError as exc:
            return self._quarantined(ctx, "sealed", f"sealed: content refused: {exc}", device)
        sess.confirmed = True
        sess.remember_tags(batch.seqs, batch.tag, self.sessions.policy.max_tags)
        classes = sess.classify_batch(batch.seqs)
        if classes.count(replay.NEW) == len(classes):  # the usual batch: every seq new
            new = tuple(batch.seqs)
        else:
            new = tuple(s for s, c in zip(batch.seqs, classes, strict=True)
                        if c in (replay.NEW, replay.NEW_LATE))
        in_flight = PENDING in classes
        # In use; with new seqs, keys of the device's older sessions may settle (sessions.py)
        sess.verified(ctx.received_at, new=bool(new))
        too_old = replay.TOO_OLD in classes
        seq_range = (batch.first_seq, batch.last_seq)
        settled = None if in_flight else AckPlan(device, sess.kid, seq_range)
        if not new:
            if too_old:
                return self._quarantined(
                    ctx, "sealed", f"sealed: replay: seqs {seq_range[0]}..{seq_range[1]} are "
                    f"below the replay window of session {hexstr(sess.kid)} (highest "
                    f"{sess.tracker.high}) and below what its history still knows "
                    f"(horizon {sess.tracker.horizon})", device, ack=settled)
            if in_flight:
                return Verdict("sealed", IN_FLIGHT, device)
            return Verdict("sealed", DUPLICATE, device, ack=settled,
                           notes=(f"duplicate seqs {seq_range[0]}..{seq_range[1]}",))
        gaps = _gaps_before(sess, batch.first_seq)
        notes: list[str] = []
        flags = self._trust_flags(device, sess.certificate, sess.kid, ctx.now, notes)
        if sess.stale(ctx.received_at, self.sessions.policy):
            flags.append(SESSION_EXPIRED)
        names = sess.base_names
        if not names:
            names = sess.base_names = base_names(device, sess.certificate)
        for reading in batch.readings:
            if reading.device not in names:
                flags.append(NAME_MISMATCH)
                break
        if in_flight or replay.DUPLICATE in classes:
            flags.append(SEQ_OVERLAP)
        if too_old:
            flags.append(SEQ_TOO_OLD)
        if len(new) == len(batch.readings):
            fresh_readings = batch.readings
        else:
            fresh = set(new)
            fresh_readings = [r for r in batch.readings if r.seq in fresh]
        readings, reading_flags = rule_readings(self.directory, device, fresh_readings)
        flags = list(clean_flags(flags + reading_flags))
        priority = priority_for(readings, self.critical, notes)
        if priority == Priority.CRITICAL:
            sess.last_critical_seq = max(new)
        payload = uplink.encode_readings(device, body, verdict_text("sealed", flags),
                                         ctx.received_ms)
        message = NewMessage(topics.UP_READINGS, device, payload, priority, "sealed",
                             tuple(flags), sess.kid, batch.first_seq, batch.last_seq,
                             len(batch.seqs), ctx.received_at)
        sess.pending.update(new)  # last: a failure above must not leave seqs "in flight"
        return Verdict("sealed", STORED, device, journal=(message,), readings=tuple(readings),
                       gaps=gaps, flags=tuple(flags), notes=tuple(notes), ack=settled,
                       commit=_Commit(sess, new))

    # -- checkpoints ----------------------------------------------------------------------

    def _checkpoint(self, ctx: _Received, body: object) -> Verdict:
        if not isinstance(body, bytes):
            return self._quarantined(ctx, "checkpoint", "checkpoint: body must be COSE_Sign1 bytes")
        try:
            claims = checkpoint.parse_checkpoint(body)
        except ProtocolError as exc:
            return self._quarantined(ctx, "checkpoint", f"checkpoint: {exc}")
        device = claims.device_id
        mismatch = self._link_mismatch(ctx, device)
        if mismatch:
            return self._quarantined(ctx, "checkpoint", f"checkpoint: {mismatch}", device)
        sess = self.sessions.get(claims.session_id)
        if sess is not None and sess.device_id != device:
            return self._quarantined(ctx, "checkpoint", f"checkpoint: session "
                                     f"{hexstr(claims.session_id)} belongs to {sess.device_id}",
                                     device)
        cert = sess.certificate if sess is not None else self._certificate(device, ctx.now)[0]
        if cert is None:
            return self._quarantined(ctx, "checkpoint",
                                     f"checkpoint: no usable certificate for {device}", device)
        try:
            result = checkpoint.verify_checkpoint(body, cert.public_key,
                                                  sess.tags if sess is not None else {},
                                                  device_id=device,
                                                  session_id=claims.session_id)
        except ProtocolError as exc:
            return self._quarantined(ctx, "checkpoint", f"checkpoint refused: {exc}", device)
        if sess is not None:
            sess.verified(ctx.received_at)
        ack = AckPlan(device, claims.session_id) if sess is not None else None
        if sess is not None and sess.checkpoint_upto is not None \
                and claims.last_seq <= sess.checkpoint_upto:
            return Verdict("checkpoint", DUPLICATE, device, ack=ack,
                           notes=(f"checkpoint up to {claims.last_seq} already durable",))
        notes = [f"checkpoint {claims.first_seq}..{claims.last_seq}: {result.status}"]
        flags = self._trust_flags(device, cert, cert.key_id, ctx.now, notes)
        withdrawn = self.directory.withdrawn(device, ctx.now)
        if withdrawn is not None:
            flags.append(DEVICE_WITHDRAWN)
            notes.append(f"device withdrawn: {withdrawn}")
        flags += _checkpoint_flags(result, sess, notes)
        covers_critical = sess is not None and sess.last_critical_seq is not None and \
            claims.first_seq <= sess.last_critical_seq <= claims.last_seq
        flags = list(clean_flags(flags))
        message = NewMessage(topics.UP_CHECKPOINT, device, messages.encode("checkpoint", body),
                             Priority.CRITICAL if covers_critical else Priority.ROUTINE, "sealed",
                             tuple(flags), claims.session_id, claims.first_seq, claims.last_seq,
                             0, ctx.received_at)
        return Verdict("checkpoint", RELAYED, device, journal=(message,), flags=tuple(flags),
                       notes=tuple(notes), ack=ack,
                       commit=_Commit(sess, checkpoint=claims) if sess is not None else None)

    # -- device events --------------------------------------------------------------------

    def _event(self, ctx: _Received, body: object) -> Verdict:
        if isinstance(body, dict):  # unsealed: a hint, not authenticated
            try:
                event = device_link.decode_event(body)
            except ProtocolError as exc:
                return self._quarantined(ctx, "device-event", f"device-event: {exc}")
            return Verdict("device-event", EVENT, ctx.link_device, events=(event,),
                           notes=("unauthenticated device event",))
        found = self._live_session(ctx, "device-event", body)
        if isinstance(found, Verdict):
            return found
        sess = found[0]
        try:
            event = device_link.decode_event(body, sess.device_mac_key, sess.kid)
        except ProtocolError as exc:
            return self._quarantined(ctx, "device-event", f"device-event: {exc}",
                                     sess.device_id)
        sess.verified(ctx.received_at)
        return Verdict("device-event", EVENT, sess.device_id, events=(event,))

    # -- acknowledgements -----------------------------------------------------------------

    def _ack_message(self, plan: AckPlan | None,
                     built: dict[tuple[Any, ...], bytes] | None = None) -> bytes | None:
        """The sealed device-ack for `plan`; `built` memoises identical acks within one pass
        (the encoding is deterministic: same fields and key, same bytes)."""
        if plan is None:
            return None
        current = self.sessions.current(plan.device_id)
        if current is None:
            return None  # no live session to seal an ack under; the device re-sends
        sess = self.sessions.get(plan.session)
        upto = sess.durable_upto if sess is not None else None
        ranges = []
        if plan.seqs is not None and (upto is None or plan.seqs[1] > upto):
            ranges.append(plan.seqs)
        checkpoints = sess.checkpoint_upto if sess is not None else None
        if upto is None and not ranges and checkpoints is None:
            return None
        memo = (plan.session, upto, tuple(ranges), checkpoints, current.kid)
        if built is not None and memo in built:
            return built[memo]
        ack = device_link.Ack(plan.session, upto=upto, ranges=ranges,
                              checkpoints_upto=checkpoints)
        message = messages.encode("device-ack", device_link.encode_ack(
            ack, current.gateway_mac_key, current.kid))
        if built is not None:
            built[memo] = message
        return message


def _gaps_before(sess: DeviceSession, first: int) -> tuple[Gap, ...]:
    # The usual case needs no scan of the pending seqs (`highest()` is O(pending), and a
    # fast device has hundreds in flight): the seq just before `first` is known already.
    durable = sess.tracker.high
    if (durable is not None and first <= durable + 1) or first - 1 in sess.pending:
        return ()
    top = sess.highest()
    if top is None or first <= top + 1:
        return ()
    return (Gap(sess.device_id, sess.kid, top + 1, first - 1),)


def _checkpoint_flags(result: checkpoint.CheckpointVerdict, sess: DeviceSession | None,
                      notes: list[str]) -> list[str]:
    """Local check against the tags this process saw. Missing tags from before it started
    (a restart, a full tag memory) are not a finding; missing newer ones are a gap."""
    if result.status == checkpoint.TAG_MISMATCH:
        notes.append(result.reason)
        return [CHECKPOINT_TAG_MISMATCH]
    if result.status == checkpoint.GAP:
        seen_from = sess.tags_from if sess is not None else None
        if seen_from is not None and any(last >= seen_from for _, last in result.missing):
            notes.append(result.reason)
            return [CHECKPOINT_GAP]
        notes.append("checkpoint not checked locally: tags seen before this process")
    return []


def _mark_checkpoint(sess: DeviceSession, claims: checkpoint.Checkpoint) -> None:
    """Advance the checkpoint mark only along the chain: the first checkpoint of the
    session (prev = chain start) or the one after the last durable one. A cumulative ack
    over an unlinked checkpoint could let the device drop one the gateway never got."""
    start = checkpoint.chain_start(sess.kid)
    if claims.prev == start:
        sess.first_seq = claims.first_seq
    elif sess.checkpoint_head is None or claims.prev != sess.checkpoint_head:
        return
    if sess.checkpoint_upto is None or claims.last_seq > sess.checkpoint_upto:
        sess.checkpoint_upto = claims.last_seq
        sess.checkpoint_head = claims.head
