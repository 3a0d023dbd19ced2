"""The reference monitoring centre against a real mosquitto.

A test gateway (paho, MQTT 5) publishes what an edge agent publishes: sealed batches made
with protocol.sealing, device checkpoints, certificate events, alarm transitions. The centre
must store each reading once, receipt only what is committed, prove device provenance
through the checkpoints, and name what is missing, duplicated or tampered with.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.eventlog.chain import sign_checkpoint
from protocol import (
    alarm_messages,
    checkpoint,
    cose,
    crypto,
    cwt,
    limits,
    messages,
    sealing,
    senml,
    topics,
    uplink,
)
from simulator.broker import Broker
from simulator.centre import Centre, CentreConfig, CentreError, TrustAnchor, build_report
from simulator.centre import verifier as v
from simulator.centre.report import percentile
from simulator.centre.service import Inbound, Ingest, Outcome
from simulator.centre.store import Store, StoreError

GW = "gw-test"
ORG_SEED = bytes(range(32))
GW_SEED = bytes(range(32, 64))
NOW = int(time.time())
ALARM_MS = NOW * 1000


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def gateway_certificate(seed: bytes = GW_SEED, gateway: str = GW) -> bytes:
    return cwt.issue_cwt(ORG_SEED, "org-test", gateway, crypto.ed25519_public_key(seed),
                         NOW - 60, NOW + 86400, role="gateway")


class SimDevice:
    """A device with a session: seals SpO2 + pulse pairs and signs checkpoints."""

    def __init__(self, device_id: str, issuer_seed: bytes = GW_SEED, issuer: str = GW) -> None:
        self.id = device_id
        self.seed = crypto.random_bytes(32)
        self.public = crypto.ed25519_public_key(self.seed)
        self.session = crypto.random_bytes(8)
        self.mac_key = crypto.random_bytes(32)
        self.chain = checkpoint.HashChain(self.session)
        self.seq = 0
        self.certificate = cwt.issue_cwt(issuer_seed, issuer, device_id, self.public,
                                         NOW - 60, NOW + 86400, role="device")

    def records(self, seq: int, spo2: float) -> list[dict]:
        t = int(time.time())
        return [senml.make_record("spo2", spo2, time=t, seq=seq),
                senml.make_record("pr", 72, time=t, seq=seq + 1)]

    def seal(self, spo2: float = 97) -> bytes:
        sealed = sealing.seal_batch(self.mac_key, self.session, self.records(self.seq, spo2),
                                    f"urn:dev:vb:{self.id}:", chain=self.chain)
        self.seq += 2
        return sealed

    def forge(self, seq: int, spo2: float) -> bytes:
        """What a gateway holding the session key could make: a valid Mac0, never chained."""
        return sealing.seal_batch(self.mac_key, self.session, self.records(seq, spo2),
                                  f"urn:dev:vb:{self.id}:")

    def checkpoint(self) -> bytes:
        return self.chain.checkpoint(self.seed, self.id, int(time.time()),
                                     cose.key_id(self.public))


class GatewayPublisher:
    """Publishes like an edge agent and collects what the centre sends down."""

    def __init__(self, port: int, gateway: str = GW, database: Path | None = None) -> None:
        self.gateway = gateway
        self.database = database
        self.lock = threading.Lock()
        self.down: list[tuple[str, bytes, bytes | None]] = []
        self.committed_at_receipt: list[bool] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{gateway}-pub",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topics.gateway_down_filter(gateway), qos=1)
        self.client.loop_start()
        assert subscribed.wait(5), "the broker did not confirm the subscription"

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        if self.database is not None and msg.topic.endswith("/receipt"):
            # The receipt must never overtake the commit: look from another connection.
            digest = uplink.decode_receipt(msg.payload)[0]
            with sqlite3.connect(self.database) as conn:
                row = conn.execute("SELECT 1 FROM messages WHERE digest = ?",
                                   (digest,)).fetchone()
            with self.lock:
                self.committed_at_receipt.append(row is not None)
        with self.lock:
            self.down.append((msg.topic, bytes(msg.payload), correlation))

    def publish(self, kind: str, payload: bytes, device: str | None = None,
                response_topic: str | None = None) -> bytes:
        digest = uplink.digest(payload)
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = digest
        props.ResponseTopic = response_topic or topics.down(self.gateway, topics.DOWN_RECEIPT)
        info = self.client.publish(topics.up(self.gateway, kind, device), payload, qos=1,
                                   properties=props)
        info.wait_for_publish(5)
        return digest

    def readings(self, device: SimDevice, sealed: bytes, verdict: str = "sealed",
                 received_ms: int | None = None) -> bytes:
        ms = int(time.time() * 1000) if received_ms is None else received_ms
        return self.publish(topics.UP_READINGS,
                            uplink.encode_readings(device.id, sealed, verdict, ms), device.id)

    def checkpoint(self, device: SimDevice, signed: bytes) -> bytes:
        return self.publish(topics.UP_CHECKPOINT, messages.encode("checkpoint", signed),
                            device.id)

    def event(self, body: dict) -> bytes:
        return self.publish(topics.UP_EVENT, messages.encode("event", body))

    def alarm(self, step: alarm_messages.AlarmTransition) -> bytes:
        return self.publish(topics.UP_ALARM, alarm_messages.encode_transition(step))

    def received(self, kind: str) -> list[tuple[bytes, bytes | None]]:
        suffix = f"/down/{kind}"
        with self.lock:
            return [(p, c) for t, p, c in self.down if t.endswith(suffix)]

    def receipts(self, digest: bytes) -> list[tuple[str, str | None, bytes | None]]:
        out = []
        for payload, correlation in self.received(topics.DOWN_RECEIPT):
            dig, status, reason = uplink.decode_receipt(payload)
            if dig == digest:
                out.append((status, reason, correlation))
        return out

    def wait_receipts(self, digest: bytes, count: int = 1) -> list:
        assert eventually(lambda: len(self.receipts(digest)) >= count), \
            f"no receipt for {digest.hex()[:12]}"
        return self.receipts(digest)

    def close(self) -> None:
        self.client.disconnect()  # first: loop_stop then returns without a select timeout
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as running:
        yield running


def make_centre(broker: Broker, tmp_path: Path, client_id: str = "centre-a",
                anchor: TrustAnchor | None = None, gap_deadline_s: float = 30.0) -> Centre:
    anchor = anchor or TrustAnchor(org_ca_public=crypto.ed25519_public_key(ORG_SEED))
    return Centre(CentreConfig(port=broker.port, database=tmp_path / "centre.db",
                               anchor=anchor, client_id=client_id,
                               gap_deadline_s=gap_deadline_s, tick_s=0.1,
                               synchronous="NORMAL"))


@pytest.fixture
def centre(broker: Broker, tmp_path: Path) -> Iterator[Centre]:
    with make_centre(broker, tmp_path) as running:
        yield running


@pytest.fixture
def gateway(broker: Broker, tmp_path: Path) -> Iterator[GatewayPublisher]:
    gw = GatewayPublisher(broker.port, database=tmp_path / "centre.db")
    yield gw
    gw.close()


def enroll(gateway: GatewayPublisher, *devices: SimDevice) -> None:
    digest = gateway.event({v.EVENT_GATEWAY_CERTIFICATE: gateway_certificate()})
    gateway.wait_receipts(digest)
    for device in devices:
        gateway.wait_receipts(gateway.event({v.EVENT_DEVICE_CERTIFICATE: device.certificate}))


def verdicts(centre: Centre, device: str) -> list[str]:
    return [row["verdict"] for row in centre.store.readings(device)]


def checkpoint_status(centre: Centre, device: str) -> list[str]:
    return [row["status"] for row in centre.store.checkpoints(device)]


# ---------------------------------------------------------------- readings and receipts


def test_readings_stored_receipted_after_commit_and_device_proven(
        centre: Centre, gateway: GatewayPublisher) -> None:
    dev = SimDevice("ox-1")
    enroll(gateway, dev)
    digests = [gateway.readings(dev, dev.seal(spo2)) for spo2 in (97, 96, 95)]
    for digest in digests:
        (status, reason, correlation), = gateway.wait_receipts(digest)
        assert (status, reason, correlation) == ("stored", None, digest)
    assert verdicts(centre, "ox-1") == [v.PENDING] * 6
    gateway.wait_receipts(gateway.checkpoint(dev, dev.checkpoint()))
    assert eventually(lambda: verdicts(centre, "ox-1") == [v.DEVICE_PROVEN] * 6)
    assert checkpoint_status(centre, "ox-1") == [v.CP_VERIFIED]
    rows = centre.store.readings("ox-1")
    assert [(r["seq"], r["quantity"], r["value"], r["unit"]) for r in rows[:2]] == [
        (0, "spo2", 97, "%"), (1, "pr", 72, "beat/min")]
    assert gateway.committed_at_receipt and all(gateway.committed_at_receipt)
    report = build_report(centre.store, {"ox-1": 6})
    assert report["readings"]["received"] == 6 and report["readings"]["lost"] == 0
    assert report["readings"]["device_proven"] == 6
    assert report["latency_ms"]["reading"]["count"] == 6
    assert report["latency_ms"]["reading"]["p99"] is not None


def test_duplicates_are_counted_not_stored_twice(centre: Centre, gateway: GatewayPublisher) -> None:
    dev = SimDevice("ox-2")
    enroll(gateway, dev)
    sealed = dev.seal()
    first = gateway.readings(dev, sealed, received_ms=1_000)
    gateway.wait_receipts(first)
    again = gateway.readings(dev, sealed, received_ms=1_000)  # same bytes: same digest
    assert again == first
    gateway.wait_receipts(first, count=2)
    rewrapped = gateway.readings(dev, sealed, received_ms=2_000)  # same seqs, new digest
    assert gateway.wait_receipts(rewrapped)[0][0] == "stored"
    assert len(centre.store.readings("ox-2")) == 2
    counts = centre.store.device_counts()["ox-2"]
    assert (counts["received"], counts["duplicates"], counts["conflicts"]) == (2, 4, 0)
    assert centre.store.message(first)["copies"] == 2
    # The same seqs with another tag: kept as a conflict, the stored reading untouched.
    gateway.wait_receipts(gateway.readings(dev, dev.forge(0, 80)))
    counts = centre.store.device_counts()["ox-2"]
    assert (counts["received"], counts["conflicts"]) == (2, 2)
    assert [r["value"] for r in centre.store.readings("ox-2")] == [97, 72]
    report = build_report(centre.store, {"ox-2": 2})
    assert report["readings"]["duplicated"] == 6 and report["readings"]["lost"] == 0


def test_missing_batch_is_a_gap_then_lost_then_recovered(
        broker: Broker, tmp_path: Path, gateway: GatewayPublisher) -> None:
    with make_centre(broker, tmp_path, gap_deadline_s=1.0) as centre:
        dev = SimDevice("ox-3")
        enroll(gateway, dev)
        batches = [dev.seal() for _ in range(3)]
        for sealed in (batches[0], batches[2]):  # batch 1 (seqs 2, 3) never arrives
            gateway.wait_receipts(gateway.readings(dev, sealed))
        gateway.wait_receipts(gateway.checkpoint(dev, dev.checkpoint()))
        assert checkpoint_status(centre, "ox-3") == [v.CP_GAP]
        assert centre.store.checkpoints("ox-3")[0]["reason"].startswith("2 of 6 seqs")
        assert eventually(lambda: checkpoint_status(centre, "ox-3") == [v.CP_LOST], 3.0)
        assert centre.store.checkpoints("ox-3")[0]["missing"] == "2-3"
        assert verdicts(centre, "ox-3") == [v.UNPROVEN] * 4
        report = build_report(centre.store, {"ox-3": 6})
        assert report["readings"]["lost"] == 2 and report["readings"]["lost_proven"] == 2
        assert report["devices"]["ox-3"]["gaps"] == 2
        # The batch turns up after the deadline: the evidence is complete after all.
        gateway.wait_receipts(gateway.readings(dev, batches[1]))
        assert eventually(lambda: checkpoint_status(centre, "ox-3") == [v.CP_VERIFIED])
        assert verdicts(centre, "ox-3") == [v.DEVICE_PROVEN] * 6
        assert build_report(centre.store, {"ox-3": 6})["readings"]["lost_proven"] == 0


def test_tampered_batch_is_a_tag_mismatch(centre: Centre, gateway: GatewayPublisher) -> None:
    dev = SimDevice("ox-4")
    enroll(gateway, dev)
    genuine = [dev.seal(97), dev.seal(84)]
    gateway.wait_receipts(gateway.readings(dev, genuine[0]))
    # The gateway holds the session key: it can make a valid Mac0 saying 97 instead of 84,
    # but not the device's signature over the chain of tags the device really sent.
    gateway.wait_receipts(gateway.readings(dev, dev.forge(2, 97)))
    gateway.wait_receipts(gateway.checkpoint(dev, dev.checkpoint()))
    assert eventually(lambda: checkpoint_status(centre, "ox-4") == [v.CP_TAG_MISMATCH])
    assert verdicts(centre, "ox-4") == [v.TAG_MISMATCH] * 4
    assert build_report(centre.store)["readings"]["device_proven"] == 0


def test_checkpoint_without_certificate_becomes_unverifiable(
        broker: Broker, tmp_path: Path, gateway: GatewayPublisher) -> None:
    with make_centre(broker, tmp_path, gap_deadline_s=0.5) as centre:
        dev = SimDevice("ox-5")
        gateway.wait_receipts(gateway.readings(dev, dev.seal()))
        gateway.wait_receipts(gateway.checkpoint(dev, dev.checkpoint()))
        assert checkpoint_status(centre, "ox-5") == [v.CP_NO_KEY]
        assert eventually(lambda: checkpoint_status(centre, "ox-5") == [v.CP_UNVERIFIABLE])
        assert verdicts(centre, "ox-5") == [v.UNPROVEN] * 2
        # The certificates arrive late (device first, before its issuer): proven after all.
        gateway.wait_receipts(gateway.event({v.EVENT_DEVICE_CERTIFICATE: dev.certificate}))
        assert [r["status"] for r in centre.store.certificates()] == ["waiting"]
        enroll(gateway)
        assert eventually(lambda: checkpoint_status(centre, "ox-5") == [v.CP_VERIFIED])
        assert verdicts(centre, "ox-5") == [v.DEVICE_PROVEN] * 2


def test_two_instances_share_the_load_without_double_storing(
        broker: Broker, tmp_path: Path, gateway: GatewayPublisher) -> None:
    with make_centre(broker, tmp_path, "centre-a") as one, \
            make_centre(broker, tmp_path, "centre-b") as two:
        dev = SimDevice("ox-6")
        enroll(gateway, dev)
        digests = [gateway.readings(dev, dev.seal()) for _ in range(30)]
        twice = uplink.encode_readings(dev.id, dev.seal(), "sealed", 5)
        digests += [gateway.publish(topics.UP_READINGS, twice, dev.id) for _ in range(2)]
        digests.append(gateway.checkpoint(dev, dev.checkpoint()))
        for digest in digests:
            gateway.wait_receipts(digest, digests.count(digest))
        assert one.stats().get(topics.UP_READINGS, 0) > 0
        assert two.stats().get(topics.UP_READINGS, 0) > 0
        assert eventually(lambda: checkpoint_status(one, "ox-6") == [v.CP_VERIFIED])
        assert len(one.store.readings("ox-6")) == 62
        assert one.store.count("messages") == 2 + 31 + 1  # certificates, batches, checkpoint
        assert one.store.count("receipts") == 2 + 32 + 1
        counts = one.store.device_counts()["ox-6"]
        assert (counts["received"], counts["duplicates"]) == (62, 2)


def test_slow_consumer_still_stores_everything(centre: Centre, gateway: GatewayPublisher) -> None:
    dev = SimDevice("ox-7")
    enroll(gateway, dev)
    centre.set_slow_consumer(0.05)
    started = time.monotonic()
    digests = [gateway.readings(dev, dev.seal()) for _ in range(10)]
    for digest in digests:
        gateway.wait_receipts(digest)
    assert time.monotonic() - started >= 0.45
    centre.set_slow_consumer(0)
    assert len(centre.store.readings("ox-7")) == 20


# ---------------------------------------------------------------- trust and hostile input


def test_gateway_signed_readings_are_stored_as_not_device_proven(
        centre: Centre, gateway: GatewayPublisher) -> None:
    payload = senml.encode_pack([senml.make_record("temp", 37.2, time=NOW, seq=0)],
                                base_name="urn:dev:vb:therm-1:")
    attested = cose.sign1_create(GW_SEED, payload, kid=cose.key_id(
        crypto.ed25519_public_key(GW_SEED)), content_type=cose.CT_SENML_CBOR)
    dev = SimDevice("therm-1")
    gateway.wait_receipts(gateway.readings(dev, attested, verdict="attested"))
    assert verdicts(centre, "therm-1") == [v.UNVERIFIED]  # no trusted gateway key yet
    enroll(gateway)
    assert verdicts(centre, "therm-1") == [v.ATTESTED]
    manual = cose.sign1_create(GW_SEED, senml.encode_pack(
        [senml.make_record("temp", 37.9, time=NOW, seq=1)], base_name="urn:dev:vb:therm-1:"),
        kid=cose.key_id(crypto.ed25519_public_key(GW_SEED)), content_type=cose.CT_SENML_CBOR)
    gateway.wait_receipts(gateway.readings(dev, manual, verdict="manual"))
    other = cose.sign1_create(GW_SEED, senml.encode_pack(
        [senml.make_record("temp", 36.0, time=NOW, seq=2)], base_name="urn:dev:vb:therm-1:"),
        kid=cose.key_id(crypto.ed25519_public_key(GW_SEED)), content_type=cose.CT_SENML_CBOR)
    tampered = bytearray(other)
    tampered[-1] ^= 1
    gateway.wait_receipts(gateway.readings(dev, bytes(tampered), verdict="attested"))
    assert verdicts(centre, "therm-1") == [v.ATTESTED, v.MANUAL, v.SIGNATURE_INVALID]
    report = build_report(centre.store)
    assert report["readings"]["device_proven"] == 0 and report["readings"]["received"] == 3


def test_certificates_checked_against_the_chain(centre: Centre, gateway: GatewayPublisher) -> None:
    rogue_seed = b"\x07" * 32
    # A gateway certificate the organisation did not sign, one for another gateway, and a
    # device certificate issued by a key that is not this gateway's.
    self_signed = cwt.issue_cwt(rogue_seed, "org-test", GW, crypto.ed25519_public_key(
        rogue_seed), NOW - 60, NOW + 86400, role="gateway")
    gateway.wait_receipts(gateway.event({v.EVENT_GATEWAY_CERTIFICATE: self_signed}))
    gateway.wait_receipts(gateway.event({
        v.EVENT_GATEWAY_CERTIFICATE: gateway_certificate(gateway="gw-other")}))
    enroll(gateway)
    rogue_device = SimDevice("ox-8", issuer_seed=rogue_seed)
    gateway.wait_receipts(gateway.event({v.EVENT_DEVICE_CERTIFICATE: rogue_device.certificate}))
    statuses = [(r["kind"], r["status"], r["reason"]) for r in centre.store.certificates()]
    assert statuses[0][:2] == ("gateway", "refused") and "kid mismatch" in statuses[0][2]
    assert statuses[1][:2] == ("gateway", "refused") and "gw-other" in statuses[1][2]
    assert statuses[2][:2] == ("gateway", "trusted")
    assert statuses[3][:2] == ("device", "waiting")  # unknown issuer key: maybe later
    assert centre.store.keys("device", "ox-8") == []


def test_eventlog_checkpoints_verified_with_the_gateway_key(
        centre: Centre, gateway: GatewayPublisher) -> None:
    enroll(gateway)
    signed = sign_checkpoint(GW_SEED, GW, 1, 12, b"\x11" * 32, 1_700_000_000_000).cose
    stranger = sign_checkpoint(b"\x09" * 32, GW, 13, 20, b"\x22" * 32, 1_700_000_000_500).cose
    for body in (signed, stranger):
        gateway.wait_receipts(gateway.event({v.EVENT_EVENTLOG_CHECKPOINT: body}))
    rows = centre.store.eventlog_checkpoints(GW)
    assert [(r["first"], r["last"], r["status"]) for r in rows] == [
        (1, 12, v.CP_VERIFIED), (13, 20, v.CP_NO_KEY)]


def test_hostile_messages_are_rejected_with_a_reason(broker: Broker, centre: Centre,
                                                     gateway: GatewayPublisher) -> None:
    dev = SimDevice("ox-9")
    garbage = gateway.publish(topics.UP_READINGS, b"\xff\x00garbage", "ox-9")
    (status, reason, _c), = gateway.wait_receipts(garbage)
    assert status == "rejected" and reason
    wrong_device = gateway.publish(topics.UP_READINGS, uplink.encode_readings(
        "ox-other", dev.seal(), "sealed", 1), "ox-9")
    assert "topic" in gateway.wait_receipts(wrong_device)[0][1]
    bad_alarm = gateway.publish(topics.UP_ALARM, messages.encode("alarm", {1: "x"}))
    assert gateway.wait_receipts(bad_alarm)[0][0] == "rejected"
    # A ResponseTopic into another gateway's subtree is not followed.
    other = GatewayPublisher(broker.port, gateway="gw-victim")
    try:
        aimed = gateway.publish(topics.UP_READINGS,
                                uplink.encode_readings(dev.id, dev.seal(), "sealed", 1), dev.id,
                                response_topic=topics.down("gw-victim", topics.DOWN_RECEIPT))
        assert gateway.wait_receipts(aimed)[0][0] == "stored"
        time.sleep(0.1)
        assert other.received(topics.DOWN_RECEIPT) == []
    finally:
        other.close()
    assert centre.stats()["foreign-response-topic"] == 1
    assert centre.store.device_counts()["ox-9"]["rejected"] == 2
    assert centre.store.count("readings") == 2


# ---------------------------------------------------------------- alarms and commands


def step(seq: int, kind: str, grade: str = "red", actor: str = "rules", level: int = 0,
         alarm_id: str = "9a3b8c4d5e6f7081") -> alarm_messages.AlarmTransition:
    return alarm_messages.AlarmTransition(alarm_id, seq, kind, grade, "spo2:low",
                                          ALARM_MS + seq, level, "P-0001", "ox-1", 88, actor)


def test_alarm_set_tracking_and_acknowledgement(centre: Centre, gateway: GatewayPublisher) -> None:
    gateway.wait_receipts(gateway.alarm(step(0, "raised")))
    gateway.wait_receipts(gateway.alarm(step(1, "notified", actor="push")))
    (alarm,) = centre.active_alarms(GW)
    assert (alarm.id, alarm.grade, alarm.state, alarm.signal_active) == (
        "9a3b8c4d5e6f7081", "red", "notified", True)
    with pytest.raises(CentreError, match="no alarm"):
        centre.acknowledge("0000000000000000", "nurse:c-1")
    sent = centre.acknowledge(alarm.id, "nurse:c-1")
    assert sent.wait() and sent.topic == topics.down(GW, topics.DOWN_ALARM_ACK)
    assert eventually(lambda: len(gateway.received(topics.DOWN_ALARM_ACK)) == 1)
    ack = alarm_messages.decode_ack(gateway.received(topics.DOWN_ALARM_ACK)[0][0])
    assert (ack.alarm_id, ack.action, ack.actor) == (alarm.id, "ack", "nurse:c-1")
    # The gateway's steps come back; out of order, and one of them twice.
    gateway.wait_receipts(gateway.alarm(step(3, "resolved")))
    gateway.wait_receipts(gateway.alarm(step(2, "acknowledged", actor="nurse:c-1")))
    gateway.wait_receipts(gateway.alarm(step(2, "acknowledged", actor="nurse:c-1")), 2)
    alarm = centre.store.alarm(alarm.id)
    assert alarm is not None
    assert (alarm.state, alarm.acknowledged_by, alarm.signal_active, alarm.missing_steps) == (
        "resolved", "nurse:c-1", False, 0)
    assert centre.close(alarm.id, "nurse:c-1", "patient stable").wait()
    assert eventually(lambda: len(gateway.received(topics.DOWN_ALARM_ACK)) == 2)
    assert alarm_messages.decode_ack(
        gateway.received(topics.DOWN_ALARM_ACK)[1][0]).action == "close"
    gateway.wait_receipts(gateway.alarm(step(4, "closed", actor="nurse:c-1")))
    assert centre.active_alarms(GW) == []
    with pytest.raises(CentreError, match="closed"):
        centre.acknowledge(alarm.id, "nurse:c-1")
    assert [c["action"] for c in centre.store.commands()] == ["ack", "close"]
    report = build_report(centre.store)
    assert report["latency_ms"]["alarm"]["count"] == 1
    assert report["alarms"][0]["grade"] == "red" and report["alarms"][0]["state"] == "closed"


def test_regraded_alarm_needs_a_new_acknowledgement_and_sets_are_tracked(
        centre: Centre, gateway: GatewayPublisher) -> None:
    for s in (step(0, "raised", "orange"), step(1, "acknowledged", "orange", "n:1"),
              step(2, "regraded", "red"), step(4, "escalated", "red", level=1)):
        gateway.wait_receipts(gateway.alarm(s))
    alarm = centre.store.alarm("9a3b8c4d5e6f7081")
    assert alarm is not None
    assert (alarm.grade, alarm.level, alarm.acknowledged_by, alarm.missing_steps) == (
        "red", 1, None, 1)
    other = step(0, "raised", "blue", alarm_id="00112233aabbccdd")
    set_payload = alarm_messages.encode_alarm_set(int(time.time() * 1000), [other])
    gateway.client.publish(topics.up(GW, topics.UP_ALARMS), set_payload, qos=1,
                           retain=True).wait_for_publish(5)
    assert eventually(lambda: centre.store.alarm_set(GW) == ["00112233aabbccdd"])
    assert {a.id for a in centre.active_alarms(GW)} == {"9a3b8c4d5e6f7081", "00112233aabbccdd"}


def test_limits_are_published_in_their_envelope(centre: Centre, gateway: GatewayPublisher) -> None:
    command = limits.build_command(ORG_SEED, b"\x01" * 16, "P-0001", NOW, NOW,
                                   {"spo2": (None, [("red", 88, None)])}, "dr.ada@centre")
    assert centre.send_limits(GW, command).wait()
    assert eventually(lambda: len(gateway.received(topics.DOWN_LIMITS)) == 1)
    kind, body = messages.decode(gateway.received(topics.DOWN_LIMITS)[0][0])
    assert kind == "limits"
    verified = limits.verify_command(body, crypto.ed25519_public_key(ORG_SEED), NOW)
    assert verified.patient == "P-0001"
    with pytest.raises(CentreError, match="not a limit command"):
        centre.send_limits(GW, b"\xd2\x84garbage")
    with pytest.raises(CentreError, match="bad gateway id"):
        centre.send_limits("gw/+", command)
    (row,) = centre.store.commands()
    assert (row["kind"], row["subject"], row["actor"]) == ("limits", "P-0001", "dr.ada@centre")


# ---------------------------------------------------------------- without a broker


def feed(ingest: Ingest, topic: str, payload: bytes, now: float | None = None) -> Outcome:
    """What the centre's worker does with one message, minus MQTT."""
    now = time.time() if now is None else now
    with ingest.store.transaction():
        outcome = ingest.handle(Inbound(topic, payload, now, uplink.digest(payload),
                                        "any/response/topic"))
        ingest.settle(outcome.touched, now)
    return outcome


