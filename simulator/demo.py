"""The README's first command: a simulated home on the real edge agent, live (docs/demo.md).

`run_demo(duration, seed, live, scenario=...)` enters a simulator.home_rig.HomeRig (broker,
reference centre, the real AgentService, the real firmware on the MicroPython unix port, a
serial cuff, two standard BLE devices registered and bound by the technician's CLI), plays a
named scenario (default sudden-desaturation) compressed into `duration` seconds, acts as the
clinician at the centre (acknowledges each alarm, gives oxygen for a desaturation, closes an
alarm once it has resolved), drains, and returns a `DemoSnapshot` taken from the centre's
store: the centre is the oracle for delivered, never the gateway. Ctrl-C ends the run at
once (no drain) and `run_demo` raises `DemoInterrupted` carrying the partial snapshot.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.alarms import scenarios
from simulator.home_rig import (
    BLE_OXIMETER_ID,
    BLE_THERMOMETER_ID,
    CLINICIAN,
    CUFF_ID,
    FIRMWARE_ID,
    PATIENT,
    SCENARIO,
    HomeRig,
    RigError,
    RigOptions,
)

SCENARIOS = scenarios.NAMES
ACK_AFTER_S = 2.0  # the clinician acknowledges an alarm this long after it arrived
RETRY_S = 5.0  # an acknowledgement or closing not reflected at the centre by then is re-sent
DRAIN_TIMEOUT_S = 25.0
# What each device is; whose readings it carries comes from the running agent (rig.bindings).
ROLES = {FIRMWARE_ID: "firmware, sealed", CUFF_ID: "BP cuff, sealed",
         BLE_OXIMETER_ID: "BLE SpO2, attested", BLE_THERMOMETER_ID: "BLE temp, attested"}


class DemoError(RuntimeError):
    """A part of the simulated home failed."""


class DemoInterrupted(KeyboardInterrupt):
    """Ctrl-C: the home was stopped; `partial` is the last snapshot (None: it was still
    starting, nothing was played)."""

    def __init__(self, partial: DemoSnapshot | None, elapsed_s: float) -> None:
        super().__init__("interrupted")
        self.partial = partial
        self.elapsed_s = elapsed_s


@dataclass
class DeviceCount:
    device: str
    role: str
    generated: int
    delivered: int  # distinct readings the centre stored (and receipted)
    proven: int  # of which a device checkpoint proved (sealed devices)
    last: dict[str, Any] = field(default_factory=dict)
    patient: str | None = None  # bound to, as the agent resolves it (None: unbound)

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
    state: str  # raised | notified | acknowledged | resolved | closed (furthest reached)
    acknowledged_by: str | None
    raised_ms: int | None
    condition_active: bool = True  # the agent still sees the condition
    is_open: bool = True  # not closed

    def open_state(self) -> str:
        """Why an open alarm is still open, in words (the summary's "open at end")."""
        ack = (f"acknowledged by {self.acknowledged_by}" if self.acknowledged_by
               else "not acknowledged")
        if self.condition_active:
            return f"still active (the condition holds), {ack}"
        return f"resolved, {ack}, not closed"


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
    scenario: str = SCENARIO
    final: bool = True  # False while playing: what is not delivered yet is pending, not lost

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

    def open_alarms(self) -> list[AlarmRow]:
        return [a for a in self.alarms if a.is_open]

    def alarm_counts(self) -> dict[str, int]:
        return {"raised": len(self.alarms),
                "acknowledged": sum(1 for a in self.alarms if a.acknowledged_by),
                "closed": sum(1 for a in self.alarms if a.state == "closed")}

    @property
    def ok(self) -> bool:
        return (self.generated > 0 and self.lost == 0 and self.unexplained == 0
                and self.checkpoints_failed == 0)


def skip_for(duration: float, scenario: str = SCENARIO, seed: int = 1) -> float:
    """Scenario seconds to skip so the scenario's first expected alarm (for this seed, as
    the rig's patient model plays it) comes about a quarter into the run (none expected,
    e.g. "stable": play from its start)."""
    expected = scenarios.build(scenario, seed=seed).expected
    if not expected:
        return 0.0
    return max(0.0, min(e.at for e in expected) - 0.25 * duration)


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


def snapshot(rig: HomeRig, duration: float, backlog: int | None,
             final: bool = True) -> DemoSnapshot:
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
                                   counts.get("device-proven", 0), last,
                                   rig.bindings.get(device)))
    alarms = [AlarmRow(r["id"], r["grade"], r["key"], r["device"], r["state"],
                       r["acknowledged_by"], r["raised_ms"], bool(r["condition_active"]),
                       bool(r["is_open"])) for r in store.raised_alarms()]
    counters = rig.service.delivery.counters()
    delivery = {"journal backlog": -1 if backlog is None else backlog,
                "in flight": counters.in_flight, "sent (PUBACK)": counters.sent,
                "receipted": counters.received, "refused": counters.refused,
                "reconnects": counters.reconnects}
    return DemoSnapshot(min(rig.now(), duration), duration, devices, alarms, delivery,
                        store.checkpoint_counts(), rig.patient.treated_at is not None,
                        list(rig.notes), rig.options.scenario, final)


# ---------------------------------------------------------------- the clinician


