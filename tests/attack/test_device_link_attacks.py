"""Attacks on the device <-> gateway link, against the running agent (serial PTYs).

The attacker controls the bytes on a device's serial line (a tampered cable, a hostile board):
forged seals, forged checkpoint signatures, replays, reordering, another device's identity,
oversized frames and deeply nested CBOR. Each test asserts: refused (never stored as valid),
counted (agent metrics / reception counters), journaled (quarantine row with its reason, or the
signed event log), and the agent alive and still delivering honest readings afterwards.
"""

from __future__ import annotations

import time

from conftest import AttackLog, needs_mosquitto
from rig import AgentRig, eventually

from protocol import messages
from protocol.frames import MAX_FRAME_PAYLOAD, encode_frame

pytestmark = needs_mosquitto


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def _quarantined(rig: AgentRig, device: str, before: int, words: tuple[str, ...],
                 count: int) -> list[str]:
    """Wait for `count` new quarantine rows of `device`, each naming one of `words`."""
    assert eventually(lambda: len(rig.quarantine_reasons(device)) >= before + count), \
        rig.quarantine_reasons(device)
    fresh = rig.quarantine_reasons(device)[before:]
    assert all(any(w in reason for w in words) for reason in fresh), fresh
    return fresh


def _logged_quarantines(rig: AgentRig, device: str) -> list[str]:
    return [e["reason"] for e in rig.events("reception.quarantined") if e["device"] == device]


def test_forged_mac_is_quarantined_and_counted(rig: AgentRig, attack: AttackLog) -> None:
    attack.describe("seal", "device-gateway", "sealed batches with one bit of the MAC tag "
                    "flipped (alarming values; the genuine copy is never sent)")
    device = rig.device("ox-1")
    rig.honest_delivery("ox-1", batches=2)
    before = len(rig.quarantine_reasons("ox-1"))
    forged_seqs = set()
    for _ in range(5):
        first, genuine = device.seal([("spo2", 60), ("pr", 190)])  # alarming values
        kind, body = messages.decode(genuine)
        rig.inject("ox-1", messages.encode(kind, _flip_last_byte(body)))
        attack.tried()
        forged_seqs |= {first, first + 1}
        device.outbox.pop(first)  # the genuine copy is never sent: these seqs stay missing
    reasons = _quarantined(rig, "ox-1", before, ("seal refused", "MAC", "mac"), 5)
    attack.refused(len(reasons))
    assert not forged_seqs & rig.centre_seqs("ox-1")
    assert not forged_seqs & device.acked
    assert eventually(lambda: rig.metric("vitalbridge_quarantined_inputs_total",
                                         transport="serial", cause="seal") >= 5)
    assert eventually(lambda: len(_logged_quarantines(rig, "ox-1")) >= 5)
    assert not rig.call(_red_alarm_for(rig, "p-0001")), "a forged value raised an alarm"
    rig.honest_delivery("ox-1")


def _red_alarm_for(rig: AgentRig, patient: str):  # noqa: ANN202 - a coroutine factory
    async def check() -> bool:
        assert rig.service is not None
        return any(a.patient == patient for a in rig.service.alarms.lifecycle.open_alarms())
    return check


def test_forged_checkpoint_signature_is_quarantined(rig: AgentRig,
                                                    attack: AttackLog) -> None:
    attack.describe("seal", "device-gateway", "checkpoints whose Ed25519 signature has one "
                    "bit flipped")
    device = rig.device("ox-1")
    rig.honest_delivery("ox-1", batches=3)
    before = len(rig.quarantine_reasons("ox-1"))
    assert device.chain is not None
    for _ in range(3):
        device.send([("spo2", 97), ("pr", 72)])  # a window of tags to sign
        signed = device.chain.checkpoint(device.keys.seed, device.keys.device_id,
                                         int(time.time()), device.kid_sign)
        rig.inject("ox-1", messages.encode("checkpoint", _flip_last_byte(signed)))
        attack.tried()
    reasons = _quarantined(rig, "ox-1", before, ("checkpoint",), 3)
    attack.refused(len(reasons))
    assert eventually(lambda: len(_logged_quarantines(rig, "ox-1")) >= 3)
    assert rig.metric("vitalbridge_quarantined_inputs_total", transport="serial",
                      cause="seal") >= 3
    rig.honest_delivery("ox-1")


def test_replayed_batches_are_dropped_idempotently(rig: AgentRig, attack: AttackLog) -> None:
    attack.describe("replay", "device-gateway", "an acknowledged batch sent again 20 times; "
                    "stored once, re-acknowledged, never duplicated at the centre")
    device = rig.device("ox-1")
    first, message = device.seal([("spo2", 96), ("pr", 70)])
    rig.inject("ox-1", message)
    assert rig.settle(device)
    assert eventually(lambda: {first, first + 1} <= rig.centre_seqs("ox-1"))
    duplicates = rig.outcomes().get("duplicate", 0)
    rows = rig.journal("SELECT count(*) FROM messages WHERE device_id = 'ox-1'")[0][0]
    for _ in range(20):
        rig.inject("ox-1", message)
        attack.tried()
    assert eventually(lambda: rig.outcomes().get("duplicate", 0) >= duplicates + 20)
    attack.refused(rig.outcomes().get("duplicate", 0) - duplicates)
    assert rig.journal("SELECT count(*) FROM messages WHERE device_id = 'ox-1'")[0][0] == rows
    stored = [r["seq"] for r in rig.centre.store.readings("ox-1")]
    assert stored.count(first) == 1 and stored.count(first + 1) == 1
    rig.honest_delivery("ox-1")


