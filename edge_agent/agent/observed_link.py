"""The MQTT link with an observer on it: what was published, acknowledged, refused, receipted.

`Delivery` tracks every message by MQTT message id but says nothing about individual
transmissions. The tamper-evident event journal wants exactly those (published, PUBACK,
refused, receipt), the metrics want refusals and the alarm latency wants the moment an
alarm was handed to the broker. `ObservedLink` sits between `Delivery` and `MqttLink`, keeps
mid -> (digest, topic) for the messages in flight, and reports each transition to a
`TransmissionObserver`. It changes nothing about the delivery itself: the events reach
`Delivery` unchanged, after the observer saw them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from edge_agent.uplink.delivery import Link
from edge_agent.uplink.mqtt_link import (
    Inbound,
    LinkDown,
    LinkEvent,
    PubAck,
    Queued,
    classify_puback,
)
from protocol import topics, uplink
from protocol.errors import ProtocolError

log = logging.getLogger("vitalbridge.agent.link")


@dataclass(frozen=True, slots=True)
class Transmission:
    mid: int
    digest: bytes
    topic: str
    kind: str  # topic kind: readings, checkpoint, alarm, event
    published_at: float  # time.monotonic()


class TransmissionObserver(Protocol):
    def published(self, sent: Transmission) -> None: ...

    def acknowledged(self, sent: Transmission, reason_code: int, at: float) -> None: ...

    def refused(self, sent: Transmission, reason_code: int, at: float) -> None: ...

    def receipt(self, digest: bytes, status: str, at: float) -> None: ...


class ObservedLink:
    """A `Link` (delivery.py) that reports transmissions to `observer`; see module doc."""

    def __init__(self, link: Link, observer: TransmissionObserver,
                 monotonic: Callable[[], float]) -> None:
        self._link = link
        self._observer = observer
        self._monotonic = monotonic
        self._in_flight: dict[int, Transmission] = {}
        self._kinds: dict[str, str] = {}  # topic -> kind (a handful of topics, many publishes)
        self.receipt_topic = link.receipt_topic

    def start(self, handler: Callable[[list[LinkEvent]], None]) -> None:
        def observed(events: list[LinkEvent]) -> None:
            for event in events:
                try:
                    self._observe(event)
                except Exception:  # an observer bug must never cost a delivery event
                    log.exception("transmission observer failed on %s", type(event).__name__)
            handler(events)
        self._link.start(observed)

    def publish(self, topic: str, payload: bytes, correlation: bytes | None = None,
                response_topic: str | None = None) -> Queued:
        queued = self._link.publish(topic, payload, correlation, response_topic)
        if queued.accepted:
            digest = correlation if correlation is not None else uplink.digest(payload)
            kind = self._kinds.get(topic)
            if kind is None:
                try:
                    kind = self._kinds[topic] = topics.parse(topic)[2]
                except ProtocolError:
                    kind = "unknown"
            sent = Transmission(queued.mid, digest, topic, kind, self._monotonic())
            self._in_flight[queued.mid] = sent
            try:
                self._observer.published(sent)
            except Exception:
                log.exception("transmission observer failed on a publish")
        return queued

    async def close(self, timeout: float = 5.0) -> None:
        await self._link.close(timeout)

    def _observe(self, event: LinkEvent) -> None:
        if isinstance(event, PubAck):
            sent = self._in_flight.pop(event.mid, None)
            if sent is None:
                return
            if classify_puback(event.reason_code).delivered:
                self._observer.acknowledged(sent, event.reason_code, event.at)
            else:
                self._observer.refused(sent, event.reason_code, event.at)
        elif isinstance(event, LinkDown):
            for mid in event.dropped:
                self._in_flight.pop(mid, None)
        elif isinstance(event, Inbound) and event.topic == self.receipt_topic:
            try:
                digest, status, _reason = uplink.decode_receipt(event.payload)
            except ProtocolError:
                return  # Delivery counts and logs undecodable receipts
            if event.correlation is None or event.correlation == digest:
                self._observer.receipt(digest, status, event.at)
