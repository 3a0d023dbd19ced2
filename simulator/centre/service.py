"""The reference monitoring centre on MQTT: receive, verify, store, then receipt.

Two layers:
  Ingest  what one upstream message means and what is stored for it (store + verifier, no
          MQTT), including when device checkpoints can be decided;
  Centre  the paho-mqtt 2.x MQTT 5 client: a shared subscription so several instances share
          the load, a worker thread that handles messages in groups (one transaction each),
          and the commands the centre sends (alarm acknowledgements, limit commands).

Order of effects for every message (docs/centre.md): the rows are committed, THEN the
application receipt is published (correlation data echoed, to the gateway's receipt topic),
THEN the broker's QoS 1 delivery is acknowledged (manual ack). A crash at any point leaves
either nothing acknowledged (the broker or the gateway sends again; the digest makes that
idempotent) or everything stored.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from protocol import alarm_messages, crypto, limits, messages, topics, uplink
from protocol.checks import hexstr
from protocol.errors import ProtocolError, ValidationError
from simulator.centre import verifier as v
from simulator.centre.store import AlarmView, Store, StoredCheckpoint

log = logging.getLogger("vitalbridge.centre")

# (device, session); session None = every session of the device (a key was learned).
Touched = set[tuple[str, str | None]]
# Messages a gateway journals and re-sends until receipted: one copy counts, by digest.
# Retained state (status, alarm set) is applied every time: "online" after "offline" has
# the same bytes as the "online" before it.
JOURNALED_KINDS = (topics.UP_READINGS, topics.UP_CHECKPOINT, topics.UP_ALARM, topics.UP_EVENT)


class CentreError(RuntimeError):
    """A command the centre cannot send (unknown or closed alarm, invalid limit command)."""


@dataclass(frozen=True, slots=True)
class AlarmSetDifference:
    """The centre's folded alarm view against a gateway's retained active set."""

    gateway: str
    only_in_set: tuple[str, ...]  # open at the gateway; closed or unknown here
    only_at_centre: tuple[str, ...]  # open here; the gateway's set no longer has it
    incomplete: tuple[str, ...]  # in both, but steps below the newest have not arrived

    @property
    def agree(self) -> bool:
        return not (self.only_in_set or self.only_at_centre or self.incomplete)


def compare_alarm_set(gateway: str, retained: Iterable[str],
                      open_here: Iterable[AlarmView]) -> AlarmSetDifference:
    """Which alarms the two views disagree on (ids sorted)."""
    in_set = set(retained)
    views = {view.id: view for view in open_here}
    return AlarmSetDifference(
        gateway, tuple(sorted(in_set - set(views))), tuple(sorted(set(views) - in_set)),
        tuple(sorted(i for i in in_set & set(views) if views[i].missing_steps)))


@dataclass(frozen=True, slots=True)
class Inbound:
    """One upstream MQTT message, as captured on paho's network thread."""

    topic: str
    payload: bytes
    received_at: float
    correlation: bytes | None = None
    response_topic: str | None = None
    mid: int = 0
    qos: int = 0


@dataclass(frozen=True, slots=True)
class Reply:
    topic: str
    payload: bytes
    correlation: bytes | None


@dataclass(slots=True)
class Outcome:
    reply: Reply | None = None
    touched: Touched = field(default_factory=set)


