"""One MQTT 5 connection to the broker (paho-mqtt 2.x), seen from asyncio as a stream of events.

Threads. paho runs its network loop on its own thread (`loop_start`); every callback runs there.
The callbacks only capture what happened (with a monotonic timestamp) and hand it to the event
loop through `_EventPump` (one `call_soon_threadsafe` per burst, not per PUBACK). Nothing here
touches SQLite. `publish` and `close` are called from the event loop; paho queues the
packet and wakes its own thread, which does all socket I/O (an SSL socket must not be driven
from two threads at once).

Session (decision, docs/uplink.md). We connect with clean_start=False and a session expiry
interval so the broker keeps our subscription and queues receipts and commands while we are
away. Our own unacknowledged QoS 1 publishes are *not* carried by the session: on every
disconnect they are dropped from paho and reported in `LinkDown.dropped`, and the delivery
loop re-sends them from the journal, in priority order, after the reconnect. (The broker holds
no state for QoS 1 publishes it received, so dropping them costs nothing but a possible
duplicate, which the centre removes by digest.)

Reconnects. paho's own reconnect wait is set to zero; instead `on_disconnect` and
`on_connect_fail` sleep a jittered exponential delay (backoff.py) on the network thread, which
has nothing else to do while disconnected. `close()` interrupts that sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.uplink.backoff import Backoff, BackoffPolicy
from edge_agent.uplink.properties import PublishProperties
from protocol import messages, topics

log = logging.getLogger("vitalbridge.uplink.link")


class _NotConnectedIsNormal(logging.Filter):
    """paho logs "Client is not connected" as an error every time its loop runs between a
    failed connection attempt and the next, and after a clean disconnect: expected here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_paho_log = logging.getLogger("vitalbridge.uplink.paho")
_paho_log.addFilter(_NotConnectedIsNormal())

# -- PUBACK reason codes (MQTT 5.0, section 3.4.2.1) -------------------------------------------

PUBACK_REASONS: dict[int, str] = {
    0x00: "success",
    0x10: "no matching subscribers",
    0x80: "unspecified error",
    0x83: "implementation specific error",
    0x87: "not authorized",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
}
# The broker has the message. 0x10 only says nobody is subscribed right now: it is still the
# broker's, and the missing receipt will bring it round again (receipt timeout).
DELIVERED_REASONS = frozenset({0x00, 0x10})
# Refusals that may clear up by themselves; the others need someone to fix the ACL or content.
TRANSIENT_REASONS = frozenset({0x80, 0x83, 0x91, 0x97})


@dataclass(frozen=True, slots=True)
class PubackOutcome:
    code: int
    name: str
    delivered: bool  # the broker took responsibility for the message
    transient: bool  # a refusal worth retrying soon (meaningless when delivered)


def _classify(code: int) -> PubackOutcome:
    name = PUBACK_REASONS.get(code, f"unknown reason 0x{code:02x}")
    if code in DELIVERED_REASONS:
        return PubackOutcome(code, name, True, False)
    # Codes below 0x80 other than 0x00/0x10 are not valid in a PUBACK: treat as transient.
    transient = code in TRANSIENT_REASONS or code not in PUBACK_REASONS
    return PubackOutcome(code, name, False, transient)


# Every PUBACK is classified twice (transmission observer, delivery loop): answer the one-byte
# codes from a table of the same (frozen) outcomes.
_OUTCOMES = {code: _classify(code) for code in range(256)}


def classify_puback(code: int) -> PubackOutcome:
    """What a PUBACK reason code means for a journal row. Anything not known to mean
    "delivered" is a refusal — including codes a PUBACK may not carry (a broker bug)."""
    known = _OUTCOMES.get(code)
    return known if known is not None else _classify(code)


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for TLS with a client certificate. The key never leaves the gateway."""

    ca_file: str  # the organisation CA that signed the broker's certificate
    cert_file: str  # this gateway's client certificate (chain)
    key_file: str
    key_password: str | None = None


def make_ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    """TLS 1.2+, broker certificate verified against `ca_file` with host name checking, and our
    client certificate presented for mutual authentication."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(tls.cert_file, tls.key_file, password=tls.key_password)
    return context


def status_payload(online: bool) -> bytes:
    """The retained gateway status body (also the last-will, with online=False)."""
    return messages.encode("status", {"online": online})


