"""The README's first command: a simulated home from sensor to monitoring centre, live.

What runs, all real processes or real protocol code (see docs/demo.md):
  device   a simulated pulse oximeter that seals SenML batches (COSE_Mac0 under an
           X25519+HKDF session key) and signs checkpoints, writing serial frames to a PTY;
  gateway  reads the PTY with pyserial, completes the session handshake, verifies every
           batch (MAC, replay), raises alarms on the patient's SpO2 limits, publishes over
           MQTT 5 QoS 1 with the batch digest as correlation data, and tracks PUBACK (sent)
           and the centre's application receipt (received);
  broker   a real mosquitto on a free loopback port;
  centre   subscribes, checks device checkpoints end to end (the gateway cannot forge
           them), stores and acknowledges every batch with a receipt.
Until the edge agent pipeline (issue 4) lands, the gateway here is this module's small
one; the wire formats are the real ones from protocol/.
"""

from __future__ import annotations

import math
import os
import random
import select
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import serial
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.alarms import evaluator as alarm_rules
from edge_agent.alarms import lifecycle as alarm_lifecycle
from edge_agent.alarms.limits import LimitsBook
from protocol import (
    checkpoint,
    cose,
    crypto,
    cwt,
    frames,
    messages,
    replay,
    sealing,
    senml,
    session,
    topics,
    uplink,
)
from simulator.broker import Broker

GATEWAY_ID = "demo-gw"
DEVICE_ID = "ox-1"
BASE_NAME = f"urn:dev:vb:{DEVICE_ID}:"
PATIENT_ID = "P-demo"  # pseudonymous
SPO2_RED = 91         # NEWS2 scale 1: <= 91 % scores 3 (a red alarm in our grading)
CHECKPOINT_EVERY_S = 10.0


@dataclass
class Tally:
    """Shared counters for the live view and the summary (guarded by `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    generated: int = 0
    at_gateway: int = 0
    sent: int = 0
    received: int = 0
    duplicates: int = 0
    checkpoints_ok: int = 0
    checkpoints_bad: int = 0
    alarms: list[tuple[float, str, str]] = field(default_factory=list)
    last: dict[str, float] = field(default_factory=dict)
    notes: Counter[str] = field(default_factory=Counter)


def desaturation(t: float, duration: float, rng: random.Random) -> tuple[float, float]:
    """SpO2 and heart rate of a patient desaturating over the run, with noise."""
    frac = min(1.0, t / max(duration * 0.8, 1.0))
    spo2 = 97.0 - 9.0 * frac + rng.gauss(0, 0.4)
    hr = 72.0 + 35.0 * frac + 3.0 * math.sin(t / 5.0) + rng.gauss(0, 1.0)
    return round(min(100.0, spo2)), round(hr)


class PtyDeviceEnd:
    """The device's end of the serial cable: the PTY master, as a USB-serial chip sees it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def read(self, size: int, timeout: float = 0.05) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return os.read(self.fd, size) if ready else b""


