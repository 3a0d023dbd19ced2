"""Session handshake: both sides agree, an independent implementation of the documented key
schedule agrees, any tampering fails, hostile bodies raise only ProtocolError."""

import hashlib
import hmac

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from protocol import checkpoint, cose, crypto, messages, session, topics
from protocol.errors import ProtocolError, SealError, ValidationError, VersionError

DEVICE_PRIV = bytes(range(1, 33))
GATEWAY_PRIV = bytes(range(101, 133))
EPHEMERAL_PRIV = bytes(range(201, 233))
DEVICE_PUB = crypto.x25519_public_key(DEVICE_PRIV)
GATEWAY_PUB = crypto.x25519_public_key(GATEWAY_PRIV)
D_NONCE = b"\x11" * 16
G_NONCE = b"\x22" * 16
NOW = 1_700_000_000
KEY32 = bytes(range(32, 64))


def handshake(device_id="vb-dev-1", now=NOW, tamper_hello=None, tamper_accept=None):
    device = session.DeviceHandshake(device_id, DEVICE_PRIV, GATEWAY_PUB,
                                     static_public=DEVICE_PUB, nonce=D_NONCE)
    hello = device.hello()
    if tamper_hello:
        tamper_hello(hello)
    gw_session, accept = session.gateway_accept(hello, DEVICE_PUB, GATEWAY_PRIV, now=now,
                                                ephemeral_private=EPHEMERAL_PRIV, nonce=G_NONCE)
    if tamper_accept:
        tamper_accept(accept)
    return device, gw_session, accept


def test_both_sides_derive_the_same_session() -> None:
    device, gw, accept = handshake()
    dev = device.finish(accept)
    assert dev.session_id == gw.session_id and len(dev.session_id) == 8
    assert dev.device_mac_key == gw.device_mac_key and len(dev.device_mac_key) == 32
    assert dev.gateway_mac_key == gw.gateway_mac_key
    assert dev.device_mac_key != dev.gateway_mac_key
    assert dev.gateway_time == gw.gateway_time == NOW
    assert (dev.role, gw.role, dev.device_id) == ("device", "gateway", "vb-dev-1")
    assert "key" not in repr(dev).lower().replace("device=", "")


def test_session_keys_seal_and_verify_across_sides() -> None:
    device, gw, accept = handshake()
    dev = device.finish(accept)
    sealed = cose.mac0_create(dev.device_mac_key, b"reading", kid=dev.kid)
    assert cose.mac0_verify(gw.device_mac_key, sealed, kid=gw.kid).payload == b"reading"
    with pytest.raises(SealError, match="tag mismatch"):  # no reflection across directions
        cose.mac0_verify(gw.gateway_mac_key, sealed)


def _independent_key_schedule(hello: dict, accept: dict) -> dict:
    """docs/seals.md's key schedule rebuilt with `cryptography` + cbor2, not our code."""
    d = X25519PrivateKey.from_private_bytes(DEVICE_PRIV)
    g_pub = X25519PublicKey.from_public_bytes(GATEWAY_PUB)
    e_pub = X25519PublicKey.from_public_bytes(accept[5])
    raw = g_pub.public_bytes(Encoding.Raw, PublicFormat.Raw)
    core = {k: v for k, v in accept.items() if k != 7}
    th = hashlib.sha256(cbor2.dumps(hello, canonical=True) + cbor2.dumps(core, canonical=True))
    okm = HKDF(
        algorithm=hashes.SHA256(), length=104, salt=hello[2] + accept[2],
        info=b"vitalbridge session v1" + th.digest() + raw,
    ).derive(d.exchange(e_pub) + d.exchange(g_pub))
    proof = hmac.new(okm[64:96], b"vitalbridge accept proof" + th.digest(), "sha256").digest()
    return {"device": okm[:32], "gateway": okm[32:64], "sid": okm[96:104], "proof": proof}


