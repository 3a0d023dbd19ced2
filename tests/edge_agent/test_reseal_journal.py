"""Re-sealing journal rows sealed under a device session key before that key is destroyed:
verdicts under the MAC key (valid / invalid / key-wiped), idempotent retries, and the check
of the re-seal table (signer, digest of the stored item, missing statements)."""

from __future__ import annotations

from pathlib import Path

from edge_agent.journal import JournalStore, NewMessage
from edge_agent.lifecycle.engine import DestructionTask
from edge_agent.reseal import plan, sources
from edge_agent.reseal.keeper import Resealer
from edge_agent.reseal.store import ResealStore
from protocol import cose, crypto, reseal, sealing, senml, topics, uplink

GATEWAY_SEED = bytes(range(32))
MAC_KEY = bytes(range(100, 132))
SESSION = bytes.fromhex("00112233445566aa")


def sealed_rows(data: Path, count: int) -> list[bytes]:
    store = JournalStore.open(data / sources.JOURNAL_FILE)
    originals = []
    try:
        for seq in range(1, count + 1):
            mac0 = sealing.seal_batch(MAC_KEY, SESSION, [senml.make_record("hr", 60 + seq,
                                                                           seq=seq)], "ox-1:")
            payload = uplink.encode_readings("ox-1", mac0, "sealed", 1000 * seq)
            store.append([NewMessage(topics.UP_READINGS, "ox-1", payload, 0, "sealed", (),
                                     SESSION, seq, seq, 1, 1000.0 + seq)])
            originals.append(mac0)
    finally:
        store.close()
    return originals


class FakeRegistry:
    def key(self, kid: str) -> None:  # a session task never asks for a public key
        raise AssertionError(kid)


def task() -> DestructionTask:
    return DestructionTask(SESSION.hex(), "device", "ox-1", "session", "gateway", 0, 86400,
                           864000)


def test_session_rows_resealed_once_with_the_verdict_of_the_mac_key(tmp_path: Path) -> None:
    originals = sealed_rows(tmp_path, 3)
    keys = {SESSION: MAC_KEY}
    resealer = Resealer(tmp_path, "gw-1", GATEWAY_SEED, FakeRegistry(),  # type: ignore[arg-type]
                        mac_key_of=keys.get)
    outcome = resealer.reseal(task(), 5000)
    assert outcome is not None and outcome.ok and outcome.count(reseal.VALID) == 3
    public = crypto.ed25519_public_key(GATEWAY_SEED)
    for statement, original in zip(outcome.statements, originals, strict=True):
        assert reseal.verify(public, statement.statement, original, "gw-1").verdict == "valid"
    again = resealer.reseal(task(), 6000)
    assert again is not None and again.already == 3 and not again.statements
    with ResealStore.open_in(tmp_path) as store:
        assert len(store.statements(SESSION)) == 3


def test_a_wrong_or_wiped_mac_key_gives_invalid_or_key_wiped(tmp_path: Path) -> None:
    sealed_rows(tmp_path, 1)
    wrong = Resealer(tmp_path / "x", "gw-1", GATEWAY_SEED, FakeRegistry(),  # type: ignore[arg-type]
                     mac_key_of=lambda kid: bytes(32))
    items = sources.journal_items(tmp_path / sources.JOURNAL_FILE, SESSION)
    assert [sources.seal_checker(wrong.mac_key_of)(i) for i in items] == [reseal.INVALID]
    assert [sources.seal_checker(lambda kid: None)(i) for i in items] == [reseal.KEY_WIPED]


def test_check_statements_finds_altered_items_foreign_signers_and_gaps(tmp_path: Path) -> None:
    originals = sealed_rows(tmp_path, 2)
    resealer = Resealer(tmp_path, "gw-1", GATEWAY_SEED, FakeRegistry(),  # type: ignore[arg-type]
                        mac_key_of={SESSION: MAC_KEY}.get)
    outcome = resealer.reseal(task(), 5000)
    assert outcome is not None
    public = crypto.ed25519_public_key(GATEWAY_SEED)
    trusted = {cose.key_id(public): public}
    stored = sources.stored_originals(tmp_path)
    assert plan.check_statements(outcome.statements, stored, trusted, "gw-1") == (2, [])
    altered = dict(stored, **{"journal:message:1": originals[0] + b"\x00"})
    _, problems = plan.check_statements(outcome.statements, altered, trusted, "gw-1")
    assert [(p.ref, p.reason) for p in problems] == [("journal:message:1", "altered")]
    _, problems = plan.check_statements(outcome.statements, stored, {}, "gw-1")
    assert {p.reason for p in problems} == {"unknown-signer"}
    items = sources.journal_items(tmp_path / sources.JOURNAL_FILE, SESSION)
    assert [p.ref for p in plan.missing(items, outcome.statements[:1])] == ["journal:message:2"]


def test_a_failing_item_is_reported_and_the_others_are_resealed() -> None:
    items = [plan.Item("journal-seal", f"r{i}", bytes([i]), b"k") for i in range(3)]

    def check(item: plan.Item) -> str:
        if item.ref == "r1":
            raise OSError("unreadable")
        return reseal.VALID

    def sign(item: plan.Item, verdict: str) -> bytes:
        return reseal.create(GATEWAY_SEED, "gw-1", item.kind, item.original, b"k", verdict, 1)

    outcome = plan.reseal_items("6b", items, set(), check, sign, 1)
    assert not outcome.ok and [s.ref for s in outcome.statements] == ["r0", "r2"]
    assert outcome.failures[0][0] == "r1"
