"""Ctrl-C on `vitalbridge demo --no-live`: the terminal sends SIGINT to the whole foreground
process group, so the test starts the demo in its own group and signals the group. The
demo must end promptly (< 10 s), print a partial summary, and leave nothing running: no
process of its group, no descendant (mosquitto, run-sim, micropython, enroll runs) and no
firmware process of the demo's chip id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulator.home_rig import firmware_pids

REPO = Path(__file__).resolve().parents[2]
MICROPYTHON = Path(sys.executable).parent / "micropython"
EXIT_WITHIN_S = 10.0

pytestmark = pytest.mark.skipif(not MICROPYTHON.is_file(),
                                reason="no MicroPython unix port in the venv")


def _stat(pid: int) -> list[str] | None:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants_and_group(root: int) -> set[int]:
    """Live processes below `root` or in its process group (zombies excluded)."""
    parent: dict[int, int] = {}
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is None or fields[0] == "Z":
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        if int(fields[2]) == root and pid != root:
            found.add(pid)
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    return found


def firmware_processes() -> list[int]:
    return firmware_pids()


def interrupt(after_s: float, wait_for: str | None) -> tuple[int, str, float, set[int]]:
    """Start the demo in its own process group; SIGINT the group `after_s` seconds after
    launch (or after the line `wait_for` appeared) -> (status, output, seconds to exit,
    what the demo had running just before the signal)."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "demo", "--no-live", "--duration", "60"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        assert demo.stdout is not None
        if wait_for is not None:
            for line in demo.stdout:
                if wait_for in line:
                    break
            else:
                pytest.fail(f"the demo ended before {wait_for!r}")
        time.sleep(after_s)
        running = descendants_and_group(demo.pid)
        os.killpg(demo.pid, signal.SIGINT)
        sent = time.monotonic()
        out, _ = demo.communicate(timeout=30)
        return demo.returncode, out, time.monotonic() - sent, running
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()


def assert_nothing_left(demo_pid_children: set[int]) -> None:
    deadline = time.monotonic() + 2  # the kernel reaps after the parent has waited
    while time.monotonic() < deadline:
        alive = {pid for pid in demo_pid_children if _stat(pid) not in (None,)
                 and _stat(pid)[0] != "Z"}  # type: ignore[index]
        if not alive and not firmware_processes():
            return
        time.sleep(0.2)
    pytest.fail(f"left running: {alive}, firmware {firmware_processes()}")


def test_ctrl_c_while_playing_stops_everything_and_prints_a_partial_summary() -> None:
    status, out, took, running = interrupt(8.0, wait_for="home started")
    assert running, "the demo had started nothing?"  # mosquitto, run-sim ... were up
    assert took < EXIT_WITHIN_S, (took, out)
    assert status == 130, out
    assert "interrupted at" in out and "Partial summary" in out, out
    assert "readings generated" in out and "verdict: none (interrupted" in out, out
    assert "Traceback" not in out, out
    assert_nothing_left(running)


def test_ctrl_c_while_the_home_is_starting_stops_what_was_started() -> None:
    status, out, took, running = interrupt(8.0, wait_for=None)
    assert took < EXIT_WITHIN_S, (took, out)
    assert status == 130, out
    assert "interrupted" in out and "Traceback" not in out, out
    assert_nothing_left(running)