def test_independent_implementation_of_the_key_schedule_agrees() -> None:
    device, gw, accept = handshake()
    expected = _independent_key_schedule(device.hello(), accept)
    assert accept[7] == expected["proof"]
    assert (gw.device_mac_key, gw.gateway_mac_key, gw.session_id) == (
        expected["device"], expected["gateway"], expected["sid"])
    # Gateway key kid in both messages is cose.key_id(G).
    assert device.hello()[4] == accept[4] == cose.key_id(GATEWAY_PUB)


def test_handshake_through_the_message_envelope() -> None:
    device = session.DeviceHandshake("vb-dev-1", DEVICE_PRIV, GATEWAY_PUB)
    kind, body = messages.decode(messages.encode("hello", device.hello()))
    assert kind == "hello"
    hello = session.parse_hello(body)
    assert hello.device_id == "vb-dev-1" and hello.device_key == DEVICE_PUB
    gw, accept = session.gateway_accept(hello, DEVICE_PUB, GATEWAY_PRIV, GATEWAY_PUB)
    kind, body = messages.decode(messages.encode("accept", accept))
    dev = device.finish(body)
    assert dev.device_mac_key == gw.device_mac_key and dev.gateway_time is None


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32),
       st.text(alphabet=topics._ID_CHARS, min_size=1, max_size=64))
def test_any_keys_agree(device_priv: bytes, gateway_priv: bytes, device_id: str) -> None:
    d_pub = crypto.x25519_public_key(device_priv)
    g_pub = crypto.x25519_public_key(gateway_priv)
    device = session.DeviceHandshake(device_id, device_priv, g_pub)
    gw, accept = session.gateway_accept(device.hello(), d_pub, gateway_priv)
    dev = device.finish(accept)
    assert (dev.session_id, dev.device_mac_key) == (gw.session_id, gw.device_mac_key)


def test_fresh_sessions_have_fresh_keys() -> None:
    ids = set()
    for _ in range(5):
        device = session.DeviceHandshake("vb-dev-1", DEVICE_PRIV, GATEWAY_PUB)
        gw, accept = session.gateway_accept(device.hello(), DEVICE_PUB, GATEWAY_PRIV)
        ids.add(device.finish(accept).session_id)
    assert len(ids) == 5


def test_cached_static_secrets_give_the_same_session() -> None:
    cached_dev = session.static_secret(DEVICE_PRIV, GATEWAY_PUB)
    cached_gw = session.static_secret(GATEWAY_PRIV, DEVICE_PUB)
    assert cached_dev == cached_gw
    device = session.DeviceHandshake("vb-dev-1", DEVICE_PRIV, GATEWAY_PUB, DEVICE_PUB,
                                     static_secret=cached_dev, nonce=D_NONCE)
    gw, accept = session.gateway_accept(device.hello(), DEVICE_PUB, GATEWAY_PRIV, now=NOW,
                                        static_secret=cached_gw,
                                        ephemeral_private=EPHEMERAL_PRIV, nonce=G_NONCE)
    _, reference, _ = handshake()
    assert device.finish(accept).session_id == gw.session_id == reference.session_id


# ---------------------------------------------------------------- tampering


def _flip(value):
    if isinstance(value, bytes):
        return bytes([value[0] ^ 1]) + value[1:]
    if isinstance(value, int):
        return value + 1
    return value[:-1] + ("2" if value[-1] != "2" else "3")


@pytest.mark.parametrize("label", [2, 4, 5, 6, 7])
def test_tampering_any_accept_field_fails(label: int) -> None:
    def tamper(accept):
        accept[label] = _flip(accept[label])

    device, _, accept = handshake(tamper_accept=tamper)
    with pytest.raises(SealError):
        device.finish(accept)


def test_removing_the_time_from_accept_fails() -> None:
    device, _, accept = handshake(tamper_accept=lambda a: a.pop(6))
    with pytest.raises(SealError, match="accept proof invalid"):
        device.finish(accept)


