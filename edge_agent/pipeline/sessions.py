"""Per-device session state at the gateway: the session table keyed by kid.

A session is born from a hello (protocol.session.gateway_accept with the device's X25519
key taken from its verified certificate) and lives in memory and in the state store until
it ends: withdrawn (compromise), evicted (too many sessions for one device), or expired
(its lifetime plus the grace in which the device may still re-send batches sealed under
it). An ended session keeps a tombstone with the reason; its keys are wiped.

Each session carries a replay tracker (protocol.replay.SequenceTracker) that records only
seqs whose batch is durable in the journal, plus the acknowledgement marks:

    first_seq       the first seq the device sealed in this session, learnt from its first
                    signed checkpoint (prev = chain start); until then no cumulative ack
    durable_upto    every seq first_seq..durable_upto is durable (the ack's "upto")
    checkpoint_*    last durable checkpoint that links to the chain start (the ack's 4)

Seqs verified but not yet durable are `pending` (memory only): a copy arriving meanwhile is
"in flight", neither journaled twice nor acknowledged early.

Keys of a device offline for days: the device keeps sealing under its last session and
replays its outbox, oldest first, after its next hello. So a session past its lifetime and
grace keeps its keys while they are still *owed*: until the device has used a newer session
for `settle_s` after its last message under this one (what it still had, it would have
re-sent by then), capped at the expiry of the certificate the session was opened with.
A compromise still withdraws them at once. docs/verification.md, "Sessions".
"""


from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from edge_agent.pipeline.directory import GatewayKeys
from edge_agent.pipeline.state_store import Progress, SessionRow, StateStore
from protocol import cbor, cwt, replay, session
from protocol.checks import hexstr

DAY = 86400.0

WITHDRAWN = "withdrawn"
EVICTED = "evicted"
EXPIRED = "expired"
DESTROYED = "destroyed"

PENDING = "in-flight"


class SessionRefused(Exception):
    """A session cannot be opened (for example its id collides with an existing one)."""


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """Limits of the session table.

    max_per_device: live sessions per device (the firmware remembers acks for 8);
    max_unconfirmed: of those, sessions no batch has verified under yet (a hello costs an
    attacker nothing, so unconfirmed sessions are evicted first and never push out one the
    device really uses); lifetime_s: after it, batches are flagged "session-expired" and the
    device should open a new session; retain_s: keys are kept at least this much longer for
    outbox re-sends; settle_s: after that, keys are kept until the device has used a newer
    session this long after its last message under the old one (capped at the certificate's
    expiry); tombstone_s: how long an ended session's reason is remembered; history_runs:
    runs of seqs below the replay window each tracker remembers (protocol.replay).
    """

    max_per_device: int = 8
    max_unconfirmed: int = 2
    lifetime_s: float = DAY
    retain_s: float = DAY
    tombstone_s: float = 30 * DAY
    settle_s: float = DAY
    window: int = 4096
    history_runs: int = 256
    max_tags: int = 8192

    def __post_init__(self) -> None:
        if not 1 <= self.max_unconfirmed <= self.max_per_device:
            raise ValueError("need 1 <= max_unconfirmed <= max_per_device")
        if self.lifetime_s <= 0 or min(self.retain_s, self.tombstone_s, self.settle_s) < 0:
            raise ValueError("lifetime_s must be > 0, retain_s, settle_s and tombstone_s >= 0")
        if self.max_tags < 1:
            raise ValueError("max_tags must be >= 1")
        self.tracker()  # validates the window and history_runs

    def tracker(self) -> replay.SequenceTracker:
        """A fresh replay tracker with this policy's window and history."""
        return replay.SequenceTracker(self.window, max_runs=self.history_runs)


