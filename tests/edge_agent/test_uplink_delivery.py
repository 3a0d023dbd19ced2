"""The MQTT uplink: backoff, PUBACK reason codes, the delivery loop's window and receipts
(against a scripted link), and end-to-end delivery through a real mosquitto — plain and with
TLS client certificates — to a small test centre that answers with receipts.

(Named test_uplink_delivery.py: tests/protocol/test_uplink.py already owns the module name
`test_uplink` and pytest's default import mode refuses two test modules with one basename.)
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import inspect
import ipaddress
import os
import pwd
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.journal import Journal, JournalStats, NewMessage, Priority
from edge_agent.uplink import (
    PUBACK_REASONS,
    Backoff,
    BackoffPolicy,
    Delivery,
    DeliveryConfig,
    LinkConfig,
    MqttLink,
    TechnicalAlarm,
    TlsFiles,
    classify_puback,
    status_payload,
)
from edge_agent.uplink.backoff import base_delay, jittered_delay
from edge_agent.uplink.delivery import LatencyHistogram
from edge_agent.uplink.mqtt_link import (
    Inbound,
    LinkDown,
    LinkEvent,
    LinkUp,
    PubAck,
    Queued,
)
from protocol import topics, uplink
from simulator.broker import Broker, free_port

GW = "gw-test"
FAST_BACKOFF = BackoffPolicy(initial_s=0.05, maximum_s=0.4, stable_after_s=1.0)


# -- shared helpers (test_uplink_faults.py imports these) --------------------------------------


def run_async(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (the project uses no pytest asyncio plugin),
    with a hard timeout so a hang fails instead of blocking the suite."""
    @functools.wraps(test)
    def runner(*args: object, **kwargs: object) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 60))
    return runner


def reading(i: int, device: str = "dev-1", priority: int = Priority.ROUTINE,
            kind: str = "readings") -> NewMessage:
    """A distinct payload per i (the journal deduplicates identical payloads)."""
    payload = b"reading-%08d-" % i + os.urandom(24)
    if kind in topics.PER_DEVICE_KINDS:
        return NewMessage(kind, device, payload, priority=priority)
    return NewMessage(kind, None, payload, priority=priority)


def alarm(i: int) -> NewMessage:
    return reading(i, priority=Priority.ALARM, kind="alarm")


def count_state(stats: JournalStats, state: str) -> int:
    return sum(n for (s, _), n in stats.rows.items() if s == state)


