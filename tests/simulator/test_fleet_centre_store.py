"""The centre's stored time (readings.stored_at), which the fleet's reading latency uses: it
is taken when the writing transaction commits, so time a message spent queued in the centre
(a slow consumer) counts; rows of a version-1 file keep their arrival time."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from protocol import senml
from simulator.centre import verifier as v
from simulator.centre.store import SCHEMA_VERSION, Store


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def batch(device: str, seqs: list[int]) -> v.Batch:
    readings = tuple(senml.decode_pack(senml.encode_pack(
        [senml.make_record("pr", 70, time=1_700_000_000, seq=s) for s in seqs],
        base_name=f"urn:dev:vb:{device}:")))
    return v.Batch(device, "00", "sealed", v.PENDING, "sealed", (), readings, b"\x01" * 32, 0)


def stamps(store: Store) -> dict[int, tuple[float, float | None]]:
    return {row["seq"]: (row["received_at"], row["stored_at"]) for row in store.readings()}


def test_stored_at_is_the_commit_time_not_the_arrival(tmp_path: Path) -> None:
    clock = Clock(100.0)
    store = Store(tmp_path / "c.db", clock=clock)
    with store.transaction():
        store.add_readings("gw", batch("d", [0, 1]), [0, 1], b"m1", received_at=50.0)
        clock.now = 103.0  # the rest of the group took a while; then COMMIT
    with store.transaction():
        store.add_readings("gw", batch("d", [2]), [2], b"m2", received_at=103.5)
        clock.now = 104.0
    # earlier rows keep their stamp; each transaction stamps only what it wrote
    assert stamps(store) == {0: (50.0, 103.0), 1: (50.0, 103.0), 2: (103.5, 104.0)}
    store.close()


def test_a_rolled_back_transaction_stamps_nothing(tmp_path: Path) -> None:
    clock = Clock(10.0)
    store = Store(tmp_path / "c.db", clock=clock)
    with pytest.raises(RuntimeError), store.transaction():
        store.add_readings("gw", batch("d", [0]), [0], b"m1", received_at=9.0)
        raise RuntimeError("store failed")
    assert stamps(store) == {}
    with store.transaction():
        store.add_readings("gw", batch("d", [0]), [0], b"m1", received_at=11.0)
        clock.now = 12.0
    assert stamps(store) == {0: (11.0, 12.0)}
    store.close()


def test_a_version_1_file_is_migrated_keeping_arrival_as_stored(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = Store(path, clock=Clock(20.0))
    with store.transaction():
        store.add_readings("gw", batch("d", [0]), [0], b"m1", received_at=15.0)
    store.close()
    with sqlite3.connect(path) as conn:  # back to what version 1 wrote
        conn.execute("DROP INDEX readings_unstamped")
        conn.execute("ALTER TABLE readings DROP COLUMN stored_at")
        conn.execute("PRAGMA user_version = 1")
    again = Store(path, clock=Clock(30.0))
    assert stamps(again) == {0: (15.0, 15.0)}
    with again.transaction():
        again.add_readings("gw", batch("d", [1]), [1], b"m2", received_at=29.0)
    assert stamps(again) == {0: (15.0, 15.0), 1: (29.0, 30.0)}
    again.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