@dataclass(eq=False, slots=True)
class DeviceSession:
    """A live session. Keys are left out of the repr (logs must never show them)."""

    kid: bytes
    device_id: str
    created_at: float
    device_mac_key: bytes = field(repr=False)
    gateway_mac_key: bytes = field(repr=False)
    certificate: cwt.Certificate = field(repr=False)
    tracker: replay.SequenceTracker = field(repr=False)
    confirmed: bool = False
    first_seq: int | None = None
    durable_upto: int | None = None
    checkpoint_upto: int | None = None
    checkpoint_head: bytes | None = field(default=None, repr=False)
    pending: set[int] = field(default_factory=set, repr=False)
    # seq -> MAC tag of verified batches, for local checkpoint checks (memory, bounded)
    tags: OrderedDict[int, bytes] = field(default_factory=OrderedDict, repr=False)
    tags_from: int | None = None  # lowest seq whose tag this process saw
    last_critical_seq: int | None = None  # a checkpoint covering it goes out as critical
    # Memory only (the load time after a restart): the last message verified under this
    # session, and the last one that brought new seqs (a replayed copy cannot fake that).
    last_verified: float | None = None
    last_new: float | None = None
    # The SenML base names the device may use under this session's certificate (memo of
    # pipeline.verifier.base_names, which only depends on the two)
    base_names: tuple[str, ...] = field(default=(), repr=False)

    def stale(self, now: float, policy: SessionPolicy) -> bool:
        return now >= self.created_at + policy.lifetime_s

    def classify(self, seq: int) -> str:
        """What a seq is now: replay verdicts, or "in-flight" (verified, not yet durable)."""
        if seq in self.pending:
            return PENDING
        return self.tracker.classify(seq)

    def classify_batch(self, seqs: list[int]) -> list[str]:
        """`[classify(seq) for seq in seqs]` for an opened batch's seqs (ints in 0..2**32-1).
        The usual batch, every seq above the highest durable one and none in flight, is
        all NEW without a lookup per seq."""
        high = self.tracker.high
        if seqs and (high is None or min(seqs) > high) and self.pending.isdisjoint(seqs) \
                and max(seqs) <= replay.MAX_SEQ and all(type(s) is int for s in seqs):
            return [replay.NEW] * len(seqs)
        return [self.classify(seq) for seq in seqs]

    def highest(self) -> int | None:
        """Highest seq verified in this session (durable or pending)."""
        top = self.tracker.high
        if self.pending:
            pending_top = max(self.pending)
            top = pending_top if top is None else max(top, pending_top)
        return top

    def remember_tags(self, seqs: Iterable[int], tag: bytes, limit: int) -> None:
        tags = self.tags
        low = self.tags_from
        for seq in seqs:
            if seq in tags:
                tags.move_to_end(seq)  # a new key is appended at the end already
            tags[seq] = tag
            if low is None or seq < low:
                low = seq
        self.tags_from = low
        excess = len(tags) - limit
        if excess > 0:  # forget the oldest: seqs below the highest dropped are unknown now
            popitem = tags.popitem
            top = -1
            for _ in range(excess):
                dropped = popitem(last=False)[0]
                if dropped > top:
                    top = dropped
            self.tags_from = max(low or 0, top + 1)

    def advance_upto(self) -> None:
        """Move durable_upto over every consecutive durable seq (needs first_seq)."""
        if self.first_seq is None:
            return
        upto = self.first_seq - 1 if self.durable_upto is None else self.durable_upto
        high = self.tracker.high
        if high is not None and upto < high:
            upto = self.tracker.seen_through(upto + 1)  # every seq up to it is durable
        self.durable_upto = None if upto < self.first_seq else upto

    def verified(self, at: float, new: bool = False) -> None:
        """A message under this session verified at `at`; `new`: it carried new seqs."""
        if self.last_verified is None or at > self.last_verified:
            self.last_verified = at
        if new and (self.last_new is None or at > self.last_new):
            self.last_new = at

    def progress(self) -> Progress:
        return Progress(self.kid, cbor.dumps(self.tracker.to_state()), self.confirmed,
                        self.first_seq, self.durable_upto, self.checkpoint_upto,
                        self.checkpoint_head)

    def __repr__(self) -> str:
        return f"<DeviceSession {self.device_id} kid={hexstr(self.kid)}>"


@dataclass(frozen=True, slots=True)
class Opened:
    """A session just opened: the accept body to send, and sessions it pushed out."""

    session: DeviceSession
    accept: dict[int, object]
    evicted: tuple[bytes, ...]


