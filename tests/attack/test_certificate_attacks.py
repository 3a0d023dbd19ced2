"""Devices with a certificate that is no longer current, against the running agent.

Designed behaviour (docs/verification.md, "Not current -> kept, flagged, evaluated"): the hello
is accepted and readings are journaled and delivered FLAGGED (`cert-expired`, `cert-revoked`),
never silently trusted; a patient's critical value must not wait for a renewal. Here "refused"
means "never delivered as trusted": every reading carries the flag at the centre.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import AttackLog, needs_mosquitto
from rig import AgentRig, TlsSite, eventually

from edge_agent.registry import Registry
from simulator.agent_home import ACTOR, Home

pytestmark = needs_mosquitto
DAY = 86400


def _revoke_ox1(home: Home) -> None:
    with Registry.open_in(home.data_dir) as registry:
        record = next(c for c in registry.certificates() if c.subject == "ox-1")
        # steps only move forward: revoked one second after the enrolment just recorded
        at = max(step.at for step in record.steps) + 1
        registry.record_certificate_step(record.id, "revoked", at=at, actor=ACTOR,
                                         reason="attack test: key exposed")
    time.sleep(max(0.0, at + 0.1 - time.time()))


@pytest.fixture
def expired_rig(tmp_path: Path, site: TlsSite) -> Iterator[AgentRig]:
    # commissioned 400 days ago: the device certificates (1 year) have expired
    running = AgentRig.start(tmp_path, site, provision_at=int(time.time()) - 400 * DAY)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def revoked_rig(tmp_path: Path, site: TlsSite) -> Iterator[AgentRig]:
    running = AgentRig.start(tmp_path, site, prepare=_revoke_ox1)
    try:
        yield running
    finally:
        running.stop()


def _flagged_at_centre(rig: AgentRig, device: str, seqs: set[int], flag: str) -> int:
    rows = [r for r in rig.centre.store.readings(device) if r["seq"] in seqs]
    assert {r["seq"] for r in rows} == seqs
    assert all(flag in r["gateway_verdict"] for r in rows), [r["gateway_verdict"] for r in rows]
    return len(rows)


def _journal_flags(rig: AgentRig, device: str) -> list[str]:
    return [r[0] or "" for r in rig.journal(
        "SELECT flags FROM messages WHERE device_id = ? AND kind = 'readings'", device)]


def test_expired_device_certificate_is_flagged_never_trusted(expired_rig: AgentRig,
                                                             attack: AttackLog) -> None:
    attack.describe("certificate", "device-gateway", "a device whose CWT expired 35 days ago "
                    "sends sealed batches (kept and flagged cert-expired, by design)")
    seqs = expired_rig.honest_delivery("ox-1", batches=3)
    attack.tried(3)
    assert eventually(lambda: len(seqs) == _flagged_at_centre(expired_rig, "ox-1", seqs,
                                                              "cert-expired"))
    assert all("cert-expired" in flags for flags in _journal_flags(expired_rig, "ox-1"))
    attack.refused(3)


def test_revoked_device_certificate_is_flagged_and_others_unaffected(
        revoked_rig: AgentRig, attack: AttackLog) -> None:
    attack.describe("certificate", "device-gateway", "a device whose certificate the registry "
                    "records as revoked sends sealed batches (kept, flagged cert-revoked)")
    seqs = revoked_rig.honest_delivery("ox-1", batches=3)
    attack.tried(3)
    assert eventually(lambda: len(seqs) == _flagged_at_centre(revoked_rig, "ox-1", seqs,
                                                              "cert-revoked"))
    attack.refused(3)
    clean = revoked_rig.honest_delivery("ox-2", batches=2)
    rows = [r for r in revoked_rig.centre.store.readings("ox-2") if r["seq"] in clean]
    assert rows and not any("flagged" in r["gateway_verdict"] for r in rows)
