"""Valid example inputs ("seeds") for every fuzz target, built from the shared test vectors.

Sources, in order of preference: protocol/vectors/vectors.json (the bytes both interpreters
agree on), the GATT golden vectors of tests/protocol/test_gatt_vectors.py (every flag
combination of every health characteristic), and, for message bodies no vector covers,
the protocol's own encoders with fixed keys. Everything is deterministic, so a corpus and
a finding replay the same way on every machine.

The fixed keys are test keys only; the targets that verify seals use the same ones, so a
mutation that leaves the covered bytes alone still reaches the code behind the check.
"""

from __future__ import annotations

import binascii
import functools
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

from protocol import (
    alarm_messages,
    cose,
    crypto,
    cwt,
    device_link,
    enrollment,
    limits,
    messages,
    uplink,
)
from protocol import frames as protocol_frames
from protocol.gatt import characteristics as gatt
from protocol.gatt import glucose

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "protocol" / "vectors" / "vectors.json"
GATT_VECTORS = ROOT / "tests" / "protocol" / "test_gatt_vectors.py"

NOW = 1_700_000_000
DEVICE = "ox-1"
GATEWAY = "gw-1"

# Keys of the vectors (so mutated vector seeds still verify when the covered bytes survive).
MAC0_KEY = bytes.fromhex("11" * 32)
SEALED_KEY = bytes.fromhex("55" * 32)
SEALED_KID = bytes.fromhex("1122334455667788")
SIGN1_SEED = bytes.fromhex("33" * 32)
CHECKPOINT_SEED = bytes.fromhex("99" * 32)
CWT_ISSUER_SEED = bytes.fromhex("aa" * 32)
# Keys for the bodies no vector covers.
ORG_SEED = b"\x0a" * 32
GATEWAY_SEED = b"\x06" * 32
GATEWAY_X = b"\x07" * 32
DEVICE_SEED = b"\x0d" * 32
DEVICE_X = b"\x0e" * 32
LINK_KEY = b"\x2a" * 32
LINK_KID = b"sess-001"
NONCE = bytes(range(16))


def public(seed: bytes) -> bytes:
    return crypto.ed25519_public_key(seed)


def kid_of(seed: bytes) -> bytes:
    return cose.key_id(public(seed))


@functools.cache
def vectors() -> dict[str, list[dict]]:
    """Vector kind -> its vectors."""
    by_kind: dict[str, list[dict]] = {}
    for vec in json.loads(VECTORS.read_text())["vectors"]:
        by_kind.setdefault(vec["kind"], []).append(vec)
    return by_kind


def vector_bytes(kind: str, output: str = "bytes") -> list[bytes]:
    return [binascii.unhexlify(v["outputs"][output]) for v in vectors()[kind]]


