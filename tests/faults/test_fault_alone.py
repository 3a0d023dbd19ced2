"""Each fault alone, under load, against real parts (mosquitto, agent processes, PTY devices,
the reference centre): every run ends with the centre's count equal to what the devices
generated, nothing stored twice as new, every expected alarm raised (fault_rig.assert_clean).

Short CI runs (1 gateway, 2 devices, 16-30 s); the long versions are in test_fault_long.py.
Reports: $VB_RESULTS_DIR/faults/<test>/report.json.
"""

from __future__ import annotations

import random
import re

import pytest
from fault_rig import (
    assert_clean,
    backlog_peak,
    fleet_options,
    run_fleet,
    spread,
)

from simulator.fleet.faults import FaultTiming, PlannedFault

GW, SCENARIO_DEVICE, RESTING_DEVICE = "gw-01", "gw-01-ox1", "gw-01-ox2"
SQLITE_OK = "ok"


def test_broker_outage(request: pytest.FixtureRequest) -> None:
    """mosquitto down 10 s (no persistence: whatever it queued dies with it)."""
    script = [PlannedFault("broker-outage", 5.0, 10.0, "broker")]
    outcome = run_fleet(request.node.name, fleet_options(21.0, 101, faults=("broker-outage",),
                                                     plan=script))
    assert_clean(outcome, {"broker-outage"})
    # The outage really held readings back: 2 devices x 2 readings/s for 10 s.
    assert backlog_peak(outcome.summary, 7.0, 16.0) >= 30, outcome.summary["timeline"]


def test_broker_restart(request: pytest.FixtureRequest) -> None:
    script = [PlannedFault("broker-restart", 5.0, 0.0, "broker"),
              PlannedFault("broker-restart", 10.0, 0.0, "broker")]
    outcome = run_fleet(request.node.name,
                        fleet_options(15.0, 102, faults=("broker-restart",), plan=script))
    assert_clean(outcome, {"broker-restart"})
    assert sum(f["name"] == "broker-restart" for f in outcome.summary["faults"]) == 2


def test_agent_kill_at_random_moments(request: pytest.FixtureRequest) -> None:
    """5 SIGKILLs at seeded random moments (some while the agent is still starting), each
    restart 1 s later; every SQLite file of the agent passes integrity_check after each."""
    moments = spread(random.Random(103), 5, 4.0, 18.0, gap=1.6)
    script = [PlannedFault("agent-kill", at, 1.0, GW) for at in moments]
    outcome = run_fleet(request.node.name,
                        fleet_options(21.0, 103, faults=("agent-kill",), plan=script),
                        check_after_kill=True)
    assert_clean(outcome, {"agent-kill"})
    kills = [f for f in outcome.summary["faults"] if f["name"] == "agent-kill"]
    assert [f["detail"] for f in kills] == ["SIGKILL"] * 5
    assert outcome.checks and all(c.result == SQLITE_OK for c in outcome.checks), \
        [c for c in outcome.checks if c.result != SQLITE_OK]
    assert {c.moment for c in outcome.checks} >= {f"after SIGKILL #{n}" for n in range(1, 6)}


def test_disk_full(request: pytest.FixtureRequest) -> None:
    """The gateway restarts with a budget only thinning receipted rows can meet: the blue
    disk-budget alarm is expected (the runner adds it) and nothing undelivered is lost."""
    script = [PlannedFault("disk-full", 8.0, 0.0, GW)]
    outcome = run_fleet(request.node.name,
                        fleet_options(16.0, 104, faults=("disk-full",), plan=script))
    assert_clean(outcome, {"disk-full"})
    disk = [a for a in outcome.summary["alarms"] if a["condition"] == "disk-budget"]
    assert disk and disk[0]["grade"] == "blue" and disk[0]["raised_at"] is not None


def test_serial_unplug_and_replug(request: pytest.FixtureRequest) -> None:
    script = [PlannedFault("serial-unplug", 4.0, 3.0, RESTING_DEVICE),
              PlannedFault("serial-unplug", 9.0, 1.5, SCENARIO_DEVICE)]
    outcome = run_fleet(request.node.name,
                        fleet_options(15.0, 105, faults=("serial-unplug",), plan=script))
    assert_clean(outcome, {"serial-unplug"})


