"""Agent metrics: scraped from the real HTTP endpoint on a free loopback port and parsed as
Prometheus exposition text; gauges refreshed from a real reading journal and event journal."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.eventlog.store import EventLog
from edge_agent.journal.store import JournalStore, NewMessage, Priority
from edge_agent.metrics import AgentMetrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(response.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_scrape_real_endpoint() -> None:
    metrics = AgentMetrics()
    metrics.count_ingest("ble", "sealed", 10)
    metrics.count_ingest("serial", "attested")
    metrics.count_quarantine("ble", "seal")
    metrics.count_quarantine("ble", "a free-text reason")  # counted as "other"
    metrics.count_refused(0x87)
    metrics.observe_delivery_lag(0.3, "alarm")
    metrics.observe_delivery_lag(40.0)
    metrics.observe_alarm_latency(0.004, "red")
    metrics.set_devices_online("ble", 3)
    with metrics.start_http_server(0) as server:
        assert server.addr == "127.0.0.1" and server.port > 0
        samples = scrape(f"http://127.0.0.1:{server.port}/metrics")
    assert value(samples, "vitalbridge_ingest_readings_total", transport="ble",
                 verdict="sealed") == 10
    assert value(samples, "vitalbridge_ingest_readings_total", transport="serial",
                 verdict="attested") == 1
    # Pre-created series read 0 instead of being absent.
    assert value(samples, "vitalbridge_ingest_readings_total", transport="wifi",
                 verdict="manual") == 0
    assert value(samples, "vitalbridge_quarantined_inputs_total", transport="ble",
                 cause="seal") == 1
    assert value(samples, "vitalbridge_quarantined_inputs_total", transport="ble",
                 cause="other") == 1
    assert value(samples, "vitalbridge_publish_refused_total", reason_code="135") == 1
    assert value(samples, "vitalbridge_delivery_lag_seconds_count", priority="alarm") == 1
    assert value(samples, "vitalbridge_delivery_lag_seconds_bucket", priority="routine",
                 le="30.0") == 0
    assert value(samples, "vitalbridge_delivery_lag_seconds_bucket", priority="routine",
                 le="60.0") == 1
    assert value(samples, "vitalbridge_alarm_latency_seconds_bucket", grade="red",
                 le="0.005") == 1
    assert value(samples, "vitalbridge_alarm_latency_seconds_bucket", grade="red",
                 le="0.002") == 0
    assert value(samples, "vitalbridge_alarm_latency_seconds_sum", grade="red") == \
        pytest.approx(0.004)
    assert value(samples, "vitalbridge_devices_online", transport="ble") == 3


def test_server_closes_and_frees_the_port() -> None:
    metrics = AgentMetrics()
    server = metrics.start_http_server(0)
    port = server.port
    server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_two_agents_in_one_process_do_not_collide() -> None:
    a, b = AgentMetrics(), AgentMetrics()  # the same metric names twice: no registry clash
    a.count_ingest("ble", "sealed", 5)
    assert b"vitalbridge_ingest_readings_total" in b.exposition()
    b_samples = parse(b.exposition().decode())
    assert value(b_samples, "vitalbridge_ingest_readings_total", transport="ble",
                 verdict="sealed") == 0


def test_labels_are_bounded() -> None:
    metrics = AgentMetrics()
    with pytest.raises(ValueError):
        metrics.count_ingest("ble", "device-ox-1")  # a device id is never a label
    with pytest.raises(ValueError):
        metrics.observe_alarm_latency(0.01, "purple")
    with pytest.raises(ValueError):
        metrics.count_refused(0)  # success is not a refusal


def test_manual_entries_have_their_own_transport() -> None:
    metrics = AgentMetrics()
    before = parse(metrics.exposition().decode())
    assert value(before, "vitalbridge_ingest_readings_total", transport="manual",
                 verdict="manual") == 0  # pre-created like every other transport
    metrics.count_ingest("manual", "manual", 2)
    after = parse(metrics.exposition().decode())
    assert value(after, "vitalbridge_ingest_readings_total", transport="manual",
                 verdict="manual") == 2
    assert value(after, "vitalbridge_ingest_readings_total", transport="serial",
                 verdict="manual") == 0


def test_gauges_from_journal_and_eventlog(tmp_path: Path) -> None:
    journal = JournalStore.open(tmp_path / "journal.db")
    now = time.time()
    ids = journal.append([
        NewMessage("readings", "ox-1", b"payload-%d" % i, received_at=now - 10)
        for i in range(5)
    ] + [NewMessage("alarm", None, b"alarm", priority=Priority.ALARM, received_at=now - 1)])
    journal.mark_sent(ids[:2], at=now)
    events = EventLog.open(tmp_path / "events.db", "gw-0001", bytes(range(32)),
                           checkpoint_every=3)
    for i in range(4):
        events.append("agent.started", "agent", "gateway:gw-0001", {"version": f"1.{i}"})

    metrics = AgentMetrics()
    metrics.update_from_journal(journal.stats(now))
    metrics.update_from_eventlog(events.stats())
    with metrics.start_http_server(0) as server:
        samples = scrape(f"http://127.0.0.1:{server.port}/metrics")
    assert value(samples, "vitalbridge_backlog_messages", state="stored",
                 priority="routine") == 3
    assert value(samples, "vitalbridge_backlog_messages", state="sent", priority="routine") == 2
    assert value(samples, "vitalbridge_backlog_messages", state="stored", priority="alarm") == 1
    assert value(samples, "vitalbridge_backlog_messages", state="received",
                 priority="critical") == 0
    assert value(samples, "vitalbridge_backlog_bytes") == 5 * len(b"payload-0") + len(b"alarm")
    assert value(samples, "vitalbridge_backlog_oldest_age_seconds") == pytest.approx(10, abs=1)
    assert value(samples, "vitalbridge_journal_bytes", kind="file") > 0
    assert value(samples, "vitalbridge_eventlog_entries") == 4
    assert value(samples, "vitalbridge_eventlog_uncovered_entries") == 1
    assert value(samples, "vitalbridge_eventlog_last_checkpoint_timestamp_seconds") == \
        pytest.approx(time.time(), abs=60)

    # A drained backlog reads 0, not its last value.
    journal.mark_received([m.digest for m in journal.get(ids)], at=now)
    metrics.update_from_journal(journal.stats(now))
    drained = parse(metrics.exposition().decode())
    assert value(drained, "vitalbridge_backlog_messages", state="stored", priority="routine") == 0
    assert value(drained, "vitalbridge_backlog_messages", state="received",
                 priority="routine") == 5
    events.close()
    journal.close()
