"""Every decoder VitalBridge exposes to untrusted bytes, as one registry for the fuzz suites.

A `Target` is `run(data: bytes)` plus the exception types it may raise for bad input
(`allowed`; empty = must never raise) and the valid inputs mutations start from (`seeds`).
The contract each one is held to is the decoder's own documented one: a wire decoder
raises only its protocol.errors family, a stream decoder (frames, fragments, serial
drivers) and the centre's ingest never raise, and the configuration loader raises only
ConfigError. Anything else that escapes (IndexError, KeyError, TypeError, RecursionError,
MemoryError, an AssertionError from an invariant checked here) is a finding.

Several targets decode an envelope first (protocol.messages) because that is how the
bytes arrive; "...[resealed]" targets seal or sign the fuzzed bytes with the fixed test
key before verifying them, which is how hostile content behind a valid seal (a stolen
device key, a compromised issuer) reaches the body validators.
"""

from __future__ import annotations

import datetime
import functools
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fuzz_seeds as S

from protocol import (
    alarm_messages,
    cbor,
    checkpoint,
    cose,
    crypto,
    cwt,
    device_link,
    enrollment,
    fragments,
    frames,
    limits,
    messages,
    sealing,
    senml,
    session,
    topics,
    uplink,
)
from protocol.errors import (
    CertificateError,
    DecodeError,
    FrameError,
    GattError,
    ProtocolError,
    SealError,
    ValidationError,
    VersionError,
)
from protocol.gatt import characteristics as gatt

Runner = Callable[[bytes], object]
NEVER: tuple[type[BaseException], ...] = ()
ENVELOPE_ERRORS = (DecodeError, ValidationError, VersionError)


@dataclass(frozen=True)
class Target:
    name: str
    run: Runner
    allowed: tuple[type[BaseException], ...]
    seeds: Callable[[], list[bytes]]
    cbor_at: int | None = 0  # offset of the CBOR item in an input; None: not CBOR


ROOT = Path(__file__).resolve().parents[2]
PRODUCT_DIRS = tuple(str(ROOT / part) + "/" for part in ("protocol", "edge_agent", "simulator"))


@dataclass(frozen=True)
class OpenFinding:
    """A reported bug whose fix is not in yet (the decoder is not ours to change)."""

    target: str
    error: type[BaseException]
    site: str  # crash_site() of the escape: file and function, stable across edits
    reason: str


# findings/<file name> -> the bug it reproduces. test_findings.py turns each into a strict
# xfail, so the entry must go (and the test pass) in the commit that fixes the bug.
_ALARM_VALUE_OVERFLOW = (
    "protocol/alarm_messages.py _value() accepts any CBOR integer (-2**64..2**64-1) as an "
    "alarm's value; simulator/centre/store.py add_alarm_step() then raises OverflowError "
    "(SQLite INTEGER is int64) out of Ingest.handle: the step is never stored or receipted "
    "and the gateway re-sends it every receipt timeout. Reported to the lead; fix: bound "
    "integer values in _value (e.g. |v| < 2**53, as MAX_TIME_MS) and/or refuse in the store.")
OPEN_FINDINGS: dict[str, OpenFinding] = {
    # Fixed: alarm values outside +-(2**53-1) are refused by protocol/alarm_messages.py, so
    # the two centre.Ingest.handle findings now replay as ordinary refusals.
}


def crash_site(exc: BaseException) -> str:
    """Where an exception escaped from: the innermost frame in product code."""
    stack = [f for f in traceback.extract_tb(exc.__traceback__)
             if f.filename.startswith(PRODUCT_DIRS)]
    if not stack:
        return "harness"
    return f"{Path(stack[-1].filename).relative_to(ROOT)}:{stack[-1].name}"


def is_open_finding(target_name: str, exc: BaseException) -> bool:
    return any(f.target == target_name and isinstance(exc, f.error)
               and crash_site(exc) == f.site for f in OPEN_FINDINGS.values())


def unexpected(target: Target, data: bytes) -> Exception | None:
    """Run `target` on `data`; the exception it must not raise, or None."""
    try:
        target.run(data)
    except target.allowed:
        return None
    except Exception as exc:  # everything else is what the fuzzers look for
        return exc
    return None


