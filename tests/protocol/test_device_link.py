"""device-ack, device-command and device-event bodies: round trips, sealing rules, replay,
range normalisation against a set model, hostile input."""

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import cose, crypto, device_link, enrollment, messages
from protocol.errors import ProtocolError, SealError, ValidationError

GW_KEY = b"\x01" * 32
DEV_KEY = b"\x02" * 32
SESSION = b"\x05" * 8
OLD_SESSION = b"\x04" * 8
CHALLENGE = enrollment.make_challenge("gw-1", crypto.ed25519_public_key(b"\x06" * 32),
                                      crypto.x25519_public_key(b"\x07" * 32), 1_700_000_000,
                                      nonce=bytes(16)).to_map()


def test_ack_round_trip_and_layout() -> None:
    ack = device_link.Ack(OLD_SESSION, upto=41, ranges=[(50, 60), (45, 47), (61, 62)],
                          checkpoints_upto=40)
    assert ack.ranges == [(45, 47), (50, 62)]
    body = device_link.encode_ack(ack, GW_KEY, SESSION)
    msg = cose.mac0_verify(GW_KEY, body, external_aad=b"vitalbridge device-ack v1", kid=SESSION)
    assert cbor2.loads(msg.payload) == {0: 1, 1: OLD_SESSION, 2: 41, 3: [[45, 47], [50, 62]],
                                        4: 40}
    got = device_link.decode_ack(body, GW_KEY, SESSION)
    assert (got.session_id, got.upto, got.ranges, got.checkpoints_upto) == (
        OLD_SESSION, 41, [(45, 47), (50, 62)], 40)
    empty = device_link.decode_ack(device_link.encode_ack(device_link.Ack(SESSION), GW_KEY,
                                                          SESSION), GW_KEY, SESSION)
    assert (empty.upto, empty.ranges, empty.checkpoints_upto) == (None, [], None)
    assert messages.decode(messages.encode("device-ack", body)) == ("device-ack", body)


def test_ack_must_be_sealed_by_the_gateway_key() -> None:
    body = device_link.encode_ack(device_link.Ack(SESSION, upto=3), GW_KEY, SESSION)
    with pytest.raises(SealError, match="tag mismatch"):
        device_link.decode_ack(body, DEV_KEY, SESSION)
    with pytest.raises(SealError, match="kid mismatch"):
        device_link.decode_ack(body, GW_KEY, OLD_SESSION)
    with pytest.raises(SealError, match="no session key"):
        device_link.decode_ack(body, None, SESSION)
    with pytest.raises(ValidationError):
        device_link.decode_ack({0: 1, 1: SESSION, 2: 3}, GW_KEY, SESSION)
    # A command sealed under the same key cannot pass as an ack (different AAD).
    command = device_link.encode_command(1, "identify", mac_key=GW_KEY, kid=SESSION)
    with pytest.raises(SealError, match="tag mismatch"):
        device_link.decode_ack(command, GW_KEY, SESSION)


@pytest.mark.parametrize("ranges,match", [
    ([[5, 4]], "reversed"),
    ([[5, 9], [9, 12]], "disjoint"),
    ([[5, 9], [10, 12]], "adjacent"),
    ([[10, 12], [1, 2]], "sorted"),
    ([[1, 2, 3]], "first, last"),
    ([[1, 2 ** 32]], "ranges"),
    ([[i * 3, i * 3] for i in range(33)], "at most 32"),
])
def test_hostile_ranges(ranges, match: str) -> None:
    payload = cbor2.dumps({0: 1, 1: SESSION, 3: ranges})
    body = cose.mac0_create(GW_KEY, payload, kid=SESSION, external_aad=device_link.ACK_AAD)
    with pytest.raises(ValidationError, match=match):
        device_link.decode_ack(body, GW_KEY, SESSION)


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 30)), max_size=20))
def test_normalise_ranges_matches_a_set_model(spans) -> None:
    ranges = [(a, a + n) for a, n in spans]
    covered = {s for a, b in ranges for s in range(a, b + 1)}
    merged = device_link.normalise_ranges(ranges)
    assert {s for a, b in merged for s in range(a, b + 1)} == covered
    for (a1, b1), (a2, _) in zip(merged, merged[1:], strict=False):
        assert a1 <= b1 < a2 - 1  # sorted, disjoint, not adjacent


# ---------------------------------------------------------------- commands


def test_commands_round_trip() -> None:
    cases = [("rotate-keys", CHALLENGE), ("destroy-key", b"\xaa" * 8), ("seq-floor", 4096),
             ("identify", None), ("feedback", "red-alarm")]
    for i, (name, args) in enumerate(cases):
        body = device_link.encode_command(i + 1, name, args, mac_key=GW_KEY, kid=SESSION)
        cmd = device_link.decode_command(body, GW_KEY, SESSION, last_id=i)
        assert (cmd.command_id, cmd.name, cmd.authenticated) == (i + 1, name, True)
    assert device_link.decode_command(
        device_link.encode_command(1, "rotate-keys", CHALLENGE, GW_KEY, SESSION), GW_KEY,
        SESSION).args.nonce == bytes(16)
    unsealed = device_link.encode_command(7, "enroll", CHALLENGE)
    assert unsealed == {0: 1, 1: 7, 2: "enroll", 3: CHALLENGE}
    cmd = device_link.decode_command(unsealed)
    assert cmd.name == "enroll" and not cmd.authenticated
    assert isinstance(cmd.args, enrollment.Challenge)