async def wait_until(check: Callable[[], bool | Awaitable[bool]], timeout: float,
                     what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def all_received(journal: Journal, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return count_state(await journal.stats(), "received") >= n
    return check


def delivery_config(**overrides: object) -> DeliveryConfig:
    settings: dict[str, object] = dict(
        gateway_id=GW, receipt_timeout_s=1.0, sweep_interval_s=0.2, stop_timeout_s=2.0,
    )
    settings.update(overrides)
    return DeliveryConfig(**settings)  # type: ignore[arg-type]


class Centre:
    """A test-only monitoring centre: one paho client on the shared subscription
    `$share/centre/vb/v1/gw/+/up/#` that answers every publish carrying correlation data with a
    receipt to its ResponseTopic. Counts copies per digest (duplicates are allowed: at least
    once), remembers the first arrival time, and can stay silent or reject on request."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None,
                 client_id: str = "centre-test") -> None:
        self.port = port
        self.lock = threading.Lock()
        self.copies: Counter[bytes] = Counter()
        self.first_seen: dict[bytes, float] = {}
        self.topic_of: dict[bytes, str] = {}
        self.status: list[tuple[str, bytes, bool]] = []
        self.answering = True
        self.reject: Callable[[str], str | None] = lambda _topic: None  # -> reason to reject
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.05, 0.3)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = self._on_message

    def start(self) -> Centre:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert self.subscribed.wait(5), "centre did not subscribe"
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, *_args: object) -> None:
        client.subscribe(topics.centre_up_filter(shared=True), qos=1)
        client.subscribe(topics.ROOT + "/+/up/status", qos=1)  # retained status, unshared

    def _on_message(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/up/status"):
            with self.lock:
                self.status.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            return
        correlation = getattr(msg.properties, "CorrelationData", None)
        response = getattr(msg.properties, "ResponseTopic", None)
        if correlation is None or response is None:
            return
        digest = bytes(correlation)
        assert digest == uplink.digest(msg.payload), "correlation data is not the payload hash"
        with self.lock:
            self.copies[digest] += 1
            self.first_seen.setdefault(digest, time.monotonic())
            self.topic_of[digest] = msg.topic
            answering = self.answering
        if not answering:
            return
        reason = self.reject(msg.topic)
        body = (uplink.encode_receipt(digest) if reason is None
                else uplink.encode_receipt(digest, "rejected", reason))
        properties = Properties(PacketTypes.PUBLISH)
        properties.CorrelationData = digest
        client.publish(response, body, qos=1, properties=properties)

    def send(self, topic: str, payload: bytes, correlation: bytes | None = None) -> None:
        properties = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            properties.CorrelationData = correlation
        self.client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(5)

    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.copies.values())


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def centre(broker: Broker) -> Iterator[Centre]:
    running = Centre(broker.port).start()
    yield running
    running.stop()


def broker_files_readable() -> str:
    """mosquitto started as root drops to the `mosquitto` user, which cannot read files under
    pytest's private tmp directory: keep the current user (ignored when not root)."""
    return f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"


def make_link(port: int, **overrides: object) -> MqttLink:
    settings: dict[str, object] = dict(gateway_id=GW, port=port, backoff=FAST_BACKOFF,
                                       keepalive_s=5)
    settings.update(overrides)
    return MqttLink(LinkConfig(**settings))  # type: ignore[arg-type]


# -- backoff (pure) ---------------------------------------------------------------------------


def test_backoff_grows_to_the_cap_and_jitter_stays_in_bounds() -> None:
    policy = BackoffPolicy(initial_s=0.5, maximum_s=8.0, multiplier=2.0, jitter=0.5)
    assert [base_delay(policy, n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert base_delay(policy, 10**9) == 8.0  # no overflow for a gateway offline for months
    assert jittered_delay(policy, 3, 0.0) == 4.0
    assert jittered_delay(policy, 3, 0.999) == pytest.approx(4.0 * (1 - 0.5 * 0.999))
    with pytest.raises(ValueError):
        jittered_delay(policy, 0, 1.0)
    draws = iter([0.0, 0.5, 0.25])
    backoff = Backoff(policy, rng=lambda: next(draws))
    assert [backoff.next_delay() for _ in range(3)] == [0.5, 0.75, 1.75]


def test_backoff_resets_only_after_a_stable_connection() -> None:
    backoff = Backoff(BackoffPolicy(initial_s=1.0, maximum_s=60.0, jitter=0.0,
                                    stable_after_s=10.0))
    for _ in range(6):  # a long outage: the next wait would be 60 s
        backoff.next_delay()
    backoff.connected(100.0)
    backoff.disconnected(102.0)  # up, then the broker restarts 2 s later: retry soon
    assert backoff.next_delay() == 2.0
    backoff.connected(105.0)
    backoff.disconnected(105.1)  # kicked again at once: grow one step per short connection
    assert backoff.next_delay() == 4.0
    backoff.connected(110.0)
    backoff.disconnected(110.1)
    assert backoff.next_delay() == 8.0
    backoff.connected(200.0)
    backoff.disconnected(230.0)  # 30 s up: start again from the minimum
    assert backoff.next_delay() == 1.0
    backoff.connected(300.0)
    backoff.disconnected(300.5)  # the short-connection count started again too
    assert backoff.next_delay() == 2.0


@pytest.mark.parametrize("bad", [
    dict(initial_s=0), dict(initial_s=2, maximum_s=1), dict(multiplier=0.5), dict(jitter=1.0),
    dict(jitter=-0.1), dict(stable_after_s=-1), dict(initial_s=float("nan")),
])
def test_backoff_policy_is_validated(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**bad)


# -- PUBACK reason codes ----------------------------------------------------------------------


def test_every_puback_reason_code_is_classified() -> None:
    delivered = {code for code in PUBACK_REASONS if classify_puback(code).delivered}
    assert delivered == {0x00, 0x10}
    assert {c for c in PUBACK_REASONS if classify_puback(c).transient} == {0x80, 0x83, 0x91, 0x97}
    assert classify_puback(0x87).name == "not authorized"
    for stray in (0x01, 0x11, 0x7F, 0xA0, 0xFF):  # not valid in a PUBACK: never "delivered"
        outcome = classify_puback(stray)
        assert not outcome.delivered and outcome.transient
        assert "unknown" in outcome.name


def test_latency_histogram_is_plain_cumulative_data() -> None:
    hist = LatencyHistogram(bounds=(0.01, 0.1), recent=3)
    for value in (0.005, 0.05, 0.5, 0.02):
        hist.observe(value)
    snap = hist.snapshot()
    assert snap.buckets == ((0.01, 1), (0.1, 3), (float("inf"), 4))
    assert snap.count == 4 and snap.sum_s == pytest.approx(0.575)
    assert snap.recent == (0.05, 0.5, 0.02)  # bounded: the oldest sample fell out
    assert snap.quantile(0.5) == 0.05 and snap.quantile(1.0) == 0.5


# -- the delivery loop against a scripted link ------------------------------------------------


class ScriptedLink:
    """Stands in for MqttLink: records publishes and lets the test play the broker."""

    receipt_topic = topics.down(GW, topics.DOWN_RECEIPT)

    def __init__(self) -> None:
        self.handler: Callable[[list[LinkEvent]], None] | None = None
        self.published: list[tuple[int, str, bytes, bytes | None]] = []
        self._mid = 0
        self.closed = False

    def start(self, handler: Callable[[list[LinkEvent]], None]) -> None:
        self.handler = handler

    def publish(self, topic: str, payload: bytes, correlation: bytes | None = None,
                response_topic: str | None = None) -> Queued:
        assert response_topic == self.receipt_topic
        self._mid += 1
        self.published.append((self._mid, topic, payload, correlation))
        return Queued(self._mid, True)

    async def close(self, timeout: float = 5.0) -> None:
        self.closed = True

    def emit(self, *events: LinkEvent) -> None:
        assert self.handler is not None
        self.handler(list(events))

    def puback(self, mid: int, code: int = 0) -> None:
        self.emit(PubAck(mid, code, time.monotonic()))

    def receipt(self, digest: bytes, status: str = "stored", correlation: bytes | None = None,
                body: bytes | None = None) -> None:
        payload = body if body is not None else uplink.encode_receipt(digest, status, "bad")
        self.emit(Inbound(self.receipt_topic, payload, correlation or digest, time.monotonic()))


async def settle() -> None:
    """Give the loop time to act (for "nothing more happened" checks)."""
    await asyncio.sleep(0.05)


async def until_published(link: ScriptedLink, n: int) -> None:
    await wait_until(lambda: len(link.published) >= n, 5, f"{n} publishes")
    await settle()
    assert len(link.published) == n


async def row_states(journal: Journal) -> dict[str, int]:
    stats = await journal.stats()
    return {state: count_state(stats, state) for state in ("stored", "sent", "received")}


async def expect_states(journal: Journal, expected: dict[str, int]) -> None:
    async def matches() -> bool:
        return await row_states(journal) == expected
    try:
        await wait_until(matches, 5, f"journal states {expected}")
    except AssertionError:
        assert await row_states(journal) == expected  # show the difference


async def scripted(tmp_path: Path, **config: object
                   ) -> tuple[Journal, ScriptedLink, Delivery, list[TechnicalAlarm]]:
    journal = await Journal.open(tmp_path / "journal.db")
    link = ScriptedLink()
    alarms: list[TechnicalAlarm] = []
    settings: dict[str, object] = dict(flush_interval_s=0.001, sweep_interval_s=60.0)
    settings.update(config)
    delivery = Delivery(journal, link, delivery_config(**settings), on_alarm=alarms.append)
    await delivery.start()
    return journal, link, delivery, alarms


@run_async
async def test_window_is_bounded_and_alarms_use_the_reserved_slots(tmp_path: Path) -> None:
    journal, link, delivery, _ = await scripted(tmp_path, max_in_flight=16, urgent_reserve=4,
                                                prefetch=32)
    await journal.append_many([reading(i) for i in range(200)])
    link.emit(LinkUp(False, 65535))
    # No PUBACKs yet: 12 routine messages in flight, 4 slots kept free for urgent ones.
    await until_published(link, 12)
    assert delivery.counters().in_flight == 12
    assert delivery.counters().ready <= 32
    await journal.append(alarm(1))
    await until_published(link, 13)
    assert link.published[-1][1] == topics.up(GW, "alarm")
    # A PUBACK frees one routine slot: exactly one more routine message goes out.
    link.puback(1)
    await until_published(link, 14)
    assert link.published[-1][1] == topics.up(GW, "readings", "dev-1")
    await delivery.stop(timeout=0)
    await expect_states(journal, {"stored": 200, "sent": 1, "received": 0})
    await journal.close()


@run_async
async def test_without_a_reserve_an_alarm_waits_for_a_slot_then_goes_first(
        tmp_path: Path) -> None:
    journal, link, delivery, _ = await scripted(tmp_path, max_in_flight=8, urgent_reserve=0,
                                                prefetch=16)
    await journal.append_many([reading(i) for i in range(50)])
    link.emit(LinkUp(False, 65535))
    await until_published(link, 8)
    await journal.append(alarm(1))
    await settle()
    assert len(link.published) == 8  # the window is full: the alarm waits...
    link.puback(1)
    await until_published(link, 9)
    assert link.published[8][1] == topics.up(GW, "alarm")  # ...but not behind the backlog
    await delivery.stop(timeout=0)
    await journal.close()


@run_async
async def test_unconfirmed_messages_are_capped_until_receipts_come(tmp_path: Path) -> None:
    journal, link, delivery, _ = await scripted(tmp_path, max_unconfirmed=5)
    await journal.append_many([reading(i) for i in range(20)])
    link.emit(LinkUp(False, 65535))
    await until_published(link, 5)
    for mid in range(1, 6):
        link.puback(mid)
    await settle()
    assert len(link.published) == 5  # PUBACKed but unconfirmed: the centre is behind
    assert delivery.counters().unconfirmed == 5
    await journal.append(alarm(1))  # urgent messages are not held back
    await until_published(link, 6)
    for _, _, _, digest in link.published[:2]:
        assert digest is not None
        link.receipt(digest)
    await until_published(link, 8)
    await delivery.stop(timeout=0)
    await journal.close()


@run_async
async def test_window_respects_the_brokers_receive_maximum(tmp_path: Path) -> None:
    journal, link, delivery, _ = await scripted(tmp_path, max_in_flight=64, urgent_reserve=8)
    await journal.append_many([reading(i) for i in range(100)])
    link.emit(LinkUp(False, 6))  # one slot stays free for the retained status publish
    await until_published(link, 1)
    # Receive Maximum 6 - 1 for the status = 5 slots; the reserve shrinks to 4: 1 routine.
    assert delivery.counters().in_flight == 1
    await delivery.stop(timeout=0)
    await journal.close()


@pytest.mark.parametrize("code", sorted(PUBACK_REASONS) + [0x01, 0xA0])
@run_async
async def test_each_puback_reason_code_decides_sent_or_paused(
        tmp_path: Path, code: int) -> None:
    journal, link, delivery, alarms = await scripted(
        tmp_path, refusal_retry_s=60.0, transient_retry_s=60.0)
    await journal.append_many([reading(1, "dev-a"), reading(2, "dev-a"), reading(3, "dev-b")])
    link.emit(LinkUp(False, 65535))
    await until_published(link, 3)
    link.puback(1, code)
    outcome = classify_puback(code)
    if outcome.delivered:
        await expect_states(journal, {"stored": 2, "sent": 1, "received": 0})
        assert not alarms and delivery.counters().sent == 1
        assert delivery.counters().no_subscribers == (1 if code == 0x10 else 0)
    else:
        await settle()
        await expect_states(journal, {"stored": 3, "sent": 0, "received": 0})  # never sent
        assert [a.condition for a in alarms] == ["publish-refused"]
        assert alarms[0].reason_code == code
        paused = topics.up(GW, "readings", "dev-a")
        assert delivery.counters().paused_streams == (paused,)
        # The second dev-a message is refused too (same ACL): no second alarm.
        link.puback(2, code)
        link.puback(3, 0)  # dev-b is a different stream and is unaffected
        await settle()
        assert len(alarms) == 1
        await expect_states(journal, {"stored": 2, "sent": 1, "received": 0})
        # Claimed again, but parked: not re-published while the stream is paused.
        await wait_until(lambda: delivery.counters().parked == 2, 5, "both rows parked")
        assert len(link.published) == 3
    await delivery.stop(timeout=0)
    await journal.close()


@run_async
async def test_a_paused_stream_is_retried_after_its_delay(tmp_path: Path) -> None:
    journal, link, delivery, alarms = await scripted(tmp_path, transient_retry_s=0.1)
    await journal.append(reading(1, "dev-a"))
    link.emit(LinkUp(False, 65535))
    await until_published(link, 1)
    link.puback(1, 0x97)  # quota exceeded: transient
    await until_published(link, 2)  # after transient_retry_s
    assert link.published[1][2] == link.published[0][2]
    link.puback(2, 0)
    await expect_states(journal, {"stored": 0, "sent": 1, "received": 0})
    assert delivery.counters().paused_streams == ()
    assert len(alarms) == 1
    await delivery.stop(timeout=0)
    await journal.close()


@run_async
async def test_a_receipt_that_overtakes_its_puback_is_kept(tmp_path: Path) -> None:
    journal, link, delivery, _ = await scripted(tmp_path)
    await journal.append(reading(1))
    link.emit(LinkUp(False, 65535))
    await until_published(link, 1)
    mid, _, payload, correlation = link.published[0]
    assert correlation == uplink.digest(payload)
    link.receipt(correlation)
    await settle()
    link.puback(mid)  # the PUBACK arrives after the receipt: no downgrade to "sent"
    await expect_states(journal, {"stored": 0, "sent": 0, "received": 1})
    counters = delivery.counters()
    assert counters.received == 1 and counters.sent == 1
    assert counters.receipt_latency[0].count == 1
    await delivery.stop(timeout=0)
    await journal.close()


@run_async
async def test_unknown_invalid_and_mismatched_receipts_are_counted_not_trusted(
        tmp_path: Path) -> None:
    journal, link, delivery, _ = await scripted(tmp_path)
    await journal.append(reading(1))
    link.emit(LinkUp(False, 65535))
    await until_published(link, 1)
    mid, _, _, digest = link.published[0]
    assert digest is not None
    link.puback(mid)
    link.receipt(os.urandom(32))  # not ours
    link.receipt(digest, body=b"\xff\x00garbage")  # undecodable
    link.receipt(digest, correlation=os.urandom(32))  # correlation data != body digest
    link.emit(Inbound(topics.down("other-gw", "receipt"), uplink.encode_receipt(digest),
                      digest, time.monotonic()))  # another gateway's topic
    await wait_until(lambda: delivery.counters().receipts_unknown == 1, 5, "unknown receipt")
    assert delivery.counters().receipts_invalid == 2
    await expect_states(journal, {"stored": 0, "sent": 1, "received": 0})
    link.receipt(digest)
    link.receipt(digest)  # repeated
    await wait_until(lambda: delivery.counters().receipts_already == 1, 5, "repeat counted")
    assert delivery.counters().received == 1
    await delivery.stop(timeout=0)
    await journal.close()


@run_async
async def test_a_rejected_message_is_quarantined_alarmed_and_not_resent(tmp_path: Path) -> None:
    journal, link, delivery, alarms = await scripted(tmp_path, receipt_timeout_s=0.05,
                                                     sweep_interval_s=0.05)
    await journal.append(reading(1))
    link.emit(LinkUp(False, 65535))
    await until_published(link, 1)
    mid, _, _, digest = link.published[0]
    assert digest is not None
    link.puback(mid)
    link.receipt(digest, "rejected")
    # A receipt sweep reverts the unconfirmed row and it is claimed again...
    await wait_until(lambda: delivery.counters().held == 1, 5, "the rejected row held")
    await asyncio.sleep(0.3)
    assert len(link.published) == 1  # ...but a rejected message is not re-sent
    assert [a.condition for a in alarms] == ["receipt-rejected"]
    assert delivery.counters().receipts_rejected == 1
    stats = await journal.stats()
    assert stats.quarantined == 1 and count_state(stats, "received") == 0
    await delivery.stop(timeout=0)
    await journal.close()
    with sqlite3.connect(tmp_path / "journal.db") as db:
        (reason, source), = db.execute("SELECT reason, source FROM quarantine").fetchall()
    assert "centre rejected" in reason and source == "centre-receipt"


@run_async
async def test_link_loss_releases_dropped_messages_and_resends_alarms_first(
        tmp_path: Path) -> None:
    journal, link, delivery, _ = await scripted(tmp_path)
    await journal.append_many([reading(i) for i in range(5)])
    link.emit(LinkUp(False, 65535))
    await until_published(link, 5)
    await journal.append(alarm(1))
    await until_published(link, 6)
    link.emit(LinkDown("connection lost", tuple(m for m, *_ in link.published)))
    await settle()
    assert delivery.counters().in_flight == 0 and delivery.counters().released == 6
    await expect_states(journal, {"stored": 6, "sent": 0, "received": 0})
    link.emit(LinkUp(True, 65535))
    await until_published(link, 12)
    assert link.published[6][1] == topics.up(GW, "alarm")  # priority order after reconnect
    assert delivery.counters().reconnects == 1 and delivery.counters().disconnects == 1
    await delivery.stop(timeout=0)
    await journal.close()


@run_async
async def test_stop_waits_for_outstanding_pubacks_then_releases_the_rest(
        tmp_path: Path) -> None:
    journal, link, delivery, _ = await scripted(tmp_path)
    await journal.append_many([reading(i) for i in range(3)])
    link.emit(LinkUp(False, 65535))
    await until_published(link, 3)
    asyncio.get_running_loop().call_later(0.1, link.puback, 1)
    started = time.monotonic()
    await delivery.stop(timeout=0.5)
    assert 0.4 <= time.monotonic() - started < 2.0  # waited for the two missing PUBACKs
    assert link.closed
    await expect_states(journal, {"stored": 2, "sent": 1, "received": 0})
    assert (await journal.stats()).in_flight == 0  # no claim left behind
    await journal.close()


@run_async
async def test_a_row_whose_payload_no_longer_matches_its_digest_is_never_published(
        tmp_path: Path) -> None:
    journal, link, delivery, alarms = await scripted(tmp_path)
    row_id = await journal.append(reading(1))
    with sqlite3.connect(tmp_path / "journal.db") as db:  # bit rot behind SQLite's back
        db.execute("UPDATE messages SET payload = ? WHERE id = ?", (b"tampered", row_id))
    link.emit(LinkUp(False, 65535))
    await wait_until(lambda: bool(alarms), 5, "the corrupt-row alarm")
    await settle()
    assert link.published == []
    assert [a.condition for a in alarms] == ["corrupt-row"]
    await delivery.stop(timeout=0)
    await journal.close()


def test_delivery_config_is_validated() -> None:
    for bad in (dict(max_in_flight=0), dict(urgent_reserve=64), dict(prefetch=0),
                dict(receipt_timeout_s=-1.0), dict(flush_interval_s=float("inf"))):
        with pytest.raises(ValueError):
            DeliveryConfig(gateway_id=GW, **bad)  # type: ignore[arg-type]


# -- through a real mosquitto -----------------------------------------------------------------


@run_async
async def test_every_journaled_message_is_delivered_and_confirmed_once(
        tmp_path: Path, broker: Broker, centre: Centre) -> None:
    journal = await Journal.open(tmp_path / "journal.db")
    messages = [reading(i, f"dev-{i % 7}") for i in range(600)] + [alarm(i) for i in range(20)]
    await journal.append_many(messages)
    delivery = Delivery(journal, make_link(broker.port), delivery_config(receipt_timeout_s=30.0))
    started = time.monotonic()
    await delivery.start()
    await wait_until(all_received(journal, len(messages)), 20, "every receipt")
    elapsed = time.monotonic() - started
    counters = delivery.counters()
    assert counters.sent == len(messages) and counters.received == len(messages)
    assert counters.refused == counters.receipts_unknown == counters.receipt_timeouts == 0
    assert set(centre.copies) == {m.digest for m in messages}
    assert centre.duplicates() == 0  # no fault, so nothing was sent twice
    assert counters.puback_latency[2].count == 20
    await delivery.stop()
    await journal.close()
    # The retained status went online at connect and offline (our last-will, sent by the
    # broker on DISCONNECT 0x04) at stop.
    status_topic = topics.up(GW, "status")
    await wait_until(lambda: (status_topic, status_payload(False), False) in centre.status, 5,
                     "offline status")
    assert (status_topic, status_payload(True), False) in centre.status
    late = Centre(broker.port, client_id="late-reader").start()
    await wait_until(lambda: bool(late.status), 5, "retained status")
    late.stop()
    assert late.status[-1] == (status_topic, status_payload(False), True)
    print(f"\n{len(messages)} messages with receipts in {elapsed:.2f} s "
          f"({len(messages) / elapsed:.0f} msg/s, including connect)")


@run_async
async def test_receipts_for_unknown_digests_from_the_broker_are_counted(
        tmp_path: Path, broker: Broker, centre: Centre) -> None:
    journal = await Journal.open(tmp_path / "journal.db")
    await journal.append(reading(1))
    delivery = Delivery(journal, make_link(broker.port), delivery_config())
    await delivery.start()
    await wait_until(all_received(journal, 1), 10, "the receipt")
    receipt_topic = topics.down(GW, "receipt")
    centre.send(receipt_topic, uplink.encode_receipt(os.urandom(32)))
    centre.send(receipt_topic, b"\x83\x01\x19\x00")
    centre.send(topics.down(GW, "command"), b"not ours to handle")
    await wait_until(lambda: delivery.counters().receipts_invalid == 1, 5, "the invalid receipt")
    await wait_until(lambda: delivery.counters().receipts_unknown == 1, 5, "the unknown receipt")
    assert delivery.counters().received == 1
    await delivery.stop()
    await journal.close()


# -- TLS with a client certificate ------------------------------------------------------------


def _write_pki(directory: Path, gateway: str) -> dict[str, Path]:
    """A CA, a broker certificate for 127.0.0.1/localhost and a client certificate whose CN
    is the gateway id (mosquitto's use_identity_as_username makes it the ACL user)."""
    now = datetime.datetime.now(datetime.UTC)

    def issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
              issuer_key: ec.EllipticCurvePrivateKey, ca: bool,
              san: list[x509.GeneralName] | None = None) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def save(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "VitalBridge test CA")])
    ca = issue("VitalBridge test CA", ca_key, ca_name, ca_key, True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = issue("broker", server_key, ca_name, ca_key, False, [
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = issue(gateway, client_key, ca_name, ca_key, False)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Someone else's CA")])
    rogue_client_key = ec.generate_private_key(ec.SECP256R1())
    rogue_client = issue(gateway, rogue_client_key, rogue_name, rogue_key, False)
    save("ca", ca, ca_key)
    save("server", server, server_key)
    save("client", client, client_key)
    save("rogue", rogue_client, rogue_client_key)
    return {name: directory / name for name in (
        "ca.pem", "server.pem", "server.key", "client.pem", "client.key", "rogue.pem",
        "rogue.key")}


@run_async
async def test_tls_with_a_client_certificate_and_an_acl_per_gateway(tmp_path: Path) -> None:
    pki = _write_pki(tmp_path / "pki", GW)
    acl = tmp_path / "acl"
    acl.write_text("pattern write vb/v1/gw/%u/up/#\npattern read vb/v1/gw/%u/down/#\n"
                   "user centre-test\ntopic read vb/v1/gw/+/up/#\n"
                   "topic write vb/v1/gw/+/down/#\n")
    tls_port = free_port()
    tls_listener = (
        broker_files_readable() + f"acl_file {acl}\n"
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {pki['ca.pem']}\ncertfile {pki['server.pem']}\nkeyfile {pki['server.key']}\n"
        "require_certificate true\nuse_identity_as_username true\n"
    )
    with Broker(tmp_path / "broker", extra_config=tls_listener) as broker:
        # The test centre uses the plain listener; the gateway only the TLS one.
        centre = Centre(broker.port, username="centre-test").start()
        journal = await Journal.open(tmp_path / "journal.db")
        await journal.append_many([reading(i) for i in range(50)])
        tls = TlsFiles(str(pki["ca.pem"]), str(pki["client.pem"]), str(pki["client.key"]))
        delivery = Delivery(journal, make_link(tls_port, tls=tls), delivery_config())
        await delivery.start()
        try:
            await wait_until(all_received(journal, 50), 15, "receipts over TLS")
            assert delivery.counters().refused == 0
        finally:
            await delivery.stop()
            centre.stop()
        # Same CN, but issued by a CA the broker does not trust: never connected.
        rogue = TlsFiles(str(pki["ca.pem"]), str(pki["rogue.pem"]), str(pki["rogue.key"]))
        await journal.append(reading(99))
        intruder = Delivery(journal, make_link(tls_port, tls=rogue), delivery_config())
        await intruder.start()
        await wait_until(lambda: intruder.counters().connect_failures >= 2, 10,
                         "refused connection attempts")
        assert not intruder.counters().connected and intruder.counters().published == 0
        await intruder.stop(timeout=0)
        assert count_state(await journal.stats(), "stored") == 1
        await journal.close()