# ---------------------------------------------------------------- shared decoding steps


def _body(data: bytes, expected: str) -> object:
    """The body of an envelope, as the receiver sees it (type checked like the receiver)."""
    kind, body = messages.decode(data)
    if kind != expected:
        raise ValidationError("type", f"expected {expected}, got {kind}")
    return body


def _chunks(data: bytes) -> list[bytes]:
    """Split `data` at places derived from its own bytes: another arrival pattern."""
    out = []
    pos = 0
    while pos < len(data):
        size = 1 + data[pos] % 13
        out.append(data[pos:pos + size])
        pos += size
    return out


# ---------------------------------------------------------------- protocol decoders


def _senml(data: bytes) -> object:
    return senml.decode_pack(data, now=S.NOW)


def _mac0_verify(data: bytes) -> object:
    return cose.mac0_verify(S.MAC0_KEY, data)


def _sign1_verify(data: bytes) -> object:
    return cose.sign1_verify(S.public(S.SIGN1_SEED), data)


def _verify_cwt(data: bytes) -> object:
    cert = cwt.verify_cwt(data, S.public(S.CWT_ISSUER_SEED))
    return cwt.validity_state(cert, S.NOW)


def _verify_cwt_resigned(data: bytes) -> object:
    signed = cose.sign1_create(S.CWT_ISSUER_SEED, data, kid=S.kid_of(S.CWT_ISSUER_SEED))
    return _verify_cwt(signed)


def _cwt_claims() -> list[bytes]:
    return [cose.sign1_parse(c).payload for c in S.certificates()]


def _frame_stream(data: bytes) -> object:
    """FrameDecoder.feed never raises, keeps its buffer bounded, and how the bytes are
    split into reads does not change which payloads come out."""
    whole = frames.FrameDecoder()
    at_once = whole.feed(data)
    split = frames.FrameDecoder()
    in_pieces = []
    for chunk in _chunks(data):
        in_pieces.extend(split.feed(chunk))
        assert split.pending_bytes <= frames.max_encoded_size(split.max_payload)
    assert at_once == in_pieces, "payloads depend on how the stream was split"
    return at_once


def _fragment_records(data: bytes) -> list[tuple[float, bytes]]:
    """Input format of the reassembly target: [tenths of s elapsed][length][fragment]..."""
    out = []
    now = 0.0
    pos = 0
    while pos + 2 <= len(data):
        now += data[pos] / 10
        size = data[pos + 1]
        out.append((now, data[pos + 2:pos + 2 + size]))
        pos += 2 + size
    return out


def encode_fragment_records(parts: list[bytes], step: int = 1) -> bytes:
    """Seed form of a fragment list for the reassembly target (each part < 256 bytes)."""
    return b"".join(bytes([step, len(p)]) + p for p in parts)


def _reassemble(data: bytes) -> object:
    """Reassembler.add never raises and holds at most max_pending * max_message bytes."""
    reassembler = fragments.Reassembler(max_message=1024, max_pending=3)
    out = []
    for now, part in _fragment_records(data):
        message = reassembler.add(part, now)
        if message is not None:
            assert len(message) <= reassembler.max_message
            out.append(message)
        assert reassembler.pending_bytes <= reassembler.max_pending * reassembler.max_message
        assert reassembler.pending_count <= reassembler.max_pending
    return out


def _fragment_seeds() -> list[bytes]:
    seeds = []
    for parts in S.fragment_lists():
        seeds.append(encode_fragment_records(parts))
        seeds.append(encode_fragment_records(list(reversed(parts)), step=30))
    seeds.append(encode_fragment_records(fragments.fragment(b"\x5a" * 60, 23, 7)))
    return seeds


def _gatt(uuid16: int) -> Runner:
    decoder = gatt.DECODERS[uuid16]
    return lambda data: decoder(data)


@functools.cache
def _handshake_keys() -> dict[str, bytes]:
    (vec,) = S.vectors()["session"]
    inputs = {k: bytes.fromhex(v) for k, v in vec["inputs"].items()
              if isinstance(v, str) and k != "device_id"}
    return inputs


