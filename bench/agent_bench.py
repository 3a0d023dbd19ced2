#!/usr/bin/env python3
"""End-to-end throughput and alarm latency of the edge agent, against a bare baseline
measured in the same run, on the same broker.

    .venv/bin/python bench/agent_bench.py [--batches N] [--backlog READINGS] [--json FILE]
                                          [--alarm-devices K] [--profile]
                                          [--outage-hours H] [--trace]

Measured (all in one process, like the agent; a real mosquitto on loopback; SQLite files on
disk with the agent's settings, synchronous=FULL):

  agent      frame in -> verified -> journaled -> published -> PUBACK -> marked sent:
             N sealed batches of 10 readings (SpO2/pulse, a bound patient, so every reading
             also runs through the rules) written as COBS frames into a real PTY; the clock
             runs from the first byte written to the moment the journal holds all N as sent.
  baseline   the same N batch messages: cbor2 decode + batched SQLite insert (256 rows per
             transaction, WAL, synchronous=FULL) + paho publish (QoS 1, window 64), until
             every PUBACK is back.
  alarms     K more devices on their own PTYs each send one batch whose values are red for
             four quantities; reading received -> alarm published (and -> PUBACK): half of
             them under a steady background load (--load-fraction of the measured throughput,
             from another device), half while the agent drains the backlog below.
  drain      a backlog of BACKLOG readings (batches of 10) is put into the journal as an
             outage of --outage-hours leaves it (stored, not sent, each row a sealed batch's
             COSE_Mac0), then the agent starts with the broker up; readings/s until all are
             marked sent.
  --trace    per alarm step of the loaded phase: publish call, socket write, PUBACK in the
             kernel, read by paho, handled on the loop, marked sent (docs/agent.md); and in
             both alarm phases the hops before the publish call: frame read -> verified ->
             handed to the journal -> commit start -> committed -> urgent lane -> published,
             with the journal writer's job in progress when each step arrived.

No centre is subscribed: PUBACK ("no matching subscribers") is what marks a row sent, so the
receipt path (limited by the centre) is not in these figures; `uplink.max_unconfirmed` is
raised accordingly. The figures are printed and, with --json, written as
readings_per_s, baseline_readings_per_s, ratio_to_baseline, alarm_latency_ms_p50,
alarm_latency_ms_p99, alarm_latency_ms_p99_draining, drain_readings_per_s and details.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import math
import os
import pstats
import socket
import sqlite3
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cbor2  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from edge_agent.config import parse_config  # noqa: E402
from edge_agent.journal import JournalStore, NewMessage  # noqa: E402
from edge_agent.serial_ingest import PortState  # noqa: E402
from edge_agent.service import AgentService  # noqa: E402
from protocol import messages, topics, uplink  # noqa: E402
from protocol.frames import encode_frame  # noqa: E402
from simulator.agent_home import FirmwareStandIn, provision_home  # noqa: E402
from simulator.broker import Broker  # noqa: E402
from simulator.serial_devices import PtySerialDevice  # noqa: E402

GW = "gw-bench"
LOAD_DEVICE = "ox-load"
BACKGROUND_DEVICE = "ox-background"
PER_BATCH = 10
CHECKPOINT_EVERY = 1000
RED = [("spo2", 85), ("pr", 150), ("temp", 34.0), ("rr", 30)]  # four red conditions at once


def load_values(index: int, batches: int) -> list[tuple[str, float, float]]:
    """Batch `index` of the load device: SpO2 and pulse once a second of device time, so the
    whole load is a stretch of history ending now (a device catching up at full speed) and
    the rules see realistic per-patient rates rather than thousands of readings a second."""
    start = int(time.time()) - batches * (PER_BATCH // 2)
    values: list[tuple[str, float, float]] = []
    for k in range(PER_BATCH // 2):
        second = index * (PER_BATCH // 2) + k
        values += [("spo2", 96 + second // 7 % 3, start + second),
                   ("pr", 70 + second // 5 % 7, start + second)]
    return values


def stream(device: FirmwareStandIn, batches: int) -> tuple[list[bytes], list[bytes]]:
    """`batches` sealed batches of the device's history, with a signed checkpoint after every
    CHECKPOINT_EVERY of them (as the firmware does; a hash chain needs one at least every
    65536 seqs), ending with one. -> (every message in order, the sealed batches alone)."""
    out, sealed = [], []
    for index in range(batches):
        sealed.append(device.seal(load_values(index, batches))[1])
        out.append(sealed[-1])
        if (index + 1) % CHECKPOINT_EVERY == 0 or index == batches - 1:
            assert device.chain is not None
            out.append(messages.encode("checkpoint", device.chain.checkpoint(
                device.keys.seed, device.keys.device_id, int(time.time()), device.kid_sign)))
    return out, sealed


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- the baseline -------------------------------------------------------------------------------


def baseline(batches: list[bytes], port: int, db_path: Path) -> float:
    """cbor2 decode + batched SQLite insert + paho QoS 1 publish of `batches`; seconds."""
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    acked = threading.Semaphore(0)
    window = threading.Semaphore(64)

    def on_publish(_c: Any, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        window.release()
        acked.release()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-baseline",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(64)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    topic = "bench/baseline/readings"
    start = time.perf_counter()
    for offset in range(0, len(batches), 256):
        group = batches[offset:offset + 256]
        decoded = [cbor2.loads(m) for m in group]
        db.execute("BEGIN")
        db.executemany("INSERT INTO rows (payload) VALUES (?)", [(m,) for m in group])
        db.execute("COMMIT")
        for message, _ in zip(group, decoded, strict=True):
            window.acquire()
            client.publish(topic, message, qos=1)
    for _ in batches:
        acked.acquire()
    elapsed = time.perf_counter() - start
    client.loop_stop()
    client.disconnect()
    db.close()
    return elapsed


# -- devices ------------------------------------------------------------------------------------


class Drain(threading.Thread):
    """Reads and discards what the agent sends to a device (its acks), so the PTY never
    fills; counts bytes."""

    def __init__(self, pty: PtySerialDevice) -> None:
        super().__init__(daemon=True)
        self.pty = pty
        self.stop = threading.Event()
        self.received = 0

    def run(self) -> None:
        port = self.pty._port()  # the device end; reads time out every 20 ms
        while not self.stop.is_set():
            try:
                self.received += len(port.read(65536))
            except Exception:  # noqa: BLE001 - closed at the end of the bench
                return


def red_at(alarm_devices: list[FirmwareStandIn], spacing_s: float) -> threading.Thread:
    """Send one red batch from each alarm device, `spacing_s` apart, on a thread."""
    def fire() -> None:
        for device in alarm_devices:
            device.send(RED)
            time.sleep(spacing_s)
    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    return thread


# -- the PUBACK trace (--trace) -----------------------------------------------------------------


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; also its cmsg type


def _publish_mid(buf: bytes) -> int | None:
    """The packet id of a QoS 1 PUBLISH starting at buf[0], else None."""
    if len(buf) < 2 or buf[0] & 0xF0 != 0x30 or (buf[0] >> 1) & 3 != 1:
        return None
    pos = 1
    while pos < len(buf) and buf[pos] & 0x80:
        pos += 1
    pos += 1
    if pos + 2 > len(buf):
        return None
    pos += 2 + int.from_bytes(buf[pos:pos + 2], "big")
    return int.from_bytes(buf[pos:pos + 2], "big") if pos + 2 <= len(buf) else None


class PubackTrace:
    """Where an alarm's time goes between the publish call and the journal's "sent" mark.
    Installed on the agent's paho client: socket writes are parsed for PUBLISH packet ids,
    reads use recvmsg with SO_TIMESTAMPNS so each PUBACK carries the kernel's arrival time
    (on loopback: the moment the broker sent it). All times time.monotonic()."""

    def __init__(self) -> None:
        self.offset = time.time() - time.monotonic()  # wall -> monotonic
        self.written: dict[int, float] = {}  # mid -> socket write (paho's thread)
        self.arrived: dict[int, float] = {}  # mid -> PUBACK in the kernel
        self.read: dict[int, float] = {}  # mid -> PUBACK read by paho
        self.read_lag: list[float] = []  # every PUBACK: kernel arrival -> read by paho
        self.by_digest: dict[bytes, dict[str, float]] = {}  # alarm steps PUBACKed
        self.received: dict[bytes, float] = {}  # alarm step -> its reading's arrival
        self._inbuf = bytearray()
        self._first_at: float | None = None  # kernel time of the packet being read

    def install(self, service: AgentService) -> None:
        client = service.link._link._client
        sock = client._sock
        if sock is None or not sys.platform.startswith("linux"):
            raise RuntimeError("trace: needs Linux and a connected plain socket")
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        send, cmsg_room = client._sock_send, socket.CMSG_SPACE(16)

        def traced_send(buf: bytes) -> int:
            n = send(buf)
            mid = _publish_mid(bytes(buf[:256]))
            if mid is not None:
                self.written[mid] = time.monotonic()
            return n

        def traced_recv(size: int) -> bytes:
            data, ancdata, _flags, _addr = sock.recvmsg(size, cmsg_room)
            if not data:
                return data
            kernel = None
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", value[:16])
                    kernel = sec + nsec / 1e9 - self.offset
            self._parse(data, kernel, time.monotonic())
            return data

        client._sock_send = traced_send
        client._sock_recv = traced_recv
        journal = service.journal
        mark_sent = journal.mark_sent
        self.marked: dict[int, float] = {}

        async def traced_mark_sent(ids: Any, at: float | None = None) -> int:
            ids = list(ids)
            result = await mark_sent(ids, at)
            now = time.monotonic()
            for row_id in ids:
                self.marked[row_id] = now
            return result

        journal.mark_sent = traced_mark_sent  # type: ignore[method-assign]
        self.service = service

    def _parse(self, data: bytes, kernel: float | None, now: float) -> None:
        """Split the byte stream into MQTT packets; note each PUBACK's arrival and read."""
        buf = self._inbuf
        if not buf:
            self._first_at = kernel
        buf += data
        while len(buf) >= 2:
            length, mult, pos = 0, 1, 1
            while pos < len(buf) and buf[pos] & 0x80:
                length += (buf[pos] & 0x7F) * mult
                mult *= 128
                pos += 1
            if pos >= len(buf):
                return
            length += buf[pos] * mult
            end = pos + 1 + length
            if end > len(buf):
                return
            if buf[0] & 0xF0 == 0x40 and length >= 2:
                mid = int.from_bytes(buf[pos + 1:pos + 3], "big")
                arrived = self._first_at if self._first_at is not None else now
                self.arrived[mid], self.read[mid] = arrived, now
                self.read_lag.append(now - arrived)
            del buf[:end]
            self._first_at = kernel

    def alarm_acked(self, sent: Any) -> None:
        """On the event loop when an alarm's PUBACK event is handled (before Delivery)."""
        entry = self.service.delivery._window.get(sent.mid)
        self.by_digest[sent.digest] = {
            "mid": sent.mid, "row": entry.row_id if entry else -1,
            "publish_call": sent.published_at,
            "socket_write": self.written.get(sent.mid, math.nan),
            "puback_arrived": self.arrived.get(sent.mid, math.nan),
            "puback_read": self.read.get(sent.mid, math.nan),
            "loop_handled": time.monotonic()}

    def alarm_journaled(self, digest: bytes, received_wall: float) -> None:
        """The alarm path reported the step journaled (before or after its PUBACK)."""
        self.received[digest] = received_wall - self.offset

    def summary(self) -> dict[str, Any]:
        """Per hop, p50/p99/max in ms over the alarms; and the PUBACK read lag of all."""
        self.alarms = []
        for digest, alarm in self.by_digest.items():
            if digest in self.received:
                alarm["received"] = self.received[digest]
                alarm["marked_sent"] = self.marked.get(int(alarm["row"]), math.nan)
                self.alarms.append(alarm)
        hops = [("received", "publish_call"), ("publish_call", "socket_write"),
                ("socket_write", "puback_arrived"), ("puback_arrived", "puback_read"),
                ("puback_read", "loop_handled"), ("loop_handled", "marked_sent")]
        out: dict[str, Any] = {"alarms": len(self.alarms)}
        for start, end in hops:
            gaps = [a[end] - a[start] for a in self.alarms
                    if not math.isnan(a[end] - a[start])]
            out[f"{start}->{end}"] = [round((percentile(gaps, q) or 0) * 1000, 2)
                                      for q in (0.5, 0.99, 1.0)]
        out["all_pubacks_arrived->read"] = [
            round((percentile(self.read_lag, q) or 0) * 1000, 2) for q in (0.5, 0.99, 1.0)]
        out["all_pubacks"] = len(self.read_lag)
        return out