@pytest.mark.parametrize("label", [1, 2])
def test_tampering_hello_fields_in_transit_fails_the_proof(label: int) -> None:
    def tamper(hello):
        hello[label] = _flip(hello[label])

    device, _, accept = handshake(tamper_hello=tamper)
    with pytest.raises(SealError, match="accept proof invalid"):
        device.finish(accept)


def test_gateway_refuses_hello_with_wrong_device_key_or_gateway_kid() -> None:
    device = session.DeviceHandshake("vb-dev-1", DEVICE_PRIV, GATEWAY_PUB, DEVICE_PUB)
    hello = device.hello()
    hello[3] = _flip(hello[3])
    with pytest.raises(SealError, match="does not match its certificate"):
        session.gateway_accept(hello, DEVICE_PUB, GATEWAY_PRIV)
    other_gateway = session.DeviceHandshake("vb-dev-1", DEVICE_PRIV, DEVICE_PUB, DEVICE_PUB)
    with pytest.raises(SealError, match="hello addressed to gateway key"):
        session.gateway_accept(other_gateway.hello(), DEVICE_PUB, GATEWAY_PRIV)


def test_impostor_gateway_without_the_static_key_fails() -> None:
    device = session.DeviceHandshake("vb-dev-1", DEVICE_PRIV, GATEWAY_PUB, DEVICE_PUB)
    hello = device.hello()
    impostor_priv = bytes(range(50, 82))
    # The impostor answers with the real gateway's kid but its own static key.
    _, accept = session.gateway_accept(hello, DEVICE_PUB, impostor_priv, GATEWAY_PUB)
    with pytest.raises(SealError, match="accept proof invalid"):
        device.finish(accept)


def test_replayed_accept_fails_and_failed_finish_keeps_handshake_usable() -> None:
    _, _, old_accept = handshake()
    device = session.DeviceHandshake("vb-dev-1", DEVICE_PRIV, GATEWAY_PUB, DEVICE_PUB)
    with pytest.raises(SealError, match="accept proof invalid"):
        device.finish(old_accept)
    gw, accept = session.gateway_accept(device.hello(), DEVICE_PUB, GATEWAY_PRIV)
    assert device.finish(accept).session_id == gw.session_id
    with pytest.raises(ValidationError, match="already finished"):
        device.finish(accept)


def test_low_order_ephemeral_key_is_refused() -> None:
    device, _, accept = handshake()
    accept[5] = bytes(32)  # u = 0: low order
    with pytest.raises(SealError, match="low order"):
        device.finish(accept)


# ---------------------------------------------------------------- body validation


@pytest.mark.parametrize(
    "mutate, error, text",
    [
        (lambda h: h.update({0: 2}), VersionError, "handshake version 2"),
        (lambda h: h.pop(0), ValidationError, "version: missing"),
        (lambda h: h.update({0: True}), ValidationError, "version: must be an integer"),
        (lambda h: h.update({9: 1}), ValidationError, "unknown field 9"),
        (lambda h: h.update({"x": 1}), ValidationError, "unknown field 'x'"),
        (lambda h: h.pop(2), ValidationError, "nonce: missing"),
        (lambda h: h.update({2: b"short"}), ValidationError, "nonce: must be 16 bytes"),
        (lambda h: h.update({1: "bad/id"}), ValidationError, "device_id"),
        (lambda h: h.update({3: "x" * 32}), ValidationError, "device_key: must be bytes"),
    ],
)
def test_hello_validation_reasons(mutate, error, text) -> None:
    hello = session.DeviceHandshake("vb-dev-1", DEVICE_PRIV, GATEWAY_PUB, DEVICE_PUB).hello()
    mutate(hello)
    with pytest.raises(error, match=text):
        session.parse_hello(hello)