class Ingest:
    """Stores what upstream messages carry and decides device checkpoints. Every method
    must run inside `store.transaction()`; nothing here talks MQTT."""

    def __init__(self, store: Store, anchor: v.TrustAnchor, gap_deadline_s: float) -> None:
        self.store = store
        self.anchor = anchor
        self.gap_deadline_s = gap_deadline_s
        self.stats: Counter[str] = Counter()
        self._handlers: dict[str, Callable[[str, str | None, Inbound, bytes], Touched]] = {
            topics.UP_READINGS: self._readings,
            topics.UP_CHECKPOINT: self._checkpoint,
            topics.UP_EVENT: self._event,
            topics.UP_ALARM: self._alarm,
            topics.UP_ALARMS: self._alarm_set,
            topics.UP_STATUS: self._status,
        }

    # ------------------------------------------------------------ one message

    def handle(self, msg: Inbound) -> Outcome:
        try:
            gateway, direction, kind, device = topics.parse(msg.topic)
            if direction != "up":
                raise ValidationError("topic", "not an upstream topic")
        except ProtocolError:
            self.stats["bad-topic"] += 1  # nobody to answer: not under a gateway's subtree
            return Outcome()
        self.stats[kind] += 1
        digest = uplink.digest(msg.payload)
        known = self.store.message(digest)
        if known is not None and kind in JOURNALED_KINDS:
            self.store.add_message(digest, gateway, kind, device, msg.payload, msg.received_at)
            if known["status"] == "stored" and kind == topics.UP_READINGS and device:
                self._count_repeat(gateway, device, msg)
            self.stats["repeated-message"] += 1
            return Outcome(self._receipt(gateway, msg, digest, known["status"], known["reason"]))
        touched: Touched = set()
        status, reason = "stored", ""
        try:
            with self.store.savepoint():
                touched = self._handlers[kind](gateway, device, msg, digest)
        except ProtocolError as exc:
            status, reason = "rejected", str(exc)
            self.stats["rejected"] += 1
            if device is not None:
                self.store.count_device(device, gateway, rejected=1)
        self.store.add_message(digest, gateway, kind, device, msg.payload, msg.received_at,
                               status, reason)
        return Outcome(self._receipt(gateway, msg, digest, status, reason), touched)

    def _receipt(self, gateway: str, msg: Inbound, digest: bytes, status: str, reason: str
                 ) -> Reply | None:
        """The application receipt, to the gateway's own receipt topic. A ResponseTopic
        naming anything else is not followed: a gateway must not make the centre publish
        into another gateway's subtree."""
        if msg.response_topic is None:
            return None
        topic = topics.down(gateway, topics.DOWN_RECEIPT)
        if msg.response_topic != topic:
            self.stats["foreign-response-topic"] += 1
        payload = uplink.encode_receipt(digest, status, reason or None)
        self.store.add_receipt(digest, gateway, status, reason, topic, msg.correlation,
                               msg.received_at)
        return Reply(topic, payload, msg.correlation)

    def _count_repeat(self, gateway: str, device: str, msg: Inbound) -> None:
        """A stored batch arriving again: all of its readings are duplicates."""
        try:
            batch = v.open_readings(msg.payload, gateway, device, self.gateway_keys(gateway),
                                    msg.received_at)
        except ProtocolError:
            return
        self.store.count_device(device, gateway, duplicates=len(batch.readings))

    def gateway_keys(self, gateway: str) -> list[v.TrustedKey]:
        configured = [k for k in self.anchor.configured_keys() if k.owner == gateway]
        return configured + self.store.keys("gateway", gateway)

    # ------------------------------------------------------------ by kind

    def _readings(self, gateway: str, device: str | None, msg: Inbound, digest: bytes
                  ) -> Touched:
        assert device is not None  # topics.parse: readings topics name a device
        batch = v.open_readings(msg.payload, gateway, device, self.gateway_keys(gateway),
                                msg.received_at)
        seqs = batch.seqs
        stored = self.store.stored_tags(device, batch.session, seqs[0], seqs[-1])
        outcome = v.classify_seqs(batch, stored)
        self.store.add_readings(gateway, batch, outcome.new, digest, msg.received_at)
        if outcome.conflicts:
            self.store.add_conflicts(batch, outcome.conflicts, digest, msg.received_at)
            log.warning("%s/%s: %d seqs arrived again with another tag", device,
                        batch.session, len(outcome.conflicts))
        self.store.count_device(device, gateway, received=len(outcome.new),
                                duplicates=len(outcome.duplicates) + len(outcome.conflicts),
                                conflicts=len(outcome.conflicts))
        if batch.kind == "sealed" and outcome.new:
            return {(device, batch.session)}
        return set()

    def _checkpoint(self, gateway: str, device: str | None, msg: Inbound, digest: bytes
                    ) -> Touched:
        assert device is not None
        claim, cose = v.read_checkpoint(msg.payload, device)
        self.store.add_checkpoint(digest, gateway, claim, cose, msg.received_at,
                                  msg.received_at + self.gap_deadline_s)
        return {(device, claim.session)}

    def _event(self, gateway: str, _device: str | None, msg: Inbound, _digest: bytes
               ) -> Touched:
        body = v.read_event(msg.payload)
        touched: Touched = set()
        for key, value in body.items():
            if key == v.EVENT_GATEWAY_CERTIFICATE:
                touched |= self._gateway_certificate(gateway, _bytes(key, value),
                                                     msg.received_at)
            elif key == v.EVENT_DEVICE_CERTIFICATE:
                touched |= self._device_certificate(gateway, _bytes(key, value),
                                                    msg.received_at)
            elif key == v.EVENT_EVENTLOG_CHECKPOINT:
                judged = v.judge_eventlog_checkpoint(value, gateway, self.gateway_keys(gateway))
                self.store.add_eventlog_checkpoint(judged, _bytes(key, value), msg.received_at)
        return touched

    def _gateway_certificate(self, gateway: str, raw: bytes, now: float) -> Touched:
        digest = crypto.sha256(raw)
        try:
            key = v.trust_gateway_certificate(raw, gateway, self.anchor, int(now))
        except ProtocolError as exc:
            self.store.add_certificate(digest, gateway, "gateway", raw, "refused", str(exc), now)
            return set()
        self.store.add_key(key, now)
        self.store.add_certificate(digest, gateway, "gateway", raw, "trusted", "", now)
        touched: Touched = set()
        for row in self.store.waiting_certificates(gateway):
            touched |= self._device_certificate(gateway, row["raw"], now)
        self._reverify_gateway_signed(gateway)
        return touched

    def _device_certificate(self, gateway: str, raw: bytes, now: float) -> Touched:
        digest = crypto.sha256(raw)
        try:
            key = v.trust_device_certificate(raw, gateway, self.gateway_keys(gateway), int(now))
        except v.IssuerUnknown as exc:
            self.store.add_certificate(digest, gateway, "device", raw, "waiting", str(exc), now)
            return set()
        except ProtocolError as exc:
            self.store.add_certificate(digest, gateway, "device", raw, "refused", str(exc), now)
            return set()
        self.store.add_key(key, now)
        self.store.add_certificate(digest, gateway, "device", raw, "trusted", "", now)
        return {(key.owner, None)}

    def _reverify_gateway_signed(self, gateway: str) -> None:
        """Gateway-signed batches that arrived before a key of their gateway was trusted."""
        keys = self.gateway_keys(gateway)
        for row in self.store.unverified_batches(gateway):
            try:
                batch = v.open_readings(row["payload"], gateway, row["device"], keys)
            except ProtocolError:
                continue
            if batch.verdict != v.UNVERIFIED:
                self.store.set_batch_verdict(row["digest"], batch.verdict)

    def _alarm(self, gateway: str, _device: str | None, msg: Inbound, _digest: bytes
               ) -> Touched:
        step = alarm_messages.decode_transition(msg.payload)
        self.store.add_alarm_step(gateway, step, msg.received_at)
        return set()

    def _alarm_set(self, gateway: str, _device: str | None, msg: Inbound, _digest: bytes
                   ) -> Touched:
        time_ms, steps = alarm_messages.decode_alarm_set(msg.payload)
        for step in steps:  # each is a genuine step; known ones are ignored by (id, seq)
            self.store.add_alarm_step(gateway, step, msg.received_at)
        self.store.set_alarm_set(gateway, time_ms, [s.alarm_id for s in steps],
                                 msg.received_at)
        return set()

    def _status(self, gateway: str, _device: str | None, msg: Inbound, _digest: bytes
                ) -> Touched:
        kind, body = messages.decode(msg.payload)
        if kind != "status":
            raise ValidationError("type", f"expected status, got {kind}")
        online = body.get("online") if isinstance(body, dict) else None
        self.store.set_status(gateway, online if isinstance(online, bool) else None,
                              repr(body)[:1000], msg.received_at)
        return set()

    # ------------------------------------------------------------ checkpoints over time

    def settle(self, touched: Iterable[tuple[str, str | None]], now: float) -> int:
        """Re-judge the open checkpoints new tags or keys may decide -> how many changed."""
        changed = 0
        for device, session in sorted(touched, key=lambda t: (t[0], t[1] or "")):
            for stored in self.store.reopenable_checkpoints(device, session):
                changed += self._judge(stored, now)
        return changed

    def expire(self, now: float) -> int:
        """Checkpoints whose deadline passed: gaps become losses, missing keys unverifiable."""
        return sum(self._judge(stored, now) for stored in self.store.due_checkpoints(now))

    def _judge(self, stored: StoredCheckpoint, now: float) -> int:
        claim = stored.claim
        # Only keys the publishing gateway certified, and only tags it relayed: a gateway
        # cannot vouch for, or add evidence to, a device enrolled at another gateway.
        keys = [k for k in self.store.keys("device", claim.device) if k.issuer == stored.gateway]
        judgement = v.judge_checkpoint(
            stored.cose, claim, keys,
            self.store.sealed_tags(stored.gateway, claim.device, claim.session,
                                   claim.first_seq, claim.last_seq),
            self.store.previous_head(claim.device, claim.session, claim.first_seq),
            now, stored.deadline)
        if (judgement.status, judgement.reason) == (stored.status, stored.reason):
            return 0
        self.store.decide_checkpoint(stored, judgement, now)
        self.stats[f"checkpoint-{judgement.status}"] += 1
        if judgement.status in (v.CP_TAG_MISMATCH, v.CP_CHAIN_BREAK, v.CP_INVALID):
            log.warning("checkpoint %s/%s %d..%d: %s: %s", claim.device, claim.session,
                        claim.first_seq, claim.last_seq, judgement.status, judgement.reason)
        return 1