def _device_finish(data: bytes) -> object:
    keys = _handshake_keys()
    handshake = session.DeviceHandshake(
        "ox-1", keys["device_private"], crypto.x25519_public_key(keys["gateway_private"]),
        nonce=keys["device_nonce"])
    handshake.hello()
    return handshake.finish(_body(data, "accept"))


def _gateway_accept(data: bytes) -> object:
    keys = _handshake_keys()
    return session.gateway_accept(
        _body(data, "hello"), crypto.x25519_public_key(keys["device_private"]),
        keys["gateway_private"], now=S.NOW, ephemeral_private=keys["ephemeral_private"],
        nonce=keys["gateway_nonce"])


@functools.cache
def _received_tags() -> dict[int, bytes]:
    (vec,) = S.vectors()["checkpoint"]
    return {seq: bytes.fromhex(tag) for seq, tag in vec["inputs"]["tags"]}


def _verify_checkpoint(data: bytes) -> object:
    return checkpoint.verify_checkpoint(data, S.public(S.CHECKPOINT_SEED), _received_tags())


def _verify_checkpoint_resigned(data: bytes) -> object:
    signed = cose.sign1_create(S.CHECKPOINT_SEED, data, kid=S.kid_of(S.CHECKPOINT_SEED),
                               external_aad=checkpoint.CHECKPOINT_AAD)
    return _verify_checkpoint(signed)


def _checkpoint_claims() -> list[bytes]:
    return [cose.sign1_parse(c).payload for c in S.checkpoints()]


def _open_batch(data: bytes) -> object:
    return sealing.open_batch(S.SEALED_KEY, S.SEALED_KID, data, now=S.NOW)


def _open_batch_resealed(data: bytes) -> object:
    sealed = cose.mac0_create(S.SEALED_KEY, data, kid=S.SEALED_KID,
                              content_type=cose.CT_SENML_CBOR)
    return _open_batch(sealed)


def _verify_request(data: bytes) -> object:
    return enrollment.verify_request(
        _body(data, "enroll-request"), S.challenge(),
        lambda peer: crypto.x25519_shared(S.GATEWAY_X, peer),
        previous_public=S.public(S.GATEWAY_SEED))


def _verify_delivery(data: bytes) -> object:
    return enrollment.verify_delivery(
        _body(data, "certificate"), S.challenge(), S.public(S.DEVICE_SEED),
        crypto.x25519_public_key(S.DEVICE_X), S.DEVICE, S.NOW, ca_public=S.public(S.ORG_SEED))


def _link(decoder: Callable[..., object], kind: str) -> Runner:
    return lambda data: decoder(_body(data, kind), S.LINK_KEY, S.LINK_KID)


def _link_resealed(decoder: Callable[..., object], aad: bytes) -> Runner:
    def run(data: bytes) -> object:
        sealed = cose.mac0_create(S.LINK_KEY, data, kid=S.LINK_KID, external_aad=aad)
        return decoder(sealed, S.LINK_KEY, S.LINK_KID)
    return run


def _inner(envelopes: Callable[[], list[bytes]]) -> Callable[[], list[bytes]]:
    def build() -> list[bytes]:
        out = []
        for envelope in envelopes():
            body = messages.decode(envelope)[1]
            if isinstance(body, bytes):
                out.append(cose.mac0_parse(body).payload)
            else:
                out.append(cbor.dumps(body))
        return out
    return build


def _limits_claims() -> list[bytes]:
    return [cose.sign1_parse(S.limits_command()).payload]


def _verify_limits_resigned(data: bytes) -> object:
    signed = cose.sign1_create(S.ORG_SEED, data, kid=S.kid_of(S.ORG_SEED))
    return limits.verify_command(signed, S.public(S.ORG_SEED), now=S.NOW)


def _topic(data: bytes) -> object:
    return topics.parse(data.decode("utf-8", "replace"))


def _challenge_maps() -> list[bytes]:
    return [cbor.dumps(S.challenge().to_map())]


# ---------------------------------------------------------------- the registry


