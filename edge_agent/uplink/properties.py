"""MQTT 5 PUBLISH properties built cheaply, one object per message.

paho's `Properties` checks every assignment by scanning its table of property names, and its
`pack()` walks all 27 names with string replaces for each message: together ~20 µs per publish
on the event loop (measured), for two fields of which one (the response topic) never changes.

What is reused: per response topic, one template built (and so checked) by paho itself, and
its packed bytes. What is per message: a fresh `Properties` object, because paho keeps the
object with the queued message and packs it again for a re-send after a reconnect; only the
correlation data differs: it is put in place without the name scan, and the object packs to
the template's bytes plus that one property. Every template is checked against paho's own
`pack()` when it is made; one that would differ is not used (plain paho objects instead).
"""

from __future__ import annotations

import struct

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

_CORRELATION = "CorrelationData"
_CORRELATION_ID = b"\x09"  # MQTT 5.0, 2.2.2.2: Correlation Data, binary data
_PACKED = "_packed_body"  # our own attribute; paho's tables never name it
_MAX_TEMPLATES = 16  # response topics in use: one (the receipt topic) in practice


class _PresetProperties(Properties):
    """A PUBLISH Properties whose packed form is known: template bytes + correlation."""

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        self.__dict__.pop(_PACKED, None)  # changed after build: pack as paho does

    def pack(self) -> bytes:
        body = self.__dict__.get(_PACKED)
        if body is None:
            return super().pack()
        return VariableByteIntegers.encode(len(body)) + body


def _paho_built(correlation: bytes | None, response_topic: str | None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    if correlation is not None:
        props.CorrelationData = correlation
    if response_topic is not None:
        props.ResponseTopic = response_topic
    return props


class _Template:
    def __init__(self, response_topic: str | None) -> None:
        self.properties = _paho_built(None, response_topic)  # paho checks the topic once
        self.body = _strip_length(self.properties.pack())
        probe = b"\x00\x01probe"
        self.usable = self.build(probe).pack() == _paho_built(probe, response_topic).pack()

    def build(self, correlation: bytes | None) -> Properties:
        props = _PresetProperties.__new__(_PresetProperties)
        state = props.__dict__
        state.update(self.properties.__dict__)
        if correlation is None:
            state[_PACKED] = self.body
        else:
            correlation = bytes(correlation)
            if len(correlation) > 0xFFFF:
                raise ValueError("correlation data longer than 65535 bytes")
            state[_CORRELATION] = correlation
            state[_PACKED] = (self.body + _CORRELATION_ID + struct.pack("!H", len(correlation))
                              + correlation)
        return props


def _strip_length(packed: bytes) -> bytes:
    """The property bytes without their Variable Byte Integer length prefix."""
    for index, byte in enumerate(packed):
        if not byte & 0x80:
            return bytes(packed[index + 1:])
    raise ValueError("malformed properties length")


class PublishProperties:
    """`build(correlation, response_topic)` -> a Properties object that packs exactly as
    paho's own after `CorrelationData = correlation; ResponseTopic = response_topic`."""

    def __init__(self) -> None:
        self._templates: dict[str | None, _Template] = {}

    def build(self, correlation: bytes | None, response_topic: str | None) -> Properties:
        if correlation is not None and not isinstance(correlation, bytes | bytearray | memoryview):
            raise TypeError("correlation data must be bytes")
        template = self._templates.get(response_topic)
        if template is None:
            if len(self._templates) >= _MAX_TEMPLATES:
                self._templates.clear()
            template = self._templates[response_topic] = _Template(response_topic)
        if not template.usable:
            return _paho_built(correlation, response_topic)
        return template.build(correlation)