def receipt_status(outcome: Outcome) -> str:
    assert outcome.reply is not None
    return uplink.decode_receipt(outcome.reply.payload)[1]


def make_ingest(path: Path | str = ":memory:") -> Ingest:
    anchor = TrustAnchor(org_ca_public=crypto.ed25519_public_key(ORG_SEED))
    return Ingest(Store(path), anchor, gap_deadline_s=30.0)


def test_device_keys_count_only_for_the_gateway_that_certified_them() -> None:
    ingest = make_ingest()
    victim = SimDevice("ox-1")
    feed(ingest, topics.up(GW, topics.UP_EVENT), messages.encode("event", {
        v.EVENT_GATEWAY_CERTIFICATE: gateway_certificate(),
        v.EVENT_DEVICE_CERTIFICATE: victim.certificate}))
    # Another gateway (the organisation certified it too) certifies its own key for the
    # same device name.
    rogue_seed = b"\x05" * 32
    impostor = SimDevice("ox-1", issuer_seed=rogue_seed, issuer="gw-rogue")
    feed(ingest, topics.up("gw-rogue", topics.UP_EVENT), messages.encode("event", {
        v.EVENT_GATEWAY_CERTIFICATE: gateway_certificate(rogue_seed, "gw-rogue"),
        v.EVENT_DEVICE_CERTIFICATE: impostor.certificate}))
    for gateway, device in (("gw-rogue", impostor), (GW, victim)):
        feed(ingest, topics.up(gateway, topics.UP_READINGS, "ox-1"),
             uplink.encode_readings("ox-1", device.seal(), "sealed", 1))
        feed(ingest, topics.up(gateway, topics.UP_CHECKPOINT, "ox-1"),
             messages.encode("checkpoint", device.checkpoint()))
    # Each gateway's relay is proven by the key it certified, and attributed to it.
    assert {(r["gateway"], r["verdict"]) for r in ingest.store.readings("ox-1")} == {
        ("gw-rogue", v.DEVICE_PROVEN), (GW, v.DEVICE_PROVEN)}
    # The impostor's data relayed through GW: its key is not one GW certified.
    feed(ingest, topics.up(GW, topics.UP_READINGS, "ox-1"),
         uplink.encode_readings("ox-1", impostor.seal(), "sealed", 2))
    out = feed(ingest, topics.up(GW, topics.UP_CHECKPOINT, "ox-1"),
               messages.encode("checkpoint", impostor.checkpoint()))
    assert receipt_status(out) == "stored"
    assert [(r["gateway"], r["first_seq"], r["status"]) for r in ingest.store.checkpoints(
        "ox-1") if r["session"] == impostor.session.hex()] == [
        ("gw-rogue", 0, v.CP_VERIFIED), (GW, 2, v.CP_NO_KEY)]