@dataclass(frozen=True, slots=True)
class LinkConfig:
    gateway_id: str
    host: str = "127.0.0.1"
    port: int = 8883
    client_id: str | None = None  # default: the gateway id (stable, so the session survives)
    username: str | None = None  # with TLS client certificates the broker usually takes the CN
    password: str | None = None
    tls: TlsFiles | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 3600  # how long the broker keeps our subscription and receipts
    max_inflight: int = 256  # paho's own cap; LinkUp caps the delivery window by it
    backoff: BackoffPolicy = BackoffPolicy()

    def __post_init__(self) -> None:
        topics.check_id("gateway_id", self.gateway_id)
        if not 0 < self.port < 65536:
            raise ValueError("port must be 1..65535")
        if self.keepalive_s < 1 or self.session_expiry_s < 0 or self.max_inflight < 1:
            raise ValueError("keepalive_s and max_inflight must be >= 1, session_expiry_s >= 0")


# -- events handed to the event loop ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkUp:
    session_present: bool
    # our unacknowledged QoS 1 publishes the link carries at once: the broker's Receive
    # Maximum, capped by paho's own limit (LinkConfig.max_inflight)
    receive_maximum: int


@dataclass(frozen=True, slots=True)
class LinkDown:
    reason: str
    dropped: tuple[int, ...]  # mids of our unacknowledged publishes, now forgotten by paho


@dataclass(frozen=True, slots=True)
class PubAck:
    mid: int
    reason_code: int
    at: float  # time.monotonic() when paho read the PUBACK


@dataclass(frozen=True, slots=True)
class Inbound:
    topic: str
    payload: bytes
    correlation: bytes | None
    at: float


@dataclass(frozen=True, slots=True)
class LinkProblem:
    """Something an operator must hear about (connection refused, status or subscription
    refused). Plain failed connection attempts are `ConnectFailed`, counted, not alarmed."""

    text: str


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    """A connection attempt failed (TCP connect, TLS handshake); next try after `retry_in_s`.
    (An attempt that dies after the handshake but before CONNACK arrives as a LinkDown.)"""

    retry_in_s: float


LinkEvent = LinkUp | LinkDown | PubAck | Inbound | LinkProblem | ConnectFailed


class _EventPump:
    """Thread-safe hand-off from paho's thread to the event loop, batching bursts."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, handler: Callable[[list[LinkEvent]], None]
    ) -> None:
        self._loop = loop
        self._handler = handler
        self._lock = threading.Lock()
        self._events: list[LinkEvent] = []
        self._scheduled = False

    def post(self, event: LinkEvent) -> None:
        with self._lock:
            self._events.append(event)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    def _drain(self) -> None:
        with self._lock:
            events, self._events = self._events, []
            self._scheduled = False
        self._handler(events)


def _no_delay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    """Disable Nagle's algorithm (paho leaves it on). With it, a small PUBLISH written while
    earlier ones are unacknowledged waits for the broker's delayed ACK: measured here, every
    PUBACK round trip took ~20 ms and an alarm behind routine traffic 25-50 ms."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# -- the link -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Queued:
    mid: int
    accepted: bool  # paho holds the message (sent, or sent after the next connect)