class PipelineTrace:
    """Where an alarm's time goes BEFORE the publish call, hop by hop: frame read from the PTY
    (the supervisor's `received_at`) -> verified (the rules get the readings) -> alarm step
    handed to the journal -> its commit starts on the journal's writer thread -> committed ->
    handed over to Delivery's urgent lane on the event loop -> publish call returned. Every
    job of the writer thread is logged (kind, start, end, rows), so each alarm's wait for its
    commit is attributed to the job that held the writer when the step arrived. Installed on a
    running agent by wrapping instance attributes; nothing in the agent is changed. All times
    time.monotonic()."""

    def __init__(self) -> None:
        self.offset = time.time() - time.monotonic()
        self.verified: dict[float, float] = {}  # received_at (wall) -> verified
        self.submitted: dict[bytes, tuple[float, float]] = {}  # digest -> (received, submit)
        self.commit: dict[bytes, tuple[float, float]] = {}  # digest -> (start, end)
        self.handed: dict[bytes, float] = {}  # digest -> on Delivery's urgent lane
        self.published: dict[bytes, float] = {}  # digest -> publish call returned
        self.jobs: list[tuple[str, float, float, int]] = []  # writer: kind, start, end, rows
        self._pending_received: dict[bytes, float] = {}
        self._group_digests: list[bytes] | None = None  # alarm rows of the commit under way

    def install(self, service: AgentService) -> None:
        journal, store, delivery = service.journal, service.journal._store, service.delivery
        alarms = service.alarms
        assert store is not None
        readings = alarms.readings

        def traced_readings(batch: Any, received_at: float) -> None:
            self.verified.setdefault(received_at, time.monotonic())
            readings(batch, received_at)

        alarms.readings = traced_readings  # type: ignore[method-assign]
        journaled = alarms._on_journaled

        def traced_journaled(alarm: Any) -> None:
            if alarm.received_at is not None:
                self._pending_received[alarm.digest] = alarm.received_at
            if journaled is not None:
                journaled(alarm)

        alarms._on_journaled = traced_journaled
        append_many = journal.append_many

        async def traced_append_many(messages_: Any) -> list[int]:
            now = time.monotonic()
            for message in messages_:
                if message.kind == topics.UP_ALARM:
                    self.submitted[message.digest] = (math.nan, now)
            return await append_many(messages_)

        journal.append_many = traced_append_many  # type: ignore[method-assign]

        def timed(name: str, method: Any) -> Any:
            def call(*a: Any, **k: Any) -> Any:
                start = time.monotonic()
                try:
                    return method(*a, **k)
                finally:
                    rows = a[0] if name == "next_batch" else len(a[0]) if a else 0
                    self.jobs.append((name, start, time.monotonic(), int(rows)))
            return call

        for name in ("next_batch", "mark_sent", "release", "mark_received", "claim_committed"):
            setattr(store, name, timed(name, getattr(store, name)))
        group = store.group

        @contextlib.contextmanager
        def traced_group() -> Any:
            start, digests = time.monotonic(), []
            self._group_digests = digests
            try:
                with group() as add:
                    def traced_add(item: Any) -> int:
                        if isinstance(item, NewMessage) and item.kind == topics.UP_ALARM:
                            digests.append(item.digest)
                        return add(item)
                    yield traced_add
            finally:
                self._group_digests = None
            end = time.monotonic()
            self.jobs.append(("alarm insert" if digests else "insert", start, end, 0))
            for digest in digests:
                self.commit[digest] = (start, end)

        store.group = traced_group  # type: ignore[method-assign]
        insert_row = getattr(store, "insert_row", None)
        if insert_row is not None:  # urgent rows inserted for the hand-over
            def traced_insert_row(message: Any) -> Any:
                if self._group_digests is not None and message.kind == topics.UP_ALARM:
                    self._group_digests.append(message.digest)
                return insert_row(message)
            store.insert_row = traced_insert_row  # type: ignore[method-assign]
        take_urgent = delivery._take_urgent

        def traced_take_urgent(rows: list[Any]) -> None:
            now = time.monotonic()
            for row in rows:
                self.handed.setdefault(row.digest, now)
            take_urgent(rows)

        journal.hand_over_urgent(traced_take_urgent)
        publish = delivery.link.publish

        def traced_publish(topic: str, payload: bytes, correlation: bytes | None = None,
                           response_topic: str | None = None) -> Any:
            queued = publish(topic, payload, correlation, response_topic)
            if correlation in self.submitted:
                self.published.setdefault(correlation, time.monotonic())
            return queued

        delivery.link.publish = traced_publish  # type: ignore[method-assign]

    def _holder(self, at: float) -> str:
        """The writer job in progress at `at` ("idle" if none)."""
        for kind, start, end, _ in reversed(self.jobs):
            if start <= at < end:
                return kind
            if end < at - 1.0:
                break
        return "idle"

    def summary(self) -> dict[str, Any]:
        """Per hop p50/p99/max in ms over the alarm steps caused by a reading; what held the
        writer when each step arrived; the writer's jobs by kind (count, ms p50/p99/max)."""
        rows = []
        for digest, (_, submitted) in self.submitted.items():
            received_wall = self._pending_received.get(digest)
            if received_wall is None or digest not in self.published:
                continue
            rows.append({
                "received": received_wall - self.offset,
                "verified": self.verified.get(received_wall, math.nan),
                "submitted": submitted,
                "commit_start": self.commit.get(digest, (math.nan, math.nan))[0],
                "committed": self.commit.get(digest, (math.nan, math.nan))[1],
                "handed_over": self.handed.get(digest, math.nan),
                "published": self.published[digest],
                "holder": self._holder(submitted)})
        hops = ["received", "verified", "submitted", "commit_start", "committed",
                "handed_over", "published"]
        out: dict[str, Any] = {"alarm_steps": len(rows)}
        for start, end in [*zip(hops, hops[1:], strict=False), ("received", "published")]:
            gaps = [r[end] - r[start] for r in rows if not math.isnan(r[end] - r[start])]
            out[f"{start}->{end}"] = [round((percentile(gaps, q) or 0) * 1000, 2)
                                      for q in (0.5, 0.99, 1.0)]
        holders: dict[str, int] = {}
        for r in rows:
            holders[r["holder"]] = holders.get(r["holder"], 0) + 1
        out["writer_busy_with_at_submit"] = holders
        kinds: dict[str, list[float]] = {}
        for kind, start, end, _ in self.jobs:
            kinds.setdefault(kind, []).append(end - start)
        out["writer_jobs_ms"] = {
            kind: [len(d)] + [round((percentile(d, q) or 0) * 1000, 2) for q in (0.5, 0.99, 1.0)]
            for kind, d in sorted(kinds.items())}
        slowest = max(rows, key=lambda r: r["published"] - r["received"], default=None)
        if slowest is not None:
            out["slowest"] = {k: (round((v - slowest["received"]) * 1000, 2)
                                  if isinstance(v, float) else v) for k, v in slowest.items()}
        return out