def test_accept_validation_reasons() -> None:
    _, _, accept = handshake()
    with pytest.raises(ValidationError, match="time"):
        session.parse_accept(accept | {6: -1})
    with pytest.raises(ValidationError, match="proof: missing"):
        session.parse_accept({k: v for k, v in accept.items() if k != 7})
    with pytest.raises(ValidationError, match="unknown field 3"):
        session.parse_accept(accept | {3: DEVICE_PUB})
    with pytest.raises(ValidationError, match="must be a map"):
        session.parse_accept([accept])


values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 2**64), st.binary(max_size=40),
              st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.integers(-1, 9), inner, max_size=4)),
    max_leaves=12,
)


@given(st.dictionaries(st.integers(0, 8), values, max_size=8))
def test_random_bodies_raise_only_protocol_errors(body) -> None:
    device = session.DeviceHandshake("vb-dev-1", DEVICE_PRIV, GATEWAY_PUB, DEVICE_PUB)
    for call in (
        lambda: session.parse_hello(body),
        lambda: session.gateway_accept(body, DEVICE_PUB, GATEWAY_PRIV, GATEWAY_PUB),
        lambda: device.finish(body),
    ):
        try:
            call()
        except ProtocolError:
            pass


@given(st.binary(max_size=120))
def test_random_envelopes_raise_only_protocol_errors(data: bytes) -> None:
    device = session.DeviceHandshake("vb-dev-1", DEVICE_PRIV, GATEWAY_PUB, DEVICE_PUB)
    try:
        _, body = messages.decode(data)
        session.parse_hello(body)
        device.finish(body)
    except ProtocolError:
        pass


# ---------------------------------------------------------------- checkpoints (hash chain)

DEVICE_SEED = bytes(range(32))
DEVICE_SIGN_PUB = crypto.ed25519_public_key(DEVICE_SEED)
DEVICE_KID = cose.key_id(DEVICE_SIGN_PUB)
SID = b"\x5a" * 8


def _sealed_readings(chain, key, first, count):
    tags = {}
    for seq in range(first, first + count):
        msg = cose.mac0_create(key, cbor2.dumps({"seq": seq}), kid=SID)
        tag = cose.mac0_parse(msg).tag
        chain.extend(seq, tag)
        tags[seq] = tag
    return tags


def test_chain_matches_its_definition() -> None:
    start = hashlib.sha256(b"vitalbridge-chain" + SID).digest()
    assert checkpoint.chain_start(SID) == start
    tag = b"\x01" * 32
    assert checkpoint.chain_step(start, tag) == hashlib.sha256(start + tag).digest()


def test_checkpoint_verifies_against_received_tags() -> None:
    chain = checkpoint.HashChain(SID)
    tags = _sealed_readings(chain, KEY32, 5, 10)
    data = chain.checkpoint(DEVICE_SEED, "vb-dev-1", NOW, DEVICE_KID)
    verdict = checkpoint.verify_checkpoint(data, DEVICE_SIGN_PUB, tags,
                                           expected_prev=checkpoint.chain_start(SID),
                                           device_id="vb-dev-1", session_id=SID)
    assert verdict.ok and verdict.status == "verified"
    cp = verdict.checkpoint
    assert (cp.first_seq, cp.last_seq, cp.count, cp.time) == (5, 14, 10, NOW)
    # Independent recomputation of the head.
    head = hashlib.sha256(b"vitalbridge-chain" + SID).digest()
    for seq in range(5, 15):
        head = hashlib.sha256(head + tags[seq]).digest()
    assert cp.head == head
    # The signature is a plain COSE_Sign1 with the documented external AAD.
    assert cose.sign1_verify(DEVICE_SIGN_PUB, data, external_aad=b"vitalbridge checkpoint v1")


