"""Session keys across long offline periods (kept while owed, capped at the certificate's
expiry), a far-behind outbox against the replay window, and hellos to retired gateway
agreement keys. The clock is the test's: every `at` is explicit."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_pipeline_verifier import DAY, GW_SEED, GW_X, T0, Device, Home

from edge_agent.journal import Journal
from edge_agent.pipeline import GatewayKeys, MemoryDirectory, SessionPolicy
from edge_agent.pipeline import verifier as v
from edge_agent.reseal import sources
from protocol import cose, crypto, reseal

HOUR = 3600


def offline_outbox(device: Device, start: int, days: int) -> list[bytes]:
    """What a device sealed hourly under its last session while no gateway heard it."""
    return [device.seal([("spo2", 95), ("hr", 70)], start + h * HOUR)
            for h in range(days * 24)]


def test_device_offline_five_days_replays_its_outbox_and_every_reading_verifies(
        tmp_path: Path) -> None:
    home = Home(tmp_path)
    device = home.enroll("ox-1")
    home.connect(device)
    old_kid = device.session.kid
    home.deliver(device.seal([("spo2", 96)], T0), at=T0)
    outbox = offline_outbox(device, T0 + HOUR, 5)
    old_session = device.session
    for hour in range(1, 5 * 24 + 1):  # the agent's housekeeping runs all along
        assert home.verifier.tick(T0 + hour * HOUR) == []
        assert home.sessions.destroy(old_kid, T0 + hour * HOUR) is False  # lifecycle waits
    home.restart(T0 + 3 * DAY)  # the gateway restarted meanwhile: the key is in the file
    back = T0 + 5 * DAY + HOUR
    home.connect(device, at=back)  # new hello first, then the outbox, oldest first
    new_session = device.session
    device.session = old_session
    stored = 0
    for i, raw in enumerate(outbox):
        verdict, ack = home.deliver(raw, at=back + 1 + i)
        assert verdict.outcome == v.STORED, verdict.reason
        assert verdict.journal[0].session == old_kid
        stored += len(verdict.readings)
    assert stored == 2 * len(outbox)
    device.session = new_session
    home.deliver(device.seal([("hr", 71)], back + HOUR), at=back + HOUR)
    assert home.verifier.tick(back + HOUR) == []  # the device may still have more of it
    assert home.sessions.owed(home.sessions.get(old_kid), back + HOUR) is not None
    settled = back + 5000 + DAY
    home.deliver(device.seal([("hr", 72)], settled), at=settled)  # a day of new traffic on
    assert home.sessions.destroy(old_kid, settled) is True
    assert home.sessions.ended(old_kid)[0] == "destroyed"


def test_keys_are_capped_at_the_certificate_expiry(tmp_path: Path) -> None:
    home = Home(tmp_path)
    device = home.enroll("ox-1", expires=T0 + 3 * DAY)
    home.connect(device)
    kid = device.session.kid
    home.deliver(device.seal([("spo2", 96)], T0), at=T0)
    assert home.verifier.tick(T0 + 3 * DAY - 1) == []
    assert home.verifier.tick(T0 + 3 * DAY) == [kid]
    assert "certificate it was opened with expired" in home.sessions.ended(kid)[0]


def test_replayed_copies_of_newer_traffic_do_not_release_an_older_key(tmp_path: Path) -> None:
    home = Home(tmp_path)
    device = home.enroll("ox-1")
    home.connect(device)
    old_kid = device.session.kid
    home.deliver(device.seal([("spo2", 96)], T0), at=T0)
    home.connect(device, at=T0 + 10)
    newer = device.seal([("hr", 70)], T0 + 10)
    home.deliver(newer, at=T0 + 10)
    later = T0 + 3 * DAY
    assert home.deliver(newer, at=later)[0].outcome == v.DUPLICATE  # a replay on the link
    assert home.verifier.tick(later) == []
    assert home.sessions.get(old_kid) is not None


def test_retained_key_lets_the_reseal_keeper_say_valid(tmp_path: Path) -> None:
    home = Home(tmp_path)
    device = home.enroll("ox-1")
    home.connect(device)
    kid = device.session.kid
    verdicts = [home.verifier.handle(raw, received_at=T0 + 5 * DAY + i)
                for i, raw in enumerate(offline_outbox(device, T0, 5))]
    journal_path = tmp_path / sources.JOURNAL_FILE

    async def journal_them() -> None:
        journal = await Journal.open(journal_path)
        try:
            await journal.append_many([m for verdict in verdicts for m in verdict.journal])
        finally:
            await journal.close()

    asyncio.run(journal_them())
    home.verifier.committed_many(verdicts)
    home.verifier.tick(T0 + 5 * DAY + HOUR)
    keys = {row.kid: row.device_mac_key for row in home.store.sessions()}
    items = sources.journal_items(journal_path, kid)
    assert len(items) == 5 * 24
    check = sources.seal_checker(keys.get)
    assert {check(item) for item in items} == {reseal.VALID}


def test_outbox_far_behind_the_replay_window_is_stored_and_its_repeat_dropped(
        tmp_path: Path) -> None:
    home = Home(tmp_path, SessionPolicy(window=8))
    device = home.enroll("ox-1")
    home.connect(device)
    early = [device.seal([("spo2", 96)], T0 + i) for i in range(5)]  # lost on the link
    home.deliver(early[0], at=T0)
    for i in range(50):  # live traffic runs far ahead of the window
        home.deliver(device.seal([("hr", 70)], T0 + 10 + i), at=T0 + 10 + i)
    home.restart()
    for raw in early[1:]:
        verdict, ack = home.deliver(raw, at=T0 + 100)
        assert verdict.outcome == v.STORED, verdict.reason
        assert device.read_ack(ack).ranges
    for raw in early:
        verdict, ack = home.deliver(raw, at=T0 + 101)
        assert verdict.outcome == v.DUPLICATE and not verdict.journal
        assert ack is not None
    tracker = home.sessions.get(device.session.kid).tracker
    assert tracker.runs == [[0, tracker.high - 8]]  # one run: memory stays bounded


def _retired_home(tmp_path: Path) -> tuple[Home, Device, GatewayKeys]:
    """A device enrolled before a gateway renewal: it knows the old agreement key (GW_X)."""
    home = Home(tmp_path)
    device = home.enroll("ox-1")
    new_x = bytes(range(64, 96))
    keys = GatewayKeys("gw-1", GW_SEED, new_x, retired_agreement=(GW_X,))
    directory = MemoryDirectory(keys)
    directory.add_device("ox-1", device.certificate(T0 - DAY, T0 + 365 * DAY))
    home.directory = directory
    home.verifier.directory = directory
    return home, device, keys


def test_hello_to_a_retired_agreement_key_opens_a_session(tmp_path: Path) -> None:
    home, device, keys = _retired_home(tmp_path)
    assert device.gateway_x_public == crypto.x25519_public_key(GW_X)
    assert home.connect(device).outcome == v.OPENED
    assert home.deliver(device.seal([("spo2", 96)], T0))[0].outcome == v.STORED


def test_hello_to_a_destroyed_agreement_key_is_refused_with_renew(tmp_path: Path) -> None:
    home, device, keys = _retired_home(tmp_path)
    old_kid = crypto.x25519_public_key(GW_X)
    assert keys.forget_agreement(keys.agreement_kid) is False  # the current key stays
    assert keys.forget_agreement(cose.key_id(old_kid)) is True
    verdict = home.connect(device)
    assert verdict.outcome == v.REFUSED
    assert "retired and destroyed: the device must be renewed" in verdict.reason
    stranger = Device("ox-2", crypto.x25519_public_key(bytes(range(96, 128))), 9)
    home.directory.add_device("ox-2", stranger.certificate(T0 - DAY, T0 + DAY))
    refused = home.connect(stranger)
    assert refused.outcome == v.REFUSED and "not a key of this gateway" in refused.reason
    assert GW_X.hex() not in repr(keys) and repr(GW_X) not in repr(keys)