def test_garbage_on_the_line(request: pytest.FixtureRequest) -> None:
    script = [PlannedFault("garbage", 4.0, 0.0, RESTING_DEVICE),
              PlannedFault("garbage", 7.0, 0.0, SCENARIO_DEVICE),
              PlannedFault("garbage", 10.0, 0.0, RESTING_DEVICE)]
    outcome = run_fleet(request.node.name,
                        fleet_options(15.0, 106, faults=("garbage",), plan=script))
    assert_clean(outcome, {"garbage"})
    written = re.search(r"(\d+) garbage bytes", " ".join(outcome.summary["notes"]))
    assert written and int(written.group(1)) >= 9 * 16, outcome.summary["notes"]


def test_device_reboot(request: pytest.FixtureRequest) -> None:
    """Reboots: new session, whole outbox replayed oldest first (flash keeps seq and outbox)."""
    script = [PlannedFault("device-reboot", 4.0, 0.0, RESTING_DEVICE),
              PlannedFault("device-reboot", 7.0, 0.0, SCENARIO_DEVICE),
              PlannedFault("device-reboot", 10.0, 0.0, RESTING_DEVICE)]
    outcome = run_fleet(request.node.name,
                        fleet_options(15.0, 107, faults=("device-reboot",), plan=script))
    assert_clean(outcome, {"device-reboot"})
    assert "devices: 5 handshakes" in " ".join(outcome.summary["notes"])


def test_clock_jumps_forward_and_back(request: pytest.FixtureRequest) -> None:
    jumps = [PlannedFault("clock-skew", 4.0, 3.5, RESTING_DEVICE, jump_s=+120.0),
             PlannedFault("clock-skew", 9.0, 3.5, RESTING_DEVICE, jump_s=-120.0)]
    outcome = run_fleet(request.node.name,
                        fleet_options(16.0, 108, faults=("clock-skew",), plan=jumps))
    assert_clean(outcome, {"clock-skew"})
    details = sorted(f["detail"] for f in outcome.summary["faults"])
    assert details == ["device clock +120 s", "device clock -120 s"]


def test_slow_consumer(request: pytest.FixtureRequest) -> None:
    """The centre pauses 0.3 s before storing each message for 7 s: slower than the fleet
    produces, so unstored readings pile up (in the broker and the centre's inbox; the centre
    acknowledges only what it stored) and drain afterwards."""
    timing = FaultTiming(slow_delay_s=0.3)
    script = [PlannedFault("slow-consumer", 4.0, 7.0, "centre")]
    outcome = run_fleet(request.node.name,
                        fleet_options(16.0, 109, faults=("slow-consumer",), rate_hz=2.0,
                                      timing=timing, plan=script))
    assert_clean(outcome, {"slow-consumer"})
    assert backlog_peak(outcome.summary, 6.0, 13.0) > backlog_peak(outcome.summary, 1.0, 4.0)
    # Latency runs to the centre's commit (stored_at), so the queue in front of the slow
    # centre shows: arrival stamps alone gave a p99 of 49 ms here.
    assert outcome.summary["latency_ms"]["reading"]["max"] >= 1000.0, \
        outcome.summary["latency_ms"]["reading"]


def test_ble_disconnect_storms(request: pytest.FixtureRequest) -> None:
    """Storms of forced disconnects (terminate / out-of-range) of BLE sealing devices that
    live in the gateway process, planned by the runner."""
    outcome = run_fleet(request.node.name,
                        fleet_options(20.0, 110, devices=1, ble_per_gateway=2,
                                      faults=("ble-disconnect",), plan=None))
    assert_clean(outcome, {"ble-disconnect"})
    storms = [f for f in outcome.summary["faults"] if f["name"] == "ble-disconnect"]
    assert len(storms) >= 4
    assert all("not injected" not in f["detail"] for f in storms), storms