def test_reordered_batches_are_each_stored_once(rig: AgentRig, attack: AttackLog) -> None:
    attack.describe("replay", "device-gateway", "six batches delivered in reverse order; every "
                    "seq stored exactly once (late arrivals fill the gap)")
    device = rig.device("ox-1")
    sealed = [device.seal([("spo2", 95 + i % 3), ("pr", 70)]) for i in range(6)]
    for _, message in reversed(sealed):
        rig.inject("ox-1", message)
        attack.tried()
    assert rig.settle(device)
    seqs = {s for first, _ in sealed for s in (first, first + 1)}
    assert eventually(lambda: seqs <= rig.centre_seqs("ox-1"))
    stored = [r["seq"] for r in rig.centre.store.readings("ox-1")]
    assert all(stored.count(s) == 1 for s in seqs)
    attack.refused(len(sealed))  # none stored twice nor dropped: the attack had no effect
    assert rig.outcomes().get("stored", 0) >= len(sealed)
    rig.honest_delivery("ox-1")


def test_hello_claiming_another_device_on_this_link_is_refused(rig: AgentRig,
                                                               attack: AttackLog) -> None:
    attack.describe("identity", "device-gateway", "ox-2's serial line sends ox-1's hello "
                    "(another device's certificate); a batch under ox-1's session on ox-2's line")
    from protocol import session
    impostor_keys = rig.home.devices["ox-1"]
    before = len(rig.journal("SELECT id FROM quarantine WHERE source = 'serial:port-ox-2'"))
    hello = session.DeviceHandshake(impostor_keys.device_id, impostor_keys.agreement,
                                    rig.home.gateway_x25519_public).hello()
    rig.inject("ox-2", messages.encode("hello", hello))
    attack.tried()
    # A genuine ox-1 batch replayed onto ox-2's link: misrouted, refused.
    genuine = rig.device("ox-1")
    _, batch = genuine.seal([("spo2", 97), ("pr", 71)])
    rig.inject("ox-2", batch)
    attack.tried()
    def from_ox2_line() -> list[str]:  # rows carry the CLAIMED device; the source is the line
        return [r[0] for r in rig.journal(
            "SELECT reason FROM quarantine WHERE source = 'serial:port-ox-2' ORDER BY id")]
    assert eventually(lambda: len(from_ox2_line()) >= before + 2), from_ox2_line()
    reasons = from_ox2_line()[before:]
    assert all("arrived on the link of" in r or "belongs to device" in r for r in reasons), \
        reasons
    attack.refused(len(reasons))
    rig.settle(genuine)
    rig.honest_delivery("ox-2")
    rig.honest_delivery("ox-1")


def test_oversized_frame_is_skipped_and_the_line_resynchronises(rig: AgentRig,
                                                                attack: AttackLog) -> None:
    attack.describe("size", "device-gateway", "a 64 KiB run without a delimiter and a frame "
                    "one byte over the payload limit")
    device = rig.device("ox-1")
    rig.honest_delivery("ox-1", batches=1)
    rig.inject_raw("ox-1", bytes([0x41]) * 65536 + b"\x00")
    attack.tried()
    too_big = messages.encode("sealed", bytes(MAX_FRAME_PAYLOAD))
    rig.inject_raw("ox-1", encode_frame(too_big[:MAX_FRAME_PAYLOAD])[:-1] + b"\x41" * 64
                   + b"\x00")
    attack.tried()
    assert eventually(lambda: rig.service is not None and rig.service.serial.status(
        "port-ox-1").driver_stats.get("bytes_discarded", 0) >= 65536)
    attack.refused(2)
    assert rig.alive()
    rig.honest_delivery("ox-1")
    assert device.unacked() == 0


def _nested(depth: int) -> bytes:
    return b"\x81" * depth + b"\x00"  # [[[...[0]...]]]: one byte per level


def test_deeply_nested_cbor_is_quarantined_without_a_crash(rig: AgentRig,
                                                           attack: AttackLog) -> None:
    attack.describe("decode", "device-gateway", "envelopes and sealed bodies nested 4 000 "
                    "deep (recursion bomb; a serial frame carries at most 4 KiB)")
    before = len(rig.quarantine_reasons("ox-1"))
    bombs = [_nested(4000),                                         # the whole message
             messages.encode("sealed", _nested(4000)),              # nested inside the body
             messages.encode("checkpoint", _nested(4000))]
    for bomb in bombs:
        rig.inject("ox-1", bomb)
        attack.tried()
    reasons = _quarantined(rig, "ox-1", before, ("",), len(bombs))
    assert not any("verifier error" in r for r in reasons), reasons
    attack.refused(len(reasons))
    rig.honest_delivery("ox-1")


def test_kid_of_an_unknown_session_is_quarantined(rig: AgentRig, attack: AttackLog) -> None:
    attack.describe("seal", "device-gateway", "a well-formed Mac0 under a session id the "
                    "gateway never opened")
    from protocol import sealing, senml
    before = len(rig.quarantine_reasons("ox-1"))
    records = [senml.make_record("spo2", 97, time=int(time.time()), seq=900_000)]
    sealed = sealing.seal_batch(bytes(32), bytes(8), records, "urn:dev:vb:ox-1:")
    rig.inject("ox-1", messages.encode("sealed", sealed))
    attack.tried()
    reasons = _quarantined(rig, "ox-1", before, ("unknown session",), 1)
    attack.refused(len(reasons))
    rig.honest_delivery("ox-1")
