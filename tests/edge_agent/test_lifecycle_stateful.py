"""The lifecycle engine on a real registry: examples, then a hypothesis state machine over
enroll / session / send / renew / advance the clock / compromise / retire / destroy with a
controllable clock, checked against an independent model.

Invariants (issue 5, "Done when"):
  * an expired, revoked, retired or compromised key is never accepted (and a usable one is);
  * every retired (or withdrawn) key is destroyed within ten days;
  * every step is in the key journal, which only ever grows;
  * nothing a device sent before a compromise is lost: the journal rows recorded before it
    are all still there, unchanged. Refused readings are journaled too, flagged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)
from test_registry import DAY, T0, YEAR, Pki

from edge_agent.journal import JournalStore, NewMessage
from edge_agent.lifecycle import states
from edge_agent.lifecycle.engine import DestructionTask, LifecycleEngine, LifecycleEvent
from edge_agent.registry.store import ConflictError, NotFoundError, Registry, RegistryError

WINDOW = states.DESTRUCTION_WINDOW
# SQLite fsyncs every commit (synchronous=FULL); tmpfs makes that free for the many examples.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@pytest.fixture
def world(tmp_path: Path) -> tuple[Registry, LifecycleEngine, Pki, list[LifecycleEvent]]:
    registry = Registry.open(tmp_path / "registry.sqlite3")
    events: list[LifecycleEvent] = []
    engine = LifecycleEngine(registry, on_event=events.append)
    pki = Pki()
    pki.install(registry)
    yield registry, engine, pki, events
    registry.close()


def kids_of(registry: Registry, device: str, purpose: str) -> list[str]:
    return [k.kid for k in registry.keys("device", device, purpose)]


# -- examples ---------------------------------------------------------------------------------


def test_acceptance_reasons(world: tuple[Registry, LifecycleEngine, Pki, list]) -> None:
    registry, engine, pki, _ = world
    pki.enroll(registry, "dev-1")
    pki.enroll(registry, "dev-2")
    session = engine.start_session("dev-1", b"\x11" * 8, T0)
    signing, = kids_of(registry, "dev-1", "signing")
    agreement, = kids_of(registry, "dev-1", "agreement")
    # A one-day session key is "expiring" from birth (<= 30 days left): still usable.
    assert engine.may_accept("dev-1", b"\x11" * 8, T0) == (True, f"key {session.kid} is expiring")
    assert engine.may_accept("dev-1", signing, T0)[0]
    assert engine.may_accept("ghost", signing, T0) == (
        False, "no device 'ghost' is enrolled; list them with `vitalbridge device list`")
    assert engine.may_accept("dev-2", signing, T0) == (
        False, f"key {signing} belongs to device 'dev-1'")
    assert engine.may_accept("dev-1", agreement, T0) == (
        False, "a agreement key does not seal readings")
    assert engine.may_accept("dev-1", "ab" * 8, T0)[0] is False
    assert engine.may_accept("dev-1", b"\x11" * 8, T0 + DAY) == (
        False, f"key {session.kid} is expired")
    assert engine.may_accept("dev-1", signing, T0 + YEAR) == (False, f"key {signing} is expired")


def test_compromise_withdraws_the_keys_used_together_at_once(
        world: tuple[Registry, LifecycleEngine, Pki, list[LifecycleEvent]]) -> None:
    registry, engine, pki, events = world
    pki.enroll(registry, "dev-1")
    pki.enroll(registry, "dev-2")
    engine.start_session("dev-1", b"\x01" * 8, T0)
    engine.start_session("dev-1", b"\x02" * 8, T0 + 10)
    engine.start_session("dev-2", b"\x03" * 8, T0 + 10)
    with pytest.raises(RegistryError, match="say why") as info:
        engine.compromise("dev-1", " ", "tech", T0 + 20)
    assert info.value.field == "reason"
    event = engine.compromise("dev-1", "device lost", "tech-bob", T0 + 20)
    assert (event.kind, event.severity, event.actor, event.reason) == \
        ("compromised", "alarm", "tech-bob", "device lost")
    assert events[-1] is event
    withdrawn = {k.kid: k for k in registry.keys("device", "dev-1")}
    assert {k.purpose for k in withdrawn.values()} == {"signing", "agreement", "session"}
    assert set(event.keys) == set(withdrawn)
    for kid, key in withdrawn.items():
        assert key.state(T0 + 20) == states.COMPROMISED
        step = key.steps[-1]
        assert (step.step, step.actor, step.reason, step.at) == \
            ("compromised", "tech-bob", "device lost", T0 + 20)
        assert engine.may_accept("dev-1", kid, T0 + 20)[0] is False
    cert = registry.certificate_of_key(kids_of(registry, "dev-1", "signing")[0])
    assert cert.state(T0 + 20) == states.COMPROMISED and event.certificates == (cert.serial,)
    assert registry.device("dev-1").status == "compromised"
    # The other device is untouched.
    assert engine.may_accept("dev-2", b"\x03" * 8, T0 + 20)[0]
    with pytest.raises(ConflictError, match="already declared compromised"):
        engine.compromise("dev-1", "again", "tech", T0 + 30)
    with pytest.raises(NotFoundError):
        engine.compromise("ghost", "lost", "tech", T0 + 30)


def test_broken_tamper_seal_is_a_compromise(
        world: tuple[Registry, LifecycleEngine, Pki, list[LifecycleEvent]]) -> None:
    registry, engine, pki, events = world
    pki.enroll(registry, "dev-1")
    engine.report_tamper("dev-1", T0 + 5)
    assert events[-1].kind == "compromised" and events[-1].reason == "tamper seal broken"
    assert events[-1].actor == "device:dev-1"
    assert registry.device("dev-1").status == "compromised"


def test_retire_ends_binding_and_keys_then_destruction_within_ten_days(
        world: tuple[Registry, LifecycleEngine, Pki, list]) -> None:
    registry, engine, pki, _ = world
    pki.enroll(registry, "dev-1")
    engine.start_session("dev-1", b"\x01" * 8, T0)
    registry.add_patient("p-0001", actor="n", now=T0)
    registry.bind("dev-1", "p-0001", since=T0, actor="tech")
    with pytest.raises(NotFoundError, match="no device 'dev-9'"):
        engine.retire_device("dev-9", "tech", T0 + 100)
    engine.retire_device("dev-1", "tech", T0 + 100)
    with pytest.raises(ConflictError, match="already retired"):
        engine.retire_device("dev-1", "tech", T0 + 101)
    assert registry.bindings("dev-1")[0].until == T0 + 100
    tasks = engine.destruction_schedule(T0 + 100)
    assert {t.purpose for t in tasks} == {"signing", "agreement", "session"}
    assert {(t.due_from, t.deadline) for t in tasks} == {(T0 + 100 + DAY, T0 + 100 + WINDOW)}
    assert {t.held_at for t in tasks} == {"device", "gateway"}
    assert engine.next_event(T0 + 100) == T0 + 100 + DAY
    # A device that does not confirm keeps its task open and it becomes overdue.
    refuse_device = lambda task: task.held_at == "gateway"  # noqa: E731
    result = engine.tick(T0 + 100 + DAY, refuse_device)
    assert [registry.key(k).purpose for k in result.destroyed] == ["session"]
    assert {k for k, _ in result.not_destroyed} == set(kids_of(registry, "dev-1", "signing")
                                                       + kids_of(registry, "dev-1", "agreement"))
    late = engine.tick(T0 + 100 + WINDOW + 1, refuse_device)
    assert len(late.overdue) == 2 and all(t.overdue(T0 + 100 + WINDOW + 1) for t in late.overdue)
    done = engine.tick(T0 + 100 + WINDOW + 2, lambda task: True)
    assert len(done.destroyed) == 2 and engine.destruction_schedule(T0 + 100 + WINDOW + 2) == []
    key = registry.key(done.destroyed[0])
    assert key.steps[-1].step == "destroyed" and key.steps[-1].actor == "lifecycle"


def test_destroyer_failures_are_reported_not_raised(
        world: tuple[Registry, LifecycleEngine, Pki, list]) -> None:
    registry, engine, pki, _ = world
    pki.enroll(registry, "dev-1")
    engine.retire_device("dev-1", "tech", T0)

    def broken(task: DestructionTask) -> bool:
        raise OSError("disk read-only")

    destroyed, refused = engine.run_destruction(T0 + DAY, broken)
    assert destroyed == () and len(refused) == 2 and "disk read-only" in refused[0][1]


def test_tick_retires_what_expired_and_renewal_plan_names_what_to_renew(
        world: tuple[Registry, LifecycleEngine, Pki, list[LifecycleEvent]]) -> None:
    registry, engine, pki, events = world
    pki.enroll(registry, "dev-1", lifetime=90 * DAY)
    pki.enroll(registry, "dev-2", lifetime=YEAR)
    assert engine.renewal_plan(T0) == []
    due = T0 + 60 * DAY  # 2/3 of 90 days, also within 30 days of expiry
    plan = engine.renewal_plan(due)
    assert [(n.holder_id, n.state) for n in plan] == [("dev-1", states.EXPIRING)]
    assert plan[0].renew_by == T0 + 60 * DAY and plan[0].expires == T0 + 90 * DAY
    future = engine.survey(T0 + 90 * DAY)  # "what will have expired by my next visit?"
    signing = kids_of(registry, "dev-1", "signing")[0]
    assert future.keys[signing] == states.EXPIRED
    assert registry.key(signing).state(T0) == states.ACTIVE  # survey changed nothing
    result = engine.tick(T0 + 90 * DAY)
    assert signing in result.retired_keys and result.retired_certificates
    assert any(e.kind == "expired" and signing in e.keys for e in events)
    assert engine.renewal_plan(T0 + 90 * DAY)[0].state == "missing"
    engine.renew_device("dev-1", pki.device_cert("dev-1", T0 + 90 * DAY), "tech", T0 + 90 * DAY)
    assert engine.renewal_plan(T0 + 90 * DAY) == []


def test_renewal_retires_the_previous_generation(
        world: tuple[Registry, LifecycleEngine, Pki, list[LifecycleEvent]]) -> None:
    registry, engine, pki, events = world
    pki.enroll(registry, "dev-1")
    old_session = engine.start_session("dev-1", b"\x01" * 8, T0)
    old = {k.kid for k in registry.keys("device", "dev-1")}
    event = engine.renew_device("dev-1", pki.device_cert("dev-1", T0 + 10), "tech", T0 + 10)
    assert set(event.keys) == old and events[-1] is event
    for kid in old:
        assert registry.key(kid).state(T0 + 10) == states.RETIRED
        assert registry.key(kid).steps[-1].reason.startswith("superseded by ")
    assert not engine.may_accept("dev-1", old_session.kid, T0 + 10)[0]
    new_signing = registry.current_key("device", "dev-1", "signing", T0 + 10)
    assert new_signing is not None and engine.may_accept("dev-1", new_signing.kid, T0 + 10)[0]
    with pytest.raises(ConflictError, match="freshly generated key"):
        engine.renew_device("dev-1", pki.device_cert(
            "dev-1", T0 + 20, public_key=registry.key(new_signing.kid).public_key), "t", T0 + 20)


def test_a_compromised_issuer_stops_acceptance_of_its_devices(
        world: tuple[Registry, LifecycleEngine, Pki, list]) -> None:
    registry, engine, pki, _ = world
    pki.enroll(registry, "dev-1")
    signing = kids_of(registry, "dev-1", "signing")[0]
    gateway_key = registry.current_key("gateway", "gw-1", "signing", T0)
    assert gateway_key is not None
    registry.record_key_step(gateway_key.kid, "compromised", at=T0 + 1, actor="soc")
    assert engine.may_accept("dev-1", signing, T0 + 1) == (
        False, "issuer 'gw-1' was revoked or compromised")
    with pytest.raises(RegistryError, match="may no longer issue"):
        pki.enroll(registry, "dev-2", now=T0 + 2)


def test_a_session_is_refused_once_its_device_key_is_withdrawn(
        world: tuple[Registry, LifecycleEngine, Pki, list]) -> None:
    registry, engine, pki, _ = world
    pki.enroll(registry, "dev-1")
    session = engine.start_session("dev-1", b"\x01" * 8, T0)
    assert session.anchor is not None
    registry.record_key_step(session.anchor, "revoked", at=T0 + 1, actor="soc")
    assert engine.may_accept("dev-1", session.kid, T0 + 1) == (
        False, f"device key {session.anchor} is revoked")
    with pytest.raises(ConflictError, match="no usable key"):
        engine.start_session("dev-1", b"\x02" * 8, T0 + 2)


def test_steps_dated_before_the_journal_are_refused(
        world: tuple[Registry, LifecycleEngine, Pki, list]) -> None:
    registry, engine, pki, _ = world
    pki.enroll(registry, "dev-1", now=T0 + 100)
    with pytest.raises(states.TransitionError, match="check the clock"):
        engine.compromise("dev-1", "lost", "tech", T0)
    assert registry.device("dev-1").status == "active"  # the transaction rolled back


# -- the state machine ------------------------------------------------------------------------


@dataclass
class ModelKey:
    kid: str
    device: str
    purpose: str
    anchor: str
    expires: int
    ended: int | None = None
    retired_by_expiry: bool = False
    compromised: int | None = None
    destroyed: int | None = None


class LifecycleMachine(RuleBasedStateMachine):
    devices = Bundle("devices")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(dir=SCRATCH, prefix="vb-lifecycle-"))
        self.registry = Registry.open(self.dir / "registry.sqlite3")
        self.journal = JournalStore.open(self.dir / "journal.sqlite3")
        self.events: list[LifecycleEvent] = []
        self.engine = LifecycleEngine(self.registry, on_event=self.events.append)
        self.pki = Pki()
        self.pki.install(self.registry)
        self.now = T0
        self.counter = 0
        self.status: dict[str, str] = {}
        self.anchor: dict[str, str] = {}
        self.session: dict[str, str | None] = {}
        self.keys: dict[str, ModelKey] = {}
        self.expected: set[tuple[str, str]] = set()
        self.seen_journal = self.registry.key_journal()
        self.sent: dict[int, tuple[bytes, tuple[str, ...]]] = {}
        self.sent_before_compromise: dict[str, set[int]] = {}
        self.outage = False  # time passed without the scheduler running

    def teardown(self) -> None:
        self.registry.close()
        self.journal.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- model ----------------------------------------------------------------------------

    def _usable(self, kid: str) -> bool:
        key = self.keys[kid]
        anchor = self.keys[key.anchor]
        return (self.status[key.device] == "active"
                and all(k.ended is None and k.destroyed is None and self.now < k.expires
                        for k in (key, anchor)))

    def _add_keys(self, device: str) -> None:
        for record in self.registry.keys("device", device):
            if record.kid not in self.keys:
                anchor = record.anchor or record.kid
                self.keys[record.kid] = ModelKey(record.kid, device, record.purpose, anchor,
                                                 record.expires)
                self.expected |= {(record.kid, "created"), (record.kid, "activated")}

    def _end(self, keys: list[ModelKey], step: str) -> None:
        for key in keys:
            if key.destroyed is None and (key.ended is None or step == "compromised"):
                self.expected.add((key.kid, step))
                key.ended = self.now if key.ended is None else key.ended
                if step == "compromised":
                    key.compromised = self.now

    def _tick(self, at: int) -> None:
        self.now = at
        expiring = [k for k in self.keys.values()
                    if k.ended is None and k.destroyed is None and k.expires <= at]
        self.engine.tick(at, self._destroyer)
        for key in expiring:
            # The scheduler wakes at the very second a key expires (next_event), unless the
            # agent was down: then the first tick after the outage retires it.
            assert key.expires == at or (self.outage and key.expires < at), (key.kid, at)
            key.ended, key.retired_by_expiry = at, True
            self.expected.add((key.kid, "retired"))
        self.outage = False

    def _destroyer(self, task: DestructionTask) -> bool:
        assert task.due_from <= self.now <= task.deadline
        key = self.keys.get(task.kid)
        if key is not None:
            key.destroyed = self.now
            self.expected.add((task.kid, "destroyed"))
        return True

    # -- rules ----------------------------------------------------------------------------

    @initialize(target=devices, lifetimes=st.lists(st.integers(40, 400), min_size=1,
                                                   max_size=3))
    def first_devices(self, lifetimes: list[int]) -> object:
        return multiple(*(self.enroll(days) for days in lifetimes))

    @rule(target=devices, lifetime_days=st.integers(40, 400))
    def enroll(self, lifetime_days: int) -> str:
        self.counter += 1
        device = f"dev-{self.counter}"
        self.pki.enroll(self.registry, device, now=self.now, lifetime=lifetime_days * DAY)
        self.status[device] = "active"
        self._add_keys(device)
        self.anchor[device] = kids_of(self.registry, device, "signing")[-1]
        self.session[device] = None
        assert self.keys[self.anchor[device]].expires == self.now + lifetime_days * DAY
        return device

    @rule(device=devices)
    def open_session(self, device: str) -> None:
        self.counter += 1
        session_id = self.counter.to_bytes(8, "big")
        if not self._usable(self.anchor[device]):
            with pytest.raises(ConflictError):
                self.engine.start_session(device, session_id, self.now)
            return
        key = self.engine.start_session(device, session_id, self.now)
        assert key.expires == min(self.now + DAY, self.keys[self.anchor[device]].expires)
        self._add_keys(device)
        self.session[device] = key.kid

    @rule(device=devices, use_session=st.booleans())
    def send_reading(self, device: str, use_session: bool) -> None:
        kid = self.session[device] if use_session and self.session[device] else \
            self.anchor[device]
        accepted, reason = self.engine.may_accept(device, kid, self.now)
        assert accepted == self._usable(kid), reason
        self.counter += 1
        payload = b"reading %d from %s" % (self.counter, device.encode())
        flags = () if accepted else ("key-not-accepted",)
        row, = self.journal.append([NewMessage(
            kind="readings", device_id=device, payload=payload, session=bytes.fromhex(kid),
            flags=flags, received_at=float(self.now))])
        self.sent[row] = (payload, flags)

    @rule(device=devices)
    def renew(self, device: str) -> None:
        certificate = self.pki.device_cert(device, self.now, YEAR)
        if self.status[device] != "active":
            with pytest.raises(ConflictError):
                self.engine.renew_device(device, certificate, "tech", self.now)
            return
        old = self.anchor[device]
        self.engine.renew_device(device, certificate, "tech", self.now)
        self._end([k for k in self.keys.values() if k.anchor == old], "retired")
        self._add_keys(device)
        self.anchor[device] = kids_of(self.registry, device, "signing")[-1]
        self.session[device] = None

    @precondition(lambda self: any(s == "active" for s in self.status.values()))
    @rule(days=st.integers(0, 90), seconds=st.integers(0, DAY))
    def advance_clock(self, days: int, seconds: int) -> None:
        target = self.now + days * DAY + seconds
        if self.outage:
            self._tick(self.now)  # the agent is back: its scheduler ticks once at start-up
        while (wake := self.engine.next_event(self.now)) is not None and wake <= target:
            self._tick(wake)
        self._tick(target)

    @precondition(lambda self: any(s == "active" for s in self.status.values()))
    @rule(hours=st.integers(1, 40 * 24))
    def outage(self, hours: int) -> None:
        """The agent is down: time passes with no tick, so keys can sit in "expired" until
        the scheduler runs again. Bounded by the next destruction deadline, which an agent
        that is off cannot meet (docs/keys-and-certificates.md)."""
        deadlines = [k.ended + WINDOW for k in self.keys.values()
                     if k.ended is not None and k.destroyed is None]
        self.now = min([self.now + hours * 3600, *deadlines])
        self.outage = True

    @rule(device=devices)
    def compromise(self, device: str) -> None:
        if self.status[device] == "compromised":
            with pytest.raises(ConflictError):
                self.engine.compromise(device, "tamper seal broken", "tech", self.now)
            return
        self.sent_before_compromise[device] = set(self.sent)
        event = self.engine.compromise(device, "tamper seal broken", "tech", self.now)
        assert self.events[-1] == event and event.severity == "alarm"
        self._end([k for k in self.keys.values() if k.device == device], "compromised")
        self.status[device] = "compromised"

    @rule(device=devices)
    def retire(self, device: str) -> None:
        if self.status[device] != "active":
            with pytest.raises(ConflictError):
                self.engine.retire_device(device, "tech", self.now)
            return
        self.engine.retire_device(device, "tech", self.now)
        self._end([k for k in self.keys.values() if k.device == device], "retired")
        self.status[device] = "retired"

    @rule(device=devices, data=st.data())
    def destroy(self, device: str, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(
            (k for k in self.keys.values() if k.device == device), key=lambda k: k.kid)))
        if key.ended is None or key.destroyed is not None:
            with pytest.raises(states.TransitionError):
                self.engine.destroy(key.kid, "tech", self.now, "wiped on site")
            return
        self.engine.destroy(key.kid, "tech", self.now, "wiped on site")
        key.destroyed = self.now
        self.expected.add((key.kid, "destroyed"))

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def unusable_keys_are_never_accepted(self) -> None:
        for kid, key in self.keys.items():
            accepted, reason = self.engine.may_accept(key.device, kid, self.now)
            state = self.registry.key(kid).state(self.now)
            if state in (states.EXPIRED, states.REVOKED, states.COMPROMISED, states.RETIRED,
                         states.DESTROYED) or key.purpose == "agreement":
                assert not accepted, (kid, state)
            else:
                assert accepted == self._usable(kid), (kid, state, reason)

    @invariant()
    def retired_keys_are_destroyed_within_ten_days(self) -> None:
        for key in self.registry.keys():
            ended = states.ended_at(key.facts)
            if ended is None:
                continue
            if key.facts.destroyed is None:
                assert self.now - ended <= WINDOW, (key.kid, ended, self.now)
            else:
                assert key.facts.destroyed - ended <= WINDOW

    @invariant()
    def every_step_is_in_the_append_only_journal(self) -> None:
        journal = self.registry.key_journal()
        assert journal[:len(self.seen_journal)] == self.seen_journal
        self.seen_journal = journal
        recorded = {(s.subject, s.step) for s in journal if s.subject in self.keys}
        assert recorded == self.expected
        assert all(s.actor and s.at <= self.now for s in journal)
        for kid, key in self.keys.items():
            facts = self.registry.key(kid).facts
            assert (states.ended_at(facts), facts.compromised, facts.destroyed) == \
                (key.ended, key.compromised, key.destroyed), kid

    @invariant()
    def nothing_sent_before_a_compromise_is_lost(self) -> None:
        stored = {m.id: m for m in self.journal.get(list(self.sent))}
        for rows in self.sent_before_compromise.values():
            for row in rows:
                assert stored[row].payload == self.sent[row][0]
                assert stored[row].flags == self.sent[row][1]
        # Readings refused after a compromise are kept (flagged), never dropped.
        assert set(stored) == set(self.sent)


LifecycleMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("VB_LIFECYCLE_EXAMPLES", "40")),
    stateful_step_count=40, deadline=None)
TestLifecycle = LifecycleMachine.TestCase