class MqttLink:
    """Owns the paho client. Create and `start(handler)` on the event loop."""

    def __init__(self, config: LinkConfig, rng: Callable[[], float] | None = None) -> None:
        self.config = config
        self.status_topic = topics.up(config.gateway_id, topics.UP_STATUS)
        self.down_filter = topics.gateway_down_filter(config.gateway_id)
        self.receipt_topic = topics.down(config.gateway_id, topics.DOWN_RECEIPT)
        self._backoff = Backoff(config.backoff, rng) if rng else Backoff(config.backoff)
        self._stopping = threading.Event()  # also interrupts the reconnect sleep
        self._own_lock = threading.Lock()
        self._own_mids: set[int] = set()  # our status publishes: not the delivery loop's
        self._pump: _EventPump | None = None
        self._publish_properties = PublishProperties()
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or cfg.gateway_id,
            protocol=mqtt.MQTTv5,
        )
        client.suppress_exceptions = True  # a bug in a callback must not kill the network thread
        client.enable_logger(_paho_log)
        client.max_inflight_messages_set(cfg.max_inflight)
        # Our callbacks sleep the jittered delay; paho's own 1 s is a floor for the paths that
        # bypass them (past fd 1023 paho's select() fails and it reconnects without calling
        # on_disconnect: the scale bench saw ~28,000 connections in 3 s without this floor).
        client.reconnect_delay_set(1, 1)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls is not None:
            client.tls_set_context(make_ssl_context(cfg.tls))
        client.will_set(self.status_topic, status_payload(False), qos=1, retain=True)
        client.on_socket_open = _no_delay
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    # -- event loop side ------------------------------------------------------------------------

    def start(self, handler: Callable[[list[LinkEvent]], None]) -> None:
        """Begin connecting in the background; events go to `handler` on this event loop."""
        self._pump = _EventPump(asyncio.get_running_loop(), handler)
        connect_properties = Properties(PacketTypes.CONNECT)
        connect_properties.SessionExpiryInterval = self.config.session_expiry_s
        self._client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive_s,
            clean_start=False,
            properties=connect_properties,
        )
        self._client.loop_start()

    def publish(
        self,
        topic: str,
        payload: bytes,
        correlation: bytes | None = None,
        response_topic: str | None = None,
        *,
        retain: bool = False,
    ) -> Queued:
        """Queue a QoS 1 publish. `accepted` only means paho holds it; the PUBACK (a `PubAck`
        event with this mid) says what the broker did with it.

        retain=True: retained *state* (the active alarm set), latest wins. Sent at QoS 0 so it
        never takes a slot of the broker's Receive Maximum that the delivery window counts
        on, and never produces a PubAck the delivery loop would not know; the caller
        publishes it again after every reconnect (alarms/dispatch.py)."""
        properties = self._publish_properties.build(correlation, response_topic)
        info = self._client.publish(topic, payload, qos=0 if retain else 1, retain=retain,
                                    properties=properties)
        # NO_CONN: paho keeps the message and sends it after the next CONNACK (or drops it
        # and reports it in LinkDown.dropped if the connection fails first).
        accepted = info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)
        return Queued(info.mid, accepted)

    def is_connected(self) -> bool:
        return self._client.is_connected()

    async def close(self, timeout: float = 5.0) -> None:
        """Leave: DISCONNECT with reason 0x04 asks the broker to publish our last-will (the
        retained offline status) — one packet, no race with a separate status publish."""
        self._stopping.set()
        if self._client.is_connected():
            self._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=0x04))
        try:
            await asyncio.wait_for(asyncio.to_thread(self._client.loop_stop), timeout)
        except TimeoutError:
            log.warning("mqtt network thread did not stop within %.1f s", timeout)

    # -- paho's network thread ------------------------------------------------------------------

    def _post(self, event: LinkEvent) -> None:
        if self._pump is not None:
            self._pump.post(event)

    def _wait_before_retry(self, delay: float) -> None:
        if not self._stopping.is_set():
            self._stopping.wait(delay)

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:  # paho closes the socket next; _on_disconnect backs off
            self._post(LinkProblem(f"broker refused the connection: {reason}"))
            return
        self._backoff.connected(time.monotonic())
        # With a session present the subscription still exists: re-subscribing is harmless,
        # and retained messages are only sent for a new subscription.
        client.subscribe(self.down_filter, options=SubscribeOptions(
            qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB))
        info = client.publish(self.status_topic, status_payload(True), qos=1, retain=True)
        with self._own_lock:
            self._own_mids.add(info.mid)
        # Past paho's own cap paho queues publishes in one FIFO: an alarm would wait behind
        # every routine message queued before it. Reporting the lower of the two limits keeps
        # the delivery window (and its urgent reserve) inside what goes out at once.
        receive_maximum = min(int(getattr(properties, "ReceiveMaximum", 65535)),
                              self.config.max_inflight)
        self._post(LinkUp(bool(flags.session_present), receive_maximum))

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        delay = self._backoff.next_delay()
        self._post(ConnectFailed(delay))
        self._wait_before_retry(delay)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        dropped = [m.mid for m in client.drop_out_messages()]
        with self._own_lock:
            ours = self._own_mids
            self._own_mids = set()
        self._post(LinkDown(str(reason), tuple(m for m in dropped if m not in ours)))
        self._backoff.disconnected(time.monotonic())
        self._wait_before_retry(self._backoff.next_delay())

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        now = time.monotonic()
        with self._own_lock:
            own = mid in self._own_mids
            self._own_mids.discard(mid)
        if not own:
            self._post(PubAck(mid, reason.value, now))
        elif reason.is_failure:
            self._post(LinkProblem(f"broker refused the gateway status: {reason}"))

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            self._post(
                LinkProblem(f"subscription to {self.down_filter} refused: {', '.join(refused)}")
            )

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # paho acknowledges (PUBACK) when this returns. A receipt acknowledged but not yet
        # journaled when the agent dies is lost; its row is then re-sent (docs/uplink.md).
        correlation = getattr(msg.properties, "CorrelationData", None)
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # not valid UTF-8: not one of our topics
            topic = ""
        self._post(
            Inbound(
                topic,
                bytes(msg.payload),
                bytes(correlation) if correlation is not None else None,
                time.monotonic(),
            )
        )
