"""The README's first command: a simulated home on the real edge agent, live (docs/demo.md).

`run_demo(duration, seed, live)` enters a simulator.home_rig.HomeRig (broker, reference
centre, the real AgentService, the real firmware on the MicroPython unix port, a serial
cuff, two standard BLE devices), plays the sudden-desaturation scenario compressed into
`duration` seconds, acts as the clinician at the centre (acknowledges each alarm, gives
oxygen, closes the alarm once it has resolved), drains, and returns a `DemoSummary` taken
from the centre's store: the centre is the oracle for delivered, never the gateway.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.home_rig import (
    BLE_OXIMETER_ID,
    BLE_THERMOMETER_ID,
    CLINICIAN,
    CUFF_ID,
    FIRMWARE_ID,
    PATIENT,
    HomeRig,
    RigError,
    RigOptions,
)

SUDDEN_FALL_AT_S = 33.0  # the scenario's SpO2 fall (edge_agent.alarms.scenarios)
ACK_AFTER_S = 2.0  # the clinician acknowledges an alarm this long after it arrived
DRAIN_TIMEOUT_S = 25.0
ROLES = {FIRMWARE_ID: "firmware (sealed, bound)", CUFF_ID: "serial cuff (sealed, bound)",
         BLE_OXIMETER_ID: "BLE oximeter (unbound)", BLE_THERMOMETER_ID: "BLE thermo (unbound)"}
BINDING = {FIRMWARE_ID: PATIENT, CUFF_ID: PATIENT}


class DemoError(RuntimeError):
    """A part of the simulated home failed."""


@dataclass
class DeviceCount:
    device: str
    role: str
    generated: int
    delivered: int  # distinct readings the centre stored (and receipted)
    proven: int  # of which a device checkpoint proved (sealed devices)
    last: dict[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return max(0, self.generated - self.delivered)

    @property
    def unexplained(self) -> int:
        """Stored but never generated: a counting or duplication fault."""
        return max(0, self.delivered - self.generated)


@dataclass
class AlarmRow:
    id: str
    grade: str
    key: str
    device: str | None
    state: str
    acknowledged_by: str | None
    raised_ms: int | None


@dataclass
class DemoSnapshot:
    """What the live view shows and the summary states (all from the centre and the agent)."""

    elapsed: float
    duration: float
    devices: list[DeviceCount]
    alarms: list[AlarmRow]
    delivery: dict[str, int]
    checkpoints: dict[str, int]
    treated: bool
    notes: list[str] = field(default_factory=list)

    @property
    def generated(self) -> int:
        return sum(d.generated for d in self.devices)

    @property
    def delivered(self) -> int:
        return sum(d.delivered for d in self.devices)

    @property
    def lost(self) -> int:
        return sum(d.lost for d in self.devices)

    @property
    def unexplained(self) -> int:
        return sum(d.unexplained for d in self.devices)

    @property
    def checkpoints_failed(self) -> int:
        return sum(n for status, n in self.checkpoints.items()
                   if status not in ("verified", "pending", "gap"))

    def alarm_counts(self) -> dict[str, int]:
        return {"raised": len(self.alarms),
                "acknowledged": sum(1 for a in self.alarms if a.acknowledged_by),
                "closed": sum(1 for a in self.alarms if a.state == "closed")}

    @property
    def ok(self) -> bool:
        return (self.generated > 0 and self.lost == 0 and self.unexplained == 0
                and self.checkpoints_failed == 0)


def skip_for(duration: float) -> float:
    """Scenario seconds to skip so the SpO2 fall comes about a quarter into the run."""
    return max(0.0, SUDDEN_FALL_AT_S - 0.25 * duration)


# ---------------------------------------------------------------- counting


def firmware_generated(rig: HomeRig, device: str) -> int:
    """Readings the firmware generated, as far as it is provable: every seq its signed
    checkpoints cover, plus any seq received beyond them (they exist, so were generated)."""
    assert rig.centre is not None
    covered: dict[str, set[int]] = {}
    for row in rig.centre.store.checkpoints(device):
        covered.setdefault(row["session"], set()).update(
            range(row["first_seq"], row["last_seq"] + 1))
    for row in rig.centre.store.readings(device):
        covered.setdefault(row["session"], set()).add(row["seq"])
    return sum(len(seqs) for seqs in covered.values())


def generated_counts(rig: HomeRig) -> dict[str, int]:
    assert rig.cuff is not None
    counts = {FIRMWARE_ID: firmware_generated(rig, FIRMWARE_ID), CUFF_ID: rig.cuff.generated}
    for device_id, device in rig.ble.items():
        counts[device_id] = device.generated
    return counts


def journal_backlog(rig: HomeRig) -> int | None:
    """Messages in the agent's journal not yet confirmed by the centre's receipt."""
    import sqlite3

    from edge_agent.journal.store import JournalStore

    assert rig.home is not None
    path = rig.home.data_dir / "journal.sqlite3"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        return JournalStore(conn, path, 0).stats(time.time()).backlog()
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def snapshot(rig: HomeRig, duration: float, backlog: int | None) -> DemoSnapshot:
    assert rig.centre is not None and rig.patient is not None
    store = rig.centre.store
    verdicts = store.verdict_counts()
    devices = []
    for device, generated in generated_counts(rig).items():
        counts = verdicts.get(device, {})
        last: dict[str, Any] = {}
        for row in store.readings(device)[-12:]:
            last[row["quantity"]] = row["value"]
        devices.append(DeviceCount(device, ROLES[device], generated, sum(counts.values()),
                                   counts.get("device-proven", 0), last))
    alarms = [AlarmRow(r["id"], r["grade"], r["key"], r["device"], r["state"],
                       r["acknowledged_by"], r["raised_ms"]) for r in store.raised_alarms()]
    counters = rig.service.delivery.counters()
    delivery = {"journal backlog": -1 if backlog is None else backlog,
                "in flight": counters.in_flight, "sent (PUBACK)": counters.sent,
                "receipted": counters.received, "refused": counters.refused,
                "reconnects": counters.reconnects}
    return DemoSnapshot(min(rig.now(), duration), duration, devices, alarms, delivery,
                        store.checkpoint_counts(), rig.patient.treated_at is not None,
                        list(rig.notes))


# ---------------------------------------------------------------- the clinician


class Clinician:
    """At the centre: acknowledges each alarm ACK_AFTER_S after it arrived (and gives the
    patient oxygen for a clinical alarm of the bound patient), closes it once resolved."""

    def __init__(self, rig: HomeRig) -> None:
        self.rig = rig
        self.seen: dict[str, float] = {}
        self.acked: set[str] = set()
        self.closed: set[str] = set()

    def step(self) -> None:
        rig = self.rig
        assert rig.centre is not None and rig.patient is not None
        now = rig.now()
        for alarm in rig.centre.active_alarms():
            first_seen = self.seen.setdefault(alarm.id, now)
            if alarm.acknowledged_by is None and alarm.id not in self.acked \
                    and now - first_seen >= ACK_AFTER_S:
                rig.centre.acknowledge(alarm.id, CLINICIAN, "demo: seen at the centre")
                self.acked.add(alarm.id)
                if alarm.grade != "blue" and alarm.patient == PATIENT:
                    rig.patient.treat(now)
            elif alarm.state == "resolved" and alarm.acknowledged_by is not None \
                    and alarm.id not in self.closed:
                rig.centre.close(alarm.id, CLINICIAN, "demo: patient recovered")
                self.closed.add(alarm.id)


# ---------------------------------------------------------------- the run


async def _drain(rig: HomeRig, clinician: Clinician) -> int | None:
    """Wait until the journal is empty, the cuff's outbox is acknowledged, BLE readings are
    stored and a firmware checkpoint covers every firmware seq received (bounded)."""
    assert rig.centre is not None and rig.cuff is not None
    rig.finish_sending()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    backlog = None
    while time.monotonic() < deadline:
        clinician.step()
        backlog = await asyncio.to_thread(journal_backlog, rig)
        counts = rig.centre.store.verdict_counts()
        generated = generated_counts(rig)
        stored = {d: sum(counts.get(d, {}).values()) for d in generated}
        pending = counts.get(FIRMWARE_ID, {}).get("pending", 0)
        if backlog == 0 and rig.cuff.finished.is_set() and pending == 0 and all(
                stored[d] >= n for d, n in generated.items()):
            break
        await asyncio.sleep(0.3)
    return backlog


async def run_async(duration: float, seed: int, workdir: Path,
                    on_update: Callable[[DemoSnapshot], None] | None = None) -> DemoSnapshot:
    async with HomeRig(RigOptions(workdir, seed=seed, skip_s=skip_for(duration))) as rig:
        clinician = Clinician(rig)
        backlog: list[int | None] = [None]

        def each_second(_t: float) -> None:
            clinician.step()
            if on_update is not None:
                on_update(snapshot(rig, duration, backlog[0]))

        async def watch_backlog() -> None:
            while True:
                backlog[0] = await asyncio.to_thread(journal_backlog, rig)
                await asyncio.sleep(1.0)

        watcher = asyncio.create_task(watch_backlog())
        try:
            await rig.play(duration, each_second)
        finally:
            watcher.cancel()
        final_backlog = await _drain(rig, clinician)
        final = snapshot(rig, duration, final_backlog)
        if on_update is not None:
            on_update(final)
        return final


def run_demo(duration: float = 60.0, seed: int = 1, live: bool = True,
             workdir: Path | None = None) -> DemoSnapshot:
    """Run the simulated home for `duration` seconds -> the final snapshot (the summary)."""
    if live:
        from simulator.demo_view import LiveView

        view: Any = LiveView()
    else:
        view = None
    try:
        with tempfile.TemporaryDirectory(prefix="vitalbridge-demo-") as tmp:
            where = workdir or Path(tmp)
            if view is None:
                return asyncio.run(run_async(duration, seed, where))
            with view:
                return asyncio.run(run_async(duration, seed, where, view.update))
    except RigError as err:
        raise DemoError(str(err)) from err
