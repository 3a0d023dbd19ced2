"""Readings relay and receipt bodies: round trips, named refusals, hostile bytes."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import cbor, messages, uplink
from protocol.errors import ProtocolError, ValidationError


def test_readings_round_trip() -> None:
    payload = uplink.encode_readings("ox-1", b"\xd1\x84", "sealed", 1_700_000_000_123)
    assert uplink.decode_readings(payload) == ("ox-1", b"\xd1\x84", "sealed", 1_700_000_000_123)
    assert len(uplink.digest(payload)) == 32


def test_receipt_round_trip() -> None:
    dig = bytes(range(32))
    assert uplink.decode_receipt(uplink.encode_receipt(dig)) == (dig, "stored", None)
    assert uplink.decode_receipt(uplink.encode_receipt(dig, "rejected", "bad seal")) == (
        dig, "rejected", "bad seal")


@pytest.mark.parametrize(
    ("body", "field"),
    [({1: "ox-1", 2: b"", 3: "sealed", 4: 1}, "sealed"),
     ({1: "ox/1", 2: b"x", 3: "sealed", 4: 1}, "device"),
     ({1: "ox-1", 2: b"x", 3: "sealed", 4: -1}, "received_ms"),
     ({1: "ox-1", 2: b"x", 3: "sealed"}, "readings"),
     ({1: "ox-1", 2: b"x", 3: "sealed", 4: 1, 9: 0}, "readings")],
)
def test_readings_refusals_name_the_field(body: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        uplink.decode_readings(messages.encode("readings", body))
    assert err.value.field == field


def test_wrong_message_type_refused() -> None:
    with pytest.raises(ValidationError, match="expected receipt"):
        uplink.decode_receipt(messages.encode("alarm", {}))


@given(st.binary(max_size=120))
def test_random_bytes_only_protocol_errors(data: bytes) -> None:
    for decode in (uplink.decode_readings, uplink.decode_receipt):
        try:
            decode(data)
        except ProtocolError:
            pass


VALUES = st.one_of(st.integers(-(2**63), 2**63), st.binary(max_size=40), st.text(max_size=5),
                   st.none())


@given(st.dictionaries(st.integers(-2, 6), VALUES))
def test_random_bodies_only_protocol_errors(body: dict) -> None:
    for kind, decode in (("readings", uplink.decode_readings), ("receipt", uplink.decode_receipt)):
        try:
            decode(cbor.dumps([1, messages.CODES[kind], body]))
        except ProtocolError:
            pass