# -- the agent ----------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, broker: Broker) -> None:
        self.args = args
        self.tmp = tmp
        self.broker = broker
        self.alarm_ids = [f"ox-alarm-{i:03d}" for i in range(args.alarm_devices)]
        self.home = provision_home(tmp / "data", GW, [
            (LOAD_DEVICE, "p-0001"), (BACKGROUND_DEVICE, "p-0002")] + [
            (device, f"p-{i + 100:04d}") for i, device in enumerate(self.alarm_ids)])
        self.ptys = {device: PtySerialDevice(tmp / f"tty-{device}", write_timeout=120)
                     for device in [LOAD_DEVICE, BACKGROUND_DEVICE, *self.alarm_ids]}
        for pty in self.ptys.values():
            pty.plug()
        self.latency_publish: list[float] = []
        self.latency_puback: list[float] = []
        self._alarm_received: dict[bytes, float] = {}
        # The journal hands an alarm to the uplink at its commit: its PUBACK can come back
        # before the alarm path reports it journaled. digest -> wall time of the PUBACK.
        self._alarm_acked_first: dict[bytes, float] = {}
        self.trace: PubackTrace | None = None
        self.puback_by_digest: dict[bytes, float] = {}

    def config(self) -> Any:
        return parse_config({
            "gateway": {"id": GW, "data_dir": str(self.home.data_dir)},
            "broker": {"host": "127.0.0.1", "port": self.broker.port},
            "uplink": {"max_unconfirmed": 1 << 30, "receipt_timeout_s": 3600},
            "serial": [{"name": device, "device": device, "driver": "vitalbridge",
                        "path": str(pty.path)} for device, pty in self.ptys.items()],
            "eventlog": {"transmissions": self.args.transmissions},
            "logging": {"level": "WARNING"},
        }, self.tmp / "gateway.toml")

    async def start_agent(self) -> AgentService:
        service = AgentService(self.config())
        await service.start()
        for device in self.ptys:
            await asyncio.wait_for(service.serial.wait_for_state(device, PortState.OPEN), 10)
        self._watch_alarms(service)
        return service

    def _watch_alarms(self, service: AgentService) -> None:
        """Collect exact alarm latencies (the metric is a histogram): reading received ->
        alarm handed to the broker (the steps the agent's metric counts), and -> its PUBACK
        (every step a reading caused)."""
        observe = service.metrics.observe_alarm_latency
        journaled = service._alarm_journaled
        acknowledged = service.acknowledged

        def puback(digest: bytes, seconds: float) -> None:
            self.latency_puback.append(seconds)
            self.puback_by_digest[digest] = seconds

        def on_journaled(alarm: Any) -> None:
            journaled(alarm)
            if alarm.received_at is None:
                return
            if self.trace is not None:
                self.trace.alarm_journaled(alarm.digest, alarm.received_at)
            acked = self._alarm_acked_first.pop(alarm.digest, None)
            if acked is not None:
                puback(alarm.digest, acked - alarm.received_at)
            else:
                self._alarm_received[alarm.digest] = alarm.received_at

        def on_latency(seconds: float, grade: str) -> None:
            self.latency_publish.append(seconds)
            observe(seconds, grade)

        def on_ack(sent: Any, code: int, at: float) -> None:
            if self.trace is not None and sent.kind == topics.UP_ALARM:
                self.trace.alarm_acked(sent)
            received = self._alarm_received.pop(sent.digest, None)
            if received is not None:
                puback(sent.digest, time.time() - received)
            elif sent.kind == topics.UP_ALARM:
                self._alarm_acked_first[sent.digest] = time.time()
            acknowledged(sent, code, at)

        service.alarms._on_journaled = on_journaled
        service.metrics.observe_alarm_latency = on_latency  # type: ignore[method-assign]
        service.acknowledged = on_ack  # type: ignore[method-assign]

    def new_phase(self) -> tuple[list[float], list[float]]:
        """Start measuring a phase afresh; -> the previous phase's (publish, PUBACK)
        latencies. Without this, steps caused by the throughput phase's readings (which
        waited behind their own link's backlog in the reception queue) counted in the loaded
        phase: the 0.5-3.3 s "alarm -> PUBACK" tail of earlier runs (docs/agent.md)."""
        previous = (self.latency_publish, self.latency_puback)
        self.latency_publish, self.latency_puback = [], []
        self.puback_by_digest = {}
        self._alarm_received.clear()
        self._alarm_acked_first.clear()
        return previous

    async def handshakes(self) -> dict[str, FirmwareStandIn]:
        devices = {device: FirmwareStandIn(self.home.devices[device],
                                           self.home.gateway_x25519_public, pty)
                   for device, pty in self.ptys.items()}
        await asyncio.gather(*(asyncio.to_thread(d.handshake, 15) for d in devices.values()))
        return devices