def test_retained_state_is_applied_every_time_it_changes() -> None:
    ingest = make_ingest()
    topic = topics.up(GW, topics.UP_STATUS)
    online, offline = (messages.encode("status", {"online": flag}) for flag in (True, False))
    for payload, expected in ((online, 1), (offline, 0), (online, 1)):
        feed(ingest, topic, payload)
        row = ingest.store.status(GW)
        assert row is not None and row["online"] == expected


def test_outcomes_of_the_pure_judgements() -> None:
    batch_tag = b"\x01" * 32
    readings = tuple(senml.decode_pack(senml.encode_pack(
        [senml.make_record("pr", 70, time=NOW, seq=s) for s in (4, 5, 6)],
        base_name="urn:dev:vb:d:")))
    batch = v.Batch("d", "00", "sealed", v.PENDING, "sealed", (), readings, batch_tag, 0)
    outcome = v.classify_seqs(batch, {4: batch_tag, 5: b"\x02" * 32})
    assert (outcome.new, outcome.duplicates, outcome.conflicts) == ((6,), (4,), (5,))
    assert v.missing_count([1, 2, 5, 9, 9]) == 5 and v.missing_count([]) == 0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0 and percentile([], 50) is None
    with pytest.raises(ValueError):
        TrustAnchor(gateway_keys={GW: b"short"})