def test_checkpoint_reports_gaps_and_tag_mismatches() -> None:
    chain = checkpoint.HashChain(SID)
    tags = _sealed_readings(chain, KEY32, 0, 20)
    data = chain.checkpoint(DEVICE_SEED, "vb-dev-1", NOW, DEVICE_KID)
    partial = {s: t for s, t in tags.items() if s not in (3, 4, 5, 17)}
    verdict = checkpoint.verify_checkpoint(data, DEVICE_SIGN_PUB, partial)
    assert verdict.status == "gap" and verdict.missing == [(3, 5), (17, 17)]
    assert "4 of 20 seqs not received: 3-5, 17" in verdict.reason
    forged = dict(tags)
    forged[9] = bytes(32)
    verdict = checkpoint.verify_checkpoint(data, DEVICE_SIGN_PUB, forged)
    assert verdict.status == "tag-mismatch" and not verdict.ok
    swapped = dict(tags)
    swapped[1], swapped[2] = tags[2], tags[1]
    assert checkpoint.verify_checkpoint(data, DEVICE_SIGN_PUB, swapped).status == "tag-mismatch"


def test_consecutive_checkpoints_link_and_breaks_are_reported() -> None:
    chain = checkpoint.HashChain(SID)
    tags = _sealed_readings(chain, KEY32, 0, 3)
    first = chain.checkpoint(DEVICE_SEED, "vb-dev-1", NOW, DEVICE_KID)
    tags.update(_sealed_readings(chain, KEY32, 3, 3))
    second = chain.checkpoint(DEVICE_SEED, "vb-dev-1", NOW + 60, DEVICE_KID)
    v1 = checkpoint.verify_checkpoint(first, DEVICE_SIGN_PUB, tags,
                                      expected_prev=checkpoint.chain_start(SID))
    v2 = checkpoint.verify_checkpoint(second, DEVICE_SIGN_PUB, tags,
                                      expected_prev=v1.checkpoint.head)
    assert v1.ok and v2.ok and v2.checkpoint.first_seq == 3
    broken = checkpoint.verify_checkpoint(second, DEVICE_SIGN_PUB, tags,
                                          expected_prev=checkpoint.chain_start(SID))
    assert broken.status == "chain-break"


def test_checkpoint_signature_and_identity_failures() -> None:
    chain = checkpoint.HashChain(SID)
    tags = _sealed_readings(chain, KEY32, 0, 2)
    data = chain.checkpoint(DEVICE_SEED, "vb-dev-1", NOW, DEVICE_KID)
    other_pub = crypto.ed25519_public_key(b"\x07" * 32)
    with pytest.raises(SealError, match="signature invalid"):
        checkpoint.verify_checkpoint(
            cose.sign1_create(b"\x07" * 32, cose.sign1_parse(data).payload, kid=DEVICE_KID,
                              external_aad=checkpoint.CHECKPOINT_AAD),
            DEVICE_SIGN_PUB, tags)
    with pytest.raises(SealError, match="kid missing"):
        checkpoint.verify_checkpoint(
            cose.sign1_create(DEVICE_SEED, cose.sign1_parse(data).payload,
                              external_aad=checkpoint.CHECKPOINT_AAD),
            DEVICE_SIGN_PUB, tags)
    with pytest.raises(SealError, match="kid mismatch"):
        checkpoint.verify_checkpoint(
            cose.sign1_create(b"\x07" * 32, cose.sign1_parse(data).payload, kid=b"12345678",
                              external_aad=checkpoint.CHECKPOINT_AAD),
            other_pub, tags)
    with pytest.raises(ValidationError, match="device_id"):
        checkpoint.verify_checkpoint(data, DEVICE_SIGN_PUB, tags, device_id="vb-dev-2")
    with pytest.raises(ValidationError, match="session_id"):
        checkpoint.verify_checkpoint(data, DEVICE_SIGN_PUB, tags, session_id=b"\x00" * 8)
    # Signed without the checkpoint AAD (e.g. some other Sign1 by the same key): refused.
    with pytest.raises(SealError, match="signature invalid"):
        checkpoint.verify_checkpoint(
            cose.sign1_create(DEVICE_SEED, cose.sign1_parse(data).payload, kid=DEVICE_KID),
            DEVICE_SIGN_PUB, tags)