def sent_rows(path: Path) -> int:
    """Rows marked sent (or received), read on a connection of its own: polling through the
    agent's journal would queue the scans on its writer thread and slow what is measured."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM messages WHERE state != 'stored'").fetchone()[0]
    finally:
        db.close()


async def wait_all_sent(path: Path, total: int, timeout: float) -> float:
    """Seconds until `total` journal rows are sent (or received)."""
    start = time.perf_counter()
    while await asyncio.to_thread(sent_rows, path) < total:
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"only {sent_rows(path)} of {total} rows sent")
        await asyncio.sleep(0.05)
    return time.perf_counter() - start


def build_backlog(path: Path, device: str, sealed: list[bytes], batches: int,
                  outage_s: float) -> float:
    """Rows as an outage of `outage_s` seconds that ended a minute ago leaves them: stored,
    unsent, arriving evenly over the outage, each holding a sealed batch's COSE_Mac0 as the
    verifier journals it (the device's `sealed` messages, cycled). Seconds taken.

    Faithful rows matter at start-up: the rules' history rebuild (alarms/history.py) decodes
    every reading row of its window (15 min), and warned about the whole-message rows this
    benchmark used to write."""
    start = time.perf_counter()
    bodies = [messages.decode(message)[1] for message in sealed]
    store = JournalStore.open(path)
    end = time.time() - 60
    step = outage_s / batches
    if step < 0.001:  # rows must differ: the journal keeps one row per payload
        raise ValueError("outage too short for one row per millisecond")
    try:
        for offset in range(0, batches, 2000):
            rows = []
            for i in range(offset, min(batches, offset + 2000)):
                received = end - (batches - 1 - i) * step
                rows.append(NewMessage(
                    topics.UP_READINGS, device,
                    uplink.encode_readings(device, bodies[i % len(bodies)], "sealed",
                                           int(received * 1000)),
                    count=PER_BATCH, first_seq=i * PER_BATCH,
                    last_seq=i * PER_BATCH + PER_BATCH - 1, received_at=received))
            store.append(rows)
    finally:
        store.close()
    return time.perf_counter() - start


def unconfirmed(path: Path) -> tuple[int, int]:
    """(rows, readings) not yet confirmed by a receipt."""
    with sqlite3.connect(path) as db:
        rows, readings = db.execute("SELECT count(*), coalesce(sum(count), 0) FROM messages "
                                    "WHERE state != 'received'").fetchone()
    return rows, readings


class Paced(threading.Thread):
    """Writes frames into the load device's PTY at `per_s` batches a second (background
    load below saturation), in 10 ms slices."""

    def __init__(self, pty: PtySerialDevice, frames: list[bytes], per_s: float) -> None:
        super().__init__(daemon=True)
        self.pty, self.frames, self.per_s = pty, frames, per_s

    def run(self) -> None:
        start = time.perf_counter()
        written = 0
        while written < len(self.frames):
            due = min(len(self.frames), int((time.perf_counter() - start) * self.per_s) + 1)
            if due > written:
                self.pty.write(b"".join(self.frames[written:due]))
                written = due
            time.sleep(0.01)


def profiled(profiler: cProfile.Profile | None, dump: str | None = None,
             top: int = 25) -> str | None:
    """The top functions by own time; with `dump`, the whole profile to that file too."""
    if profiler is None:
        return None
    if dump:
        profiler.dump_stats(dump)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vitalbridge-agent-bench-") as scratch:
        tmp = Path(scratch)
        with Broker(tmp / "broker") as broker:
            bench = Bench(args, tmp, broker)
            service = await bench.start_agent()
            devices = await bench.handshakes()
            load, background = devices[LOAD_DEVICE], devices[BACKGROUND_DEVICE]
            alarm_devices = [devices[d] for d in bench.alarm_ids]
            half = len(alarm_devices) // 2
            drains = [Drain(pty) for pty in bench.ptys.values()]
            for drain in drains:
                drain.start()
            print(f"sealing {args.batches} batches of {PER_BATCH} readings ...", flush=True)
            sent, batches = await asyncio.to_thread(stream, load, args.batches)
            frames = b"".join(encode_frame(m) for m in sent)
            # The harness holds every sealed batch (and the device's outbox): keep the cyclic
            # GC from re-scanning them in the middle of a measurement.
            gc.collect()
            gc.freeze()

            print("baseline ...", flush=True)
            baseline_s = await asyncio.to_thread(baseline, batches, broker.port,
                                                 tmp / "baseline.sqlite3")
            baseline_rate = args.batches * PER_BATCH / baseline_s

            print("agent, as fast as frames come ...", flush=True)
            journal_file = bench.home.data_dir / "journal.sqlite3"
            already = sent_rows(journal_file)
            profiler = cProfile.Profile() if args.profile else None
            if profiler:
                profiler.enable()
            start = time.perf_counter()
            writer = threading.Thread(target=load.port.write, args=(frames,), daemon=True)
            writer.start()
            await wait_all_sent(journal_file, already + len(sent), timeout=600)
            agent_s = time.perf_counter() - start
            if profiler:
                profiler.disable()
            agent_rate = args.batches * PER_BATCH / agent_s
            profile_agent = profiled(profiler, args.profile_out and
                                     f"{args.profile_out}-agent.prof")

            per_s = agent_rate / PER_BATCH * args.load_fraction
            count = max(1, int(per_s * args.loaded_seconds))
            print(f"alarms under a background load of {per_s * PER_BATCH:,.0f} readings/s "
                  "...", flush=True)
            ingest_puback = bench.new_phase()[1]
            pipeline_loaded = None
            if args.trace:
                bench.trace = PubackTrace()
                bench.trace.install(service)
                pipeline_loaded = PipelineTrace()
                pipeline_loaded.install(service)
            background_stream = (await asyncio.to_thread(stream, background, count))[0]
            paced = Paced(background.port, [encode_frame(m) for m in background_stream], per_s)
            paced.start()
            await asyncio.sleep(min(1.0, args.loaded_seconds / 4))
            firing = red_at(alarm_devices[:half], args.loaded_seconds / 2 / max(1, half))
            await asyncio.to_thread(firing.join)
            await asyncio.to_thread(paced.join)
            await asyncio.sleep(0.5)
            reception = service.reception.counters
            trace = None
            if bench.trace is not None:
                trace = bench.trace.summary()
                slowest = max(bench.puback_by_digest, key=bench.puback_by_digest.__getitem__,
                              default=None)
                trace["slowest_alarm"] = bench.trace.by_digest.get(slowest)  # type: ignore
                bench.trace = None
            loaded_publish, loaded_puback = bench.new_phase()
            await service.stop("bench: loaded phase done")

            backlog_batches = max(1, args.backlog // PER_BATCH)
            print(f"backlog of {backlog_batches * PER_BATCH:,} readings ...", flush=True)
            build_s = await asyncio.to_thread(build_backlog, bench.home.data_dir /
                                              "journal.sqlite3", LOAD_DEVICE, batches,
                                              backlog_batches, args.outage_hours * 3600)
            # Rows sent without a receipt go out again after a restart (at least once), so
            # the drain covers every unconfirmed row: the backlog and the earlier phases'.
            drain_rows, drain_readings = unconfirmed(bench.home.data_dir / "journal.sqlite3")
            bench.new_phase()
            print(f"drain of {drain_readings:,} readings, alarms meanwhile ...", flush=True)
            profiler = cProfile.Profile() if args.profile else None
            start = time.perf_counter()
            service = await bench.start_agent()
            start_s = time.perf_counter() - start
            pipeline_draining = None
            if args.trace:
                pipeline_draining = PipelineTrace()
                pipeline_draining.install(service)
            if profiler:
                profiler.enable()
            firing = red_at(alarm_devices[half:], 0.1)
            drain_s = await wait_all_sent(journal_file, drain_rows, timeout=3600)
            if profiler:
                profiler.disable()
            await asyncio.to_thread(firing.join)
            await asyncio.sleep(0.5)
            drain_publish, drain_puback = bench.new_phase()
            await service.stop("bench: drain phase done")
            for drain in drains:
                drain.stop.set()
            for pty in bench.ptys.values():
                pty.close()

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    figures: dict[str, Any] = {
        "readings_per_s": round(agent_rate),
        "baseline_readings_per_s": round(baseline_rate),
        "ratio_to_baseline": round(agent_rate / baseline_rate, 3),
        "alarm_latency_ms_p50": ms(percentile(loaded_publish, 0.5)),
        "alarm_latency_ms_p99": ms(percentile(loaded_publish, 0.99)),
        "alarm_latency_ms_p99_draining": ms(percentile(drain_publish, 0.99)),
        "drain_readings_per_s": round(drain_readings / drain_s),
        "details": {
            "batches": args.batches, "readings_per_batch": PER_BATCH,
            "agent_seconds": round(agent_s, 3), "baseline_seconds": round(baseline_s, 3),
            "background_readings_per_s": round(per_s * PER_BATCH),
            "alarm_samples_loaded": len(loaded_publish),
            "alarm_latency_ms_p50_draining": ms(percentile(drain_publish, 0.5)),
            "alarm_samples_draining": len(drain_publish),
            "alarm_to_puback_ms_p50": ms(percentile(loaded_puback, 0.5)),
            "alarm_to_puback_ms_p99": ms(percentile(loaded_puback, 0.99)),
            "alarm_to_puback_ms_p99_draining": ms(percentile(drain_puback, 0.99)),
            # Steps caused by the throughput phase's readings: they include the reading's
            # wait behind its own link's backlog (frames written as fast as possible).
            "alarm_to_puback_ms_max_throughput_phase": ms(max(ingest_puback, default=None)),
            "backlog_readings": backlog_batches * PER_BATCH,
            "backlog_build_seconds": round(build_s, 2),
            "outage_hours": args.outage_hours,
            "agent_start_seconds_with_backlog": round(start_s, 3),
            "drained_readings": drain_readings,
            "drain_seconds": round(drain_s, 3),
            "eventlog_transmissions": args.transmissions,
            "shed": reception.shed, "cpus": os.cpu_count(),
        },
    }
    if trace is not None:
        figures["details"]["trace_loaded"] = trace
    if pipeline_loaded is not None and pipeline_draining is not None:
        figures["details"]["pipeline_trace_loaded"] = pipeline_loaded.summary()
        figures["details"]["pipeline_trace_draining"] = pipeline_draining.summary()
    if args.profile:
        figures["details"]["profile_agent"] = profile_agent
        figures["details"]["profile_drain"] = profiled(profiler, args.profile_out and
                                                       f"{args.profile_out}-drain.prof")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10_000,
                        help="sealed batches of 10 readings through the agent (and baseline)")
    parser.add_argument("--backlog", type=int, default=1_000_000,
                        help="readings in the backlog to drain (default 1M = 100k batches)")
    parser.add_argument("--outage-hours", type=float, default=24.0,
                        help="the backlog's rows arrived evenly over an outage this long "
                             "(the rules rebuild at start decodes those of its last 15 min)")
    parser.add_argument("--alarm-devices", type=int, default=40,
                        help="devices that each send one red batch (4 alarms each); half "
                             "fire under background load, half while draining")
    parser.add_argument("--load-fraction", type=float, default=0.5,
                        help="background load while alarms fire, as a fraction of the "
                             "agent's measured throughput")
    parser.add_argument("--loaded-seconds", type=float, default=6.0,
                        help="how long the background load runs")
    parser.add_argument("--transmissions", choices=("all", "refusals"), default="all",
                        help="event journal entries per transmission (the agent's setting)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the agent phase; the top functions go to the output")
    parser.add_argument("--profile-out", metavar="PREFIX",
                        help="with --profile: also write PREFIX-agent.prof, PREFIX-drain.prof")
    parser.add_argument("--trace", action="store_true",
                        help="trace each alarm of the loaded phase from the publish call to "
                             "the journal's sent mark (socket write, PUBACK arrival in the "
                             "kernel, read by paho, handled on the loop)")
    parser.add_argument("--switch-interval", type=float, metavar="S",
                        help="sys.setswitchinterval(S) first (an experiment: the agent runs "
                             "with Python's default, 0.005)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    if args.backlog < 1_000_000:
        print(f"note: backlog scaled down to {args.backlog} readings (goal: 1,000,000)")
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    figures = asyncio.run(run(args))
    details = figures["details"]
    print(f"agent:    {figures['readings_per_s']:>9,} readings/s  (frame in -> verified -> "
          f"journaled -> published -> PUBACK -> marked)")
    print(f"baseline: {figures['baseline_readings_per_s']:>9,} readings/s  (cbor2 decode + "
          "batched SQLite insert + paho publish)")
    print(f"ratio to baseline: {figures['ratio_to_baseline']}  (goal >= 0.5; and >= 25,000 "
          "readings/s)")
    print(f"alarm latency, reading received -> published, under a background load of "
          f"{details['background_readings_per_s']:,} readings/s: p50 "
          f"{figures['alarm_latency_ms_p50']} ms, p99 {figures['alarm_latency_ms_p99']} ms "
          f"({details['alarm_samples_loaded']} alarms)")
    print(f"alarm latency while draining {details['backlog_readings']:,} readings: p50 "
          f"{details['alarm_latency_ms_p50_draining']} ms, p99 "
          f"{figures['alarm_latency_ms_p99_draining']} ms ({details['alarm_samples_draining']}"
          " alarms; goal p99 <= 20 ms)")
    print(f"alarm -> PUBACK: p50 {details['alarm_to_puback_ms_p50']} ms, p99 "
          f"{details['alarm_to_puback_ms_p99']} ms; draining p99 "
          f"{details['alarm_to_puback_ms_p99_draining']} ms")
    print(f"drain: {figures['drain_readings_per_s']:,} readings/s "
          f"({details['drained_readings']:,} readings in {details['drain_seconds']} s)")
    if details.get("trace_loaded"):
        print("PUBACK trace of the loaded phase, ms p50 / p99 / max:")
        for hop, value in details["trace_loaded"].items():
            print(f"  {hop}: {value}")
    for phase in ("pipeline_trace_loaded", "pipeline_trace_draining"):
        if details.get(phase):
            print(f"{phase}: alarm steps, ms p50 / p99 / max per hop before the publish call:")
            for hop, value in details[phase].items():
                print(f"  {hop}: {value}")
    for phase in ("profile_agent", "profile_drain"):
        if details.get(phase):
            print(f"--- {phase} (event loop thread, by own time) ---")
            print(details[phase])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