def _protocol_targets() -> list[Target]:
    hello_seeds = lambda: [S.handshake()[0]]  # noqa: E731
    accept_seeds = lambda: [S.handshake()[1]]  # noqa: E731
    out = [
        Target("cbor.loads", cbor.loads, (DecodeError,), lambda: S.cbor_items() + S.all_cose()),
        Target("cbor.loads[deterministic]",
               lambda d: cbor.loads(d, require_deterministic=True), (DecodeError,),
               lambda: S.cbor_items() + S.senml_packs()),
        Target("senml.decode_pack", _senml, (DecodeError, ValidationError), S.senml_packs),
        Target("cose.mac0_parse", cose.mac0_parse, (SealError,), S.mac0s),
        Target("cose.sign1_parse", cose.sign1_parse, (SealError,), S.sign1s),
        Target("cose.peek", cose.peek, (SealError,), S.all_cose),
        Target("cose.mac0_verify", _mac0_verify, (SealError,), S.mac0s),
        Target("cose.sign1_verify", _sign1_verify, (SealError,), S.sign1s),
        Target("cwt.parse_cwt", cwt.parse_cwt, (SealError, CertificateError), S.certificates),
        Target("cwt.verify_cwt", _verify_cwt, (SealError, CertificateError), S.certificates),
        Target("cwt.verify_cwt[resigned]", _verify_cwt_resigned,
               (SealError, CertificateError), _cwt_claims),
        Target("frames.decode_frame", frames.decode_frame, (FrameError,), S.frame_streams,
               cbor_at=None),
        Target("frames.FrameDecoder.feed", _frame_stream, NEVER, S.frame_streams, cbor_at=None),
        Target("fragments.Reassembler.add", _reassemble, NEVER, _fragment_seeds, cbor_at=None),
        Target("messages.decode", messages.decode, ENVELOPE_ERRORS, S.all_envelopes),
        Target("uplink.decode_readings", uplink.decode_readings, (ProtocolError,),
               S.readings_messages),
        Target("uplink.decode_receipt", uplink.decode_receipt, (ProtocolError,),
               S.receipt_messages),
        Target("session.parse_hello", lambda d: session.parse_hello(_body(d, "hello")),
               (ProtocolError,), hello_seeds),
        Target("session.parse_accept", lambda d: session.parse_accept(_body(d, "accept")),
               (ProtocolError,), accept_seeds),
        Target("session.DeviceHandshake.finish", _device_finish, (ProtocolError,),
               accept_seeds),
        Target("session.gateway_accept", _gateway_accept, (ProtocolError,), hello_seeds),
        Target("checkpoint.parse_checkpoint", checkpoint.parse_checkpoint, (ProtocolError,),
               S.checkpoints),
        Target("checkpoint.verify_checkpoint", _verify_checkpoint, (ProtocolError,),
               S.checkpoints),
        Target("checkpoint.verify_checkpoint[resigned]", _verify_checkpoint_resigned,
               (ProtocolError,), _checkpoint_claims),
        Target("sealing.open_batch", _open_batch, (ProtocolError,),
               lambda: S.vector_bytes("sealed_batch")),
        Target("sealing.open_batch[resealed]", _open_batch_resealed, (ProtocolError,),
               S.senml_packs),
        Target("enrollment.parse_challenge", lambda d: enrollment.parse_challenge(cbor.loads(d)),
               (ProtocolError,), _challenge_maps),
        Target("enrollment.parse_request",
               lambda d: enrollment.parse_request(_body(d, "enroll-request")),
               (ProtocolError,), S.enroll_requests),
        Target("enrollment.verify_request", _verify_request, (ProtocolError,),
               S.enroll_requests),
        Target("enrollment.parse_delivery",
               lambda d: enrollment.parse_delivery(_body(d, "certificate")),
               (ProtocolError,), S.deliveries),
        Target("enrollment.verify_delivery", _verify_delivery, (ProtocolError,), S.deliveries),
        Target("device_link.decode_ack", _link(device_link.decode_ack, "device-ack"),
               (ProtocolError,), S.device_acks),
        Target("device_link.decode_ack[resealed]",
               _link_resealed(device_link.decode_ack, device_link.ACK_AAD),
               (ProtocolError,), _inner(S.device_acks)),
        Target("device_link.decode_command",
               _link(device_link.decode_command, "device-command"),
               (ProtocolError,), S.device_commands),
        Target("device_link.decode_command[resealed]",
               _link_resealed(device_link.decode_command, device_link.COMMAND_AAD),
               (ProtocolError,), _inner(S.device_commands)),
        Target("device_link.decode_event", _link(device_link.decode_event, "device-event"),
               (ProtocolError,), S.device_events),
        Target("device_link.decode_event[resealed]",
               _link_resealed(device_link.decode_event, device_link.EVENT_AAD),
               (ProtocolError,), _inner(S.device_events)),
        Target("limits.parse_command", lambda d: limits.parse_command(_body(d, "limits")),
               (ProtocolError,), S.limits_messages),
        Target("limits.verify_command",
               lambda d: limits.verify_command(_body(d, "limits"), S.public(S.ORG_SEED),
                                               now=S.NOW),
               (ProtocolError,), S.limits_messages),
        Target("limits.verify_command[resigned]", _verify_limits_resigned, (ProtocolError,),
               _limits_claims),
        Target("alarm_messages.decode_transition", alarm_messages.decode_transition,
               (ProtocolError,), S.alarm_steps),
        Target("alarm_messages.decode_alarm_set", alarm_messages.decode_alarm_set,
               (ProtocolError,), S.alarm_sets),
        Target("alarm_messages.decode_ack", alarm_messages.decode_ack, (ProtocolError,),
               S.alarm_acks),
        Target("topics.parse", _topic, (ProtocolError,),
               lambda: [topics.up(S.GATEWAY, topics.UP_READINGS, S.DEVICE).encode(),
                        topics.down(S.GATEWAY, topics.DOWN_RECEIPT).encode()], cbor_at=None),
    ]
    golden = S.gatt_golden
    for uuid16 in sorted(gatt.DECODERS):
        name = gatt.DECODERS[uuid16].__name__.lstrip("_").replace("decode_", "")
        out.append(Target(f"gatt.{name}", _gatt(uuid16), (GattError,),
                          functools.partial(lambda u: golden()[u], uuid16), cbor_at=None))
    return out


