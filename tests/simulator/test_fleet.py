"""`vitalbridge sim fleet` against real parts: mosquitto, the reference centre, one agent
process per gateway, sealing devices on PTYs, a sealing BLE device on a virtual radio inside
each gateway process, every fault injected (ble-disconnect storms included).

The CI run goes through the command's entry point and reads the report.json it wrote.
The loss test makes a loss real (a device's outbox wiped before delivery) and requires the
oracle to see it and the exit status to say so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from simulator.fleet.command import main
from simulator.fleet.faults import FAULT_NAMES, NOT_BUILT
from simulator.fleet.runner import FleetOptions, FleetRun
from simulator.report import exit_status, summarise

BUILT = [name for name in FAULT_NAMES if name not in NOT_BUILT]


def run_cli(tmp_path: Path, *args: str) -> tuple[int, dict]:
    report = tmp_path / "report"
    status = main([*args, "--report", str(report)])
    return status, json.loads((report / "report.json").read_text())


def assert_clean(report: dict) -> None:
    readings = report["readings"]
    assert readings["generated"] > 0
    assert readings["lost"] == 0, report["reasons"]
    assert readings["duplicated_as_new"] == 0, report["reasons"]
    assert readings["received"] == readings["generated"]
    assert {f["name"] for f in report["faults"]} == set(BUILT)
    assert report["alarms_summary"]["missed"] == 0, report["reasons"]
    expected = [a for a in report["alarms"] if a["expected_at"] is not None]
    # every scenario patient deteriorates: a red SpO2 alarm per gateway, raised
    assert sum(1 for a in expected if a["condition"] == "spo2:low" and a["grade"] == "red") \
        == report["parameters"]["gateways"]
    assert any(a["condition"] == "disk-budget" for a in expected)
    assert all(a["raised_at"] is not None for a in expected)
    assert report["verdict"] == "pass"


def test_a_short_fleet_with_every_fault_loses_nothing(tmp_path: Path) -> None:
    status, report = run_cli(tmp_path, "--gateways", "2", "--devices-per-gateway", "2",
                             "--duration", "35", "--faults", "all", "--seed", "7",
                             "--drain-timeout", "40")
    assert_clean(report)
    assert status == 0
    kills = [f for f in report["faults"] if f["name"] == "agent-kill"]
    assert len(kills) >= 2 and all(f["detail"] == "SIGKILL" for f in kills)
    storm = [f for f in report["faults"] if f["name"] == "ble-disconnect"]
    assert len(storm) == 4  # one storm (2 BLE devices), each disconnect a FaultRecord
    # the gateway process carried them out on live links (not merely asked)
    assert sum("1 link(s) dropped" in f["detail"] for f in storm) >= 2, storm
    for device in ("gw-01-ble1", "gw-02-ble1"):
        tally = report["readings"]["per_device"][device]
        assert tally["generated"] > 20 and tally["lost"] == 0, tally
    assert len(report["timeline"]) >= 35
    assert (tmp_path / "report" / "report.html").stat().st_size > 0


class WipedOutbox(FleetRun):
    """A device loses what it had not delivered: unplugged, it keeps measuring into its
    outbox; the outbox is wiped (a flash failure) before the replug."""

    def _schedule(self, broker, centre) -> None:  # type: ignore[no-untyped-def]
        super()._schedule(broker, centre)
        victim = self.devices[self.scenario_devices[0]]

        def wipe() -> None:
            with victim.stand_in.lock:
                victim.stand_in.outbox.clear()
                victim.stand_in.sent_at.clear()
        self._at(3.0, lambda: victim.request("unplug", 4.0))
        self._at(6.0, wipe)
        self._actions.sort(key=lambda a: (a[0], a[1]))


def test_a_real_loss_fails_the_run(tmp_path: Path) -> None:
    record = WipedOutbox(FleetOptions(1, 1, 15.0, (), seed=3, drain_timeout_s=10.0)).run()
    summary = summarise(record)
    lost = summary["readings"]["lost"]
    assert lost >= 4  # ~3 s of pairs measured while unplugged, then wiped
    assert summary["readings"]["per_device"]["gw-01-ox1"]["lost"] == lost
    assert summary["verdict"] == "fail" and exit_status(summary) == 1
    assert any("lost" in reason for reason in summary["reasons"])


@pytest.mark.slow
def test_a_long_fleet_with_every_fault_loses_nothing(tmp_path: Path) -> None:
    began = time.monotonic()
    status, report = run_cli(tmp_path, "--gateways", "4", "--devices-per-gateway", "3",
                             "--duration", "180", "--faults", "all", "--seed", "11",
                             "--drain-timeout", "90")
    assert_clean(report)
    assert status == 0
    assert time.monotonic() - began < 400


@pytest.mark.parametrize(("args", "message"), [
    (["--faults", "agent-kill,bogus"], "unknown fault 'bogus' (valid: all, broker-restart"),
    (["--faults", "ble-disconnect", "--ble-per-gateway", "0"],
     "fault 'ble-disconnect' needs --ble-per-gateway >= 1"),
    (["--ble-per-gateway", "5"], "--ble-per-gateway must be in 0..4, got 5"),
    (["--faults", " , "], "--faults is empty"),
    (["--gateways", "0"], "--gateways must be in 1..50, got 0"),
    (["--devices-per-gateway", "21"], "--devices-per-gateway must be in 1..20"),
    (["--duration", "5"], "--duration must be in 15..604800"),
    (["--duration", "nan"], "--duration must be in 15"),
    (["--rate", "0"], "--rate must be in 0.01..20"),
    (["--drain-timeout", "-1"], "--drain-timeout must be in 1..86400"),
])
def test_bad_arguments_are_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               args: list[str], message: str) -> None:
    base = {"--gateways": "1", "--devices-per-gateway": "1", "--duration": "20",
            "--faults": "all", "--seed": "1"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = [item for pair in base.items() for item in pair]
    assert main([*argv, "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "r").exists()


def test_a_report_path_that_is_a_file_is_refused(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["--gateways", "1", "--devices-per-gateway", "1", "--duration", "20",
                 "--faults", "all", "--seed", "1", "--report", str(target)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
