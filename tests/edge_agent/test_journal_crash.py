"""Kill -9 while journaling: every acknowledged reading survives and the file stays sound.

A child process (journal_crash_child.py) appends readings in bursts through the committer and
prints each acknowledged seq; the parent SIGKILLs it at a random moment, reopens the same file
and checks. SIGKILL tests process death (the OS page cache survives); power loss needs a
hardware or fault-injecting-filesystem test — docs/journal.md says why synchronous=FULL covers it.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_agent.journal import JournalStore

CHILD = Path(__file__).with_name("journal_crash_child.py")
ROOT = Path(__file__).resolve().parents[2]


def run_and_kill(path: Path, first_seq: int, rng: random.Random) -> dict[int, int]:
    """Start the child, let it acknowledge for a random while, SIGKILL it. Returns the
    acknowledged {seq: row id} read from complete output lines."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(first_seq), str(rng.randrange(1 << 30))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert child.stdout is not None
    lines: list[bytes] = []
    first_ack = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line)
            first_ack.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not first_ack.wait(20.0):
            child.kill()
            child.wait()
            raise AssertionError("child never acknowledged: " + child.stderr.read().decode())
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(10.0) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    reader.join(10.0)
    acked: dict[int, int] = {}
    for line in lines:
        if not line.endswith(b"\n"):  # cut off by the kill: not an acknowledgement
            continue
        word, seq, row_id = line.split()
        assert word == b"ack"
        acked[int(seq)] = int(row_id)
    return acked


def verify(path: Path, acked: dict[int, int]) -> None:
    store = JournalStore.open(path)  # reopen: recovery from the WAL happens here
    try:
        result = store.check(full=True)
        assert result.sqlite == ("ok",), result
        assert result.digest_mismatches == ()
    finally:
        store.close()
    conn = sqlite3.connect(path)
    try:
        rows = {
            seq: (row_id, payload, digest)
            for seq, row_id, payload, digest in conn.execute(
                "SELECT first_seq, id, payload, digest FROM messages"
            )
        }
    finally:
        conn.close()
    missing = sorted(set(acked) - set(rows))
    assert not missing, f"{len(missing)} acknowledged readings lost, e.g. {missing[:5]}"
    for seq, row_id in acked.items():
        got_id, payload, digest = rows[seq]
        assert got_id == row_id
        assert payload.startswith(f"crash-dev/{seq}/".encode())
        assert hashlib.sha256(payload).digest() == digest


def crash_repeatedly(path: Path, kills: int, seed: int) -> int:
    rng = random.Random(seed)
    acked: dict[int, int] = {}
    for run in range(kills):
        acked.update(run_and_kill(path, run * 1_000_000, rng))
        verify(path, acked)
    return len(acked)


def test_kill_9_loses_no_acknowledged_reading(tmp_path: Path) -> None:
    total = crash_repeatedly(tmp_path / "journal.db", kills=5, seed=20260901)
    assert total > 100  # the child really was journaling when it was killed


@pytest.mark.slow
def test_kill_9_many_times(tmp_path: Path) -> None:
    total = crash_repeatedly(tmp_path / "journal.db", kills=25, seed=random.randrange(1 << 30))
    assert total > 500