# ---------------------------------------------------------------- edge agent and centre


def _values(events: list[object]) -> list[object]:
    """Events without the drivers' link notes (those may be grouped per read)."""
    from edge_agent.serial_ingest import drivers

    return [e for e in events if not isinstance(e, drivers.LinkNote)]


def _serial(driver_name: str) -> Runner:
    """A serial driver's feed never raises, and chunking does not change what it reports
    (LinkNotes may be grouped differently, the values and frames may not)."""
    from edge_agent.serial_ingest import drivers

    def run(data: bytes) -> object:
        whole = drivers.make_driver(driver_name).feed(data)
        split = drivers.make_driver(driver_name)
        pieces = [event for chunk in _chunks(data) for event in split.feed(chunk)]
        assert _values(whole) == _values(pieces), "events depend on how the stream was split"
        return whole
    return run


def _cms50_seeds() -> list[bytes]:
    from edge_agent.serial_ingest import drivers

    samples = [drivers.Cms50Sample(5, False, False, True, 60, 3, False, False, 72, 97),
               drivers.Cms50Sample(0, True, False, False, 0, 0, True, True, 255, 127),
               drivers.Cms50Sample(8, False, True, False, 127, 15, False, False, 200, 88)]
    stream = b"".join(drivers.encode_cms50_packet(s) for s in samples)
    return [stream, stream * 3, b"\x01\x02" + stream[:7] + stream]


def _interpret_uuids() -> list[int]:
    from edge_agent.ble_ingest import profiles

    return [p.uuid16 for p in profiles.PROFILES]


def _interpret(data: bytes) -> object:
    """What the BLE ingest does with a notification: decode, then interpret the dict."""
    from edge_agent.ble_ingest import profiles

    if not data:
        raise GattError("empty notification")
    uuids = _interpret_uuids()
    decoded = gatt.decode(uuids[data[0] % len(uuids)], data[1:])
    return profiles.interpret(decoded, received_at=float(S.NOW), zone=datetime.UTC)