@functools.cache
def gatt_golden() -> dict[int, list[bytes]]:
    """uuid16 -> golden values (tests/protocol/test_gatt_vectors.py, loaded by path)."""
    spec = importlib.util.spec_from_file_location("_fuzz_gatt_vectors", GATT_VECTORS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out: dict[int, list[bytes]] = {}
    for case in module.ALL_CASES:
        uuid = module.UUIDS[case.expected["characteristic"]]
        out.setdefault(uuid, []).append(bytes(case.data))
    out[gatt.RECORD_ACCESS_CONTROL_POINT] = [
        glucose.encode_racp_report_all(),
        glucose.encode_racp_report_from(5),
        glucose.encode_racp_number_of_records(),
        glucose.encode_racp_number_of_records(7),
        glucose.encode_racp_abort(),
        glucose.encode_racp_number_of_records_response(3),
        glucose.encode_racp_response_code(1, 1),
        glucose.encode_racp_request(
            1, glucose.OPERATOR_WITHIN_RANGE, filter_type=glucose.FILTER_USER_FACING_TIME,
            minimum=(2023, 1, 2, 3, 4, 5), maximum=(2023, 2, 3, 4, 5, 6)),
        glucose.encode_racp_request(4, glucose.OPERATOR_LESS_OR_EQUAL,
                                    filter_type=glucose.FILTER_SEQUENCE_NUMBER, maximum=9),
    ]
    out[gatt.DATE_TIME] = [gatt.encode_date_time((2023, 7, 14, 9, 26, 53)),
                           gatt.encode_date_time((0, 0, 0, 0, 0, 0))]
    return out


def all_gatt() -> list[bytes]:
    return [value for values in gatt_golden().values() for value in values]


# ---------------------------------------------------------------- CBOR-level seeds


def cbor_items() -> list[bytes]:
    return vector_bytes("cbor")


def senml_packs() -> list[bytes]:
    packs = vector_bytes("senml")
    packs += [cose.mac0_parse(m).payload for m in vector_bytes("sealed_batch")]
    return packs


def mac0s() -> list[bytes]:
    return vector_bytes("mac0") + vector_bytes("sealed_batch")


def sign1s() -> list[bytes]:
    return vector_bytes("sign1") + vector_bytes("checkpoint") + vector_bytes("cwt")


def all_cose() -> list[bytes]:
    return mac0s() + sign1s() + [limits_command()]


def frames() -> list[bytes]:
    return vector_bytes("frame")


def frame_streams() -> list[bytes]:
    """Serial line captures: vector frames, and device messages framed back to back."""
    framed = [protocol_frames.encode_frame(m) for m in handshake() + tuple(device_events())]
    return frames() + framed + [b"".join(framed), b"\x00\x01garbage" + b"".join(framed[:2])]


def fragment_lists() -> list[list[bytes]]:
    return [[binascii.unhexlify(p) for p in v["outputs"]["bytes"].split(",")]
            for v in vectors()["fragments"]]


# ---------------------------------------------------------------- message bodies


def handshake() -> tuple[bytes, bytes]:
    """The session vector's (hello, accept) envelopes."""
    (vec,) = vectors()["session"]
    return (binascii.unhexlify(vec["outputs"]["hello"]),
            binascii.unhexlify(vec["outputs"]["accept"]))


def checkpoints() -> list[bytes]:
    return vector_bytes("checkpoint")


def certificates() -> list[bytes]:
    device_cert = cwt.issue_cwt(GATEWAY_SEED, GATEWAY, DEVICE, public(DEVICE_SEED), NOW,
                                NOW + 86400 * 365, agreement_key=crypto.x25519_public_key(
                                    DEVICE_X), role="device", model="VB-Ox", serial="SN-1",
                                cti=b"\x01" * 16)
    return vector_bytes("cwt") + [device_cert, gateway_certificate()]


def gateway_certificate() -> bytes:
    return cwt.issue_cwt(ORG_SEED, "org", GATEWAY, public(GATEWAY_SEED), NOW,
                         NOW + 86400 * 365 * 2, agreement_key=crypto.x25519_public_key(GATEWAY_X),
                         role="gateway", cti=b"\x02" * 16)


def readings_messages() -> list[bytes]:
    sealed = vector_bytes("sealed_batch")[0]
    return [uplink.encode_readings(DEVICE, sealed, "sealed", NOW * 1000),
            uplink.encode_readings(DEVICE, sealed, "flagged:certificate-expired", 1)]


def receipt_messages() -> list[bytes]:
    digest = uplink.digest(readings_messages()[0])
    return [uplink.encode_receipt(digest), uplink.encode_receipt(digest, "rejected", "bad seal")]


def alarm_transitions() -> list[alarm_messages.AlarmTransition]:
    return [
        alarm_messages.AlarmTransition("a-1", 0, "raised", "red", "spo2:low", NOW * 1000, 0,
                                       patient="P-1", device=DEVICE, value=84.0),
        alarm_messages.AlarmTransition("a-2", 3, "acknowledged", "orange", "hr:high",
                                       NOW * 1000, 1, actor="nurse", detail="seen"),
    ]


def alarm_steps() -> list[bytes]:
    steps = alarm_transitions()
    return [alarm_messages.encode_transition(step) for step in steps]


def alarm_sets() -> list[bytes]:
    return [alarm_messages.encode_alarm_set(NOW * 1000, alarm_transitions()),
            alarm_messages.encode_alarm_set(NOW * 1000, [])]


def alarm_acks() -> list[bytes]:
    return [alarm_messages.encode_ack(alarm_messages.AlarmAck("a-1", "ack", "nurse", NOW * 1000)),
            alarm_messages.encode_ack(alarm_messages.AlarmAck("a-1", "close", "dr", 1, "ok"))]


def limits_command() -> bytes:
    bands = {"spo2": ("%", [("red", 85, None), ("orange", 90, None)]),
             "hr": (None, [("red", 40, 130)])}
    return limits.build_command(ORG_SEED, b"cmd-0001", "P-0001", NOW, NOW, bands,
                                "dr.ada@centre", valid_until=NOW + 86400, spo2_scale=1,
                                oxygen=False)


def limits_messages() -> list[bytes]:
    return [messages.encode("limits", limits_command())]


def challenge() -> enrollment.Challenge:
    return enrollment.make_challenge(GATEWAY, public(GATEWAY_SEED),
                                     crypto.x25519_public_key(GATEWAY_X), NOW, nonce=NONCE)


def _signer(seed: bytes) -> Callable[[bytes, bytes], bytes]:
    def sign(payload: bytes, aad: bytes) -> bytes:
        return cose.sign1_create(seed, payload, kid=kid_of(seed), external_aad=aad)
    return sign


def _endorser(seed: bytes) -> Callable[[bytes, bytes], bytes]:
    def endorse(payload: bytes, aad: bytes) -> bytes:
        return cose.sign1_create(seed, payload, kid=kid_of(seed), external_aad=aad,
                                 detached=True)
    return endorse


def enroll_requests() -> list[bytes]:
    def body(endorse: Callable[[bytes, bytes], bytes] | None) -> dict:
        return enrollment.build_request(
            challenge(), DEVICE, "VB-Ox", "SN-1", "1.0.0", public(DEVICE_SEED),
            crypto.x25519_public_key(DEVICE_X), NOW + 5, sign=_signer(DEVICE_SEED),
            agree=lambda peer: crypto.x25519_shared(DEVICE_X, peer), endorse=endorse)
    return [messages.encode("enroll-request", body(None)),
            messages.encode("enroll-request", body(_endorser(GATEWAY_SEED)))]


def deliveries() -> list[bytes]:
    device_cert = certificates()[1]
    body = enrollment.make_delivery(device_cert, gateway_certificate(),
                                    crypto.x25519_public_key(GATEWAY_X))
    return [messages.encode("certificate", body)]


def device_acks() -> list[bytes]:
    acks = [device_link.Ack(LINK_KID, upto=10, ranges=[(12, 14), (20, 20)], checkpoints_upto=9),
            device_link.Ack(LINK_KID)]
    return [messages.encode("device-ack", device_link.encode_ack(a, LINK_KEY, LINK_KID))
            for a in acks]


def device_commands() -> list[bytes]:
    sealed = [
        device_link.encode_command(7, "seq-floor", 1000, mac_key=LINK_KEY, kid=LINK_KID),
        device_link.encode_command(8, "destroy-key", b"\x01" * 8, mac_key=LINK_KEY, kid=LINK_KID),
        device_link.encode_command(9, "feedback", "alarm-red", mac_key=LINK_KEY, kid=LINK_KID),
        device_link.encode_command(10, "rotate-keys", challenge().to_map(), mac_key=LINK_KEY,
                                   kid=LINK_KID),
    ]
    bare = [device_link.encode_command(1, "enroll", challenge().to_map()),
            device_link.encode_command(2, "identify")]
    return [messages.encode("device-command", body) for body in sealed + bare]


def device_events() -> list[bytes]:
    event = {"event": "battery", "time": NOW, "percent": 17, "note": "low", "raw": b"\x01\x02",
             "charging": False, "missing": None}
    return [messages.encode("device-event", device_link.encode_event(event, LINK_KEY, LINK_KID)),
            messages.encode("device-event", device_link.encode_event(
                {"event": "tamper", "time": NOW}))]


def inner_payload(envelope: bytes) -> bytes:
    """The CBOR map inside a sealed body (what a re-sealing target fuzzes)."""
    return cose.mac0_parse(messages.decode(envelope)[1]).payload


def status_messages() -> list[bytes]:
    return [messages.encode("status", {"online": True, "version": "0.1.0"}),
            messages.encode("status", {"online": False})]


def event_messages() -> list[bytes]:
    return [messages.encode("event", {"gateway-certificate": gateway_certificate(),
                                      "device-certificate": certificates()[1]})]


def checkpoint_messages() -> list[bytes]:
    return [messages.encode("checkpoint", c) for c in checkpoints()]


def all_envelopes() -> list[bytes]:
    hello, accept = handshake()
    return ([hello, accept] + vector_bytes("envelope") + readings_messages()
            + receipt_messages() + alarm_steps() + alarm_sets() + alarm_acks()
            + limits_messages() + enroll_requests() + deliveries() + device_acks()
            + device_commands() + device_events() + status_messages() + event_messages()
            + checkpoint_messages())


GATEWAY_TOML = b"""\
[gateway]
id = "gw-1"
data_dir = "data"

[broker]
host = "broker.example"
port = 8883
username = "gw-1"
keepalive_s = 30

[broker.tls]
ca = "ca.pem"
cert = "gw.pem"
key = "gw.key"

[uplink]
max_in_flight = 64
urgent_reserve = 8

[[serial]]
name = "ox"
device = "ox-1"
driver = "contec-cms50"
usb = "10c4:ea60"

[ble]
max_connections = 4

[[ble.devices]]
name = "hr-strap"
device = "hr-1"
address = "AA:BB:CC:DD:EE:FF"
service_uuid = "180d"
bonding = true

[journal]
retention_days = 365
disk_budget_mb = 512

[alarms]
escalate_after_s = 120
critical_grade = "red"

[eventlog]
checkpoint_every = 100
transmissions = "refusals"

[metrics]
port = 9108

[logging]
level = "info"
format = "json"
"""


def config_files() -> list[bytes]:
    minimal = b'[gateway]\nid = "gw-1"\n\n[broker]\nhost = "localhost"\n'
    return [GATEWAY_TOML, minimal]
