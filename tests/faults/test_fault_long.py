"""The long fault runs (`-m slow`): a broker outage of minutes, >= 20 SIGKILLs of agents at
random moments, and every fault together for several minutes. Their short CI variants are
in test_fault_alone.py / test_fault_combined.py. Same end-of-run oracle."""

from __future__ import annotations

import random

import pytest
from fault_rig import assert_clean, backlog_peak, fleet_options, run_fleet, spread

from simulator.fleet.faults import FaultTiming, PlannedFault, parse_faults

pytestmark = pytest.mark.slow


def test_broker_outage_of_minutes(request: pytest.FixtureRequest) -> None:
    """mosquitto down 150 s while 2 gateways x 2 devices keep measuring (~1200 readings
    journaled and waiting), then back on the same port."""
    script = [PlannedFault("broker-outage", 10.0, 150.0, "broker")]
    outcome = run_fleet(request.node.name,
                        fleet_options(175.0, 401, gateways=2, faults=("broker-outage",),
                                      drain_timeout_s=120.0, plan=script))
    assert_clean(outcome, {"broker-outage"})
    assert backlog_peak(outcome.summary, 150.0, 165.0) >= 1000


def test_twenty_four_agent_kills(request: pytest.FixtureRequest) -> None:
    """24 SIGKILLs at seeded random moments over 2 gateways, each restarted 1 s later; every
    agent file passes integrity_check after each kill."""
    rng = random.Random(402)
    moments = spread(rng, 24, 6.0, 140.0, gap=2.2)
    script = [PlannedFault("agent-kill", at, 1.0, rng.choice(["gw-01", "gw-02"]))
              for at in moments]
    outcome = run_fleet(request.node.name,
                        fleet_options(150.0, 402, gateways=2, faults=("agent-kill",),
                                      rate_hz=2.0, drain_timeout_s=90.0, plan=script),
                        check_after_kill=True)
    assert_clean(outcome, {"agent-kill"})
    kills = [f for f in outcome.summary["faults"] if f["detail"] == "SIGKILL"]
    assert len(kills) >= 20, outcome.summary["faults"]
    assert [c for c in outcome.checks if c.result != "ok"] == []


def test_every_fault_together_for_minutes(request: pytest.FixtureRequest) -> None:
    """The runner's own seeded plan of every built fault, 4 minutes, 2 gateways x 3 serial
    devices + 1 BLE device each, a kill every 20 s."""
    names = parse_faults("all")
    outcome = run_fleet(request.node.name,
                        fleet_options(240.0, 403, gateways=2, devices=3, faults=names,
                                      timing=FaultTiming(kill_every_s=20.0),
                                      drain_timeout_s=120.0, ble_per_gateway=1,
                                      plan=None))
    assert_clean(outcome, set(names), all_injected=False)