def _interpret_seeds() -> list[bytes]:
    uuids = _interpret_uuids()
    golden = S.gatt_golden()
    return [bytes([i]) + value for i, u in enumerate(uuids) for value in golden.get(u, [])]


class _ConfigHarness:
    """load_config on the fuzzed bytes written as a gateway.toml in a private temp dir."""

    def __init__(self) -> None:
        from edge_agent import config

        self._load = config.load_config
        self._workdir = tempfile.TemporaryDirectory(prefix="vb-fuzz-config-")
        self._path = Path(self._workdir.name) / "gateway.toml"

    def __call__(self, data: bytes) -> object:
        self._path.write_bytes(data)
        return self._load(self._path)


def _config_target() -> Target | None:
    try:
        from edge_agent.config import ConfigError
    except ImportError:  # the agent's configuration module is not there yet
        return None
    return Target("edge_agent.config.load_config", _ConfigHarness(), (ConfigError,),
                  S.config_files, cbor_at=None)


class _CentreHarness:
    """The centre's ingest of one raw MQTT publish (topic chosen by the first byte), on an
    in-memory store that is replaced now and then so a long run stays small."""

    RENEW_EVERY = 5000

    def __init__(self) -> None:
        self._ingest = None
        self._calls = 0

    def _fresh(self) -> object:
        from simulator.centre.service import Ingest
        from simulator.centre.store import Store
        from simulator.centre.verifier import TrustAnchor

        return Ingest(Store(":memory:"), TrustAnchor(org_ca_public=S.public(S.ORG_SEED)),
                      gap_deadline_s=30.0)

    def topic_for(self, selector: int) -> str:
        kind = topics.UP_KINDS[selector % len(topics.UP_KINDS)]
        device = S.DEVICE if kind in topics.PER_DEVICE_KINDS else None
        return topics.up(S.GATEWAY, kind, device)

    def __call__(self, data: bytes) -> object:
        from simulator.centre.service import Inbound

        if self._ingest is None or self._calls % self.RENEW_EVERY == 0:
            self._ingest = self._fresh()
        self._calls += 1
        ingest = self._ingest
        selector = data[0] if data else 0
        payload = data[1:]
        topic = self.topic_for(selector)
        with ingest.store.transaction():
            outcome = ingest.handle(Inbound(topic, payload, float(S.NOW), uplink.digest(payload),
                                            topics.down(S.GATEWAY, topics.DOWN_RECEIPT)))
            ingest.settle(outcome.touched, float(S.NOW))
        return outcome


def _centre_seeds() -> list[bytes]:
    by_kind = {
        topics.UP_READINGS: S.readings_messages(),
        topics.UP_CHECKPOINT: S.checkpoint_messages(),
        topics.UP_ALARM: S.alarm_steps(),
        topics.UP_ALARMS: S.alarm_sets(),
        topics.UP_STATUS: S.status_messages(),
        topics.UP_EVENT: S.event_messages(),
    }
    return [bytes([topics.UP_KINDS.index(kind)]) + payload
            for kind, payloads in by_kind.items() for payload in payloads]


def _agent_targets() -> list[Target]:
    out = [
        Target("serial.vitalbridge.feed", _serial("vitalbridge"), NEVER, S.frame_streams,
               cbor_at=None),
        Target("serial.contec-cms50.feed", _serial("contec-cms50"), NEVER, _cms50_seeds,
               cbor_at=None),
        Target("ble.profiles.interpret", _interpret, (GattError,), _interpret_seeds, cbor_at=None),
        Target("centre.Ingest.handle", _CentreHarness(), NEVER, _centre_seeds, cbor_at=1),
    ]
    config_target = _config_target()
    if config_target is not None:
        out.append(config_target)
    return out


def build() -> dict[str, Target]:
    targets = {t.name: t for t in _protocol_targets() + _agent_targets()}
    return targets


TARGETS: dict[str, Target] = build()
