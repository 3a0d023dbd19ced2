"""FirmwareStandIn's outbox honours device-acks the way the firmware does: an ack names the
session its seqs were sealed in, which after a reboot or reconnect is an earlier one than the
live session. Found by the fleet's ble-disconnect work: the stand-in ignored such acks, so a
batch unacknowledged at a reboot was re-sent forever and the run's drain could time out."""

from __future__ import annotations

from types import SimpleNamespace

from protocol import checkpoint, crypto, device_link
from simulator.agent_home import DeviceKeys, FirmwareStandIn

MAC_KEY = bytes(range(32))


def session(n: int) -> SimpleNamespace:
    sid = bytes([n]) * 8
    return SimpleNamespace(session_id=sid, kid=sid, gateway_mac_key=MAC_KEY,
                           device_mac_key=bytes([n]) * 32)


def stand_in() -> FirmwareStandIn:
    keys = DeviceKeys("ox-1", bytes(32), bytes(32), b"")
    return FirmwareStandIn(keys, crypto.x25519_public_key(bytes(32)), port=None)


def seal_in(device: FirmwareStandIn, live: SimpleNamespace, count: int) -> list[int]:
    device.session = live
    device.chain = checkpoint.HashChain(live.session_id)
    return [device.seal([("spo2", 97)], at=1_700_000_000)[0] for _ in range(count)]


def ack(device: FirmwareStandIn, named: SimpleNamespace, upto: int) -> None:
    live = device.session
    device._ack(device_link.encode_ack(device_link.Ack(named.session_id, upto=upto),
                                       live.gateway_mac_key, live.kid))


def test_an_ack_for_an_earlier_session_clears_what_was_sealed_in_it() -> None:
    device = stand_in()
    old, new = session(1), session(2)
    before = seal_in(device, old, 3)
    after = seal_in(device, new, 2)  # the device rebooted / reconnected: a new session
    ack(device, old, upto=max(before))
    assert sorted(device.outbox) == after
    assert device.acked == set(before)


def test_an_ack_never_clears_seqs_of_another_session() -> None:
    device = stand_in()
    old, new = session(1), session(2)
    before = seal_in(device, old, 2)
    after = seal_in(device, new, 2)
    ack(device, new, upto=max(after))  # names the live session: only its seqs go
    assert sorted(device.outbox) == before
    assert device.acked == set(after)
