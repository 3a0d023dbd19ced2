"""The fault suite's rig: fleet runs (simulator.fleet) with a scripted fault schedule, SQLite
integrity checks of every agent file as a kill left it, and the report each run writes for
bench/reliability_table.py ($VB_RESULTS_DIR/faults/<test>/report.json).

Only the runner's public API is used: a test's faults are an explicit schedule of
`PlannedFault`s (`FleetOptions.plan`: exact times, targets, clock jumps with their sign), or
the runner's own seeded plan (`plan=None`); the power-loss checks run from the runner's hooks
(`FleetHooks`: after each SIGKILL, before the restart; after the final SIGTERM). Every fault
is carried out by the runner's own code: the suite adds timing, not new faults.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.fleet.faults import FaultTiming, PlannedFault
from simulator.fleet.runner import FleetHooks, FleetOptions, FleetRun
from simulator.report import RunRecord, exit_status, summarise, write_report

ROOT = Path(__file__).resolve().parents[2]
RESULTS_ENV = "VB_RESULTS_DIR"
DEFAULT_RESULTS = ROOT / "build" / "reliability"


def report_dir(test_name: str) -> Path:
    """$VB_RESULTS_DIR/faults/<test name as a file name>."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", test_name).strip("-")
    return Path(os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS) / "faults" / safe


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


class IntegrityChecks:
    """The power-loss instrument, as FleetHooks: every SQLite file of an agent checked
    right after each SIGKILL (before the restart) and after the final SIGTERM."""

    def __init__(self) -> None:
        self.checks: list[IntegrityCheck] = []
        self.kills = 0

    def hooks(self) -> FleetHooks:
        return FleetHooks(on_agent_killed=self.after_kill, on_agent_stopped=self.after_stop)

    def after_kill(self, gateway_id: str, data_dir: Path) -> None:
        self.kills += 1
        self._check(gateway_id, data_dir, f"after SIGKILL #{self.kills}")

    def after_stop(self, gateway_id: str, data_dir: Path, _code: int | None) -> None:
        self._check(gateway_id, data_dir, "after SIGTERM")

    def _check(self, gateway_id: str, data_dir: Path, moment: str) -> None:
        for database in sorted(data_dir.glob("*.sqlite3")):
            result, replayed = integrity_of_copy(database)
            self.checks.append(IntegrityCheck(gateway_id, moment, database.name, result,
                                              replayed))

    def note(self) -> str:
        bad = [c for c in self.checks if c.result != "ok"]
        replayed = sum(1 for c in self.checks if c.replayed_wal and "KILL" in c.moment)
        return (f"integrity_check: {len(self.checks)} file checks, {len(bad)} not ok; after "
                f"a SIGKILL {replayed} files needed their WAL replayed")


def run_fleet(test_name: str, options: FleetOptions, check_after_kill: bool = False
              ) -> Outcome:
    """Run, write report.json/html under report_dir(test_name), return the outcome."""
    integrity = IntegrityChecks() if check_after_kill else None
    fleet = FleetRun(options, hooks=integrity.hooks() if integrity else None)
    record = fleet.run()
    if integrity is not None:
        record.notes.append(integrity.note())
    summary = summarise(record)
    json_path, _ = write_report(record, report_dir(test_name))
    return Outcome(record, summary, exit_status(summary), json_path,
                   integrity.checks if integrity else [])


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
                  faults: tuple[str, ...] = (), plan: list[PlannedFault] | None = (),
                  rate_hz: float = 1.0, drain_timeout_s: float = 30.0,
                  timing: FaultTiming | None = None, ble_per_gateway: int = 0
                  ) -> FleetOptions:
    """FleetOptions for a suite run: the test's explicit `plan` (default: no faults at all;
    None: the runner's seeded plan of `faults`); serial devices only unless BLE is asked for
    (BLE peripherals on the virtual radio cost CPU that the 2-core CI budget cannot spare)."""
    return FleetOptions(gateways, devices, duration_s, faults, seed, rate_hz=rate_hz,
                        drain_timeout_s=drain_timeout_s, timing=timing or FaultTiming(),
                        ble_per_gateway=ble_per_gateway,
                        plan=None if plan is None else tuple(plan))


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