def test_command_sealing_rules_and_replay() -> None:
    with pytest.raises(ValidationError, match="must be sealed"):
        device_link.encode_command(1, "destroy-key", b"\xaa" * 8)
    forged = {0: 1, 1: 9, 2: "destroy-key", 3: b"\xaa" * 8}
    with pytest.raises(SealError, match="must be sealed"):
        device_link.decode_command(forged, GW_KEY, SESSION)
    body = device_link.encode_command(5, "seq-floor", 10, GW_KEY, SESSION)
    with pytest.raises(SealError, match="replayed"):
        device_link.decode_command(body, GW_KEY, SESSION, last_id=5)
    with pytest.raises(SealError, match="tag mismatch"):
        device_link.decode_command(body, DEV_KEY, SESSION)
    with pytest.raises(SealError, match="no session key"):
        device_link.decode_command(body)


@pytest.mark.parametrize("name,args,match", [
    ("reboot", None, "unknown command"),
    ("destroy-key", b"\xaa" * 7, "8 bytes"),
    ("seq-floor", -1, "args"),
    ("identify", 3, "no arguments"),
    ("feedback", "", "args"),
    ("enroll", {0: 1}, "missing"),
])
def test_command_arguments_validated(name: str, args, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        device_link.encode_command(1, name, args, GW_KEY, SESSION)
    body = cose.mac0_create(GW_KEY, cbor2.dumps({0: 1, 1: 1, 2: name, 3: args}), kid=SESSION,
                            external_aad=device_link.COMMAND_AAD)
    with pytest.raises(ValidationError, match=match):
        device_link.decode_command(body, GW_KEY, SESSION)


# ---------------------------------------------------------------- events


def test_events_round_trip() -> None:
    event = {"event": "key-destroyed", "time": 1_700_000_000, "kid": b"\x01" * 8,
             "purpose": "sign", "bytes": 70, "removed": True, "note": None}
    unsealed = device_link.encode_event(event)
    got = device_link.decode_event(unsealed)
    assert got.to_dict() == event and not got.authenticated
    sealed = device_link.encode_event(event, DEV_KEY, SESSION)
    got = device_link.decode_event(sealed, DEV_KEY, SESSION)
    assert got.to_dict() == event and got.authenticated
    with pytest.raises(SealError):
        device_link.decode_event(sealed, GW_KEY, SESSION)  # gateway key cannot forge it
    assert device_link.decode_event(device_link.encode_event(
        {"event": "tamper", "time": 5})).details == {}


@pytest.mark.parametrize("event,match", [
    ({"time": 1}, "event"),
    ({"event": "Key", "time": 1}, "not allowed"),
    ({"event": "x", "time": -1}, "time"),
    ({"event": "x", "time": 1, "kid": b"\x00" * 65}, "64 bytes"),
    ({"event": "x", "time": 1, "note": "n" * 129}, "longer"),
    ({"event": "x", "time": 1, "list": [1]}, "bytes"),
    ({"event": "x", "time": 1, **{f"k{i}": i for i in range(17)}}, "at most 16"),
])
def test_bad_events(event, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        device_link.encode_event(event)


# ---------------------------------------------------------------- hostile input

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.integers(-1, 5) | st.text(max_size=4), children, max_size=6),
    max_leaves=16,
)


def _only_protocol_errors(decode, *args) -> None:
    try:
        decode(*args)
    except ProtocolError:
        pass


@given(cbor_values)
def test_unsealed_decoders_raise_only_protocol_errors(value) -> None:
    _only_protocol_errors(device_link.decode_command, value)
    _only_protocol_errors(device_link.decode_event, value)
    _only_protocol_errors(device_link.decode_ack, value, GW_KEY, SESSION)


@given(cbor_values)
def test_sealed_hostile_payloads_raise_only_protocol_errors(value) -> None:
    payload = cbor2.dumps(value)
    for aad, decode in ((device_link.ACK_AAD, device_link.decode_ack),
                        (device_link.COMMAND_AAD, device_link.decode_command),
                        (device_link.EVENT_AAD, device_link.decode_event)):
        body = cose.mac0_create(GW_KEY, payload, kid=SESSION, external_aad=aad)
        _only_protocol_errors(decode, body, GW_KEY, SESSION)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    _only_protocol_errors(device_link.decode_ack, data, GW_KEY, SESSION)
    _only_protocol_errors(device_link.decode_command, data, GW_KEY, SESSION)
    _only_protocol_errors(device_link.decode_event, data, GW_KEY, SESSION)
