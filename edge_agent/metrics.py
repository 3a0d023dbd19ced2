"""Prometheus metrics of the edge agent (docs/metrics.md lists every one).

Each `AgentMetrics` owns its own CollectorRegistry, never prometheus_client's global default:
tests, the benchmark and several agents in one process do not collide. Label values come
from fixed sets (transports, verdicts, states, priorities, grades, reason codes), so a
misbehaving device cannot blow up the number of time series; no label ever carries a device
or patient id.

The HTTP endpoint binds to loopback by default: metrics describe the home network's devices
and the gateway's health, so exposing them is an explicit choice (`addr="0.0.0.0"`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server as _prometheus_http_server

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from edge_agent.eventlog.store import EventLogStats
    from edge_agent.journal.store import JournalStats

# "manual": values a person entered (`vitalbridge reading add`, edge_agent/inbox); no link
TRANSPORTS = ("ble", "serial", "wifi", "manual")
VERDICTS = ("sealed", "attested", "manual")  # edge_agent.journal.store.VERDICTS
STATES = ("stored", "sent", "received")  # edge_agent.journal.schema.STATES
PRIORITIES = ("routine", "critical", "alarm")  # edge_agent.journal.store.Priority, by value
GRADES = ("red", "orange", "yellow", "blue")
QUARANTINE_CAUSES = ("seal", "certificate", "replay", "decode", "range", "other")

# Publish -> centre receipt: from a LAN round trip to a long outage drained later.
DELIVERY_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600,
                        86400)
# Reading received -> alarm published: the goal is milliseconds (p99 <= 20 ms while draining).
ALARM_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


def _check(label: str, value: str, allowed: Iterable[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{label} {value!r} is not one of {', '.join(allowed)}")
    return value


@dataclass
class MetricsServer:
    """A running /metrics endpoint; `close()` stops it and frees the port."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def addr(self) -> str:
        return str(self.server.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AgentMetrics:
    """The agent's metrics in a private registry. Counters and histograms are updated where
    the event happens; gauges are refreshed from journal statistics by `update_from_*`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ingested = Counter(
            "vitalbridge_ingest_readings", "Readings accepted from devices",
            ["transport", "verdict"], registry=r)
        self.quarantined = Counter(
            "vitalbridge_quarantined_inputs", "Device inputs that failed verification and were "
            "quarantined", ["transport", "cause"], registry=r)
        self.publish_refused = Counter(
            "vitalbridge_publish_refused", "Publishes the broker refused (PUBACK reason code "
            ">= 0x80)", ["reason_code"], registry=r)
        self.backlog = Gauge(
            "vitalbridge_backlog_messages", "Messages in the reading journal by state and "
            "priority (received rows wait only for retention)", ["state", "priority"],
            registry=r)
        self.backlog_bytes = Gauge(
            "vitalbridge_backlog_bytes", "Payload bytes not yet confirmed by the centre",
            registry=r)
        self.backlog_oldest_age = Gauge(
            "vitalbridge_backlog_oldest_age_seconds", "Age of the oldest message not yet "
            "confirmed by the centre (0 when none)", registry=r)
        self.in_flight = Gauge(
            "vitalbridge_publish_in_flight", "Publishes awaiting PUBACK", registry=r)
        self.quarantine_rows = Gauge(
            "vitalbridge_quarantine_rows", "Inputs held in quarantine", registry=r)
        self.journal_bytes = Gauge(
            "vitalbridge_journal_bytes", "Reading journal size: file = database + WAL on disk, "
            "used = pages in use (what the disk budget measures)", ["kind"], registry=r)
        self.delivery_lag = Histogram(
            "vitalbridge_delivery_lag_seconds", "Publish to the centre's application receipt",
            ["priority"], buckets=DELIVERY_LAG_BUCKETS, registry=r)
        self.alarm_latency = Histogram(
            "vitalbridge_alarm_latency_seconds", "Reading received to alarm published",
            ["grade"], buckets=ALARM_LATENCY_BUCKETS, registry=r)
        self.devices_online = Gauge(
            "vitalbridge_devices_online", "Devices currently connected or seen within their "
            "reporting interval", ["transport"], registry=r)
        self.eventlog_entries = Gauge(
            "vitalbridge_eventlog_entries", "Entries in the tamper-evident event journal",
            registry=r)
        self.eventlog_uncovered = Gauge(
            "vitalbridge_eventlog_uncovered_entries", "Event journal entries not yet covered "
            "by a signed checkpoint", registry=r)
        self.eventlog_checkpoint_time = Gauge(
            "vitalbridge_eventlog_last_checkpoint_timestamp_seconds", "When the last event "
            "journal checkpoint was signed (0: never)", registry=r)
        # Every label combination exists from the start, so a rate() over it is never absent.
        for transport in TRANSPORTS:
            self.devices_online.labels(transport)
            for verdict in VERDICTS:
                self.ingested.labels(transport, verdict)
            for cause in QUARANTINE_CAUSES:
                self.quarantined.labels(transport, cause)
        for state in STATES:
            for priority in PRIORITIES:
                self.backlog.labels(state, priority)

    # -- events -------------------------------------------------------------------------------

    def count_ingest(self, transport: str, verdict: str, readings: int = 1) -> None:
        self.ingested.labels(_check("transport", transport, TRANSPORTS),
                             _check("verdict", verdict, VERDICTS)).inc(readings)

    def count_quarantine(self, transport: str, cause: str) -> None:
        """`cause` outside QUARANTINE_CAUSES counts as "other" (reasons are free text)."""
        cause = cause if cause in QUARANTINE_CAUSES else "other"
        self.quarantined.labels(_check("transport", transport, TRANSPORTS), cause).inc()

    def count_refused(self, reason_code: int) -> None:
        if not 0x80 <= reason_code <= 0xFF:
            raise ValueError("a refusal has an MQTT reason code 0x80..0xFF")
        self.publish_refused.labels(str(reason_code)).inc()

    def observe_delivery_lag(self, seconds: float, priority: str = "routine") -> None:
        self.delivery_lag.labels(_check("priority", priority, PRIORITIES)).observe(
            max(0.0, seconds))

    def observe_alarm_latency(self, seconds: float, grade: str) -> None:
        self.alarm_latency.labels(_check("grade", grade, GRADES)).observe(max(0.0, seconds))

    def set_devices_online(self, transport: str, count: int) -> None:
        self.devices_online.labels(_check("transport", transport, TRANSPORTS)).set(count)

    # -- gauges from statistics -------------------------------------------------------------

    def update_from_journal(self, stats: JournalStats) -> None:
        """Refresh backlog and storage gauges from `JournalStore.stats()`. Combinations
        absent from the stats are set to 0, so a drained backlog reads 0, not its last value."""
        for state in STATES:
            for value, priority in enumerate(PRIORITIES):
                self.backlog.labels(state, priority).set(stats.rows.get((state, value), 0))
        self.backlog_bytes.set(stats.unsent_bytes)
        self.backlog_oldest_age.set(stats.oldest_unsent_age_s or 0.0)
        self.in_flight.set(stats.in_flight)
        self.quarantine_rows.set(stats.quarantined)
        self.journal_bytes.labels("file").set(stats.file_bytes)
        self.journal_bytes.labels("used").set(stats.used_bytes)

    def update_from_eventlog(self, stats: EventLogStats) -> None:
        """Refresh the event journal gauges from `EventLog.stats()`."""
        self.eventlog_entries.set(stats.last_seq)
        self.eventlog_uncovered.set(stats.uncovered)
        self.eventlog_checkpoint_time.set(stats.last_checkpoint_at or 0.0)

    # -- exposition -------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text a scrape returns (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry)

    def start_http_server(self, port: int, addr: str = "127.0.0.1") -> MetricsServer:
        """Serve /metrics on addr:port in a daemon thread (port 0: any free port)."""
        server, thread = _prometheus_http_server(port, addr=addr, registry=self.registry)
        return MetricsServer(server, thread)