class Device(threading.Thread):
    """The sensor side: handshake, then a sealed batch (SpO2 + HR) per second."""

    def __init__(self, link: PtyDeviceEnd, keys: dict[str, bytes], gateway_x25519: bytes,
                 duration: float, tally: Tally, seed: int) -> None:
        super().__init__(name="device", daemon=True)
        self.link = link
        self.error: BaseException | None = None
        self.keys = keys
        self.gateway_x25519 = gateway_x25519
        self.duration = duration
        self.tally = tally
        self.rng = random.Random(seed)
        self.kid_sign = cose.key_id(crypto.ed25519_public_key(keys["ed25519"]))

    def send(self, kind: str, body: object) -> None:
        self.link.write(frames.encode_frame(messages.encode(kind, body)))

    def handshake(self) -> session.Session:
        hs = session.DeviceHandshake(DEVICE_ID, self.keys["x25519"], self.gateway_x25519)
        self.send("hello", hs.hello())
        decoder = frames.FrameDecoder()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for payload in decoder.feed(self.link.read(256)):
                kind, body = messages.decode(payload)
                if kind == "accept":
                    return hs.finish(body)
        raise RuntimeError("gateway did not accept the session")

    def run(self) -> None:
        try:
            self.simulate()
        except BaseException as err:  # surfaced by run_demo: a dead device is a failed demo
            self.error = err

    def simulate(self) -> None:
        sess = self.handshake()
        chain = checkpoint.HashChain(sess.session_id)
        seq = 0
        start = time.monotonic()
        last_cp = start
        while (now := time.monotonic()) - start < self.duration:
            spo2, hr = desaturation(now - start, self.duration, self.rng)
            wall = int(time.time())
            records = [senml.make_record("spo2", spo2, time=wall, seq=seq),
                       senml.make_record("hr", hr, time=wall, seq=seq + 1)]
            sealed = sealing.seal_batch(sess.device_mac_key, sess.kid, records, BASE_NAME,
                                        chain=chain)
            seq += 2
            self.send("sealed", sealed)
            with self.tally.lock:
                self.tally.generated += 2
            critical = spo2 <= SPO2_RED
            if critical or now - last_cp >= CHECKPOINT_EVERY_S:
                self.send("checkpoint", chain.checkpoint(self.keys["ed25519"], DEVICE_ID, wall,
                                                         self.kid_sign))
                last_cp = now
            time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
        if chain.count:
            self.send("checkpoint", chain.checkpoint(self.keys["ed25519"], DEVICE_ID,
                                                     int(time.time()), self.kid_sign))