@pytest.mark.parametrize(
    "claims, text",
    [
        ({0: 1, 1: "d", 2: SID, 3: 5, 4: 4, 5: 0, 6: b"h" * 32, 7: 0, 8: b"p" * 32}, "count"),
        ({0: 1, 1: "d", 2: SID, 3: 0, 4: 9, 5: 3, 6: b"h" * 32, 7: 0, 8: b"p" * 32}, "count"),
        ({0: 1, 1: "d", 2: SID, 3: 0, 4: 2**20, 5: 2**20 + 1, 6: b"h" * 32, 7: 0,
          8: b"p" * 32}, "count"),
        ({0: 1, 1: "d", 2: SID, 3: 0, 4: 0, 5: 1, 6: b"h" * 32, 7: 0}, "field 8 missing"),
        ({0: 2, 1: "d", 2: SID, 3: 0, 4: 0, 5: 1, 6: b"h" * 32, 7: 0, 8: b"p" * 32},
         "version 2"),
        ({0: 1, 1: "d", 2: SID, 3: -1, 4: 0, 5: 1, 6: b"h" * 32, 7: 0, 8: b"p" * 32},
         "first_seq"),
    ],
)
def test_malformed_signed_checkpoints_are_refused(claims, text) -> None:
    data = cose.sign1_create(DEVICE_SEED, cbor2.dumps(claims, canonical=True), kid=DEVICE_KID,
                             external_aad=checkpoint.CHECKPOINT_AAD)
    with pytest.raises(ProtocolError, match=text):
        checkpoint.verify_checkpoint(data, DEVICE_SIGN_PUB, {})


def test_hash_chain_enforces_consecutive_seqs() -> None:
    chain = checkpoint.HashChain(SID)
    with pytest.raises(ValidationError, match="no tags"):
        chain.checkpoint(DEVICE_SEED, "vb-dev-1", NOW, DEVICE_KID)
    chain.extend(7, b"\x00" * 32)
    with pytest.raises(ValidationError, match="expected 8, got 9"):
        chain.extend(9, b"\x00" * 32)
    with pytest.raises(ValidationError, match="tag"):
        chain.extend(8, b"\x00" * 16)


def test_every_position_change_of_a_checkpoint_is_rejected() -> None:
    chain = checkpoint.HashChain(SID)
    tags = _sealed_readings(chain, KEY32, 0, 2)
    sealed = chain.checkpoint(DEVICE_SEED, "vb-dev-1", NOW, DEVICE_KID)
    for pos in range(len(sealed)):
        for delta in (0x01, 0x80):
            changed = bytearray(sealed)
            changed[pos] ^= delta
            with pytest.raises(SealError):
                checkpoint.verify_checkpoint(bytes(changed), DEVICE_SIGN_PUB, tags)


@given(st.data())
def test_any_byte_change_of_a_checkpoint_is_rejected(data) -> None:
    chain = checkpoint.HashChain(SID)
    tags = _sealed_readings(chain, KEY32, 0, 2)
    sealed = bytearray(chain.checkpoint(DEVICE_SEED, "vb-dev-1", NOW, DEVICE_KID))
    pos = data.draw(st.integers(0, len(sealed) - 1))
    sealed[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(SealError):
        checkpoint.verify_checkpoint(bytes(sealed), DEVICE_SIGN_PUB, tags)


@given(st.binary(max_size=200))
def test_random_checkpoint_bytes_raise_only_protocol_errors(data: bytes) -> None:
    for call in (lambda: checkpoint.parse_checkpoint(data),
                 lambda: checkpoint.verify_checkpoint(data, DEVICE_SIGN_PUB, {})):
        try:
            call()
        except ProtocolError:
            pass
