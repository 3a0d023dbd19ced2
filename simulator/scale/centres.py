"""Reference centres for the scale benchmark, what they stored, and the bare baseline.

`centre_main` runs one real `simulator.centre.Centre` in its own process, in the shared
subscription group ($share/centre), with its own SQLite store. `CentreStores` reads those
stores read-only (the oracle: what the centre stored, when it arrived, how often it was a
repeat). `baseline_main` is the comparison path: pre-built readings messages of the same
shape the agent publishes (sealed batch, MQTT 5 QoS 1, ResponseTopic + CorrelationData so
the centre receipts them) published by one bare paho connection as fast as it acknowledges.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from multiprocessing.connection import Connection
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol import crypto, sealing, senml, topics, uplink
from simulator.centre import Centre, CentreConfig, TrustAnchor
from simulator.scale.devices import QUANTITIES, oximeter_values

BASELINE_WINDOW = 100  # QoS 1 messages awaiting a PUBACK, as the agent's default window


def centre_main(port: int, database: str, gateway_keys: dict[str, bytes], client_id: str,
                session_expiry_s: int, conn: Connection) -> None:
    """Process entry point: run one centre until the parent sends anything.

    The baseline's centres leave with session expiry 0: a departed member whose session the
    broker keeps still takes its round-robin share of the shared subscription, queued for
    nobody (measured: half of the next centres' messages went there)."""
    centre = Centre(CentreConfig(port=port, database=Path(database), client_id=client_id,
                                 anchor=TrustAnchor(gateway_keys=gateway_keys),
                                 gap_deadline_s=300.0, session_expiry_s=session_expiry_s))
    centre.start(timeout=30)
    conn.send(("started", {}))
    conn.recv()
    centre.stop()
    conn.send(("stopped", centre.ingest.stats))


class CentreStores:
    """Read-only views of every centre instance's store."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = list(paths)

    def _each(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple]:
        rows: list[tuple] = []
        for path in self.paths:
            if not path.exists():
                continue
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            try:
                rows.extend(db.execute(sql, args).fetchall())
            except sqlite3.OperationalError:  # the centre has not created its tables yet
                pass
            finally:
                db.close()
        return rows

    def stored(self) -> int:
        """Distinct readings stored, summed over the instances."""
        return sum(row[0] or 0 for row in self._each("SELECT sum(received) FROM device_counts"))

    def duplicates(self) -> int:
        """Repeats the centres recognised and suppressed."""
        return sum(row[0] or 0 for row in self._each("SELECT sum(duplicates) FROM device_counts"))

    def window(self, t_lo: float, t_hi: float) -> list[tuple[str, int, float]]:
        """(device, seq, seconds from the reading's own time to the centre) of every stored
        reading whose time lies in [t_lo, t_hi), over all instances (a reading stored by
        two instances appears twice: that is a duplicate stored as new)."""
        return [(row[0], row[1], row[2]) for row in self._each(
            "SELECT device, seq, received_at - time FROM readings WHERE time >= ? AND time < ?",
            (t_lo, t_hi))]


def baseline_messages(gateway_ids: list[str], count: int) -> list[tuple[str, bytes]]:
    """`count` (topic, payload) readings messages spread over `gateway_ids`, ten devices
    each, sealed under random session keys (the centre cannot check a device MAC anyway;
    it stores the batch pending its checkpoint, as it does the agent's)."""
    devices = [(gw, f"{gw}-base{i}") for gw in gateway_ids for i in range(10)]
    keys = {device: (crypto.random_bytes(32), crypto.random_bytes(8)) for _, device in devices}
    seqs = dict.fromkeys(keys, 0)
    now = time.time()
    out = []
    for n in range(count):
        gw, device = devices[n % len(devices)]
        key, kid = keys[device]
        first = seqs[device]
        seqs[device] = first + len(QUANTITIES)
        values = oximeter_values(n, n)
        records = [senml.make_record(q, v, time=round(now, 3), seq=first + i)
                   for i, (q, v) in enumerate(zip(QUANTITIES, values, strict=True))]
        sealed = sealing.seal_batch(key, kid, records, f"urn:dev:vb:{device}:")
        payload = uplink.encode_readings(device, sealed, "sealed", int(now * 1000))
        out.append((topics.up(gw, topics.UP_READINGS, device), payload))
    return out


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> float:
    """Publish `messages` over one paho MQTT 5 connection, QoS 1, window BASELINE_WINDOW;
    -> seconds until every PUBACK is back."""
    window = threading.Semaphore(BASELINE_WINDOW)
    done = threading.Semaphore(0)

    def on_publish(*_args: object) -> None:
        window.release()
        done.release()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scale-baseline",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(BASELINE_WINDOW)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        began = time.perf_counter()
        for topic, payload in messages:
            gateway = topics.parse(topic)[0]
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = uplink.digest(payload)
            props.ResponseTopic = topics.down(gateway, topics.DOWN_RECEIPT)
            window.acquire()
            client.publish(topic, payload, qos=1, properties=props)
        for _ in messages:
            done.acquire()
        return time.perf_counter() - began
    finally:
        client.loop_stop()
        client.disconnect()


def baseline_main(port: int, gateway_ids: list[str], count: int, conn: Connection) -> None:
    """Process entry point: build, say ready, publish on the parent's word, report."""
    prepared = baseline_messages(gateway_ids, count)
    conn.send(("ready", {}))
    conn.recv()
    conn.send(("published", {"seconds": publish_all(port, prepared),
                             "messages": len(prepared),
                             "readings": len(prepared) * len(QUANTITIES)}))
