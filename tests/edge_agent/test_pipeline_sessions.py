"""Session table and state store: limits, expiry, withdrawal, persistence, key hygiene."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from test_pipeline_verifier import DAY, T0, Home

from edge_agent.pipeline import SessionPolicy, StateStore, StateStoreError
from edge_agent.pipeline import verifier as v
from edge_agent.pipeline.state_store import SCHEMA_VERSION


def test_unused_sessions_are_evicted_first_and_never_push_out_a_used_one(
        tmp_path: Path) -> None:
    home = Home(tmp_path, SessionPolicy(max_per_device=3, max_unconfirmed=1))
    device = home.enroll("ox-1")
    home.connect(device)
    used = device.session.kid
    assert home.deliver(device.seal([("spo2", 96)], T0))[0].outcome == v.STORED
    kids = []
    for i in range(4):  # hellos nobody follows up (a replayed or spoofed hello costs nothing)
        home.connect(device, at=T0 + 1 + i)
        kids.append(device.session.kid)
    live = [s.kid for s in home.sessions.of_device("ox-1")]
    assert live == [used, kids[-1]]
    assert home.sessions.ended(kids[0])[0].startswith("evicted:")


def test_used_sessions_beyond_the_limit_end_oldest_first(tmp_path: Path) -> None:
    home = Home(tmp_path, SessionPolicy(max_per_device=2, max_unconfirmed=1))
    device = home.enroll("ox-1")
    kids = []
    for i in range(3):
        home.connect(device, at=T0 + i)
        home.deliver(device.seal([("spo2", 96)], T0 + i), at=T0 + i)
        kids.append(device.session.kid)
    assert [s.kid for s in home.sessions.of_device("ox-1")] == kids[1:]
    assert home.sessions.ended(kids[0])[0].startswith("evicted:")


def test_re_sends_under_an_older_session_are_acked_under_the_current_one(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    old_session = device.session
    batch = device.seal([("spo2", 96)], T0)  # sealed, never delivered (link dropped)
    home.connect(device, at=T0 + 10)  # reconnect: the outbox re-sends the old batch
    verdict, ack_message = home.deliver(batch, at=T0 + 11)
    assert verdict.outcome == v.STORED and verdict.journal[0].session == old_session.kid
    ack = device.read_ack(ack_message)  # sealed under the new session's gateway key
    assert ack.session_id == old_session.kid and ack.ranges == [(0, 0)]


def test_session_past_its_lifetime_is_flagged_then_ended(tmp_path: Path) -> None:
    home = Home(tmp_path, SessionPolicy(lifetime_s=DAY, retain_s=DAY, tombstone_s=2 * DAY))
    device = home.enroll("ox-1")
    home.connect(device)
    kid = device.session.kid
    late, _ = home.deliver(device.seal([("spo2", 96)], T0 + DAY), at=T0 + DAY)
    assert late.outcome == v.STORED and late.flags == ("session-expired",)
    old_session = device.session
    home.connect(device, at=T0 + DAY + 5)  # the device moves on to a new session...
    home.deliver(device.seal([("hr", 70)], T0 + 2 * DAY), at=T0 + 2 * DAY)  # ...and uses it
    assert home.verifier.tick(T0 + 2 * DAY - 1) == []
    assert home.verifier.tick(T0 + 2 * DAY) == [kid]
    device.session = old_session  # an outbox re-send under the ended session
    gone, _ = home.deliver(device.seal([("spo2", 96)], T0 + 2 * DAY, chain=False),
                           at=T0 + 2 * DAY)
    assert gone.outcome == v.QUARANTINED
    assert "has ended (expired: lifetime and re-send grace are over)" in gone.reason
    home.verifier.tick(T0 + 5 * DAY)  # the tombstone is forgotten
    assert home.sessions.ended(kid) is None
    home.restart()
    assert home.sessions.ended(kid) is None and home.sessions.get(kid) is None


def test_tracker_and_ack_marks_survive_a_restart(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    home.deliver(device.seal([("spo2", 96), ("hr", 70)], T0))
    home.deliver(device.seal([("spo2", 95), ("hr", 71)], T0 + 1, seq=5, chain=False))
    home.deliver(device.checkpoint(T0 + 2))
    before = home.sessions.get(device.session.kid)
    state = (before.tracker.to_state(), before.first_seq, before.durable_upto,
             before.checkpoint_upto, before.checkpoint_head)
    home.restart()
    after = home.sessions.get(device.session.kid)
    assert (after.tracker.to_state(), after.first_seq, after.durable_upto,
            after.checkpoint_upto, after.checkpoint_head) == state
    assert state[1:4] == (0, 1, 1)
    assert after.tracker.missing() == [(2, 4)]
    assert after.confirmed


def test_withdrawn_session_keys_are_wiped_from_the_state_file(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    keys = (device.session.device_mac_key, device.session.gateway_mac_key)
    home.deliver(device.seal([("spo2", 96)], T0))
    files = [home.path, Path(f"{home.path}-wal")]
    assert any(keys[0] in f.read_bytes() for f in files if f.exists())  # the probe works
    home.verifier.withdraw_device("ox-1", "device lost", T0 + 1)
    for f in files:
        if f.exists():
            data = f.read_bytes()
            assert keys[0] not in data and keys[1] not in data
    with sqlite3.connect(home.path) as conn:
        row = conn.execute("SELECT device_mac_key, gateway_mac_key, ended_reason FROM sessions"
                           ).fetchone()
    assert row == (None, None, "withdrawn: device lost")


def test_state_file_is_private_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "pipeline.db"
    StateStore.open(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateStoreError, match="newer than this agent"):
        StateStore.open(path)


def test_session_repr_never_shows_keys(home: Home) -> None:
    device = home.enroll("ox-1")
    home.connect(device)
    live = home.sessions.get(device.session.kid)
    text = repr(live) + repr(home.sessions.store.sessions()) + repr(home.keys)
    for key in (live.device_mac_key, live.gateway_mac_key, home.keys.ed25519_seed,
                home.keys.x25519_private):
        assert key.hex() not in text and repr(key) not in text


def test_policy_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        SessionPolicy(max_per_device=2, max_unconfirmed=3)
    with pytest.raises(ValueError):
        SessionPolicy(lifetime_s=0)
    with pytest.raises(ValueError):
        SessionPolicy(window=12)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path)
