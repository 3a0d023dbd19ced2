"""Topic names and the message envelope (CPython side; MicroPython side in tests/mpy)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import PROTOCOL_VERSION, cbor, messages, topics
from protocol.errors import ProtocolError, ValidationError, VersionError

ids = st.text(alphabet=topics._ID_CHARS, min_size=1, max_size=64)


@given(ids, ids, st.sampled_from(topics.PER_DEVICE_KINDS))
def test_per_device_topics_round_trip(gw: str, dev: str, kind: str) -> None:
    assert topics.parse(topics.up(gw, kind, dev)) == (gw, "up", kind, dev)


@given(ids, st.sampled_from(topics.DOWN_KINDS))
def test_down_topics_round_trip(gw: str, kind: str) -> None:
    assert topics.parse(topics.down(gw, kind)) == (gw, "down", kind, None)


@pytest.mark.parametrize(
    "bad",
    ["gw+", "a/b", "#", "", "x" * 65, "sp ace"],
)
def test_ids_that_would_break_topics_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError) as err:
        topics.up(bad, topics.UP_STATUS)
    assert err.value.field == "gateway"


def test_gateway_cannot_be_addressed_outside_its_subtree() -> None:
    assert topics.gateway_down_filter("g1") == "vb/v1/gw/g1/down/#"
    assert topics.centre_up_filter() == "$share/centre/vb/v1/gw/+/up/#"


@given(st.text(max_size=80))
def test_parse_never_raises_foreign_errors(topic: str) -> None:
    try:
        topics.parse(topic)
    except ValidationError:
        pass


def test_unknown_version_is_refused_clearly() -> None:
    with pytest.raises(VersionError, match="version 2 is not supported"):
        messages.decode(cbor.dumps([2, 21, {}]))


def test_envelope_round_trip_all_types() -> None:
    for code, name in messages.TYPES.items():
        assert messages.decode(messages.encode(name, [code])) == (name, [code])
        assert messages.decode(messages.encode(code, None)) == (name, None)
    assert cbor.loads(messages.encode("alarm", 0))[0] == PROTOCOL_VERSION


@given(st.binary(max_size=64))
def test_decode_random_bytes_raises_only_protocol_errors(data: bytes) -> None:
    try:
        messages.decode(data)
    except ProtocolError:
        pass