def test_restart_keeps_state_and_the_store_refuses_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "centre.db"
    ingest = make_ingest(path)
    dev = SimDevice("ox-r")
    payload = uplink.encode_readings(dev.id, dev.seal(), "sealed", 1)
    assert receipt_status(feed(ingest, topics.up(GW, topics.UP_READINGS, dev.id),
                               payload)) == "stored"
    ingest.store.close()
    again = make_ingest(path)  # a restarted centre: the same message is a repeat
    feed(again, topics.up(GW, topics.UP_READINGS, dev.id), payload)
    assert again.store.device_counts()["ox-r"]["duplicates"] == 2
    assert again.store.count("readings") == 2
    again.store.close()
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("PRAGMA user_version = 7")
    with pytest.raises(StoreError, match="schema version 7"):
        Store(other)


def _valid_payloads() -> list[tuple[str, bytes]]:
    dev = SimDevice("ox-h")
    sealed = dev.seal()
    return [
        (topics.UP_READINGS, uplink.encode_readings(dev.id, sealed, "sealed", 1)),
        (topics.UP_CHECKPOINT, messages.encode("checkpoint", dev.checkpoint())),
        (topics.UP_EVENT, messages.encode("event", {
            v.EVENT_DEVICE_CERTIFICATE: dev.certificate,
            v.EVENT_EVENTLOG_CHECKPOINT: sign_checkpoint(GW_SEED, GW, 1, 2, b"\x00" * 32,
                                                         1).cose})),
        (topics.UP_ALARM, alarm_messages.encode_transition(step(0, "raised"))),
        (topics.UP_ALARMS, alarm_messages.encode_alarm_set(1, [step(0, "raised")])),
        (topics.UP_STATUS, messages.encode("status", {"online": True})),
    ]


VALID = _valid_payloads()
HOSTILE_INGEST = make_ingest()


@given(st.integers(0, len(VALID) - 1), st.integers(0, 10_000), st.integers(0, 255),
       st.sampled_from(topics.UP_KINDS), st.binary(max_size=64))
def test_hostile_payloads_never_crash_the_ingest(which: int, position: int, xor: int,
                                                  kind: str, junk: bytes) -> None:
    _kind, valid = VALID[which]
    mutated = bytearray(valid)
    mutated[position % len(mutated)] ^= xor or 1
    device = "ox-h" if kind in topics.PER_DEVICE_KINDS else None
    topic = topics.up(GW, kind, device)
    for payload in (bytes(mutated), junk, valid[: position % len(valid)]):
        status = receipt_status(feed(HOSTILE_INGEST, topic, payload))
        assert status in ("stored", "rejected")
