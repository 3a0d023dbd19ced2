"""`vitalbridge reading add` end to end: the command, the agent's inbox, the journal, real
mosquitto and the reference centre; and the command's refusals."""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge_agent.cli import CommandError
from edge_agent.commands import reading
from edge_agent.inbox import InboxStore
from edge_agent.service import AgentService
from protocol import topics
from simulator.agent_home import provision_home
from tests.edge_agent.test_service_integration import (
    GW,
    Rig,
    close_rig,
    make_rig,
    play,
    started,
    until,
)


def run_reading(*argv: object) -> tuple[int, dict[str, Any] | str]:
    """`vitalbridge reading ARGV...` as cli.main runs it -> (status, JSON result or error)."""
    parser = argparse.ArgumentParser()
    reading.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["reading", *map(str, argv)])
    try:
        status = args.handler(args)
    except CommandError as exc:
        return exc.status, str(exc)
    return status, {}


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    built = make_rig(tmp_path)
    yield built
    close_rig(built)


def _json_reading(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, Any]:
    status, error = run_reading("add", *argv, "--json")
    out = capsys.readouterr().out
    return status, (json.loads(out) if out.strip() else error)


def test_a_manual_low_spo2_is_journaled_delivered_and_raises_the_red_alarm(
        rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    data = rig.home.data_dir
    # written while the agent is stopped: kept, processed when it starts
    status, queued = _json_reading(capsys, "--data-dir", data, "--patient", "p-0002",
                                   "--hr", 71, "--actor", "carer:c-7", "--wait", 0)
    assert status == 0 and queued["state"] == "queued" and not queued["agent_running"]

    async def scenario() -> dict[str, Any]:
        service = await started(rig.config(serial=[]))
        try:
            assert await until(lambda: len(rig.centre.store.readings("manual-p-0002")) == 1)
            status, result = await asyncio.to_thread(
                _json_reading, capsys, "--data-dir", data, "--patient", "p-0001",
                "--spo2", 85, "--hr", 88, "--actor", "nurse:n-0042")
            assert status == 0, result
            assert await until(lambda: any(
                a.key == "spo2:low" and a.grade == "red" and a.patient == "p-0001"
                for a in rig.centre.active_alarms(GW)))
            assert await until(lambda: len(rig.centre.store.readings("manual-p-0001")) == 2)
            return result
        finally:
            await service.stop("test over")

    result = asyncio.run(asyncio.wait_for(scenario(), 45))
    assert result["state"] == "accepted" and result["values"] == {"spo2": 85.0, "hr": 88.0}
    rows = rig.centre.store.readings("manual-p-0001")
    assert sorted(r["value"] for r in rows) == [85, 88]
    assert {r["verdict"] for r in rows} == {"manual"}
    with sqlite3.connect(data / "journal.sqlite3") as conn:
        journaled = conn.execute("SELECT verdict, flags, priority FROM messages WHERE "
                                 "device_id = 'manual-p-0001' AND kind = ?",
                                 (topics.UP_READINGS,)).fetchall()
    assert journaled == [("manual", "entered-by:nurse:n-0042", 1)]  # critical priority
    with InboxStore.open(data) as store:
        assert store.get(queued["id"]).outcome == "accepted"
        assert store.open_entries() == []


def test_a_stopped_agent_processes_the_entry_when_it_starts(
        rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    """Separate from the above so a restart is covered: queued, start, stop, nothing twice."""
    data = rig.home.data_dir
    status, queued = _json_reading(capsys, "--data-dir", data, "--patient", "p-0001",
                                   "--temp", 37.2, "--actor", "nurse:n-1", "--wait", 0)
    assert status == 0 and queued["state"] == "queued"

    async def scenario() -> None:
        for _ in range(2):  # the second start must not deliver it again
            service = await started(rig.config(serial=[]))
            try:
                assert await until(lambda: len(rig.centre.store.readings("manual-p-0001"))
                                   == 1)
            finally:
                await service.stop("test over")

    play(scenario)
    with sqlite3.connect(data / "journal.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM messages WHERE device_id = "
                            "'manual-p-0001' AND kind = ?",
                            (topics.UP_READINGS,)).fetchone() == (1,)


def _receipts(data: Path, device: str) -> list[str]:
    """Digests of the `reception.received` entries of `device` in the event journal."""
    with sqlite3.connect(data / "events.sqlite3") as conn:
        rows = conn.execute("SELECT details FROM entries WHERE kind = 'reception.received' "
                            "AND subject = ?", (f"device:{device}",)).fetchall()
    return [json.loads(details)["digest"] for (details,) in rows]


def _manual_rows(data: Path, device: str) -> list[str]:
    with sqlite3.connect(data / "journal.sqlite3") as conn:
        return [row[0].hex() for row in conn.execute(
            "SELECT digest FROM messages WHERE device_id = ? AND kind = ?",
            (device, topics.UP_READINGS))]


@pytest.mark.parametrize("receipt_survived", [True, False],
                         ids=["receipt-committed", "receipt-lost-in-the-crash"])
def test_a_retried_manual_entry_writes_one_receipt_event_and_one_row(
        rig: Rig, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        receipt_survived: bool) -> None:
    """The crash falls between the journal row (and its receipt event) and the inbox
    outcome: the first run cannot record the outcome, keeps retrying in the same process,
    stops; the next run applies the same prepared work again. Real SQLite files
    throughout. Variant: the receipt event had not reached the disk when the process died
    (the recorder batches), so the retry must write it."""
    data = rig.home.data_dir
    status, queued = _json_reading(capsys, "--data-dir", data, "--patient", "p-0001",
                                   "--hr", 64, "--actor", "nurse:n-7", "--wait", 0)
    assert status == 0 and queued["state"] == "queued"
    real_finish = InboxStore.finish

    def crash_before_the_outcome(store: InboxStore, entry_id: str, outcome: str, *rest: Any
                                 ) -> bool:
        if outcome == "accepted":
            raise OSError("simulated crash before the outcome is recorded")
        return real_finish(store, entry_id, outcome, *rest)

    async def first_run() -> None:
        service = await started(rig.config(serial=[]))
        try:
            assert await until(lambda: len(_manual_rows(data, "manual-p-0001")) == 1)
            await asyncio.sleep(1.0)  # several polls: the entry is applied again and again
            assert service.inbox.processed == 0
        finally:
            await service.stop("simulated crash")

    async def second_run() -> None:
        service = await started(rig.config(serial=[]))
        try:
            with InboxStore.open(data) as store:
                assert store.get(queued["id"]).outcome == "accepted"  # done at start
        finally:
            await service.stop("test over")

    monkeypatch.setattr(InboxStore, "finish", crash_before_the_outcome)
    if not receipt_survived:  # recorded, but never committed: lost with the process
        monkeypatch.setattr(AgentService, "manual_received", lambda self, message: None)
    play(first_run)
    with InboxStore.open(data) as store:
        assert store.get(queued["id"]).outcome is None and store.get(queued["id"]).prepared
    rows = _manual_rows(data, "manual-p-0001")
    assert _receipts(data, "manual-p-0001") == (rows if receipt_survived else [])
    monkeypatch.undo()
    play(second_run)
    assert _manual_rows(data, "manual-p-0001") == rows  # one row, the same one
    assert _receipts(data, "manual-p-0001") == rows  # exactly one receipt event, for it


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return provision_home(tmp_path / "data", GW, [("ox-1", "p-0001")]).data_dir


@pytest.mark.parametrize(("argv", "names"), [
    (["--patient", "p-0001", "--actor", "nurse:n-1"], "give at least one value"),
    (["--patient", "p-0001", "--spo2", 120, "--actor", "nurse:n-1"], "--spo2:"),
    (["--patient", "p-0001", "--sys", 70, "--dia", 90, "--actor", "nurse:n-1"], "--sys:"),
    (["--patient", "p-0001", "--sys", 120, "--actor", "nurse:n-1"], "--sys and --dia"),
    (["--patient", "p-0001", "--glucose", 5, "--actor", "nurse:n-1"], "--glucose-unit"),
    (["--patient", "p-0001", "--hr", 60, "--actor", "Nurse One"], "--actor:"),
    (["--patient", "p-9999", "--hr", 60, "--actor", "nurse:n-1"], "--patient:"),
    (["--patient", "Jane Doe", "--hr", 60, "--actor", "nurse:n-1"], "--patient:"),
    (["--patient", "p-0001", "--hr", 60, "--actor", "nurse:n-1", "--at", "2999-01-01"],
     "in the future"),
    (["--patient", "p-0001", "--hr", 60, "--actor", "nurse:n-1", "--at", "2001-01-01"],
     "before patient p-0001 was monitored"),
    (["--patient", "p-0001", "--hr", 60, "--actor", "nurse:n-1", "--at", "yesterday"],
     "--at 'yesterday'"),
])
def test_the_command_refuses_naming_the_option(home: Path, argv: list[object],
                                               names: str) -> None:
    status, error = run_reading("add", "--data-dir", home, *argv)
    assert status == 2 and names in str(error), error
    assert not (home / "inbox.sqlite3").exists() or InboxStore.open(home).open_entries() == []


def test_manual_entries_show_as_manual_with_their_author_in_the_fhir_export() -> None:
    """The export reads provenance from the journal columns the agent writes; checked here
    on the flag the agent writes (entered-by:<actor>)."""
    from edge_agent.export.source import split_flags

    assert split_flags(["entered-by:nurse:n-0042", "unbound"]) == (("unbound",),
                                                                   "nurse:n-0042")
