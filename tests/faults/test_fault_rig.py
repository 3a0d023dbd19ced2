"""The suite's own instruments, without a fleet: the integrity check of a killed agent's
file tells a WAL that still holds committed work from one already checkpointed, and finds
a damaged file; the report directory and the random moments are what the tests assume."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
from fault_rig import integrity_of_copy, report_dir, spread


def wal_database(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    return conn


def test_work_left_only_in_the_wal_is_replayed_and_sound(tmp_path: Path) -> None:
    conn = wal_database(tmp_path / "j.sqlite3")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(b"x" * 100,)] * 50)
    # The connection stays open, as in a process killed now: the rows are only in the WAL.
    assert integrity_of_copy(tmp_path / "j.sqlite3") == ("ok", True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert integrity_of_copy(tmp_path / "j.sqlite3") == ("ok", False)
    conn.close()


def test_a_damaged_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    conn = wal_database(path)
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(bytes(3000),)] * 40)
    conn.execute("CREATE INDEX tv ON t (v)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    page = 4096 * 3  # a page of the table, past the schema page
    data[page + 8:page + 400] = bytes(range(256)) + bytes(136)
    path.write_bytes(bytes(data))
    try:
        result, _ = integrity_of_copy(path)
    except sqlite3.DatabaseError as exc:  # damaged beyond what integrity_check can report
        result = str(exc)
    assert result != "ok", result


def test_reports_go_under_the_results_dir(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("VB_RESULTS_DIR", str(tmp_path))
    assert report_dir("test_x[a b/c]") == tmp_path / "faults" / "test_x-a-b-c"


def test_random_moments_keep_their_gap() -> None:
    moments = spread(random.Random(1), 24, 6.0, 140.0, gap=2.2)
    assert len(moments) == 24 and moments[0] >= 6.0 and moments[-1] < 140.0
    assert all(b - a >= 2.2 - 1e-9 for a, b in zip(moments, moments[1:], strict=False))
    with pytest.raises(ValueError):
        spread(random.Random(1), 10, 0.0, 5.0, gap=1.0)
