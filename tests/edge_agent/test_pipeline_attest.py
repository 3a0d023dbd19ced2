"""Attested readings (standard devices) and manual entries, signed with the gateway key."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_pipeline_verifier import FAR, GW_SEED, GW_X, T0, spo2_critical

from edge_agent.journal import Priority
from edge_agent.pipeline import (
    Attestor,
    GatewayKeys,
    MemoryDirectory,
    Observation,
    StateStore,
    verify_attested,
)
from protocol import cose, crypto, uplink
from protocol.errors import SealError, ValidationError

GATEWAY_PUBLIC = crypto.ed25519_public_key(GW_SEED)


class Site:
    def __init__(self, tmp: Path) -> None:
        self.keys = GatewayKeys("gw-1", GW_SEED, GW_X)
        self.directory = MemoryDirectory(self.keys)
        self.path = tmp / "state.db"
        self.store = StateStore.open(self.path)
        self.attestor = Attestor(self.directory, self.store, critical=spo2_critical, block=4)

    def restart(self) -> None:
        self.store.close()
        self.store = StateStore.open(self.path)
        self.attestor = Attestor(self.directory, self.store, critical=spo2_critical, block=4)

    def standard_device(self, device_id: str, patient: str | None = "P-1",
                        calibration_due: int | None = FAR) -> None:
        self.directory.add_device(device_id, None, registration_number="REG-1",
                                  registration_valid_until=FAR, calibration_due=calibration_due)
        if patient:
            self.directory.bind(device_id, patient, since=T0 - 100)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def sealed_of(payload: bytes) -> tuple[bytes, str]:
    _, sealed, text, _ = uplink.decode_readings(payload)
    return sealed, text


def test_attested_readings_verify_with_the_gateway_public_key(site: Site) -> None:
    site.standard_device("cms50-1")
    out = site.attestor.attest("cms50-1", [Observation("spo2", 97, T0), Observation("pr", 64, T0)],
                               received_at=T0 + 0.25)
    (message,) = out.journal
    assert (message.verdict, message.flags, message.priority) == ("attested", (),
                                                                  Priority.ROUTINE)
    assert (message.first_seq, message.last_seq, message.count) == (0, 1, 2)
    assert message.session == cose.key_id(GATEWAY_PUBLIC)
    sealed, text = sealed_of(message.payload)
    assert text == "attested"
    readings = verify_attested(sealed, GATEWAY_PUBLIC)
    assert [(r.quantity, r.value, r.time, r.seq, r.device) for r in readings] == [
        ("spo2", 97, T0, 0, "urn:dev:vb:cms50-1:"), ("pr", 64, T0, 1, "urn:dev:vb:cms50-1:")]
    assert [(r.patient, r.quantity, r.manual) for r in out.readings] == [
        ("P-1", "spo2", False), ("P-1", "pr", False)]


def test_attestation_does_not_verify_under_another_key_or_when_altered(site: Site) -> None:
    site.standard_device("cms50-1")
    out = site.attestor.attest("cms50-1", [Observation("spo2", 97, T0)], received_at=T0)
    sealed, _ = sealed_of(out.journal[0].payload)
    other = crypto.ed25519_public_key(bytes(32))
    with pytest.raises(SealError, match="kid mismatch"):
        verify_attested(sealed, other)
    altered = sealed.replace(bytes([0x18, 97]), bytes([0x18, 98]))  # spo2 97 -> 98
    assert altered != sealed
    with pytest.raises(SealError, match="signature invalid"):
        verify_attested(altered, GATEWAY_PUBLIC)


def test_gateway_seqs_are_consecutive_and_never_reused_after_a_restart(site: Site) -> None:
    site.standard_device("cms50-1")
    first = site.attestor.attest("cms50-1", [Observation("spo2", 97, T0)] * 3, received_at=T0)
    second = site.attestor.attest("cms50-1", [Observation("spo2", 96, T0 + 1)] * 3,
                                  received_at=T0 + 1)
    assert [(m.first_seq, m.last_seq) for m in first.journal + second.journal] == [(0, 2),
                                                                                  (3, 5)]
    site.restart()  # seqs 6..7 were reserved (block of 4 from 4) and are skipped
    third = site.attestor.attest("cms50-1", [Observation("spo2", 95, T0 + 2)],
                                 received_at=T0 + 2)
    assert third.journal[0].first_seq == 8
    other = site.attestor.attest("thermo-1", [Observation("temp", 37.1, T0)], received_at=T0)
    assert other.journal[0].first_seq == 0  # per device


def test_more_readings_than_a_pack_holds_make_several_packs(site: Site) -> None:
    site.standard_device("cms50-1")
    out = site.attestor.attest("cms50-1", [Observation("pr", 60 + i % 40, T0 + i)
                                           for i in range(70)], received_at=T0 + 70)
    assert [(m.first_seq, m.last_seq, m.count) for m in out.journal] == [(0, 63, 64),
                                                                        (64, 69, 6)]
    assert len(out.readings) == 70


def test_manual_entry_records_the_actor_and_the_patient(site: Site) -> None:
    site.standard_device("manual-p2", patient="P-2")
    out = site.attestor.manual("manual-p2", [Observation("rr", 22, T0)], actor="nurse.jones",
                               received_at=T0 + 5)
    (message,) = out.journal
    assert message.verdict == "manual" and out.actor == "nurse.jones"
    sealed, text = sealed_of(message.payload)
    assert text == "manual by nurse.jones"
    assert [r.value for r in verify_attested(sealed, GATEWAY_PUBLIC)] == [22]
    assert [(r.patient, r.manual) for r in out.readings] == [("P-2", True)]
    override = site.attestor.manual("manual-p2", [Observation("rr", 20, T0)], actor="dr-who",
                                    received_at=T0, patient="P-9")
    assert override.readings[0].patient == "P-9"
    with pytest.raises(ValidationError, match="actor"):
        site.attestor.manual("manual-p2", [Observation("rr", 20, T0)], actor=" ",
                             received_at=T0)


def test_unusable_values_are_quarantined_and_the_rest_attested(site: Site) -> None:
    site.standard_device("cms50-1")
    out = site.attestor.attest("cms50-1", [Observation("spo2", 97, T0),
                                           Observation("spo2", 140, T0),
                                           Observation("glucose", 5.5, T0),
                                           Observation("spo2", float("nan"), T0)],
                               received_at=T0)
    assert [m.count for m in out.journal] == [1]
    assert len(out.quarantine) == 3
    assert all(q.reason.startswith("attested reading refused:") for q in out.quarantine)
    assert out.quarantine[1].reason.endswith("unit required: glucose has more than one "
                                             "allowed unit")


def test_critical_values_raise_the_priority(site: Site) -> None:
    site.standard_device("cms50-1")
    out = site.attestor.attest("cms50-1", [Observation("spo2", 89, T0)], received_at=T0)
    assert out.journal[0].priority == Priority.CRITICAL


def test_device_currency_and_ingest_flags_are_kept(site: Site) -> None:
    site.standard_device("cms50-1", patient=None, calibration_due=T0 - 1)
    out = site.attestor.attest("cms50-1", [Observation("spo2", 97, T0)], received_at=T0,
                               flags=("stored", "clock-skew"))
    assert out.journal[0].flags == ("stored", "clock-skew", "calibration-overdue", "unbound")
    assert out.readings == ()
    assert sealed_of(out.journal[0].payload)[1] == (
        "attested flagged:stored,clock-skew,calibration-overdue,unbound")
