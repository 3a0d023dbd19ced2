"""`vitalbridge demo` on the real agent: one ~22 s run of the whole home through the command
(real mosquitto, centre, AgentService, the firmware on the MicroPython unix port enrolled
with the technician CLI, a serial cuff on a PTY, BLE devices on the bumble radio registered
and bound with `device register`), then its summary is checked against itself and nothing
it started may still run. Plus the pure parts: the patient's treatment, the skip per
scenario, the verdict arithmetic, the clinician's loop, open alarms, option refusal.
Ctrl-C: tests/simulator/test_demo_interrupt.py."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_agent.alarms.scenarios import NAMES
from edge_agent.cli import main
from simulator import commands
from simulator.demo import (
    AlarmRow,
    Clinician,
    DemoInterrupted,
    DemoSnapshot,
    DeviceCount,
    skip_for,
)
from simulator.demo_view import interrupted_lines, summary_lines
from simulator.home_rig import (
    BLE_OXIMETER_ID,
    BLE_THERMOMETER_ID,
    CLINICIAN,
    FIRMWARE_ID,
    PATIENT,
    SCENARIO,
    Patient,
    firmware_pids,
)

MICROPYTHON = Path(sys.executable).parent / "micropython"
DEVICE_LINE = re.compile(r"^\s+(\S+)\s+.+, (\S+)\s+generated\s+(\d+)\s+delivered\s+(\d+)"
                         r"\s+lost (\d+)\s+device-proven (\d+)$")


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
    return firmware_pids()


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
    matches = [m for m in map(DEVICE_LINE.match, out.splitlines()) if m]
    rows = {m.group(1): tuple(map(int, m.groups()[2:])) for m in matches}
    assert len(rows) == 4, out
    # Every device, the standard BLE ones included, is bound to the patient as the running
    # agent resolves it (they were registered with `vitalbridge device register`).
    assert {m.group(1): m.group(2) for m in matches} == dict.fromkeys(rows, PATIENT), out
    assert BLE_OXIMETER_ID in rows and BLE_THERMOMETER_ID in rows
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
    raised, _acked, closed = map(int, alarms.groups())
    assert closed <= raised
    # Each alarm not closed is listed with its state.
    open_lines = [line for line in out.splitlines() if "open at end:" in line]
    assert len(open_lines) == raised - closed, out
    assert all(("still active" in line) != ("resolved" in line) for line in open_lines), out
    assert "verdict: pass" in out
    # Nothing it started is left: no child of ours (mosquitto, run-sim, enroll runs), and no
    # firmware process of the demo's chip id anywhere.
    assert children(os.getpid()) <= before
    assert firmware_processes() == []


def test_demo_refuses_a_duration_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--duration", "0", "--no-live"]) == 2
    assert main(["demo", "--duration", "5", "--no-live"]) == 2
    assert "--duration must be" in capsys.readouterr().err


def test_demo_refuses_an_unknown_scenario_in_one_line_naming_the_known_ones(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--scenario", "sepsis", "--no-live"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'sepsis'" in err
    assert all(name in err for name in NAMES)
    assert commands.DEFAULT_SCENARIO == SCENARIO  # spelled out there to keep the CLI light


def test_the_skip_brings_each_scenarios_first_alarm_a_quarter_into_the_run() -> None:
    assert skip_for(22) == pytest.approx(27.5)  # sudden-desaturation: first alarm at 33 s
    assert skip_for(60, "gradual-desaturation", seed=1) == pytest.approx(112 - 15)
    assert skip_for(60, "gradual-desaturation", seed=3) == pytest.approx(110 - 15)
    assert skip_for(60, "stable") == 0  # no alarm expected: from its start
    assert skip_for(3600, "fever") == 0


def test_oxygen_returns_the_desaturated_patient_to_baseline() -> None:
    patient = Patient("sudden-desaturation", seed=1, skip_s=30)
    low = patient.oximeter(20)  # scenario second 50: SpO2 in the low 80s
    assert low["spo2"] <= 88
    assert patient.treat(20) and not patient.treat(25)
    assert patient.recovery(20) == 0 and patient.recovery(24) == pytest.approx(0.5)
    recovered = patient.oximeter(40)
    assert recovered["spo2"] >= 96 and recovered["pr"] < low["pr"]
    assert '"spo2":97.5' in patient.firmware_line(40)


def test_the_verdict_fails_on_a_loss_an_extra_reading_or_a_failed_checkpoint() -> None:
    def snap(generated: int, delivered: int, checkpoints: dict[str, int]) -> DemoSnapshot:
        return DemoSnapshot(1, 1, [DeviceCount("d", "r", generated, delivered, 0)], [], {},
                            checkpoints, False)

    assert snap(5, 5, {"verified": 1}).ok
    lost = snap(5, 4, {"verified": 1})
    assert not lost.ok and lost.lost == 1 and "1 lost" in summary_lines(lost)[1]
    assert not snap(5, 6, {}).ok
    assert not snap(5, 5, {"tag-mismatch": 1}).ok
    assert not snap(0, 0, {}).ok
    assert summary_lines(lost)[-1] == "verdict: FAIL"


def test_the_live_view_renders_grades_states_and_delivery() -> None:
    from rich.console import Console

    from simulator.demo import AlarmRow
    from simulator.demo_view import render

    snap = DemoSnapshot(12, 60, [DeviceCount(FIRMWARE_ID, "firmware", 9, 9, 4,
                                             {"spo2": 86, "pr": 104}, PATIENT),
                                 DeviceCount("ble-x", "BLE", 3, 2, 0, {"temp": 37.1})],
                        [AlarmRow("a1", "red", "spo2:low", FIRMWARE_ID, "acknowledged",
                                  "nurse:n-0001", 1)],
                        {"journal backlog": 2, "in flight": 1, "sent (PUBACK)": 7,
                         "receipted": 6}, {"verified": 2}, True, final=False)
    for width in (80, 160):  # 80: a plain terminal still shows the values
        console = Console(width=width, record=True)
        console.print(render(snap, ["warning vitalbridge.x: something"]))
        text = console.export_text()
        for expected in ("spo2=86", "temp=37.1", "red", "spo2:low", "acknowledged, active",
                         "nurse:n-0001", "journal backlog 2", "2 verified", "oxygen given",
                         PATIENT, "unbound", "pend", "sudden-desaturation", "something"):
            assert expected in text, (width, expected, text)


def test_the_live_view_keeps_log_lines_out_of_the_terminal() -> None:
    import logging

    from simulator.demo_view import LogTail

    tail = LogTail(lines=2)
    log = logging.getLogger("vitalbridge.test-demo")
    log.addHandler(tail)
    try:
        log.info("not shown")
        for n in range(3):
            log.warning("alarm notification %d", n, extra={"grade": "red"})
    finally:
        log.removeHandler(tail)
    assert list(tail.lines) == ["warning vitalbridge.test-demo: alarm notification 1 grade=red",
                                "warning vitalbridge.test-demo: alarm notification 2 grade=red"]


def alarm(state: str, active: bool, acked: str | None = None,
          key: str = "spo2:low") -> AlarmRow:
    return AlarmRow("a-" + state, "red", key, FIRMWARE_ID, state, acked, 1, active,
                    state != "closed")


def test_the_summary_states_why_each_open_alarm_is_open() -> None:
    snap = DemoSnapshot(60, 60, [DeviceCount("d", "r", 5, 5, 0, {}, PATIENT)],
                        [alarm("acknowledged", True, CLINICIAN), alarm("resolved", False),
                         alarm("closed", False, CLINICIAN), alarm("raised", True)],
                        {}, {"verified": 1}, True)
    lines = [line.strip() for line in summary_lines(snap)]
    assert "alarms: 4 raised, 2 acknowledged, 1 closed" in lines
    open_lines = [line for line in lines if line.startswith("open at end:")]
    assert open_lines == [
        f"open at end: red spo2:low ({FIRMWARE_ID}): still active (the condition holds), "
        f"acknowledged by {CLINICIAN}",
        f"open at end: red spo2:low ({FIRMWARE_ID}): resolved, not acknowledged, not closed",
        f"open at end: red spo2:low ({FIRMWARE_ID}): still active (the condition holds), "
        "not acknowledged"]
    assert lines[-1] == "verdict: pass"


def test_an_interrupted_run_prints_a_partial_summary_without_a_verdict() -> None:
    partial = DemoSnapshot(8, 60, [DeviceCount("d", "r", 5, 3, 0, {}, PATIENT)], [], {},
                           {}, False, final=False)
    lines = interrupted_lines(DemoInterrupted(partial, 22.0))
    assert lines[0].startswith("interrupted at 8 of 60 s")
    assert any("2 not confirmed yet" in line for line in lines)
    assert any("pending 2" in line for line in lines)
    assert lines[-1] == "verdict: none (interrupted before the drain)"
    early = interrupted_lines(DemoInterrupted(None, 7.6))
    assert early == ["interrupted after 8 s while starting the simulated home: nothing was "
                     "played; everything it started is stopped"]


class FakeCentre:
    """What the clinician sees at the centre: open alarms, and the commands it sends."""

    def __init__(self) -> None:
        self.open: list[SimpleNamespace] = []
        self.sent: list[tuple[str, str]] = []

    def active_alarms(self) -> list[SimpleNamespace]:
        return [a for a in self.open if a.state != "closed"]

    def acknowledge(self, alarm_id: str, actor: str, detail: str) -> None:
        self.sent.append(("ack", alarm_id))

    def close(self, alarm_id: str, actor: str, detail: str) -> None:
        self.sent.append(("close", alarm_id))


def test_the_clinician_acknowledges_again_after_a_recurrence_and_closes_once_resolved(
        ) -> None:
    centre = FakeCentre()
    clock = [0.0]
    patient = Patient(SCENARIO, seed=1, skip_s=0)
    rig = SimpleNamespace(centre=centre, patient=patient, now=lambda: clock[0])
    clinician = Clinician(rig)  # type: ignore[arg-type]
    fall = SimpleNamespace(id="a1", key="spo2:fall", patient=PATIENT, state="raised",
                           acknowledged_by=None, condition_active=True)
    temp = SimpleNamespace(id="a2", key="temp:high", patient=PATIENT, state="raised",
                           acknowledged_by=None, condition_active=True)
    centre.open = [fall, temp]

    def at(t: float) -> list[tuple[str, str]]:
        clock[0] = t
        before = len(centre.sent)
        clinician.step()
        return centre.sent[before:]

    assert at(0) == [] and at(1.9) == []
    assert at(2.0) == [("ack", "a1"), ("ack", "a2")]
    assert patient.treated_at == 2.0  # oxygen for the desaturation
    assert at(3) == []  # not reflected yet: not sent again before RETRY_S
    assert at(7.0) == [("ack", "a1"), ("ack", "a2")]  # re-sent: never reflected
    fall.acknowledged_by = temp.acknowledged_by = CLINICIAN
    fall.state = temp.state = "acknowledged"
    assert at(8) == [] and clinician.settled()  # acknowledged and still active
    fall.acknowledged_by, fall.state = None, "raised"  # it recurred: acknowledgement cleared
    assert at(9) == [] and at(11) == [("ack", "a1")]
    fall.acknowledged_by, fall.state, fall.condition_active = CLINICIAN, "resolved", False
    assert not clinician.settled()  # resolved and acknowledged: the clinician must close it
    assert at(12) == [("close", "a1")]
    fall.state = "closed"
    assert clinician.settled()  # what is left (temp) still holds: nothing to do


def test_oxygen_is_only_given_for_a_desaturation() -> None:
    centre = FakeCentre()
    patient = Patient(SCENARIO, seed=1, skip_s=0)
    rig = SimpleNamespace(centre=centre, patient=patient, now=lambda: 5.0)
    centre.open = [SimpleNamespace(id="t", key="temp:high", patient=PATIENT, state="raised",
                                   acknowledged_by=None, condition_active=True)]
    clinician = Clinician(rig)  # type: ignore[arg-type]
    clinician.unacked_since["t"] = 0.0
    clinician.step()
    assert centre.sent == [("ack", "t")] and patient.treated_at is None
