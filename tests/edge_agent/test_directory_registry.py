"""The verifier's DeviceDirectory over the real registry: the same answers as the registry and
the lifecycle engine, cached, and never stale after a commit by another process, a lifecycle
event or a state change by time."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_agent.directory_registry import RegistryDirectory
from edge_agent.lifecycle.engine import LifecycleEngine
from edge_agent.pipeline import DirectoryUnavailable, GatewayKeys
from edge_agent.registry import Registry
from protocol import cose, crypto, cwt
from simulator.agent_home import ACTOR, DAY, YEAR, Home, provision_home

T0 = 1_790_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return provision_home(tmp_path / "data", "gw-1", [("ox-1", "p-0001"), ("ox-2", None)],
                          now=T0)


def directory_for(home: Home, clock: Clock | None = None) -> tuple[RegistryDirectory, Registry]:
    registry = Registry.open_in(home.data_dir)
    keys = GatewayKeys("gw-1", home.gateway_seed, home.gateway_agreement)
    directory = RegistryDirectory(registry, LifecycleEngine(registry), keys,
                                  monotonic=clock or Clock())
    return directory, registry


def test_answers_match_the_registry_and_the_engine(home: Home) -> None:
    directory, registry = directory_for(home)
    device = home.devices["ox-1"]
    signing_kid = cwt.parse_cwt(device.certificate).key_id
    assert directory.certificate("ox-1", T0) == device.certificate
    assert directory.certificate_status("ox-1", T0) is None
    assert directory.patient_at("ox-1", T0) == "p-0001"
    assert directory.patient_at("ox-2", T0) is None
    assert directory.patient_at("ox-1", T0 - 2 * DAY) is None  # bound since T0 - 1 day
    assert directory.may_accept("ox-1", signing_kid, T0) == (True, f"key {signing_kid.hex()} "
                                                              "is active")
    assert directory.withdrawn("ox-1", T0) is None
    assert directory.currency_flags("ox-1", T0) == registry.device("ox-1").currency_flags(T0)
    # unknown devices: None / False / (), never an exception
    assert directory.certificate("nobody", T0) is None
    assert directory.certificate_status("nobody", T0) is None
    assert directory.patient_at("nobody", T0) is None
    assert directory.may_accept("nobody", b"\x00" * 8, T0)[0] is False
    assert directory.withdrawn("nobody", T0) is None
    assert directory.currency_flags("nobody", T0) == ()
    directory.close()
    registry.close()


def test_answers_are_cached_and_a_commit_by_another_process_is_seen(home: Home) -> None:
    clock = Clock()
    directory, registry = directory_for(home, clock)
    assert directory.patient_at("ox-2", T0) is None
    for _ in range(20):
        directory.patient_at("ox-2", T0)
        directory.certificate("ox-2", T0)
    assert directory.fills == 1  # one load for the device, then the cache
    with Registry.open_in(home.data_dir) as technician:  # another connection: the CLI
        technician.add_patient("p-0002", actor=ACTOR, now=T0)
        technician.bind("ox-2", "p-0002", since=T0, actor=ACTOR)
    assert directory.patient_at("ox-2", T0) is None  # not re-checked within recheck_s
    clock.now += 0.1
    assert directory.patient_at("ox-2", T0) == "p-0002"
    assert directory.fills == 2
    directory.close()
    registry.close()


def test_compromise_by_another_process_withdraws_at_once(home: Home) -> None:
    clock = Clock()
    directory, registry = directory_for(home, clock)
    kid = cwt.parse_cwt(home.devices["ox-1"].certificate).key_id
    assert directory.may_accept("ox-1", kid, T0)[0] is True
    with Registry.open_in(home.data_dir) as other:
        LifecycleEngine(other).compromise("ox-1", "tamper seal broken", ACTOR, T0 + 10)
    clock.now += 1
    assert directory.withdrawn("ox-1", T0 + 20) == "tamper seal broken"
    assert directory.withdrawn("ox-1", T0 + 5) is None  # not before it happened
    assert directory.may_accept("ox-1", kid, T0 + 20)[0] is False
    assert directory.certificate_status("ox-1", T0 + 20) == "compromised"
    directory.close()
    registry.close()


def test_time_alone_ends_a_cached_acceptance(home: Home) -> None:
    directory, registry = directory_for(home)
    kid = cwt.parse_cwt(home.devices["ox-1"].certificate).key_id
    assert directory.may_accept("ox-1", kid, T0)[0] is True
    accepted, reason = directory.may_accept("ox-1", kid, T0 + YEAR + 1)  # past expiry
    assert accepted is False and "expired" in reason
    directory.close()
    registry.close()


def test_sessions_and_renewals(home: Home) -> None:
    directory, registry = directory_for(home)
    session_id = bytes(range(8))
    assert directory.may_accept("ox-1", session_id, T0)[0] is False
    directory.session_started("ox-1", session_id, T0)
    assert directory.may_accept("ox-1", session_id, T0)[0] is True
    new_seed = crypto.random_bytes(32)
    renewed = cwt.issue_cwt(home.gateway_seed, "gw-1", "ox-1", crypto.ed25519_public_key(new_seed),
                            T0 + DAY, T0 + YEAR, agreement_key=crypto.x25519_public_key(
                                crypto.random_bytes(32)), role="device",
                            issuer_kid=cose.key_id(home.gateway_public))
    engine = LifecycleEngine(registry, on_event=lambda _event: directory.invalidate())
    engine.renew_device("ox-1", renewed, ACTOR, T0 + DAY)
    assert directory.certificate("ox-1", T0) == home.devices["ox-1"].certificate
    assert directory.certificate("ox-1", T0 + DAY) == renewed
    assert directory.certificate_status("ox-1", T0 + DAY) is None  # the new one is current
    old_kid = cwt.parse_cwt(home.devices["ox-1"].certificate).key_id
    accepted, reason = directory.may_accept("ox-1", old_kid, T0 + DAY)
    assert accepted is False and "retired" in reason
    directory.close()
    registry.close()


def test_a_failing_registry_is_unavailable_not_an_answer(home: Home) -> None:
    directory, registry = directory_for(home)
    registry.close()  # any query now fails inside sqlite3
    with pytest.raises(DirectoryUnavailable):
        directory.certificate("ox-1", T0)
    directory.close()
    with pytest.raises(sqlite3.ProgrammingError):
        registry.device("ox-1")