def needs_oxygen(key: str) -> bool:
    """Oxygen is the treatment the demo's patient model knows: for a desaturation."""
    return key.startswith("spo2:")


class Clinician:
    """At the centre: acknowledges an alarm ACK_AFTER_S after it was first seen
    unacknowledged (again after a worsening or recurrence, which clear the acknowledgement),
    gives the bound patient oxygen for a desaturation, and closes an alarm once it has
    resolved. A command the centre does not reflect within RETRY_S is sent again."""

    def __init__(self, rig: HomeRig) -> None:
        self.rig = rig
        self.unacked_since: dict[str, float] = {}
        self.sent: dict[tuple[str, str], float] = {}  # (alarm id, action) -> last sent

    def _due(self, alarm_id: str, action: str, now: float) -> bool:
        last = self.sent.get((alarm_id, action))
        return last is None or now - last >= RETRY_S

    def step(self) -> None:
        rig = self.rig
        assert rig.centre is not None and rig.patient is not None
        now = rig.now()
        for alarm in rig.centre.active_alarms():
            if alarm.acknowledged_by is None:
                since = self.unacked_since.setdefault(alarm.id, now)
                if now - since >= ACK_AFTER_S and self._due(alarm.id, "ack", now):
                    rig.centre.acknowledge(alarm.id, CLINICIAN, "demo: seen at the centre")
                    self.sent[(alarm.id, "ack")] = now
                    if alarm.patient == PATIENT and needs_oxygen(alarm.key):
                        rig.patient.treat(now)
                continue
            self.unacked_since.pop(alarm.id, None)
            self.sent.pop((alarm.id, "ack"), None)  # reflected: a recurrence starts afresh
            if alarm.state == "resolved" and self._due(alarm.id, "close", now):
                rig.centre.close(alarm.id, CLINICIAN, "demo: patient recovered")
                self.sent[(alarm.id, "close")] = now

    def settled(self) -> bool:
        """Nothing left for the clinician: every open alarm's condition still holds (it
        cannot be closed yet) and is acknowledged."""
        assert self.rig.centre is not None
        return all(a.condition_active and a.acknowledged_by is not None
                   for a in self.rig.centre.active_alarms())


# ---------------------------------------------------------------- the run


async def _drain(rig: HomeRig, clinician: Clinician) -> int | None:
    """Wait until the journal is empty, the cuff's outbox is acknowledged, BLE readings are
    stored, a firmware checkpoint covers every firmware seq received, and the clinician has
    acknowledged and closed what can be (bounded)."""
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
                stored[d] >= n for d, n in generated.items()) and clinician.settled():
            break
        await asyncio.sleep(0.3)
    return backlog


async def run_async(duration: float, seed: int, workdir: Path,
                    on_update: Callable[[DemoSnapshot], None] | None = None,
                    scenario: str = SCENARIO,
                    latest: list[DemoSnapshot] | None = None) -> DemoSnapshot:
    """The run; `latest` (if given) holds the last snapshot taken, so an interrupted run
    can still report what it had (see run_demo)."""
    taken: list[DemoSnapshot] = latest if latest is not None else []
    options = RigOptions(workdir, seed=seed, scenario=scenario,
                         skip_s=skip_for(duration, scenario, seed))
    async with HomeRig(options) as rig:
        clinician = Clinician(rig)
        backlog: list[int | None] = [None]

        def take(final: bool) -> DemoSnapshot:
            snap = snapshot(rig, duration, backlog[0], final)
            taken[:] = [snap]
            if on_update is not None:
                on_update(snap)
            return snap

        def each_second(_t: float) -> None:
            clinician.step()
            take(final=False)

        async def watch_backlog() -> None:
            while True:
                backlog[0] = await asyncio.to_thread(journal_backlog, rig)
                await asyncio.sleep(1.0)

        take(final=False)  # the home is up: the first view
        watcher = asyncio.create_task(watch_backlog())
        try:
            await rig.play(duration, each_second)
        except asyncio.CancelledError:
            take(final=False)  # Ctrl-C: what the centre has now, before the home stops
            raise
        finally:
            watcher.cancel()
        backlog[0] = await _drain(rig, clinician)
        return take(final=True)


def run_demo(duration: float = 60.0, seed: int = 1, live: bool = True,
             workdir: Path | None = None, scenario: str = SCENARIO,
             on_update: Callable[[DemoSnapshot], None] | None = None) -> DemoSnapshot:
    """Run the simulated home for `duration` seconds -> the final snapshot (the summary).
    Raises DemoError if a part failed, DemoInterrupted on Ctrl-C (after stopping it all)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}")
    latest: list[DemoSnapshot] = []
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="vitalbridge-demo-") as tmp:
            where = workdir or Path(tmp)
            if not live:
                return asyncio.run(run_async(duration, seed, where, on_update, scenario,
                                             latest))
            from simulator.demo_view import LiveView

            with LiveView() as view:
                return asyncio.run(run_async(duration, seed, where, view.update, scenario,
                                             latest))
    except RigError as err:
        raise DemoError(str(err)) from err
    except KeyboardInterrupt:
        raise DemoInterrupted(latest[0] if latest else None,
                              time.monotonic() - started) from None