class SessionTable:
    """Live sessions by kid, tombstones of ended ones, persisted in a StateStore."""

    def __init__(self, store: StateStore, policy: SessionPolicy | None = None,
                 now: float | None = None) -> None:
        """now: the time of loading (default the wall clock). The last use of a loaded
        session is not persisted, so it counts as used then: its keys are never released
        earlier because of a restart, at most `settle_s` later."""
        self.store = store
        self.policy = policy or SessionPolicy()
        self._live: dict[bytes, DeviceSession] = {}
        self._ended: dict[bytes, tuple[str, float]] = {}
        # Opening order, not created_at: a wall clock may step back between two hellos.
        self._order = itertools.count()
        self._opened: dict[bytes, int] = {}
        # device -> its newest live session (None: none): `current` per acknowledgement;
        # dropped whenever a session opens or ends
        self._current: dict[str, DeviceSession | None] = {}
        self._load(time.time() if now is None else now)

    def _load(self, now: float) -> None:
        for row in self.store.sessions():
            if row.ended_reason is not None or row.device_mac_key is None \
                    or row.gateway_mac_key is None:
                self._ended[row.kid] = (row.ended_reason or DESTROYED, row.ended_at or 0.0)
                continue
            tracker = replay.SequenceTracker.from_state(cbor.loads(row.tracker))
            if not tracker.max_runs:  # saved before trackers kept history below the window
                tracker.keep_history(self.policy.history_runs)
            self._opened[row.kid] = next(self._order)
            self._live[row.kid] = DeviceSession(
                row.kid, row.device_id, row.created_at, row.device_mac_key,
                row.gateway_mac_key, cwt.parse_cwt(row.certificate), tracker, row.confirmed,
                row.first_seq, row.durable_upto, row.checkpoint_upto, row.checkpoint_head,
                last_verified=max(now, row.created_at), last_new=max(now, row.created_at))

    # -- lookup ---------------------------------------------------------------------------

    def get(self, kid: bytes) -> DeviceSession | None:
        return self._live.get(kid)

    def ended(self, kid: bytes) -> tuple[str, float] | None:
        """(reason, when) of an ended session, None if it is live or never existed."""
        return self._ended.get(kid)

    def of_device(self, device_id: str) -> list[DeviceSession]:
        """Live sessions of a device, oldest first."""
        return sorted((s for s in self._live.values() if s.device_id == device_id),
                      key=lambda s: self._opened[s.kid])

    def current(self, device_id: str) -> DeviceSession | None:
        """The newest live session: what acknowledgements to the device are sealed under."""
        try:
            return self._current[device_id]
        except KeyError:
            pass
        sessions = self.of_device(device_id)
        newest = self._current[device_id] = sessions[-1] if sessions else None
        return newest

    def __len__(self) -> int:
        return len(self._live)

    # -- opening --------------------------------------------------------------------------

    def open(self, hello: session.Hello, certificate: cwt.Certificate, keys: GatewayKeys,
             now: float) -> Opened:
        """Answer a validated hello from the holder of `certificate` (verified by the
        caller). Durable before it returns, so the device never holds a session the gateway
        would forget on restart. The gateway's agreement key is the one the hello names: the
        current one, or a retired one not yet destroyed (devices not renewed since a gateway
        renewal). Raises SealError (key mismatch) or SessionRefused (no such key, kid in use)."""
        agreement = keys.agreement_for(hello.gateway_kid)
        if agreement is None:
            raise SessionRefused(keys.agreement_refusal(hello.gateway_kid))
        established, accept = session.gateway_accept(
            hello, certificate.agreement_key, agreement[0], agreement[1], now=int(now))
        kid = established.session_id
        if kid in self._live or kid in self._ended:
            raise SessionRefused(f"session id {hexstr(kid)} is already in use")
        evicted = self._make_room(hello.device_id, now)
        new = DeviceSession(kid, hello.device_id, now, established.device_mac_key,
                            established.gateway_mac_key, certificate, self.policy.tracker())
        self.store.put_session(SessionRow(
            kid, new.device_id, now, new.device_mac_key, new.gateway_mac_key, certificate.raw,
            cbor.dumps(new.tracker.to_state())))
        self._live[kid] = new
        self._opened[kid] = next(self._order)
        self._current.pop(new.device_id, None)
        return Opened(new, accept, evicted)

    def _make_room(self, device_id: str, now: float) -> tuple[bytes, ...]:
        sessions = self.of_device(device_id)
        unconfirmed = [s for s in sessions if not s.confirmed]
        victims: list[DeviceSession] = []
        # Room for the new (unconfirmed) session: oldest unconfirmed go first.
        while len(unconfirmed) - len(victims) >= self.policy.max_unconfirmed:
            victims.append(unconfirmed[len(victims)])
        remaining = [s for s in sessions if s not in victims]
        while len(remaining) >= self.policy.max_per_device:
            victims.append(remaining.pop(0))
        kids = tuple(s.kid for s in victims)
        self.end(kids, f"{EVICTED}: more than {self.policy.max_per_device} sessions "
                 f"(or {self.policy.max_unconfirmed} unused) for device {device_id}", now)
        return kids

    # -- ending ---------------------------------------------------------------------------

    def end(self, kids: Iterable[bytes], reason: str, now: float) -> list[bytes]:
        """End live sessions: keys wiped in memory and in the store, tombstone kept."""
        ended = [kid for kid in kids if kid in self._live]
        if not ended:
            return []
        self.store.end_sessions(ended, reason, now)
        for kid in ended:
            self._current.pop(self._live[kid].device_id, None)
            del self._live[kid]
            del self._opened[kid]
            self._ended[kid] = (reason, now)
        return ended

    def withdraw_device(self, device_id: str, reason: str, now: float) -> list[bytes]:
        """A compromise: every session of the device ends at once."""
        return self.end([s.kid for s in self.of_device(device_id)],
                        f"{WITHDRAWN}: {reason}", now)

    def owed(self, sess: DeviceSession, now: float) -> str | None:
        """Why the session's keys must still be kept at `now`, None when they may go: the
        device may still re-send batches sealed under it (module docstring)."""
        if now >= sess.certificate.expires:
            return None  # the cap: past the certificate, nothing it vouches for is owed
        if now < sess.created_at + self.policy.lifetime_s + self.policy.retain_s:
            return "within the session's lifetime and re-send grace"
        last = sess.last_verified if sess.last_verified is not None else sess.created_at
        order = self._opened[sess.kid]
        for newer in self._live.values():
            if newer.device_id == sess.device_id and self._opened[newer.kid] > order \
                    and newer.last_new is not None \
                    and newer.last_new >= last + self.policy.settle_s:
                return None
        return (f"device {sess.device_id} may still re-send batches sealed under it "
                "(it has not used a newer session long enough since)")

    def destroy(self, kid: bytes, now: float) -> bool:
        """The lifecycle's destroyer for a session key: wipe it unless it is still owed.
        True when no key is left (wiped now, or already ended)."""
        sess = self._live.get(kid)
        if sess is None:
            return True
        if self.owed(sess, now) is not None:
            return False
        self.end([kid], DESTROYED, now)
        return True

    def expire(self, now: float) -> list[bytes]:
        """End sessions whose keys are no longer owed; forget old tombstones. -> kids ended."""
        capped = [s.kid for s in self._live.values() if now >= s.certificate.expires]
        ended = self.end(capped, f"{EXPIRED}: the certificate it was opened with expired", now)
        settled = [s.kid for s in self._live.values() if self.owed(s, now) is None]
        ended += self.end(settled, f"{EXPIRED}: lifetime and re-send grace are over", now)
        cutoff = now - self.policy.tombstone_s
        if any(when < cutoff for _, when in self._ended.values()):
            self.store.forget_ended(cutoff)
            self._ended = {k: v for k, v in self._ended.items() if v[1] >= cutoff}
        return ended

    # -- durability -----------------------------------------------------------------------

    def save(self, sessions: Iterable[DeviceSession]) -> None:
        """Persist trackers and acknowledgement marks (one transaction)."""
        live = [s.progress() for s in sessions if self._live.get(s.kid) is s]
        if live:
            self.store.save_progress(live)