def _bytes(key: str, value: object) -> bytes:
    if not isinstance(value, bytes) or not value:
        raise ValidationError(key, "must be non-empty bytes")
    return value


# ---------------------------------------------------------------- the MQTT side


@dataclass(frozen=True, slots=True)
class CentreConfig:
    port: int
    database: Path
    host: str = "127.0.0.1"
    anchor: v.TrustAnchor = field(default_factory=v.TrustAnchor)
    client_id: str = "vb-centre-1"  # unique per instance; stable across its restarts
    shared: bool = True  # join the $share/centre group (several instances share the load)
    username: str | None = None
    password: str | None = None
    gap_deadline_s: float = 30.0  # how long a checkpoint's missing batches may take
    slow_consumer_delay_s: float = 0.0  # fault tests: pause before each message
    group_max: int = 256  # messages per transaction
    tick_s: float = 0.5  # how often deadlines are checked
    session_expiry_s: int = 3600  # the broker keeps our queue this long while we are away
    receive_maximum: int = 1000  # QoS 1 messages the broker may have in flight to us
    synchronous: str = "FULL"


@dataclass(frozen=True, slots=True)
class Sent:
    """A command published by the centre; wait() for the broker's PUBACK."""

    topic: str
    payload: bytes
    info: mqtt.MQTTMessageInfo

    def wait(self, timeout: float = 5.0) -> bool:
        try:
            self.info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        return self.info.is_published()


