"""The fault suite's rig: fleet runs (simulator.fleet) with a scripted fault schedule, SQLite
integrity checks of every agent file as a kill left it, and the report each run writes for
bench/reliability_table.py ($VB_RESULTS_DIR/faults/<test>/report.json).

`ScriptedFleet` is a `FleetRun` whose faults are the test's own list of `PlannedFault`s (exact
times and targets), optionally on top of the runner's seeded plan. Every fault is carried out
by the runner's own code (`FleetRun._plan_one`): the suite adds timing, not new faults. Two
additions live here because the runner has no option for them: a clock jump of a chosen sign
(the runner draws the sign) and the power-loss check after a SIGKILL.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from simulator.broker import Broker
from simulator.centre import Centre
from simulator.fleet.faults import FaultTiming, PlannedFault
from simulator.fleet.runner import FleetOptions, FleetRun
from simulator.report import FaultRecord, RunRecord, exit_status, summarise, write_report

ROOT = Path(__file__).resolve().parents[2]
RESULTS_ENV = "VB_RESULTS_DIR"
DEFAULT_RESULTS = ROOT / "build" / "reliability"


def report_dir(test_name: str) -> Path:
    """$VB_RESULTS_DIR/faults/<test name as a file name>."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", test_name).strip("-")
    return Path(os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS) / "faults" / safe


@dataclass(frozen=True)
class ClockJump:
    """A device clock jumps by `jump_s` (+ forward, - back) at `at` for `for_s` seconds."""

    device: str
    at: float
    jump_s: float
    for_s: float


@dataclass
class IntegrityCheck:
    """PRAGMA integrity_check of one SQLite file as the agent left it."""

    gateway: str
    moment: str  # "after SIGKILL #n" or "after SIGTERM"
    file: str
    result: str
    # True when recovering the copy changed its main file: the kill left committed work only
    # in the WAL, which SQLite had to replay (a WAL file's mere size proves nothing: it is
    # reused, not truncated, after a checkpoint).
    replayed_wal: bool


@dataclass
class Outcome:
    record: RunRecord
    summary: dict[str, Any]
    status: int
    report: Path
    checks: list[IntegrityCheck] = field(default_factory=list)


def integrity_of_copy(database: Path) -> tuple[str, bool]:
    """integrity_check of a copy of `database` and its -wal (not -shm), opened read-write so
    SQLite recovers the WAL exactly as the restarted agent would (and checkpoints it into the
    main file when the connection closes). Returns (result, whether the WAL was replayed)."""
    wal = database.with_name(database.name + "-wal")
    with tempfile.TemporaryDirectory(prefix="vb-integrity-") as scratch:
        copy = Path(scratch) / database.name
        shutil.copyfile(database, copy)
        if wal.exists():
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        before = hashlib.sha256(copy.read_bytes()).digest()
        conn = sqlite3.connect(copy, timeout=5)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
        replayed = hashlib.sha256(copy.read_bytes()).digest() != before
    return "; ".join(str(row[0]) for row in rows), replayed


class ScriptedFleet(FleetRun):
    """A fleet run with the test's fault script; see the module docstring."""

    def __init__(self, options: FleetOptions, script: list[PlannedFault] = (),
                 jumps: list[ClockJump] = (), use_planner: bool = False,
                 check_after_kill: bool = False) -> None:
        super().__init__(options)
        self.script = list(script)
        self.jumps = list(jumps)
        self.use_planner = use_planner
        self.check_after_kill = check_after_kill
        self.checks: list[IntegrityCheck] = []
        self._kills_seen = 0

    def _schedule(self, broker: Broker, centre: Centre) -> None:
        if self.use_planner:
            super()._schedule(broker, centre)
        for fault in self.script:
            self._plan_one(fault, broker, centre)
            if fault.name == "agent-kill" and self.check_after_kill:
                # Queued after the kill at the same instant (actions sort by time, then
                # insertion), before the restart `duration_s` later.
                self._at(fault.at, lambda gw=fault.target: self._check_killed(gw))
        for jump in self.jumps:
            self._plan_jump(jump)
        self._actions.sort(key=lambda action: (action[0], action[1]))

    def _plan_jump(self, jump: ClockJump) -> None:
        device = self.devices[jump.device]

        def begin() -> None:
            device.request("skew", jump.jump_s)
            self.faults.append(FaultRecord("clock-skew", round(time.time() - self.run_start, 3),
                                           jump.for_s, jump.device,
                                           f"device clock {jump.jump_s:+.0f} s"))
        self._at(jump.at, begin)
        self._at(jump.at + jump.for_s, lambda: device.request("skew", 0.0))

    def _check_killed(self, gateway_id: str) -> None:
        gateway = self.gateways[gateway_id]
        if gateway.running:  # the kill was skipped (the agent was already down)
            return
        self._kills_seen += 1
        self._check_files(gateway_id, f"after SIGKILL #{self._kills_seen}")

    def _check_files(self, gateway_id: str, moment: str) -> None:
        data_dir = self.gateways[gateway_id].data_dir
        for database in sorted(data_dir.glob("*.sqlite3")):
            result, replayed = integrity_of_copy(database)
            self.checks.append(IntegrityCheck(gateway_id, moment, database.name, result,
                                              replayed))

    def _record(self, view: Any) -> RunRecord:
        if self.check_after_kill:
            # The clean end as well: SIGTERM every agent, then check its files in place.
            for gateway_id, gateway in self.gateways.items():
                code = gateway.stop()
                if code not in (0, None):
                    self.notes.append(f"{gateway_id}: exit status {code} on SIGTERM")
                self._check_files(gateway_id, "after SIGTERM")
            bad = [c for c in self.checks if c.result != "ok"]
            replayed = sum(1 for c in self.checks if c.replayed_wal and "KILL" in c.moment)
            self.notes.append(f"integrity_check: {len(self.checks)} file checks, {len(bad)} "
                              f"not ok; after a SIGKILL {replayed} files needed their WAL "
                              "replayed")
        return super()._record(view)


