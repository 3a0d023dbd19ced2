"""Power loss mid-commit, as far as a process can simulate it: the agent is SIGKILLed during
write bursts (the broker coming back with a backlog to publish and receipt, a device replaying
its outbox after a replug, plus random moments) while devices measure at 10 Hz. After every
kill, before the restart, every SQLite file of the agent (journal, registry, event log,
alarms, limits, pipeline state) is copied with its WAL and must pass `PRAGMA integrity_check`;
so must the files after the final SIGTERM. And the run ends with nothing lost.

What SIGKILL does not simulate: losing the OS page cache (a real power cut). That needs a
fault-injecting block device (docs/fleet.md, "Fault suite").
"""

from __future__ import annotations

import random

import pytest
from fault_rig import assert_clean, fleet_options, run_fleet, spread

from simulator.fleet.faults import PlannedFault

GW = "gw-01"
AGENT_FILES = {"journal.sqlite3", "registry.sqlite3", "events.sqlite3"}


def test_kill_during_write_bursts_leaves_every_file_sound(
        request: pytest.FixtureRequest) -> None:
    outage_end, replug = 11.0, 17.0
    kills = [outage_end + 0.4, outage_end + 2.0, replug + 0.15,
             *spread(random.Random(201), 2, 19.5, 24.0, gap=1.6)]
    script = [PlannedFault("broker-outage", 5.0, outage_end - 5.0, "broker"),
              PlannedFault("serial-unplug", 15.0, replug - 15.0, "gw-01-ox2"),
              *(PlannedFault("agent-kill", at, 1.0, GW) for at in kills)]
    outcome = run_fleet(request.node.name,
                        fleet_options(27.0, 201, rate_hz=10.0, drain_timeout_s=40.0,
                                      faults=("broker-outage", "serial-unplug",
                                              "agent-kill"), plan=script),
                        check_after_kill=True)
    checks = outcome.checks
    assert [c for c in checks if c.result != "ok"] == []
    assert AGENT_FILES <= {c.file for c in checks}, {c.file for c in checks}
    killed = {c.moment for c in checks if "SIGKILL" in c.moment}
    assert len(killed) == len(kills), killed
    # The kills struck with committed journal work still only in the WAL (recovery had to
    # replay it), i.e. mid-stream, not between quiet checkpoints.
    assert sum(1 for c in checks if c.file == "journal.sqlite3" and "SIGKILL" in c.moment
               and c.replayed_wal) >= 3, checks
    assert_clean(outcome, {"broker-outage", "serial-unplug", "agent-kill"})
