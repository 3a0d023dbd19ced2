"""Faults in combination, overlapping on purpose (short CI runs; the several-minutes run of
every fault is in test_fault_long.py). Same end-of-run oracle as each fault alone."""

from __future__ import annotations

import pytest
from fault_rig import assert_clean, fleet_options, run_fleet

from simulator.fleet.faults import FaultTiming, PlannedFault


def test_device_reboots_while_its_gateway_is_down(request: pytest.FixtureRequest) -> None:
    """Both devices reboot while their agent is killed: each keeps measuring into its
    outbox, shakes hands again once the agent is back, and replays the whole outbox (sealed
    under the old session) oldest first."""
    script = [PlannedFault("agent-kill", 5.0, 4.0, "gw-01"),
              PlannedFault("device-reboot", 5.5, 0.0, "gw-01-ox2"),
              PlannedFault("device-reboot", 7.0, 0.0, "gw-01-ox1")]
    outcome = run_fleet(request.node.name,
                        fleet_options(15.0, 301, faults=("agent-kill", "device-reboot"),
                                      plan=script))
    assert_clean(outcome, {"agent-kill", "device-reboot"})
    assert "devices: 4 handshakes" in " ".join(outcome.summary["notes"])


def test_overlapping_faults_on_two_gateways(request: pytest.FixtureRequest) -> None:
    """An agent killed while the broker is down, a device unplugged and rebooted at the
    replug, garbage, clock jumps both ways, a slow centre, a full disk, a broker restart
    and BLE disconnects: all within 20 s on two gateways."""
    script = [
        PlannedFault("broker-outage", 4.0, 7.0, "broker"),
        PlannedFault("agent-kill", 6.0, 3.0, "gw-01"),
        PlannedFault("serial-unplug", 7.0, 2.5, "gw-02-ox2"),
        PlannedFault("device-reboot", 9.6, 0.0, "gw-02-ox2"),
        PlannedFault("garbage", 8.0, 0.0, "gw-01-ox1"),
        PlannedFault("slow-consumer", 12.0, 5.0, "centre"),
        PlannedFault("disk-full", 14.0, 0.0, "gw-02"),
        PlannedFault("agent-kill", 16.0, 1.0, "gw-02"),
        PlannedFault("broker-restart", 19.0, 0.0, "broker"),
        PlannedFault("ble-disconnect", 10.0, 1.0, "gw-01-ble1", "out-of-range"),
        PlannedFault("ble-disconnect", 13.0, 0.0, "gw-02-ble1", "terminate"),
        PlannedFault("clock-skew", 12.0, 4.0, "gw-01-ox2", jump_s=-120.0),
        PlannedFault("clock-skew", 13.0, 4.0, "gw-02-ox2", jump_s=+120.0),
    ]
    names = {fault.name for fault in script}
    outcome = run_fleet(request.node.name,
                        fleet_options(23.0, 302, gateways=2, faults=tuple(sorted(names)),
                                      timing=FaultTiming(slow_delay_s=0.1), drain_timeout_s=40,
                                      ble_per_gateway=1, plan=script))
    assert_clean(outcome, names)


def test_device_reboots_while_unplugged(request: pytest.FixtureRequest) -> None:
    """Rebooted while its line is unplugged: the device says hello into a dead line until
    the replug (served between two hellos), then shakes hands and replays its outbox."""
    script = [PlannedFault("serial-unplug", 4.0, 3.0, "gw-01-ox1"),
              PlannedFault("device-reboot", 5.6, 0.0, "gw-01-ox1")]
    outcome = run_fleet(request.node.name,
                        fleet_options(12.0, 303, devices=1, drain_timeout_s=3.0,
                                      faults=("serial-unplug", "device-reboot"),
                                      plan=script))
    # A device that measures at 1 Hz (2 readings a batch) for 12 s, 1 s of it rebooting.
    assert outcome.summary["readings"]["generated"] >= 16, outcome.summary["notes"]
    assert_clean(outcome, {"serial-unplug", "device-reboot"})


def test_broker_restart_soon_after_an_outage_drains_quickly(
        request: pytest.FixtureRequest) -> None:
    """A broker restart 3 s after a 6 s outage ended: the agent's connection after the outage
    was too short to reset its reconnect backoff, so with the production policy (0.5 s ..
    60 s, reset after 10 s up) it waited 8-16 s before reconnecting (measured: drain 12.9 s,
    reading latency max 14.4 s). The fleet compresses that policy (launcher
    FLEET_BROKER_BACKOFF, docs/fleet.md): the backlog must be stored within a 5 s drain."""
    script = [PlannedFault("broker-outage", 4.0, 6.0, "broker"),
              PlannedFault("broker-restart", 13.0, 0.0, "broker")]
    outcome = run_fleet(request.node.name,
                        fleet_options(15.0, 304, faults=("broker-outage", "broker-restart"),
                                      drain_timeout_s=5.0, plan=script))
    assert_clean(outcome, {"broker-outage", "broker-restart"})
    assert not any("timed out" in note for note in outcome.summary["notes"])
