"""EXPERIMENTAL: the device link over MQTT, straight from the board to a broker over Wi-Fi.

Status: message construction and inbound filtering are tested on the unix port
(tests/mpy/test_fw_transport.py); the network path is not, because micropython-lib's
umqtt.simple is not part of the unix port build we test with. Not ready for patients:

* protocol/topics.py has no device-link topics yet, so both topics are configuration
  (`up_topic`, `down_topic`); a gateway would have to subscribe to them and be granted
  them in the broker ACL before this carries anything (docs/firmware-transports.md).
* umqtt.simple blocks: connect, a QoS 1 publish waiting for its PUBACK and a ping stall
  every other task for up to the socket timeout. Fine for a bench board, not for a
  wearable sampling at 50 Hz.

Each envelope is one MQTT message: payload = the protocol.messages bytes unchanged, QoS 1
(the PUBACK says the broker has it; the device-ack still decides what leaves the outbox).
Wi-Fi comes from hal.wlan() (network.WLAN on the board). Link: up after CONNACK; down on
any socket error, then a reconnect with back-off; plus the answer rule of base.AnswerWatch.
"""

import asyncio

from firmware.transport.base import (
    DEFAULT_ANSWER_TIMEOUT_MS,
    DEFAULT_MAX_RETRY_MS,
    DEFAULT_RETRY_MS,
    AnswerWatch,
    Transport,
    TransportDown,
    message_kind,
)
from protocol.errors import FrameError

MAX_MESSAGE = 8192
QOS = 1


class MqttPlan:
    """Pure: what is published for an envelope and which inbound messages are accepted."""

    def __init__(self, up_topic, down_topic, max_message=MAX_MESSAGE):
        for topic in (up_topic, down_topic):
            if not topic or "+" in topic or "#" in topic:
                raise ValueError("topics must be non-empty and free of wildcards")
        self.up_topic = up_topic
        self.down_topic = down_topic
        self.max_message = max_message

    def publication(self, message):
        """(topic bytes, payload bytes, qos) for one outgoing envelope."""
        message = bytes(message)
        if not message or len(message) > self.max_message:
            raise FrameError("message of %d bytes outside 1..%d" % (len(message), self.max_message))
        return self.up_topic.encode(), message, QOS

    def inbound(self, topic, payload):
        """The envelope carried by an inbound publication, or None (other topic, size)."""
        if bytes(topic) != self.down_topic.encode():
            return None
        if not payload or len(payload) > self.max_message:
            return None
        return bytes(payload)


class MqttTransport(Transport):
    """hal: the Hal (wlan(), time); settings: server, port, client_id, user, password,
    ssid, wifi_password, up_topic, down_topic, keepalive_s."""

    name = "mqtt"

    def __init__(self, hal, server, client_id, up_topic, down_topic, port=1883, user=None,
                 password=None, ssid=None, wifi_password=None, keepalive_s=60, poll_ms=50,
                 answer_timeout_ms=DEFAULT_ANSWER_TIMEOUT_MS, retry_ms=DEFAULT_RETRY_MS,
                 max_retry_ms=DEFAULT_MAX_RETRY_MS):
        super().__init__()
        self.hal = hal
        self.plan = MqttPlan(up_topic, down_topic)
        self.server = server
        self.port = port
        self.client_id = client_id
        self.user = user
        self.password = password
        self.ssid = ssid
        self.wifi_password = wifi_password
        self.keepalive_s = keepalive_s
        self.poll_ms = poll_ms
        self.watch = AnswerWatch(hal.ticks_diff, answer_timeout_ms, retry_ms, max_retry_ms)
        self._client = None
        self._last_ping = 0

    async def start(self):
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self):
        await self._stop_task()
        self._drop()

    async def send(self, message):
        client = self._client
        if not self.connected or client is None:
            raise TransportDown("mqtt link is down")
        topic, payload, qos = self.plan.publication(message)
        try:
            client.publish(topic, payload, False, qos)
        except OSError as exc:
            self._drop()
            raise TransportDown("publish failed: %r" % (exc,)) from None
        self.watch.sent(message_kind(message), self.hal.ticks_ms())

    def _on_message(self, topic, payload):
        message = self.plan.inbound(topic, payload)
        if message is not None:
            self.watch.heard_from_gateway(self.hal.ticks_ms())
            self._deliver(message)

    def _connect(self):
        wlan = self.hal.wlan()
        if wlan is None:
            raise OSError("no Wi-Fi interface")
        if not wlan.isconnected():
            wlan.active(True)
            if self.ssid:
                wlan.connect(self.ssid, self.wifi_password)
            raise OSError("Wi-Fi not connected yet")
        from umqtt.simple import MQTTClient  # micropython-lib; absent on the unix port

        client = MQTTClient(self.client_id, self.server, port=self.port, user=self.user,
                            password=self.password, keepalive=self.keepalive_s)
        client.set_callback(self._on_message)
        client.connect()
        client.subscribe(self.plan.down_topic.encode(), QOS)
        self._client = client
        self._last_ping = self.hal.ticks_ms()

    def _drop(self):
        client = self._client
        self._client = None
        if client is not None:
            try:
                client.disconnect()
            except OSError:
                pass
        self._set_link(False)

    async def _run(self):
        delay = 0
        while True:
            if self._client is None:
                await self.hal.asleep_ms(delay)
                try:
                    self._connect()
                except (OSError, ImportError):
                    delay = self.watch.gave_up()
                    continue
                self.watch.reset()
                self._set_link(True)
            now = self.hal.ticks_ms()
            client = self._client
            try:
                client.check_msg()
                if self.hal.ticks_diff(now, self._last_ping) > self.keepalive_s * 500:
                    client.ping()
                    self._last_ping = now
            except OSError:
                self._drop()
                delay = self.watch.gave_up()
                continue
            if self.watch.overdue(now):
                self._drop()  # a reconnect gives the app a new handshake
                delay = self.watch.gave_up()
                continue
            await self.hal.asleep_ms(self.poll_ms)
