"""The lifecycle engine: applies the pure states to the registry.

* `may_accept` — asked at every reading: is this device's key usable right now?
* `compromise` — stops acceptance at once: the device, every key it holds (its signing key,
  its agreement key and every session key derived with them: "the keys used together") and
  their certificates are marked compromised in one transaction, and an alarm event is emitted.
* `retire_device`, `renew_device`, `start_session` — the other operations that add keys or end
  them, each journaled step by step with who did it.
* `tick` — run on a schedule (sleep until `next_event`): retires what expired and destroys
  what is due, so every retired key is destroyed within ten days.
* `renewal_plan`, `destruction_schedule`, `survey` — read-only answers for the agent and the
  technician ("what will have expired by my next visit?").

Time is always passed in (`now`, integer POSIX seconds); nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from edge_agent.lifecycle import states
from edge_agent.registry.store import (
    ConflictError,
    KeyRecord,
    NotFoundError,
    Registry,
    RegistryError,
    Step,
    kid_hex,
)

SYSTEM_ACTOR = "lifecycle"
DEFAULT_SESSION_LIFETIME = states.DAY
# Retired keys wait this long before destruction so readings still in flight under them can
# be verified (and re-sealed); it must stay well inside the ten-day window.
DEFAULT_DESTRUCTION_GRACE = states.DAY
# Which custodians' keys this registry must see destroyed ("ca" keys live on the CA host).
DEFAULT_CUSTODY = frozenset({"gateway", "device"})
# Keys whose certificates must be renewed before they expire.
RENEWABLE = {"device": ("signing",), "gateway": ("signing", "tls-client")}


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """Something the monitoring centre must hear about (and, for "alarm", alarm on)."""

    kind: str  # compromised | retired | renewed | expired | destroyed
    severity: str  # alarm | notice
    holder_kind: str
    holder_id: str
    at: int
    actor: str
    reason: str
    keys: tuple[str, ...] = ()
    certificates: tuple[str, ...] = ()  # certificate serials


@dataclass(frozen=True, slots=True)
class DestructionTask:
    kid: str
    holder_kind: str
    holder_id: str
    purpose: str
    held_at: str  # who destroys it: the gateway itself, or the device on command
    ended_at: int
    due_from: int  # destroy from this instant (after the grace period)
    deadline: int  # ... and no later than this one (ended_at + 10 days)

    def overdue(self, now: int) -> bool:
        return now > self.deadline


@dataclass(frozen=True, slots=True)
class RenewalNeed:
    holder_kind: str
    holder_id: str
    purpose: str
    kid: str | None  # None: the holder has no usable key of this purpose at all
    state: str
    renew_by: int | None  # when the key enters "expiring" (30 days before expiry)
    expires: int | None


@dataclass(frozen=True, slots=True)
class Survey:
    """States of everything at one instant (read-only)."""

    at: int
    keys: dict[str, str]
    certificates: dict[int, str]
    device_flags: dict[str, tuple[str, ...]]
    renewals: list[RenewalNeed]
    destruction: list[DestructionTask]


@dataclass(frozen=True, slots=True)
class TickResult:
    now: int
    retired_keys: tuple[str, ...] = ()
    retired_certificates: tuple[int, ...] = ()
    destroyed: tuple[str, ...] = ()
    not_destroyed: tuple[tuple[str, str], ...] = ()  # (kid, why) the destroyer could not
    overdue: tuple[DestructionTask, ...] = ()
    events: tuple[LifecycleEvent, ...] = ()


# A destroyer wipes the key material (gateway) or has the device confirm it did; True = done.
Destroyer = Callable[[DestructionTask], bool]


class LifecycleEngine:
    def __init__(self, registry: Registry, *,
                 custody: Iterable[str] = DEFAULT_CUSTODY,
                 destruction_grace: int = DEFAULT_DESTRUCTION_GRACE,
                 session_lifetime: int = DEFAULT_SESSION_LIFETIME,
                 on_event: Callable[[LifecycleEvent], None] | None = None) -> None:
        if not 0 <= destruction_grace < states.DESTRUCTION_WINDOW:
            raise RegistryError("destruction_grace", "must be 0 s up to less than ten days")
        if session_lifetime <= 0:
            raise RegistryError("session_lifetime", "must be positive seconds")
        self.registry = registry
        self.custody = frozenset(custody)
        self.destruction_grace = destruction_grace
        self.session_lifetime = session_lifetime
        self.on_event = on_event

    def _emit(self, event: LifecycleEvent) -> LifecycleEvent:
        if self.on_event is not None:
            self.on_event(event)
        return event

    # -- acceptance -----------------------------------------------------------------------

    def may_accept(self, device_id: str, kid: str | bytes, now: int) -> tuple[bool, str]:
        """May a reading sealed or signed by `kid` from `device_id` be trusted at `now`?
        Refused readings are still journaled, flagged with the reason, never dropped."""
        reg = self.registry
        try:
            kid = kid_hex(kid) if isinstance(kid, bytes | bytearray) else kid
            device = reg.device(device_id)
            key = reg.key(kid)
        except (NotFoundError, RegistryError) as exc:
            return False, exc.reason
        if device.status != "active":
            return False, f"device {device_id!r} is {device.status}"
        if (key.holder_kind, key.holder_id) != ("device", device_id):
            return False, f"key {kid} belongs to {key.holder_kind} {key.holder_id!r}"
        if key.purpose not in ("session", "signing"):
            return False, f"a {key.purpose} key does not seal readings"
        key_state = key.state(now)
        if key_state not in states.USABLE:
            return False, f"key {kid} is {key_state}"
        anchor = key if key.anchor is None else reg.key(key.anchor)
        anchor_state = anchor.state(now)
        if anchor_state not in states.USABLE:
            return False, f"device key {anchor.kid} is {anchor_state}"
        try:
            cert = reg.certificate_of_key(anchor.kid, "cwt")
        except NotFoundError:
            return False, f"device key {anchor.kid} has no certificate"
        cert_state = cert.state(now)
        if cert_state not in states.USABLE:
            return False, f"device certificate is {cert_state}"
        if cert.issued_by is not None:
            issuer = reg.certificate(cert.issued_by)
            # An issuer that was merely superseded still vouches for what it issued; one that
            # was withdrawn does not (facts, not state: "destroyed" must not hide a compromise).
            for facts in (issuer.facts, reg.key(issuer.kid).facts):
                if facts.compromised is not None or facts.revoked is not None:
                    return False, f"issuer {issuer.subject!r} was revoked or compromised"
        return True, f"key {kid} is {key_state}"

    # -- sessions -------------------------------------------------------------------------

    def start_session(self, device_id: str, session_id: bytes, now: int, *,
                      actor: str | None = None) -> KeyRecord:
        """Journal a session key derived with the device's current agreement key. It lives at
        most `session_lifetime` and never beyond the device key."""
        reg = self.registry
        anchor = reg.current_key("device", device_id, "signing", now)
        if anchor is None or anchor.state(now) not in states.USABLE:
            state = "missing" if anchor is None else anchor.state(now)
            raise ConflictError("device_id", f"device {device_id!r} has no usable key ({state}); "
                                "renew or re-enroll it before opening a session")
        device = reg.device(device_id)
        expires = min(now + self.session_lifetime, anchor.expires)
        return reg.add_session_key(device_id, session_id, anchor=anchor.kid, not_before=now,
                                   expires=expires,
                                   actor=actor or f"gateway:{device.gateway_id}")

    # -- ending use -----------------------------------------------------------------------

    def compromise(self, device_id: str, reason: str, actor: str, now: int) -> LifecycleEvent:
        """Withdraw everything the device holds, at once: the device stops being accepted,
        every key it holds that is not destroyed (signing, agreement, sessions, including
        retired generations) and their certificates are marked compromised."""
        reg = self.registry
        if not isinstance(reason, str) or not reason.strip():
            raise RegistryError("reason", "say why the device is considered compromised "
                                "(e.g. 'tamper seal broken', 'device lost')")
        device = reg.device(device_id)
        if device.status == "compromised":
            raise ConflictError("device_id", f"device {device_id!r} was already declared "
                                f"compromised at {device.ended_at}")
        kids: list[str] = []
        serials: list[str] = []
        with reg.transaction():
            reg.end_holder("device", device_id, "compromised", actor=actor, at=now,
                           reason=reason)
            for key in reg.keys("device", device_id):
                if key.facts.destroyed is None and key.facts.compromised is None:
                    reg.record_key_step(key.kid, states.COMPROMISED, at=now, actor=actor,
                                        reason=reason)
                    kids.append(key.kid)
                for cert in reg.certificates(key.kid):
                    if cert.facts.compromised is None:
                        reg.record_certificate_step(cert.id, states.COMPROMISED, at=now,
                                                    actor=actor, reason=reason)
                        serials.append(cert.serial)
        return self._emit(LifecycleEvent("compromised", "alarm", "device", device_id, now,
                                         actor, reason, tuple(kids), tuple(serials)))

    def report_tamper(self, device_id: str, now: int, actor: str | None = None) -> LifecycleEvent:
        """A broken tamper seal reported by the device is a compromise."""
        return self.compromise(device_id, "tamper seal broken", actor or f"device:{device_id}",
                               now)

    def retire_device(self, device_id: str, actor: str, now: int,
                      reason: str = "retired") -> LifecycleEvent:
        """Take a device out of service: its keys and certificates are retired (and then
        destroyed within ten days), its open patient binding ends now."""
        reg = self.registry
        device = reg.device(device_id)
        if device.status != "active":
            raise ConflictError("device_id", f"device {device_id!r} is already {device.status} "
                                f"(since {device.ended_at})")
        with reg.transaction():
            reg.end_holder("device", device_id, "retired", actor=actor, at=now, reason=reason)
            kids, serials = self._retire(reg.keys("device", device_id), actor, now, reason)
            for binding in reg.bindings(device_id=device_id):
                if binding.until is None and binding.since < now:
                    reg.end_binding(binding.id, until=now, actor=actor)
        return self._emit(LifecycleEvent("retired", "notice", "device", device_id, now, actor,
                                         reason, kids, serials))

    def _retire(self, keys: Iterable[KeyRecord], actor: str, now: int,
                reason: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        kids: list[str] = []
        serials: list[str] = []
        for key in keys:
            if states.ended_at(key.facts) is None and key.facts.destroyed is None:
                self.registry.record_key_step(key.kid, states.RETIRED, at=now, actor=actor,
                                              reason=reason)
                kids.append(key.kid)
            for cert in self.registry.certificates(key.kid):
                if states.ended_at(cert.facts) is None:
                    self.registry.record_certificate_step(cert.id, states.RETIRED, at=now,
                                                          actor=actor, reason=reason)
                    serials.append(cert.serial)
        return tuple(kids), tuple(serials)

    def renew_device(self, device_id: str, certificate: bytes, actor: str,
                     now: int) -> LifecycleEvent:
        """Record the device's new certificate (for a key pair it generated itself) and
        retire the previous generation: signing key, agreement key and their sessions."""
        reg = self.registry
        previous = reg.current_key("device", device_id, "signing", now)
        with reg.transaction():
            new = reg.add_device_certificate(device_id, certificate, actor=actor, now=now)
            kids: tuple[str, ...] = ()
            if previous is not None:
                kids, _ = self._retire(reg.keys_used_with(previous.kid), actor, now,
                                       f"superseded by {new.kid}")
        return self._emit(LifecycleEvent("renewed", "notice", "device", device_id, now, actor,
                                         f"new key {new.kid}", kids, (new.serial,)))

    def gateway_renewal_refusal(self, gateway_id: str, now: int,
                                force: bool = False) -> str | None:
        """Why this gateway must not be renewed now (None: go ahead). A compromised or revoked
        gateway is re-provisioned, never renewed: its new keys would be vouched for by a
        request an attacker may have signed. Without `force`, only a renewal-due, expiring or
        expired certificate is renewed."""
        reg = self.registry
        gateway = reg.gateway(gateway_id)
        if gateway.status != "active":
            return (f"gateway {gateway_id!r} is {gateway.status} (since {gateway.ended_at}); "
                    "provision a new gateway instead")
        for key in reg.keys("gateway", gateway_id):
            if key.facts.compromised is not None or key.facts.revoked is not None:
                step = "compromised" if key.facts.compromised is not None else "revoked"
                return (f"gateway {gateway_id!r} key {key.kid} was {step}; a compromised "
                        "gateway is not renewed: retire it and provision a new one")
        signing = reg.current_key("gateway", gateway_id, "signing", now)
        if signing is None:
            return f"gateway {gateway_id!r} has no current signing key; provision it again"
        state = signing.state(now)
        if not force and state not in (states.RENEWAL_DUE, states.EXPIRING, states.EXPIRED):
            return (f"gateway certificate is {state} until {states.expiring_at(signing.facts)} "
                    "(renewal is due at two thirds of its lifetime); use --force to renew now")
        return None

    def renew_gateway(self, gateway_id: str, certificate: bytes, tls_certificate: bytes | None,
                      actor: str, now: int, *, force: bool = False) -> LifecycleEvent:
        """Record the gateway's new CWT (signing + agreement keys generated on the gateway)
        and TLS client certificate, then retire the previous generation: signing key,
        agreement key and TLS client key with their certificates. The retired keys are then
        destroyed within ten days (after their data was re-sealed, edge_agent.reseal); device
        certificates the old signing key issued stay valid (a superseded issuer still
        vouches) until those devices are renewed."""
        reg = self.registry
        refusal = self.gateway_renewal_refusal(gateway_id, now, force)
        if refusal is not None:
            raise ConflictError("gateway_id", refusal)
        previous = [reg.current_key("gateway", gateway_id, p, now)
                    for p in ("signing", "tls-client")]
        with reg.transaction():
            new = reg.add_gateway_certificate(gateway_id, certificate, actor=actor, now=now)
            serials = [new.serial]
            if tls_certificate is not None:
                serials.append(reg.add_gateway_tls_certificate(
                    gateway_id, tls_certificate, actor=actor, now=now).serial)
            old: list[KeyRecord] = []
            for key in previous:
                if key is not None:
                    old += reg.keys_used_with(key.kid)
            kids, _ = self._retire(old, actor, now, f"superseded by {new.kid}")
        return self._emit(LifecycleEvent("renewed", "notice", "gateway", gateway_id, now,
                                         actor, f"new key {new.kid}", kids, tuple(serials)))

    # -- scheduled work -------------------------------------------------------------------

    def tick(self, now: int, destroyer: Destroyer | None = None) -> TickResult:
        """Retire every key and certificate that has expired, then destroy what is due."""
        reg = self.registry
        retired: list[str] = []
        retired_certs: list[int] = []
        events: list[LifecycleEvent] = []
        with reg.transaction():
            for key in reg.keys():
                if key.state(now) == states.EXPIRED:
                    reg.record_key_step(key.kid, states.RETIRED, at=now, actor=SYSTEM_ACTOR,
                                        reason=f"expired at {key.expires}")
                    retired.append(key.kid)
                    if key.purpose == "session":
                        continue  # sessions end daily by design: journaled, not announced
                    events.append(LifecycleEvent(
                        "expired", "notice", key.holder_kind, key.holder_id, now,
                        SYSTEM_ACTOR, f"{key.purpose} key expired at {key.expires}",
                        (key.kid,)))
            for cert in reg.certificates():
                if cert.state(now) == states.EXPIRED:
                    reg.record_certificate_step(cert.id, states.RETIRED, at=now,
                                                actor=SYSTEM_ACTOR,
                                                reason=f"expired at {cert.expires}")
                    retired_certs.append(cert.id)
        for event in events:
            self._emit(event)
        destroyed: tuple[str, ...] = ()
        refused: tuple[tuple[str, str], ...] = ()
        if destroyer is not None:
            destroyed, refused = self.run_destruction(now, destroyer)
        overdue = tuple(t for t in self.destruction_schedule(now) if t.overdue(now))
        return TickResult(now, tuple(retired), tuple(retired_certs), destroyed, refused, overdue,
                          tuple(events))

    def next_event(self, now: int) -> int | None:
        """The next instant after `now` at which tick() has something to do (a state
        changes or a destruction falls due). The scheduler calls tick() once at start-up
        (to catch up after the agent was off), then sleeps until next_event(), capped by its
        own retry interval for destructions a device has not confirmed yet."""
        reg = self.registry
        candidates = [states.next_change(k.facts, now) for k in reg.keys()]
        candidates += [states.next_change(c.facts, now) for c in reg.certificates()]
        candidates += [t.due_from for t in self.destruction_schedule(now) if t.due_from > now]
        later = [t for t in candidates if t is not None and t > now]
        return min(later) if later else None

    def destruction_schedule(self, now: int) -> list[DestructionTask]:
        """Every key in this registry's custody whose use ended and that is not destroyed yet,
        with the window in which it must be destroyed; soonest deadline first."""
        tasks = []
        for key in self.registry.keys():
            facts = key.facts
            ended = states.ended_at(facts)
            if key.held_at not in self.custody or facts.destroyed is not None or ended is None:
                continue
            deadline = ended + states.DESTRUCTION_WINDOW
            tasks.append(DestructionTask(key.kid, key.holder_kind, key.holder_id, key.purpose,
                                         key.held_at, ended,
                                         min(ended + self.destruction_grace, deadline),
                                         deadline))
        return sorted(tasks, key=lambda t: (t.deadline, t.kid))

    def destroy(self, kid: str, actor: str, now: int, method: str = "") -> Step:
        """Journal the destruction of a key whose use has ended (done by `actor`)."""
        return self.registry.record_key_step(kid, states.DESTROYED, at=now, actor=actor,
                                             reason=method)

    def run_destruction(self, now: int, destroyer: Destroyer,
                        actor: str = SYSTEM_ACTOR
                        ) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
        """Destroy every due key through `destroyer` and journal each one it confirms.
        Returns (destroyed kids, [(kid, why not)])."""
        destroyed: list[str] = []
        refused: list[tuple[str, str]] = []
        for task in self.destruction_schedule(now):
            if task.due_from > now:
                continue
            try:
                done = destroyer(task)
            except Exception as exc:  # one failing key must not stop the others
                refused.append((task.kid, f"destroyer failed: {exc}"))
                continue
            if not done:
                refused.append((task.kid, f"{task.held_at} did not confirm destruction"))
                continue
            self.destroy(task.kid, actor, now, f"{task.held_at} destroyed it")
            destroyed.append(task.kid)
            self._emit(LifecycleEvent("destroyed", "notice", task.holder_kind, task.holder_id,
                                      now, actor, f"{task.purpose} key destroyed", (task.kid,)))
        return tuple(destroyed), tuple(refused)

    # -- planning and listings --------------------------------------------------------------

    def renewal_plan(self, now: int) -> list[RenewalNeed]:
        """Active holders whose certified key needs a new key and certificate now: it is
        renewal-due or expiring, or their last one ended and nothing replaced it."""
        reg = self.registry
        holders = [("device", d.id) for d in reg.devices(status="active")]
        holders += [("gateway", g.id) for g in reg.gateways() if g.status == "active"]
        needs = []
        for kind, holder in holders:
            for purpose in RENEWABLE[kind]:
                if not reg.keys(kind, holder, purpose):
                    continue
                key = reg.current_key(kind, holder, purpose, now)
                if key is None:
                    needs.append(RenewalNeed(kind, holder, purpose, None, "missing", None, None))
                    continue
                key_state = key.state(now)
                if key_state in (states.RENEWAL_DUE, states.EXPIRING, states.EXPIRED):
                    needs.append(RenewalNeed(kind, holder, purpose, key.kid, key_state,
                                             states.expiring_at(key.facts), key.expires))
        return needs

    def survey(self, at: int) -> Survey:
        """Every key's and certificate's state at `at` (past, now or a future visit), device
        currency flags, renewals and destruction due — without changing anything."""
        reg = self.registry
        return Survey(
            at,
            {k.kid: k.state(at) for k in reg.keys()},
            {c.id: c.state(at) for c in reg.certificates()},
            {d.id: d.currency_flags(at) for d in reg.devices(status="active")},
            self.renewal_plan(at),
            self.destruction_schedule(at),
        )
