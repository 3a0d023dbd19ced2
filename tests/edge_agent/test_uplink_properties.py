"""MqttLink's PUBLISH properties (edge_agent/uplink/properties.py) pack exactly as paho's
own, object by object, whatever the correlation data and response topic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.uplink import properties as props_module
from edge_agent.uplink.properties import PublishProperties


def paho_built(correlation: bytes | None, response_topic: str | None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    if correlation is not None:
        props.CorrelationData = correlation
    if response_topic is not None:
        props.ResponseTopic = response_topic
    return props


CORRELATION = st.none() | st.binary(max_size=300)
TOPIC = st.none() | st.text(max_size=120).filter(lambda t: "\x00" not in t)
BUILDER = PublishProperties()  # shared: templates are reused across examples, as in the link


@given(CORRELATION, TOPIC)
def test_packs_exactly_as_paho(correlation: bytes | None, topic: str | None) -> None:
    built = BUILDER.build(correlation, topic)
    reference = paho_built(correlation, topic)
    assert isinstance(built, Properties)
    assert built.pack() == reference.pack()
    assert built.pack() == built.pack()  # a re-send packs the same bytes again
    assert getattr(built, "CorrelationData", None) == getattr(reference, "CorrelationData", None)
    assert getattr(built, "ResponseTopic", None) == getattr(reference, "ResponseTopic", None)


def test_each_message_gets_its_own_object() -> None:
    builder = PublishProperties()
    first = builder.build(b"\x01" * 32, "vb/gw-1/down/receipt")
    second = builder.build(b"\x02" * 32, "vb/gw-1/down/receipt")
    assert first is not second
    assert first.CorrelationData == b"\x01" * 32 and second.CorrelationData == b"\x02" * 32
    assert first.pack() != second.pack()
    assert builder.build(None, "vb/gw-1/down/receipt").pack() == \
        paho_built(None, "vb/gw-1/down/receipt").pack()


def test_a_property_set_later_is_packed_as_paho_does() -> None:
    built = PublishProperties().build(b"digest", "vb/gw-1/down/receipt")
    built.MessageExpiryInterval = 60
    reference = paho_built(b"digest", "vb/gw-1/down/receipt")
    reference.MessageExpiryInterval = 60
    assert built.pack() == reference.pack()


def test_bad_correlation_data_is_refused() -> None:
    builder = PublishProperties()
    with pytest.raises(TypeError):
        builder.build("not bytes", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        builder.build(b"\x00" * 65536, None)


def test_a_template_that_would_pack_differently_is_not_used(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(props_module, "_CORRELATION_ID", b"\x0a")  # a wrong identifier
    builder = PublishProperties()
    built = builder.build(b"digest", "vb/gw-1/down/receipt")
    assert type(built) is Properties  # plain paho object
    assert built.pack() == paho_built(b"digest", "vb/gw-1/down/receipt").pack()


def test_templates_are_bounded() -> None:
    builder = PublishProperties()
    for index in range(100):
        builder.build(b"x", f"topic/{index}")
    assert len(builder._templates) <= 16
