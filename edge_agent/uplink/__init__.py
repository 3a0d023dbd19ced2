"""MQTT uplink: journal rows to the monitoring centre, PUBACKs and receipts back.

`MqttLink` (mqtt_link.py) owns the paho-mqtt connection and turns its callbacks into events on
the event loop; `Delivery` (delivery.py) is the loop that claims journal rows, publishes them
within a bounded window (alarms first, with reserved slots), and records PUBACKs (`sent`) and
application receipts (`received`); backoff.py computes reconnect delays. docs/uplink.md
describes the state machine, the window policy and every PUBACK reason code.
"""

from edge_agent.uplink.backoff import Backoff, BackoffPolicy
from edge_agent.uplink.delivery import (
    Delivery,
    DeliveryConfig,
    DeliveryCounters,
    HistogramSnapshot,
    LatencyHistogram,
    Link,
    TechnicalAlarm,
)
from edge_agent.uplink.mqtt_link import (
    PUBACK_REASONS,
    LinkConfig,
    MqttLink,
    PubackOutcome,
    TlsFiles,
    classify_puback,
    make_ssl_context,
    status_payload,
)

__all__ = [
    "PUBACK_REASONS",
    "Backoff",
    "BackoffPolicy",
    "Delivery",
    "DeliveryConfig",
    "DeliveryCounters",
    "HistogramSnapshot",
    "LatencyHistogram",
    "Link",
    "LinkConfig",
    "MqttLink",
    "PubackOutcome",
    "TechnicalAlarm",
    "TlsFiles",
    "classify_puback",
    "make_ssl_context",
    "status_payload",
]