def run_fleet(test_name: str, options: FleetOptions, **scripted: Any) -> Outcome:
    """Run, write report.json/html under report_dir(test_name), return the outcome."""
    fleet = ScriptedFleet(options, **scripted)
    record = fleet.run()
    summary = summarise(record)
    json_path, _ = write_report(record, report_dir(test_name))
    return Outcome(record, summary, exit_status(summary), json_path, fleet.checks)


def assert_clean(outcome: Outcome, faults: set[str], all_injected: bool = True) -> None:
    """The suite's end-of-run oracle: every generated reading stored once, nothing stored
    twice as new, every expected alarm raised, every named fault injected (with
    `all_injected`, none of them skipped because its target was down)."""
    summary = outcome.summary
    readings = summary["readings"]
    why = f"{summary['reasons']} (report: {outcome.report}; notes: {summary.get('notes')})"
    assert readings["generated"] > 0, why
    assert readings["received"] == readings["generated"], why
    assert readings["lost"] == 0, why
    assert readings["duplicated_as_new"] == 0, why
    assert summary["alarms_summary"]["missed"] == 0, why
    assert all(a["raised_at"] is not None for a in summary["alarms"]
               if a["expected_at"] is not None), why
    assert faults <= {f["name"] for f in summary["faults"]}, summary["faults"]
    # A fault that found its target down (a kill of a dead agent, a BLE disconnect in a
    # gateway that was down) tested nothing: the script must not schedule such overlaps.
    # The runner's own random plan may overlap a kill with a down agent: all_injected=False.
    assert not all_injected or not [
        f for f in summary["faults"]
        if "not injected" in f["detail"] or "skipped" in f["detail"]], summary["faults"]
    assert summary["verdict"] == "pass" and outcome.status == 0, why


def fleet_options(duration_s: float, seed: int, *, gateways: int = 1, devices: int = 2,
                  faults: tuple[str, ...] = (), rate_hz: float = 1.0,
                  drain_timeout_s: float = 30.0, timing: FaultTiming | None = None,
                  ble_per_gateway: int = 0) -> FleetOptions:
    """FleetOptions for a suite run: serial devices only unless BLE is asked for (BLE
    peripherals on the virtual radio cost CPU that the 2-core CI budget cannot spare)."""
    extra: dict[str, Any] = {}
    if "ble_per_gateway" in {f.name for f in fields(FleetOptions)}:
        extra["ble_per_gateway"] = ble_per_gateway
    elif ble_per_gateway:
        raise AssertionError("FleetOptions has no ble_per_gateway: BLE devices are not built")
    return FleetOptions(gateways, devices, duration_s, faults, seed, rate_hz=rate_hz,
                        drain_timeout_s=drain_timeout_s, timing=timing or FaultTiming(),
                        **extra)


def spread(rng: random.Random, count: int, start: float, end: float, gap: float) -> list[float]:
    """`count` random moments in [start, end), at least `gap` apart (seeded)."""
    free = (end - start) - gap * (count - 1)
    if free < 0:
        raise ValueError(f"{count} moments {gap} s apart do not fit in {end - start} s")
    offsets = sorted(rng.uniform(0, free) for _ in range(count))
    return [round(start + offset + index * gap, 3) for index, offset in enumerate(offsets)]


def backlog_peak(summary: dict[str, Any], start: float, end: float) -> int:
    """The largest backlog (generated - stored at the centre) sampled in [start, end]."""
    return max((s["backlog"] for s in summary["timeline"] if start <= s["t"] <= end),
               default=0)
