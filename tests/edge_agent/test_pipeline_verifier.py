"""The verifier against a CPython device built from the real protocol modules
(protocol.session handshake, protocol.sealing batches, protocol.checkpoint chains).

`Home` and `Device` are shared with test_pipeline_sessions.py and test_pipeline_attest.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.alarms.evaluator import Reading
from edge_agent.journal import Journal, JournalStore, Priority
from edge_agent.pipeline import (
    DeviceDirectory,
    DirectoryUnavailable,
    GatewayKeys,
    MemoryDirectory,
    SessionPolicy,
    SessionTable,
    StateStore,
    Verdict,
    Verifier,
)
from edge_agent.pipeline import verifier as v
from protocol import (
    checkpoint,
    cose,
    crypto,
    cwt,
    device_link,
    messages,
    sealing,
    senml,
    session,
    uplink,
)

T0 = 1_700_000_000
DAY = 86400
YEAR = 365 * DAY
GW_SEED = bytes(range(32))
GW_X = bytes(range(32, 64))
FAR = T0 + 10 * YEAR


def spo2_critical(reading: Reading) -> bool:
    return reading.quantity == "spo2" and float(reading.value) <= 91


class Device:
    """The device side of the link, as the firmware does it (CPython)."""

    def __init__(self, device_id: str, gateway_x_public: bytes, index: int) -> None:
        self.device_id = device_id
        self.seed = bytes([index]) * 32
        self.x_private = bytes([index + 100]) * 32
        self.gateway_x_public = gateway_x_public
        self.kid_sign = cose.key_id(crypto.ed25519_public_key(self.seed))
        self.session: session.Session | None = None
        self.chain: checkpoint.HashChain | None = None
        self.next_seq = 0

    def certificate(self, not_before: int, expires: int, issuer_seed: bytes = GW_SEED) -> bytes:
        return cwt.issue_cwt(issuer_seed, "gw-1", self.device_id,
                             crypto.ed25519_public_key(self.seed), not_before, expires,
                             agreement_key=crypto.x25519_public_key(self.x_private),
                             role="device", serial=f"SN-{self.device_id}")

    def hello(self) -> tuple[session.DeviceHandshake, bytes]:
        hs = session.DeviceHandshake(self.device_id, self.x_private, self.gateway_x_public)
        return hs, messages.encode("hello", hs.hello())

    def finish(self, hs: session.DeviceHandshake, reply: bytes | None) -> session.Session:
        assert reply is not None
        kind, body = messages.decode(reply)
        assert kind == "accept"
        self.session = hs.finish(body)
        self.chain = checkpoint.HashChain(self.session.session_id)
        return self.session

    def seal(self, values: list[tuple[str, float]], at: int, seq: int | None = None,
             chain: bool = True) -> bytes:
        """A sealed-batch message; seqs continue from next_seq unless `seq` is given."""
        assert self.session is not None
        first = self.next_seq if seq is None else seq
        records = [senml.make_record(q, value, time=at, seq=first + i)
                   for i, (q, value) in enumerate(values)]
        sealed = sealing.seal_batch(self.session.device_mac_key, self.session.kid, records,
                                    f"urn:dev:vb:{self.device_id}:",
                                    chain=self.chain if chain else None)
        self.next_seq = max(self.next_seq, first + len(values))
        return messages.encode("sealed", sealed)

    def checkpoint(self, at: int) -> bytes:
        assert self.chain is not None
        return messages.encode("checkpoint", self.chain.checkpoint(
            self.seed, self.device_id, at, self.kid_sign))

    def read_ack(self, ack: bytes | None) -> device_link.Ack:
        assert ack is not None and self.session is not None
        kind, body = messages.decode(ack)
        assert kind == "device-ack"
        return device_link.decode_ack(body, self.session.gateway_mac_key, self.session.kid)


class Home:
    """The gateway side: directory, state store, session table and verifier."""

    def __init__(self, tmp: Path, policy: SessionPolicy | None = None, critical=None) -> None:
        self.keys = GatewayKeys("gw-1", GW_SEED, GW_X)
        self.directory = MemoryDirectory(self.keys)
        self.path = tmp / "pipeline-state.db"
        self.policy = policy
        self.critical = critical
        self.devices: dict[str, Device] = {}
        self._open()

    def _open(self, now: float = T0) -> None:
        self.store = StateStore.open(self.path)
        self.sessions = SessionTable(self.store, self.policy, now=now)
        self.verifier = Verifier(self.directory, self.sessions, critical=self.critical)

    def restart(self, now: float = T0) -> None:
        """The agent process ends and starts again (at `now`) on the same state file."""
        self.store.close()
        self._open(now)

    def enroll(self, device_id: str, *, not_before: int = T0 - DAY, expires: int = T0 + YEAR,
               patient: str | None = "P-1", calibration_due: int | None = FAR) -> Device:
        device = Device(device_id, self.keys.x25519_public, len(self.devices) + 1)
        self.directory.add_device(device_id, device.certificate(not_before, expires),
                                  registration_number="REG-1", registration_valid_until=FAR,
                                  calibration_due=calibration_due)
        if patient is not None:
            self.directory.bind(device_id, patient, since=T0 - YEAR)
        self.devices[device_id] = device
        return device

    def connect(self, device: Device, at: float = T0, link: str | None = None) -> Verdict:
        hs, hello = device.hello()
        verdict = self.verifier.handle(hello, received_at=at, link_device=link)
        if verdict.outcome == v.OPENED:
            device.finish(hs, verdict.reply)
        return verdict

    def deliver(self, raw: bytes, at: float = T0, link: str | None = None
                ) -> tuple[Verdict, bytes | None]:
        """handle + (journal commit assumed) + committed -> (verdict, ack message)."""
        verdict = self.verifier.handle(raw, received_at=at, link_device=link)
        return verdict, self.verifier.committed(verdict)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path, critical=spo2_critical)


# ---------------------------------------------------------------- the whole flow


def test_device_to_journal_flow_acknowledges_only_after_the_commit(tmp_path: Path) -> None:
    home = Home(tmp_path, critical=spo2_critical)
    device = home.enroll("ox-1")
    opened = home.connect(device, link="ox-1")
    assert opened.outcome == v.OPENED and opened.flags == () and not opened.quarantine

    async def run() -> list[device_link.Ack]:
        acks = []
        async with await Journal.open(tmp_path / "journal.db") as journal:
            for i, spo2 in enumerate((97, 95, 90)):
                raw = device.seal([("spo2", spo2), ("hr", 80 + i)], T0 + i)
                verdict = home.verifier.handle(raw, received_at=T0 + i + 0.5, link_device="ox-1")
                assert verdict.outcome == v.STORED and verdict.flags == ()
                await journal.append_many(verdict.journal)
                acks.append(device.read_ack(home.verifier.committed(verdict)))
            cp = home.verifier.handle(device.checkpoint(T0 + 3), received_at=T0 + 3,
                                      link_device="ox-1")
            assert cp.outcome == v.RELAYED and cp.flags == ()
            assert cp.journal[0].priority == Priority.CRITICAL  # covers the 90 % reading
            await journal.append_many(cp.journal)
            acks.append(device.read_ack(home.verifier.committed(cp)))
        return acks

    acks = asyncio.run(run())
    assert [a.ranges for a in acks[:3]] == [[(0, 1)], [(2, 3)], [(4, 5)]]
    assert acks[0].upto is None  # the session's first seq is not known before a checkpoint
    assert (acks[3].upto, acks[3].checkpoints_upto) == (5, 5)
    store = JournalStore.open(tmp_path / "journal.db")
    rows = store.get(range(1, 10))
    store.close()
    readings = [r for r in rows if r.kind == "readings"]
    assert [(r.first_seq, r.last_seq, r.verdict, r.flags) for r in readings] == [
        (0, 1, "sealed", ()), (2, 3, "sealed", ()), (4, 5, "sealed", ())]
    assert [r.priority for r in readings] == [Priority.ROUTINE, Priority.ROUTINE,
                                              Priority.CRITICAL]
    device_id, sealed, verdict_text, received_ms = uplink.decode_readings(readings[2].payload)
    assert (device_id, verdict_text, received_ms) == ("ox-1", "sealed", (T0 + 2) * 1000 + 500)
    # The centre can check the relayed checkpoint against the relayed tags end to end.
    tags = {}
    for row in readings:
        opened_seal = cose.mac0_parse(uplink.decode_readings(row.payload)[1])
        for r in senml.decode_pack(opened_seal.payload):
            tags[r.seq] = opened_seal.tag
    cp_row = next(r for r in rows if r.kind == "checkpoint")
    _, cp_body = messages.decode(cp_row.payload)
    assert checkpoint.verify_checkpoint(cp_body, crypto.ed25519_public_key(device.seed),
                                        tags).ok


def test_rules_readings_carry_the_bound_patient(home: Home) -> None:
    device = home.enroll("ox-1", patient="P-7")
    home.connect(device)
    verdict, _ = home.deliver(device.seal([("spo2", 96), ("hr", 71)], T0))
    assert [(r.patient, r.device, r.quantity, r.value, r.time) for r in verdict.readings] == [
        ("P-7", "ox-1", "spo2", 96, T0), ("P-7", "ox-1", "hr", 71, T0)]


def test_unbound_device_is_journaled_flagged_and_not_evaluated(home: Home) -> None:
    device = home.enroll("ox-1", patient=None)
    home.connect(device)
    verdict, ack = home.deliver(device.seal([("spo2", 96)], T0))
    assert verdict.outcome == v.STORED and verdict.readings == ()
    assert verdict.journal[0].flags == ("unbound",)
    assert uplink.decode_readings(verdict.journal[0].payload)[2] == "sealed flagged:unbound"
    assert device.read_ack(ack).ranges == [(0, 0)]


# ---------------------------------------------------------------- forgery, replay, order


def test_forged_mac_is_quarantined_and_does_not_move_the_window(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    genuine = device.seal([("spo2", 96)], T0)
    forged = genuine[:-1] + bytes([genuine[-1] ^ 1])  # last byte of the MAC tag
    verdict, ack = home.deliver(forged)
    assert verdict.outcome == v.QUARANTINED and ack is None
    assert verdict.reason == "sealed: seal refused: tag mismatch"
    assert verdict.quarantine[0].raw == forged and verdict.quarantine[0].device_id == "ox-1"
    assert verdict.journal == () and verdict.readings == ()
    assert home.deliver(genuine)[0].outcome == v.STORED


def test_replayed_batch_is_a_duplicate_dropped_and_acknowledged_again(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    raw = device.seal([("spo2", 96), ("hr", 70)], T0)
    first, ack1 = home.deliver(raw)
    again, ack2 = home.deliver(raw, at=T0 + 5)
    assert first.outcome == v.STORED
    assert again.outcome == v.DUPLICATE
    assert again.journal == () and again.readings == () and again.quarantine == ()
    assert device.read_ack(ack1).ranges == device.read_ack(ack2).ranges == [(0, 1)]


def test_copy_arriving_before_the_commit_is_neither_journaled_nor_acked(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    raw = device.seal([("spo2", 96)], T0)
    first = home.verifier.handle(raw, received_at=T0)
    copy = home.verifier.handle(raw, received_at=T0 + 0.01)
    assert copy.outcome == v.IN_FLIGHT and copy.journal == () and copy.ack is None
    assert home.verifier.committed(copy) is None
    assert device.read_ack(home.verifier.committed(first)).ranges == [(0, 0)]


def test_abandoned_commit_lets_the_resend_in_again(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    raw = device.seal([("spo2", 96)], T0)
    home.verifier.abandoned(home.verifier.handle(raw, received_at=T0))  # journal failed
    assert home.deliver(raw)[0].outcome == v.STORED


def test_reordered_batches_fill_the_gap_late_and_the_gap_is_reported(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    b1 = device.seal([("spo2", 96), ("hr", 70)], T0)
    b2 = device.seal([("spo2", 95), ("hr", 71)], T0 + 1)
    b3 = device.seal([("spo2", 94), ("hr", 72)], T0 + 2)
    assert home.deliver(b1)[0].gaps == ()
    late_first, _ = home.deliver(b3)
    assert late_first.outcome == v.STORED
    assert late_first.gaps == (v.Gap("ox-1", device.session.kid, 2, 3),)
    assert home.sessions.get(device.session.kid).tracker.missing() == [(2, 3)]
    filled, ack = home.deliver(b2)
    assert filled.outcome == v.STORED and filled.gaps == ()
    assert [r.value for r in filled.readings] == [95, 71]
    assert device.read_ack(ack).ranges == [(2, 3)]
    cp_ack = device.read_ack(home.deliver(device.checkpoint(T0 + 3))[1])
    assert (cp_ack.upto, cp_ack.checkpoints_upto) == (5, 5)


def test_batch_below_the_replay_window_is_quarantined_as_replay(tmp_path: Path) -> None:
    home = Home(tmp_path, SessionPolicy(window=8, history_runs=0))  # no history kept
    device = home.enroll("ox-1")
    home.connect(device)
    old = device.seal([("spo2", 96)], T0)
    home.deliver(old)
    home.deliver(device.seal([("spo2", 96)], T0 + 1, seq=40, chain=False))
    verdict, ack = home.deliver(old)
    assert verdict.outcome == v.QUARANTINED
    assert verdict.reason.startswith("sealed: replay: seqs 0..0 are below the replay window")
    assert device.read_ack(ack).ranges == [(0, 0)]  # kept (in quarantine): stop re-sending


def test_partly_duplicate_batch_is_kept_whole_flagged_and_only_new_seqs_evaluated(
        home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    home.deliver(device.seal([("spo2", 96), ("hr", 70)], T0))
    overlap, ack = home.deliver(device.seal([("hr", 70), ("spo2", 95)], T0 + 1, seq=1,
                                            chain=False))
    assert overlap.outcome == v.STORED and overlap.flags == ("seq-overlap",)
    assert (overlap.journal[0].first_seq, overlap.journal[0].last_seq) == (1, 2)
    assert [(r.quantity, r.value) for r in overlap.readings] == [("spo2", 95)]
    assert device.read_ack(ack).ranges == [(1, 2)]


# ---------------------------------------------------------------- devices and links


def test_session_of_another_device_is_refused(home: Home) -> None:
    a = home.enroll("ox-a")
    b = home.enroll("ox-b")
    home.connect(a, link="ox-a")
    home.connect(b, link="ox-b")
    raw = a.seal([("spo2", 96)], T0)
    verdict, ack = home.deliver(raw, link="ox-b")
    assert verdict.outcome == v.QUARANTINED and ack is None
    assert "belongs to device ox-a" in verdict.reason and "link of ox-b" in verdict.reason
    assert verdict.quarantine[0].device_id == "ox-a"
    assert home.deliver(raw, link="ox-a")[0].outcome == v.STORED  # nothing was recorded
    hs, hello = a.hello()
    refused = home.verifier.handle(hello, received_at=T0, link_device="ox-b")
    assert refused.outcome == v.REFUSED and refused.reply is None
    assert "arrived on the link of ox-b" in refused.reason


def test_session_id_collision_is_refused(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    a = home.enroll("ox-a")
    b = home.enroll("ox-b")
    home.connect(a)
    real = session.gateway_accept

    def colliding(*args, **kwargs):
        established, accept = real(*args, **kwargs)
        established.session_id = a.session.session_id
        return established, accept

    monkeypatch.setattr(session, "gateway_accept", colliding)
    refused = home.connect(b)
    assert refused.outcome == v.REFUSED
    assert refused.reason.endswith("is already in use")
    assert home.sessions.get(a.session.kid).device_id == "ox-a"


def test_hello_with_a_key_other_than_the_certified_one_is_refused(home: Home) -> None:
    device = home.enroll("ox-1")
    device.x_private = bytes([77]) * 32  # not the key in its certificate
    refused = home.connect(device)
    assert refused.outcome == v.REFUSED
    assert refused.reason == ("hello refused: device key in hello does not match its "
                              "certificate")


def test_certificate_from_another_issuer_is_refused(home: Home) -> None:
    device = Device("ox-9", home.keys.x25519_public, 9)
    home.directory.add_device("ox-9", device.certificate(T0 - DAY, T0 + YEAR,
                                                         issuer_seed=bytes(32)))
    refused = home.connect(device)
    assert refused.outcome == v.REFUSED
    assert "device certificate does not verify" in refused.reason
    assert home.connect(Device("ox-x", home.keys.x25519_public, 10)).reason == (
        "hello refused: no certificate for device ox-x")


# ---------------------------------------------------------------- certificate state


@pytest.mark.parametrize(("window", "ended", "expected"), [
    ((T0 - YEAR, T0 - DAY), None, ("cert-expired", "not-accepted")),
    ((T0 + DAY, T0 + YEAR), None, ("cert-not-yet-valid", "not-accepted")),
    ((T0 - DAY, T0 + YEAR), "revoked", ("cert-revoked", "not-accepted")),
])
def test_readings_under_a_certificate_not_current_are_kept_flagged_and_evaluated(
        home: Home, window: tuple[int, int], ended: str | None,
        expected: tuple[str, ...]) -> None:
    device = home.enroll("ox-1", not_before=window[0], expires=window[1])
    if ended:
        home.directory.end_certificate("ox-1", ended, T0 - 60)
    opened = home.connect(device)
    assert opened.outcome == v.OPENED and opened.flags == expected
    verdict, ack = home.deliver(device.seal([("spo2", 88)], T0))
    assert verdict.outcome == v.STORED
    assert verdict.flags == verdict.journal[0].flags == expected
    assert any(note.startswith("not accepted: device certificate is") for note in verdict.notes)
    assert [r.value for r in verdict.readings] == [88]  # the rules still see it
    assert verdict.journal[0].priority == Priority.CRITICAL
    text = uplink.decode_readings(verdict.journal[0].payload)[2]
    assert text == "sealed flagged:" + ",".join(expected)
    assert device.read_ack(ack).ranges == [(0, 0)]


def test_renewed_certificate_is_used_from_its_issue_time(home: Home) -> None:
    assert isinstance(home.directory, DeviceDirectory)
    device = home.enroll("ox-1", not_before=T0 - YEAR, expires=T0 + DAY)
    home.directory.add_device("ox-1", device.certificate(T0 + 60, T0 + YEAR),
                              registration_number="REG-1", registration_valid_until=FAR,
                              calibration_due=FAR)
    home.connect(device, at=T0 + 2 * DAY)
    verdict, _ = home.deliver(device.seal([("hr", 70)], T0), at=T0 + 2 * DAY)
    assert verdict.outcome == v.STORED and verdict.flags == ()
    home.connect(device, at=T0)  # the clock stepped back: the old certificate, expiring
    assert home.sessions.current("ox-1").kid == device.session.kid  # the last one opened
    assert home.deliver(device.seal([("hr", 70)], T0), at=T0 + 30)[0].flags == ()
    assert cwt.validity_state(home.sessions.current("ox-1").certificate, T0) == cwt.EXPIRING


def test_calibration_overdue_flags_readings(home: Home) -> None:
    device = home.enroll("ox-1", calibration_due=T0 - 1)
    home.connect(device)
    verdict, _ = home.deliver(device.seal([("hr", 70)], T0))
    assert verdict.flags == ("calibration-overdue",)


def test_compromise_withdraws_sessions_at_once(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    old_kid = device.session.kid
    assert home.deliver(device.seal([("spo2", 96)], T0))[0].outcome == v.STORED
    home.connect(device, at=T0 + 1)  # a second live session
    home.directory.withdraw("ox-1", "tamper seal broken", T0 + 2)
    verdict, ack = home.deliver(device.seal([("spo2", 96)], T0 + 3), at=T0 + 3)
    assert verdict.outcome == v.QUARANTINED and ack is None
    assert verdict.reason.endswith("withdrawn (tamper seal broken)")
    assert home.sessions.of_device("ox-1") == []
    again, _ = home.deliver(device.seal([("spo2", 96)], T0 + 4), at=T0 + 4)
    assert "has ended (withdrawn: tamper seal broken)" in again.reason
    refused = home.connect(device, at=T0 + 5)
    assert refused.outcome == v.REFUSED and "is withdrawn" in refused.reason
    home.restart()  # the tombstone and the wiped keys are durable
    assert home.sessions.get(old_kid) is None
    assert home.sessions.ended(old_kid)[0] == "withdrawn: tamper seal broken"


def test_service_side_withdrawal_ends_sessions_before_the_registry_says_so(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    assert home.verifier.withdraw_device("ox-1", "device lost", T0) == [device.session.kid]
    verdict, _ = home.deliver(device.seal([("spo2", 96)], T0 + 1))
    assert verdict.outcome == v.QUARANTINED
    assert "has ended (withdrawn: device lost)" in verdict.reason


def test_directory_failure_passes_through_and_leaves_nothing_in_flight(
        home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    raw = device.seal([("spo2", 96)], T0)

    def unavailable(device_id: str, at: int) -> None:
        raise DirectoryUnavailable("registry locked")

    monkeypatch.setattr(home.directory, "patient_at", unavailable)
    with pytest.raises(DirectoryUnavailable):
        home.verifier.handle(raw, received_at=T0)
    monkeypatch.undo()
    assert home.deliver(raw)[0].outcome == v.STORED  # not "in-flight", not quarantined


# ---------------------------------------------------------------- restarts


def test_replay_after_restart_is_still_a_duplicate(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    raw = device.seal([("spo2", 96), ("hr", 70)], T0)
    home.deliver(raw)
    home.restart()
    verdict, ack = home.deliver(raw, at=T0 + 60)
    assert verdict.outcome == v.DUPLICATE
    assert device.read_ack(ack).ranges == [(0, 1)]  # sealed under the persisted session
    assert home.deliver(device.seal([("spo2", 95)], T0 + 61))[0].outcome == v.STORED


def test_restart_before_the_state_was_saved_journals_again_rather_than_losing(
        home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    raw = device.seal([("spo2", 96)], T0)
    home.verifier.handle(raw, received_at=T0)  # the agent dies before committed()
    home.restart()
    assert home.deliver(raw)[0].outcome == v.STORED


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_with_a_forged_signature_is_quarantined(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    home.deliver(device.seal([("spo2", 96)], T0))
    device.seed = bytes([99]) * 32  # signs with a key its certificate does not hold
    device.kid_sign = cose.key_id(crypto.ed25519_public_key(device.seed))
    verdict, ack = home.deliver(device.checkpoint(T0 + 1))
    assert verdict.outcome == v.QUARANTINED and ack is None
    assert verdict.reason.startswith("checkpoint refused:")


def test_checkpoint_over_tags_the_gateway_did_not_receive_is_flagged(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    home.deliver(device.seal([("spo2", 96)], T0))
    device.seal([("spo2", 95)], T0 + 1)  # chained, never delivered
    gap, _ = home.deliver(device.checkpoint(T0 + 2))
    assert gap.outcome == v.RELAYED and gap.flags == ("checkpoint-gap",)
    # The same seqs delivered with a different tag than the device chained:
    swapped = home.enroll("ox-2")
    home.connect(swapped)
    swapped.seal([("spo2", 90)], T0)  # chained, not sent
    home.deliver(swapped.seal([("spo2", 97)], T0, seq=0, chain=False))
    mismatch, _ = home.deliver(swapped.checkpoint(T0 + 1))
    assert mismatch.outcome == v.RELAYED and mismatch.flags == ("checkpoint-tag-mismatch",)


def test_repeated_checkpoint_is_acknowledged_again_not_journaled(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    home.deliver(device.seal([("spo2", 96)], T0))
    raw = device.checkpoint(T0 + 1)
    home.deliver(raw)
    again, ack = home.deliver(raw)
    assert again.outcome == v.DUPLICATE and again.journal == ()
    assert device.read_ack(ack).checkpoints_upto == 0


def test_unlinked_checkpoint_is_relayed_but_not_acknowledged_cumulatively(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    home.deliver(device.seal([("spo2", 96)], T0))
    device.checkpoint(T0 + 1)  # the first checkpoint is lost on the way
    home.deliver(device.seal([("spo2", 95)], T0 + 2))
    verdict, ack = home.deliver(device.checkpoint(T0 + 3))
    assert verdict.outcome == v.RELAYED
    assert ack is None  # no first_seq, no checkpoint mark: nothing cumulative to claim


def test_checkpoint_after_restart_is_relayed_without_a_false_gap(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    home.deliver(device.seal([("spo2", 96)], T0))
    home.restart()
    verdict, ack = home.deliver(device.checkpoint(T0 + 1))
    assert verdict.outcome == v.RELAYED and verdict.flags == ()
    assert "not checked locally" in verdict.notes[-1]
    assert device.read_ack(ack).checkpoints_upto == 0


# ---------------------------------------------------------------- other message types


def test_device_events_sealed_and_unsealed(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    event = {"event": "battery", "time": T0, "level": 17}
    sealed = messages.encode("device-event", device_link.encode_event(
        event, device.session.device_mac_key, device.session.kid))
    verdict, _ = home.deliver(sealed)
    assert verdict.outcome == v.EVENT and verdict.events[0].authenticated
    assert verdict.events[0].to_dict() == event
    bare = messages.encode("device-event", device_link.encode_event(event))
    hint, _ = home.deliver(bare, link="ox-1")
    assert hint.outcome == v.EVENT and not hint.events[0].authenticated
    assert hint.device_id == "ox-1"


def test_enrollment_requests_are_forwarded_and_gateway_messages_quarantined(home: Home) -> None:
    forwarded = home.verifier.handle(messages.encode("enroll-request", {1: b"x"}),
                                     received_at=T0, link_device="ox-1")
    assert forwarded.outcome == v.FORWARD and forwarded.forward == {1: b"x"}
    spoofed = home.verifier.handle(messages.encode("device-ack", b"\x00"), received_at=T0)
    assert spoofed.outcome == v.QUARANTINED
    assert spoofed.reason == "a device does not send 'device-ack' messages"


# ---------------------------------------------------------------- hostile input


KINDS = ["hello", "sealed", "checkpoint", "device-event", "accept", "readings",
         "device-command", "enroll-request"]
CBOR_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.binary(max_size=64)
    | st.text(max_size=16) | st.floats(allow_nan=True),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.integers(-8, 30) | st.text(max_size=4), inner, max_size=6),
    max_leaves=20)


@pytest.fixture(scope="module")
def hostile_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Home, Device, list[bytes]]:
    home = Home(tmp_path_factory.mktemp("hostile"), critical=spo2_critical)
    device = home.enroll("ox-1")
    home.connect(device)
    genuine = [device.seal([("spo2", 96), ("hr", 70)], T0), device.checkpoint(T0)]
    for raw in genuine:  # durable: copies that still verify are duplicates
        assert home.deliver(raw)[0].outcome in (v.STORED, v.RELAYED)
    hs, hello = device.hello()
    return home, device, [*genuine, hello]


def _assert_contained(verdict: Verdict) -> None:
    """Hostile input ends in quarantine with a reason the verifier chose, never in the
    catch-all, and is never accepted."""
    assert isinstance(verdict, Verdict)
    for entry in verdict.quarantine:
        assert not entry.reason.startswith("verifier error"), entry.reason


@settings(deadline=None)
@given(raw=st.binary(max_size=300))
def test_random_bytes_never_escape(hostile_home, raw: bytes) -> None:
    home, _, _ = hostile_home
    verdict = home.verifier.handle(raw, received_at=T0, link_device="ox-1")
    _assert_contained(verdict)
    assert verdict.outcome in (v.QUARANTINED, v.REFUSED, v.FORWARD, v.EVENT)
    assert verdict.journal == () and verdict.readings == ()


@settings(deadline=None)
@given(kind=st.sampled_from(KINDS), body=CBOR_VALUES)
def test_random_bodies_of_every_type_never_escape(hostile_home, kind: str, body: object) -> None:
    home, _, _ = hostile_home
    try:
        raw = messages.encode(kind, body)
    except (ValueError, OverflowError, TypeError):
        return  # not encodable as CBOR at all
    verdict = home.verifier.handle(raw, received_at=T0, link_device="ox-1")
    _assert_contained(verdict)
    assert verdict.outcome in (v.QUARANTINED, v.REFUSED, v.FORWARD, v.EVENT)
    assert verdict.journal == () and verdict.readings == ()


@settings(deadline=None, max_examples=200)
@given(which=st.integers(0, 2), position=st.integers(0, 400), flip=st.integers(1, 255))
def test_mutated_genuine_messages_never_escape(hostile_home, which: int, position: int,
                                               flip: int) -> None:
    home, _, genuine = hostile_home
    raw = bytearray(genuine[which])
    raw[position % len(raw)] ^= flip
    verdict = home.verifier.handle(bytes(raw), received_at=T0, link_device="ox-1")
    _assert_contained(verdict)
    # A copy that still verifies (a flip outside what the seal covers) is the same data;
    # a flip of the type code may turn it into a message for another service.
    assert verdict.outcome in (v.QUARANTINED, v.REFUSED, v.DUPLICATE, v.OPENED, v.FORWARD,
                               v.EVENT)
    assert verdict.journal == () and verdict.readings == ()