class Centre:
    """One centre instance. Use as a context manager, or start() / stop()."""

    def __init__(self, config: CentreConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.store = Store(config.database, synchronous=config.synchronous, clock=clock)
        self.ingest = Ingest(self.store, config.anchor, config.gap_deadline_s)
        self._inbox: queue.Queue[Inbound] = queue.Queue()
        self._delay = config.slow_consumer_delay_s
        self._busy = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._worker = threading.Thread(target=self._work, name=f"{config.client_id}-worker",
                                        daemon=True)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id,
                                  protocol=mqtt.MQTTv5, manual_ack=True)
        if config.username is not None:
            self.client.username_pw_set(config.username, config.password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> Centre:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        props.ReceiveMaximum = self.config.receive_maximum
        self.client.reconnect_delay_set(0.1, 2.0)
        self.client.connect_async(self.config.host, self.config.port,
                                  clean_start=self.config.session_expiry_s == 0,
                                  properties=props)
        self.client.loop_start()
        self._worker.start()
        if not self._connected.wait(timeout):
            self.stop()
            raise CentreError(f"not connected and subscribed at {self.config.host}:"
                              f"{self.config.port} within {timeout} s")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._worker.is_alive():
            self._worker.join(timeout=10)
        self.client.disconnect()
        self.client.loop_stop()
        self.store.close()

    def __enter__(self) -> Centre:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        """Connected, and the broker confirmed the subscription."""
        return self._connected.is_set()

    def set_slow_consumer(self, delay_s: float) -> None:
        """Fault tests: pause `delay_s` before handling each message (0 = full speed)."""
        if delay_s < 0:
            raise ValueError("delay must be >= 0")
        self._delay = delay_s

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once nothing is queued or being handled (what is still on the wire is not
        known here: poll the store for what a test expects)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._inbox.empty() and not self._busy.is_set():
                return True
            time.sleep(0.01)
        return False

    def stats(self) -> dict[str, int]:
        """Messages by kind, repeats, rejections, checkpoint decisions, internal errors."""
        with self.store.lock:  # the worker changes them only inside transactions
            return dict(self.ingest.stats)

    # ------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client: mqtt.Client, _u: object, _flags: object, reason: object,
                    _props: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the connection: %s", reason)
            return
        client.subscribe(topics.centre_up_filter(shared=self.config.shared),
                         options=SubscribeOptions(qos=1))

    def _on_subscribe(self, _c: mqtt.Client, _u: object, _mid: int, reasons: list,
                      _props: object) -> None:
        # Ready only once the broker confirmed the subscription: a publish it handles
        # before that would find no subscriber.
        if any(getattr(r, "is_failure", False) for r in reasons):
            log.error("broker refused the subscription: %s", reasons)
            return
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _flags: object, reason: object,
                       _props: object) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("broker connection lost: %s", reason)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        props = msg.properties
        self._inbox.put(Inbound(msg.topic, bytes(msg.payload), self.clock(),
                                getattr(props, "CorrelationData", None),
                                getattr(props, "ResponseTopic", None), msg.mid, msg.qos))

    # ------------------------------------------------------------ the worker

    def _take(self) -> list[Inbound]:
        try:
            first = self._inbox.get(timeout=self.config.tick_s)
        except queue.Empty:
            return []
        self._busy.set()
        group = [first]
        limit = 1 if self._delay > 0 else self.config.group_max
        while len(group) < limit:
            try:
                group.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return group

    def _work(self) -> None:
        next_tick = time.monotonic()
        while not (self._stop.is_set() and self._inbox.empty()):
            group = self._take()
            try:
                if group:
                    if self._delay > 0:
                        time.sleep(self._delay)
                    self._handle(group)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.config.tick_s
                    if self.store.due_checkpoints(self.clock()):
                        with self.store.transaction():
                            self.ingest.expire(self.clock())
            except sqlite3.Error:
                # Nothing was committed, acknowledged or receipted: the broker redelivers
                # unacknowledged messages after a reconnect, the gateway re-sends after
                # its receipt timeout. While running, retry the group ourselves.
                log.exception("store failed for %d messages", len(group))
                if self._stop.is_set():
                    break
                for msg in group:
                    self._inbox.put(msg)
                time.sleep(0.5)
            finally:
                self._busy.clear()

    def _handle(self, group: list[Inbound]) -> None:
        replies: list[Reply] = []
        touched: Touched = set()
        with self.store.transaction():
            for msg in group:
                try:
                    outcome = self.ingest.handle(msg)
                except sqlite3.Error:
                    raise
                except Exception:  # a bug must not stop the centre: no receipt, counted
                    log.exception("message on %s could not be handled", msg.topic)
                    self.ingest.stats["internal-error"] += 1
                    continue
                touched |= outcome.touched
                if outcome.reply is not None:
                    replies.append(outcome.reply)
            self.ingest.settle(touched, self.clock())
        for reply in replies:  # only now: the rows they confirm are committed
            props = Properties(PacketTypes.PUBLISH)
            if reply.correlation is not None:
                props.CorrelationData = reply.correlation
            self.client.publish(reply.topic, reply.payload, qos=1, properties=props)
        for msg in group:
            if msg.qos:
                self.client.ack(msg.mid, msg.qos)

    # ------------------------------------------------------------ commands to gateways

    def acknowledge(self, alarm_id: str, actor: str, detail: str | None = None) -> Sent:
        """A person acknowledges an alarm: alarm-ack {action ack} to its gateway."""
        return self._alarm_command(alarm_id, alarm_messages.ACK, actor, detail)

    def close(self, alarm_id: str, actor: str, detail: str | None = None) -> Sent:
        """A person closes an alarm's loop (the gateway refuses it unless the alarm is
        acknowledged and resolved, and reports the closing as a step)."""
        return self._alarm_command(alarm_id, alarm_messages.CLOSE, actor, detail)

    def _alarm_command(self, alarm_id: str, action: str, actor: str, detail: str | None
                       ) -> Sent:
        alarm = self.store.alarm(alarm_id)
        if alarm is None:
            raise CentreError(f"no alarm {alarm_id} has been received")
        if not alarm.is_open:
            raise CentreError(f"alarm {alarm_id} is closed")
        try:
            body = alarm_messages.AlarmAck(alarm_id, action, actor, int(self.clock() * 1000),
                                           detail)
        except ProtocolError as exc:
            raise CentreError(str(exc)) from None
        payload = alarm_messages.encode_ack(body)
        topic = topics.down(alarm.gateway, topics.DOWN_ALARM_ACK)
        with self.store.transaction():
            self.store.add_command(alarm.gateway, topics.DOWN_ALARM_ACK, alarm_id, action,
                                   actor, payload, self.clock())
        return Sent(topic, payload, self.client.publish(topic, payload, qos=1))

    def send_limits(self, gateway: str, command: bytes) -> Sent:
        """Send a signed limit command (protocol.limits.build_command) to a gateway, in a
        "limits" envelope. Refused here if it is not a well-formed command; its signature
        is the gateway's to check against the organisation key."""
        try:
            topic = topics.down(gateway, topics.DOWN_LIMITS)
        except ProtocolError as exc:
            raise CentreError(f"bad gateway id: {exc}") from None
        try:
            parsed = limits.parse_command(command)
        except ProtocolError as exc:
            raise CentreError(f"not a limit command: {exc}") from None
        payload = messages.encode("limits", bytes(command))
        with self.store.transaction():
            self.store.add_command(gateway, topics.DOWN_LIMITS, parsed.patient,
                                   hexstr(parsed.command_id), parsed.issuer, payload,
                                   self.clock())
        return Sent(topic, payload, self.client.publish(topic, payload, qos=1))

    def active_alarms(self, gateway: str | None = None) -> list[AlarmView]:
        """Open alarms (not closed), per gateway or all, oldest first."""
        return self.store.open_alarms(gateway)

    def alarm_set_difference(self, gateway: str) -> AlarmSetDifference | None:
        """The folded view against the gateway's retained active set (None: no set yet).
        They differ for a moment while steps travel; a lasting difference means a lost
        step or a gateway that restarted without its alarm store."""
        with self.store.lock:
            retained = self.store.alarm_set(gateway)
            if retained is None:
                return None
            return compare_alarm_set(gateway, retained, self.store.open_alarms(gateway))
