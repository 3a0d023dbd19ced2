"""`vitalbridge demo` on the real agent: one ~22 s run of the whole home through the command
(real mosquitto, centre, AgentService, the firmware on the MicroPython unix port enrolled
with the technician CLI, a serial cuff on a PTY, BLE devices on the bumble radio), then
its summary is checked against itself and nothing it started may still run. Plus the pure
parts: the patient's treatment, the skip, the verdict arithmetic, option refusal."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from edge_agent.cli import main
from simulator.demo import DemoSnapshot, DeviceCount, skip_for
from simulator.demo_view import summary_lines
from simulator.home_rig import FIRMWARE_ID, FIRMWARE_UNIQUE_ID, Patient

MICROPYTHON = Path(sys.executable).parent / "micropython"
DEVICE_LINE = re.compile(r"^\s+(\S+)\s+.+ generated\s+(\d+)\s+delivered\s+(\d+)\s+lost (\d+)"
                         r"\s+device-proven (\d+)$")


def children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.add(int(entry.name))
    return out


def firmware_processes() -> list[int]:
    marker = f"VB_SIM_UNIQUE_ID={FIRMWARE_UNIQUE_ID}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.skipif(not MICROPYTHON.is_file(), reason="no MicroPython unix port in the venv")
def test_demo_command_delivers_everything_verifies_the_firmware_and_raises_an_alarm(
        capsys: pytest.CaptureFixture[str]) -> None:
    before = children(os.getpid())
    status = main(["demo", "--duration", "22", "--no-live", "--seed", "3"])
    out = capsys.readouterr().out
    assert status == 0, out
    totals = re.search(r"summary: (\d+) readings generated, (\d+) delivered .*, (\d+) lost", out)
    assert totals, out
    generated, delivered, lost = map(int, totals.groups())
    rows = {m.group(1): tuple(map(int, m.groups()[1:]))
            for m in map(DEVICE_LINE.match, out.splitlines()) if m}
    assert len(rows) == 4, out
    assert lost == 0 and generated == delivered > 0
    assert sum(r[0] for r in rows.values()) == generated
    assert sum(r[1] for r in rows.values()) == delivered
    for device, (gen, dlv, lst, proven) in rows.items():
        assert gen == dlv and lst == 0 and gen > 0 and proven <= dlv, (device, out)
    fw_proven = rows[FIRMWARE_ID][3]
    assert fw_proven >= 1, out  # readings a verified firmware checkpoint proved
    checkpoints = re.search(r"device checkpoints: (\d+) verified, (\d+) failed", out)
    assert checkpoints and int(checkpoints.group(1)) >= 1 and checkpoints.group(2) == "0"
    alarms = re.search(r"alarms: (\d+) raised, (\d+) acknowledged, (\d+) closed", out)
    assert alarms and int(alarms.group(1)) >= 1, out
    assert int(alarms.group(3)) <= int(alarms.group(2)) <= int(alarms.group(1))
    assert "verdict: pass" in out
    # Nothing it started is left: no child of ours (mosquitto, run-sim, enroll runs), and no
    # firmware process of the demo's chip id anywhere.
    assert children(os.getpid()) <= before
    assert firmware_processes() == []


def test_demo_refuses_a_duration_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--duration", "0", "--no-live"]) == 2
    assert main(["demo", "--duration", "5", "--no-live"]) == 2
    assert "--duration must be" in capsys.readouterr().err


def test_oxygen_returns_the_desaturated_patient_to_baseline() -> None:
    patient = Patient("sudden-desaturation", seed=1, skip_s=30)
    low = patient.oximeter(20)  # scenario second 50: SpO2 in the low 80s
    assert low["spo2"] <= 88
    assert patient.treat(20) and not patient.treat(25)
    assert patient.recovery(20) == 0 and patient.recovery(24) == pytest.approx(0.5)
    recovered = patient.oximeter(40)
    assert recovered["spo2"] >= 96 and recovered["pr"] < low["pr"]
    assert '"spo2":97.5' in patient.firmware_line(40)
    assert skip_for(22) == pytest.approx(27.5) and skip_for(200) == 0


def test_the_verdict_fails_on_a_loss_an_extra_reading_or_a_failed_checkpoint() -> None:
    def snap(generated: int, delivered: int, checkpoints: dict[str, int]) -> DemoSnapshot:
        return DemoSnapshot(1, 1, [DeviceCount("d", "r", generated, delivered, 0)], [], {},
                            checkpoints, False)

    assert snap(5, 5, {"verified": 1}).ok
    lost = snap(5, 4, {"verified": 1})
    assert not lost.ok and lost.lost == 1 and "1 lost" in summary_lines(lost)[0]
    assert not snap(5, 6, {}).ok
    assert not snap(5, 5, {"tag-mismatch": 1}).ok
    assert not snap(0, 0, {}).ok
    assert summary_lines(lost)[-1] == "verdict: FAIL"


def test_the_live_view_renders_grades_states_and_delivery() -> None:
    from rich.console import Console

    from simulator.demo import AlarmRow
    from simulator.demo_view import render

    snap = DemoSnapshot(12, 60, [DeviceCount(FIRMWARE_ID, "firmware", 9, 9, 4,
                                             {"spo2": 86, "pr": 104})],
                        [AlarmRow("a1", "red", "spo2:low", FIRMWARE_ID, "acknowledged",
                                  "nurse:n-0001", 1)],
                        {"journal backlog": 2, "in flight": 1, "sent (PUBACK)": 7,
                         "receipted": 6}, {"verified": 2}, True)
    console = Console(width=160, record=True)
    console.print(render(snap))
    text = console.export_text()
    for expected in ("spo2 86", "red", "spo2:low", "acknowledged", "nurse:n-0001",
                     "journal backlog", "2 verified", "oxygen given"):
        assert expected in text, expected