class Gateway(threading.Thread):
    """Serial in, verified, published with delivery tracking. A stand-in for edge_agent."""

    def __init__(self, port: str, broker_port: int, keys: dict[str, bytes],
                 device_cert: bytes, tally: Tally) -> None:
        super().__init__(name="gateway", daemon=True)
        self.link = serial.Serial(port, timeout=0.05)
        self.keys = keys
        self.device_cert = cwt.parse_cwt(device_cert)
        self.device_cert_bytes = device_cert
        self.tally = tally
        self.stop = threading.Event()
        self.session: session.Session | None = None
        self.tracker = replay.SequenceTracker()
        self.pending: dict[int, bytes] = {}     # MQTT mid -> digest, until PUBACK
        self.state: dict[bytes, str] = {}       # digest -> "stored" | "sent" | "received"
        self.evaluator = alarm_rules.Evaluator(LimitsBook())
        self.lifecycle = alarm_lifecycle.AlarmLifecycle()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=GATEWAY_ID,
                                  protocol=mqtt.MQTTv5)
        self.client.on_publish = self.on_publish
        self.client.on_message = self.on_receipt
        self.client.will_set(topics.up(GATEWAY_ID, topics.UP_STATUS),
                             messages.encode("status", {"online": False}), qos=1, retain=True)
        self.client.connect("127.0.0.1", broker_port)
        self.client.subscribe(topics.gateway_down_filter(GATEWAY_ID), qos=1)
        self.client.loop_start()
        self.client.publish(topics.up(GATEWAY_ID, topics.UP_STATUS),
                            messages.encode("status", {"online": True}), qos=1, retain=True)
        # The centre learns the device certificate (and so its checkpoint key) from us.
        self.client.publish(topics.up(GATEWAY_ID, topics.UP_EVENT),
                            messages.encode("event", {"device-certificate": device_cert}),
                            qos=1)

    def on_publish(self, _c: mqtt.Client, _u: object, mid: int, reason: object,
                   _p: object) -> None:
        # PUBACK: the broker has it. A refusal (reason code >= 0x80) is never "sent".
        with self.tally.lock:
            digest = self.pending.pop(mid, None)
            if digest is None:
                return
            if getattr(reason, "is_failure", False):
                self.tally.notes[f"broker refused: {reason}"] += 1
                self.state[digest] = "stored"
                return
            if self.state.get(digest) == "stored":
                self.state[digest] = "sent"
                self.tally.sent += 2

    def on_receipt(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        digest, status, _reason = uplink.decode_receipt(msg.payload)
        with self.tally.lock:
            if status == "stored" and self.state.get(digest) in ("stored", "sent"):
                if self.state[digest] == "stored":
                    self.tally.sent += 2
                self.state[digest] = "received"
                self.tally.received += 2

    def handle(self, payload: bytes) -> None:
        kind, body = messages.decode(payload)
        if kind == "hello":
            self.session, accept = session.gateway_accept(
                body, self.device_cert.agreement_key, self.keys["x25519"], now=int(time.time()))
            self.link.write(frames.encode_frame(messages.encode("accept", accept)))
        elif kind == "sealed" and self.session is not None:
            batch = sealing.open_batch(self.session.device_mac_key, self.session.kid, body)
            if any(self.tracker.record(s) == "duplicate" for s in batch.seqs):
                with self.tally.lock:
                    self.tally.duplicates += len(batch.seqs)
                return
            self.evaluate(batch)
            out = uplink.encode_readings(DEVICE_ID, body, "sealed", int(time.time() * 1000))
            digest = uplink.digest(out)
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = digest
            props.ResponseTopic = topics.down(GATEWAY_ID, topics.DOWN_RECEIPT)
            with self.tally.lock:
                self.state[digest] = "stored"
                self.tally.at_gateway += len(batch.seqs)
                info = self.client.publish(topics.up(GATEWAY_ID, topics.UP_READINGS, DEVICE_ID),
                                           out, qos=1, properties=props)
                self.pending[info.mid] = digest
        elif kind == "checkpoint":
            self.client.publish(topics.up(GATEWAY_ID, topics.UP_CHECKPOINT, DEVICE_ID),
                                messages.encode("checkpoint", body), qos=1)

    def evaluate(self, batch: sealing.OpenedBatch) -> None:
        """The gateway's rules engine (NEWS2 defaults) on every reading, offline-capable."""
        for reading in batch.readings:
            with self.tally.lock:
                self.tally.last[reading.quantity] = reading.value
            observation = alarm_rules.Reading(
                patient=PATIENT_ID, device=DEVICE_ID, quantity=reading.quantity,
                value=reading.value, time=float(reading.time), unit=reading.unit)
            conditions = self.evaluator.evaluate(observation)
            conditions += self.evaluator.tick(float(reading.time))
            self.publish_alarm_steps(self.lifecycle.apply_all(conditions))

    def publish_alarm_steps(self, steps: list[alarm_lifecycle.Step]) -> None:
        for step in steps:
            if step.kind not in (alarm_lifecycle.RAISED, alarm_lifecycle.REGRADED):
                continue
            alarm = self.lifecycle.alarm(step.alarm_id)
            text = f"{alarm.key}: {step.value:g}" if isinstance(step.value, float | int) \
                else alarm.key
            with self.tally.lock:
                self.tally.alarms.append((time.time(), step.grade.label, text))
            self.client.publish(topics.up(GATEWAY_ID, topics.UP_ALARM),
                                messages.encode("alarm", {"grade": step.grade.label,
                                                          "text": text}), qos=1)

    def run(self) -> None:
        decoder = frames.FrameDecoder()
        while not self.stop.is_set():
            for payload in decoder.feed(self.link.read(512)):
                try:
                    self.handle(payload)
                except Exception as err:  # noqa: BLE001 - quarantine, count, keep going
                    with self.tally.lock:
                        self.tally.notes[f"quarantined: {err}"] += 1
            for reason in decoder.take_errors():
                with self.tally.lock:
                    self.tally.notes[f"serial: {reason}"] += 1

    def close(self) -> None:
        self.stop.set()
        self.join(timeout=2)
        self.client.publish(topics.up(GATEWAY_ID, topics.UP_STATUS),
                            messages.encode("status", {"online": False}), qos=1, retain=True)
        self.client.loop_stop()
        self.client.disconnect()


class Centre:
    """Receives, checks device checkpoints end to end, stores, sends receipts."""

    def __init__(self, broker_port: int, gateway_public: bytes, tally: Tally) -> None:
        self.gateway_public = gateway_public
        self.tally = tally
        self.device_public: bytes | None = None
        self.tags: dict[int, bytes] = {}
        self.prev: bytes | None = None
        self.pending_checkpoints: list[bytes] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="centre",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", broker_port)
        self.client.subscribe(topics.centre_up_filter(shared=False), qos=1)
        self.client.loop_start()

    def on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        _gw, _dir, kind, _dev = topics.parse(msg.topic)
        if kind == topics.UP_EVENT:
            _, body = messages.decode(msg.payload)
            cert = cwt.verify_cwt(body["device-certificate"], self.gateway_public)
            self.device_public = cert.public_key
        elif kind == topics.UP_READINGS:
            _device, sealed, _verdict, _ms = uplink.decode_readings(msg.payload)
            parsed = cose.mac0_parse(sealed)
            readings = senml.decode_pack(parsed.payload)
            for r in readings:
                self.tags[r.seq] = parsed.tag
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = msg.properties.CorrelationData
            self.client.publish(msg.properties.ResponseTopic,
                                uplink.encode_receipt(uplink.digest(msg.payload)), qos=1,
                                properties=props)
            self.check_pending()
        elif kind == topics.UP_CHECKPOINT:
            _, body = messages.decode(msg.payload)
            self.pending_checkpoints.append(body)
            self.check_pending()

    def check_pending(self) -> None:
        if self.device_public is None:
            return
        still = []
        for cp in self.pending_checkpoints:
            verdict = checkpoint.verify_checkpoint(cp, self.device_public, self.tags)
            if verdict.status == "gap":
                still.append(cp)  # the batches may still be on their way
                continue
            with self.tally.lock:
                if verdict.ok:
                    self.tally.checkpoints_ok += 1
                else:
                    self.tally.checkpoints_bad += 1
                    self.tally.notes[f"checkpoint {verdict.status}: {verdict.reason}"] += 1
        self.pending_checkpoints = still

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def provision(workdir: Path) -> tuple[dict[str, bytes], dict[str, bytes], bytes]:
    """Keys generated where they are used; only public keys and the certificate travel."""
    device = {"ed25519": crypto.random_bytes(32), "x25519": crypto.random_bytes(32)}
    gateway = {"ed25519": crypto.random_bytes(32), "x25519": crypto.random_bytes(32)}
    now = int(time.time())
    cert = cwt.issue_cwt(
        gateway["ed25519"], GATEWAY_ID, DEVICE_ID, crypto.ed25519_public_key(device["ed25519"]),
        now - 60, now + 365 * 86400, agreement_key=crypto.x25519_public_key(device["x25519"]),
        role="device", model="VB-OX1", serial="SIM-0001",
        issuer_kid=cose.key_id(crypto.ed25519_public_key(gateway["ed25519"])))
    (workdir / "device.cwt").write_bytes(cert)
    return device, gateway, cert




def run_demo(duration: float = 60.0, seed: int = 1, live: bool = True) -> Tally:
    """Run the whole home for `duration` seconds; returns the final tally."""
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="vitalbridge-demo-") as tmp:
        workdir = Path(tmp)
        device_keys, gateway_keys, cert = provision(workdir)
        with Broker(workdir / "broker") as broker:
            centre = Centre(broker.port, crypto.ed25519_public_key(gateway_keys["ed25519"]),
                            tally)
            master_fd, slave_fd = os.openpty()
            gateway = Gateway(os.ttyname(slave_fd), broker.port, gateway_keys, cert, tally)
            device = Device(PtyDeviceEnd(master_fd), device_keys,
                            crypto.x25519_public_key(gateway_keys["x25519"]), duration, tally,
                            seed)
            gateway.start()
            device.start()
            if live:
                from simulator.demo_view import show_live

                show_live(tally, device, duration)
            else:
                device.join(duration + 10)
            drain_deadline = time.monotonic() + 5
            while time.monotonic() < drain_deadline:
                with tally.lock:
                    if tally.received >= tally.generated:
                        break
                time.sleep(0.05)
            centre.check_pending()
            gateway.close()
            centre.close()
            os.close(master_fd)
            os.close(slave_fd)
    if device.error is not None:
        raise DemoError(f"simulated device failed: {device.error}") from device.error
    return tally


class DemoError(RuntimeError):
    """A part of the simulated home failed."""
