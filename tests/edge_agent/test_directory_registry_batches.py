"""The verifier over the real registry directory, batch after batch: what the directory
caches per device (certificate end states, currency flags, the newest session) never
outlives a change. A compromise or a re-binding takes effect for the very next batch once
the directory has seen the change (a lifecycle event of this process: at once; a commit by
another process: the next `data_version` check, recheck_s); and the cached certificate
status equals the registry's `facts.as_of` at every instant."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.directory_registry import RegistryDirectory
from edge_agent.lifecycle import states
from edge_agent.lifecycle.engine import LifecycleEngine
from edge_agent.pipeline import GatewayKeys, SessionTable, StateStore, Verifier
from edge_agent.registry import Registry
from protocol import messages, sealing, senml, session
from simulator.agent_home import ACTOR, DAY, Home, provision_home

T0 = 1_790_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Gateway:
    """A Verifier over a RegistryDirectory with one open session of ox-1."""

    def __init__(self, home: Home, tmp: Path) -> None:
        self.clock = Clock()
        self.registry = Registry.open_in(home.data_dir)
        self.engine = LifecycleEngine(self.registry,
                                      on_event=lambda _e: self.directory.invalidate())
        keys = GatewayKeys("gw-1", home.gateway_seed, home.gateway_agreement)
        self.directory = RegistryDirectory(self.registry, self.engine, keys, monotonic=self.clock)
        self.sessions = SessionTable(StateStore.open(tmp / "state.db"), now=T0)
        self.verifier = Verifier(self.directory, self.sessions)
        handshake = session.DeviceHandshake("ox-1", home.devices["ox-1"].agreement,
                                            keys.x25519_public)
        verdict = self.verifier.handle(messages.encode("hello", handshake.hello()),
                                       received_at=T0, link_device="ox-1")
        assert verdict.reply is not None, verdict
        self.session = handshake.finish(messages.decode(verdict.reply)[1])
        self.next_seq = 0

    def batch(self, at: int):
        records = [senml.make_record("spo2", 97, time=at, seq=self.next_seq),
                   senml.make_record("pr", 72, time=at, seq=self.next_seq + 1)]
        self.next_seq += 2
        raw = messages.encode("sealed", sealing.seal_batch(
            self.session.device_mac_key, self.session.kid, records, "urn:dev:vb:ox-1:"))
        verdict = self.verifier.handle(raw, received_at=at, link_device="ox-1")
        self.verifier.committed(verdict)
        return verdict

    def close(self) -> None:
        self.sessions.store.close()
        self.directory.close()
        self.registry.close()


@pytest.fixture
def gateway(tmp_path: Path):
    home = provision_home(tmp_path / "data", "gw-1", [("ox-1", "p-0001")], now=T0)
    gw = Gateway(home, tmp_path)
    gw.home = home
    yield gw
    gw.close()


def test_a_compromise_in_this_process_refuses_the_very_next_batch(gateway) -> None:
    assert gateway.batch(T0 + 10).outcome == "stored"
    gateway.engine.compromise("ox-1", "tamper seal broken", ACTOR, T0 + 11)
    refused = gateway.batch(T0 + 12)  # no clock advance: the event invalidated the cache
    assert refused.outcome == "quarantined" and "tamper seal broken" in refused.reason
    assert gateway.sessions.current("ox-1") is None  # its sessions ended with it


def test_a_compromise_by_another_process_refuses_the_next_batch_after_the_check(
        gateway, tmp_path: Path) -> None:
    assert gateway.batch(T0 + 10).outcome == "stored"
    with Registry.open_in(gateway.home.data_dir) as technician:
        LifecycleEngine(technician).compromise("ox-1", "stolen", ACTOR, T0 + 11)
    gateway.clock.now += 0.05  # recheck_s: the next batch sees the commit
    refused = gateway.batch(T0 + 12)
    assert refused.outcome == "quarantined" and "stolen" in refused.reason


def test_a_rebinding_moves_the_very_next_batch_to_the_new_patient(gateway) -> None:
    first = gateway.batch(T0 + 10)
    assert {r.patient for r in first.readings} == {"p-0001"}
    with Registry.open_in(gateway.home.data_dir) as technician:
        (binding,) = technician.bindings(device_id="ox-1")
        technician.end_binding(binding.id, until=T0 + 20, actor=ACTOR)
        technician.add_patient("p-0002", actor=ACTOR, now=T0 + 20)
        technician.bind("ox-1", "p-0002", since=T0 + 20, actor=ACTOR)
    gateway.clock.now += 0.05
    moved = gateway.batch(T0 + 21)
    assert {r.patient for r in moved.readings} == {"p-0002"}
    before = gateway.batch(T0 + 19)  # a reading from before the change keeps its patient
    assert {r.patient for r in before.readings} == {"p-0001"}


def test_cached_certificate_status_equals_the_registry_facts_at_every_instant(
        gateway) -> None:
    directory, registry = gateway.directory, gateway.registry
    gateway.engine.compromise("ox-1", "lost", ACTOR, T0 + 100)
    key = registry.keys("device", "ox-1", "signing")[-1]
    record = registry.certificate_of_key(key.kid, "cwt")
    for at in (T0 - 2 * DAY, T0, T0 + 99, T0 + 100, T0 + 101, T0 + 400 * DAY):
        known = record.facts.as_of(at)
        expected = next((end for end in (states.COMPROMISED, states.REVOKED, states.RETIRED)
                         if getattr(known, end) is not None), None)
        assert directory.certificate_status("ox-1", at) == expected
        assert directory.certificate_status("ox-1", at) == expected  # cached answer
    assert directory.certificate_status("nobody", T0) is None


def test_currency_flags_are_recomputed_for_another_second_and_after_a_change(gateway) -> None:
    directory, registry = gateway.directory, gateway.registry
    for now in (T0, T0, T0 + 1, T0 + 3 * 365 * DAY, T0):
        assert directory.currency_flags("ox-1", now) == \
            registry.device("ox-1").currency_flags(now)
    flags = gateway.batch(T0 + 3 * 365 * DAY).flags  # registration and calibration lapsed
    assert "registration-expired" in flags and "calibration-overdue" in flags
    assert gateway.batch(T0 + 30).flags == ()


def test_the_newest_session_is_recomputed_when_sessions_open_and_end(gateway) -> None:
    sessions = gateway.sessions
    first = sessions.current("ox-1")
    assert first is not None and first.kid == gateway.session.kid
    keys = gateway.directory.gateway_keys()
    handshake = session.DeviceHandshake("ox-1", gateway.home.devices["ox-1"].agreement,
                                        keys.x25519_public)
    verdict = gateway.verifier.handle(messages.encode("hello", handshake.hello()),
                                      received_at=T0 + 5, link_device="ox-1")
    newer = handshake.finish(messages.decode(verdict.reply)[1])
    assert sessions.current("ox-1").kid == newer.kid
    sessions.end([newer.kid], "test", T0 + 6)
    assert sessions.current("ox-1") is first
    sessions.end([first.kid], "test", T0 + 7)
    assert sessions.current("ox-1") is None
