"""Manual entries and the alarm path in a running agent (real mosquitto, reference centre):
no false "device offline" for a patient's manual source, each manual message documented in
the event journal like any receipt, and manual readings part of the rules' history that a
restart rebuilds from (edge_agent/alarms/history.py) with their `manual` mark, and counted in
the ingest metric under the "manual" transport."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edge_agent.alarms import history
from edge_agent.alarms.evaluator import OFFLINE
from edge_agent.commands import reading
from edge_agent.eventlog import EventLogFile
from edge_agent.inbox import InboxStore
from tests.edge_agent.test_manual_entry import rig  # noqa: F401 - the shared rig fixture
from tests.edge_agent.test_service_integration import Rig, play, started, until

MANUAL_SOURCE = "manual-p-0001"


def queue_entry(data: Path, **values: float) -> None:
    """`vitalbridge reading add` with the agent stopped (processed when it starts)."""
    parser = argparse.ArgumentParser()
    reading.register(parser.add_subparsers(dest="command"))
    argv = ["reading", "add", "--data-dir", str(data), "--patient", "p-0001",
            "--actor", "nurse:n-0042", "--wait", "0"]
    for name, value in values.items():
        argv += [f"--{name}", str(value)]
    args = parser.parse_args(argv)
    assert args.handler(args) == 0


def ingested(exposition: bytes, transport: str, verdict: str) -> float:
    """vitalbridge_ingest_readings_total{transport, verdict} from the agent's metrics."""
    wanted = {"transport": transport, "verdict": verdict}
    return next(sample.value for family in text_string_to_metric_families(exposition.decode())
                for sample in family.samples
                if sample.name == "vitalbridge_ingest_readings_total" and sample.labels == wanted)


def entry_done(data: Path) -> bool:
    with InboxStore.open(data) as store:
        return store.open_entries() == []


def test_a_manual_entry_is_documented_and_never_reported_offline(rig: Rig) -> None:  # noqa: F811
    data = rig.home.data_dir
    queue_entry(data, spo2=97, hr=72)

    async def scenario() -> None:
        service = await started(rig.config(serial=[]))
        try:
            assert await until(lambda: len(rig.centre.store.readings(MANUAL_SOURCE)) == 2)
            assert await until(lambda: entry_done(data))  # the handler has returned
            rebuilt = history.rule_readings_of(
                history.journaled_batches(service.journal_path, 0.0), service.directory)
            assert sorted((r.patient, r.quantity, r.value, r.manual) for r in rebuilt) == [
                ("p-0001", "hr", 72.0, True), ("p-0001", "spo2", 97.0, True)]
            offline = service.alarms.evaluator.tick(time.time() + 3600)
            assert [c.key for c in offline if c.key == f"{OFFLINE}:{MANUAL_SOURCE}"] == []
            # counted in the ingest metric like any reading, under the "manual" transport
            assert ingested(service.metrics.exposition(), "manual", "manual") == 2
        finally:
            await service.stop("test over")

    play(scenario)
    events = EventLogFile.open_readonly(data / "events.sqlite3")
    try:
        received = [e.details for e in events.entries() if e.kind == "reception.received"
                    and e.details.get("device") == MANUAL_SOURCE]
    finally:
        events.close()
    assert [(d["transport"], d["verdict"], d["count"]) for d in received] == [
        ("manual", "manual", 2)]

    batches = history.journaled_batches(data / "journal.sqlite3", 0.0)
    assert [(b.device_id, b.manual, len(b.readings)) for b in batches] == [
        (MANUAL_SOURCE, True, 2)]


def test_no_journal_file_means_no_history(tmp_path: Path) -> None:
    assert history.journaled_batches(tmp_path / "journal.sqlite3", 0.0) == []
