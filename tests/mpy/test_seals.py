# COSE seals, session handshake, checkpoints, CWT and replay tracking on MicroPython.
# (CPython side with pycose interop and hypothesis: tests/protocol/test_cose.py & co.)
# Run: .venv/bin/micropython -X heapsize=8M tests/mpy/run.py test_seals
from binascii import unhexlify

from protocol import checkpoint, cose, crypto, cwt, replay, session
from protocol.errors import ProtocolError, SealError, ValidationError

# cose-wg/Examples mac0-tests/HMac-01.json
WG_KEY = unhexlify("849b57219dae48de646d07dbb533566e976686457c1491be3a76dcea6c427188")
WG_HMAC01 = unhexlify(
    "d18443a10105a054546869732069732074686520636f6e74656e742e5820"
    "a1a848d3471f9d61ee49018d244c824772f223ad4f935293f1789fc3a08d8c58"
)
KEY = bytes(range(32))
KID = b"\x01\x02\x03\x04\x05\x06\x07\x08"
SEED = b"\x0d" * 32
GW_SEED = b"\x06" * 32
NBF = 1700000000
DAY = 86400


def _error(fn):
    """The ProtocolError fn raises (fails the test if it raises nothing)."""
    try:
        fn()
    except ProtocolError as exc:
        return exc
    raise AssertionError("no ProtocolError raised")


def test_mac0_known_answer_and_round_trip():
    assert cose.mac0_create(WG_KEY, b"This is the content.") == WG_HMAC01
    assert cose.mac0_verify(WG_KEY, WG_HMAC01).payload == b"This is the content."
    data = cose.mac0_create(KEY, b"reading", kid=KID, content_type=112, external_aad=b"dev")
    msg = cose.mac0_verify(KEY, data, external_aad=b"dev", kid=KID)
    assert msg.payload == b"reading" and msg.content_type == 112 and msg.kid == KID


def test_mac0_tamper_rejection():
    data = cose.mac0_create(KEY, b"reading", kid=KID, external_aad=b"dev")
    for pos in range(len(data)):
        for delta in (1, 0x80):
            changed = bytearray(data)
            changed[pos] ^= delta
            exc = _error(lambda c=bytes(changed): cose.mac0_verify(KEY, c, b"dev", kid=KID))
            assert isinstance(exc, SealError) and str(exc)
    assert str(_error(lambda: cose.mac0_verify(KEY, data, b"other"))) == "tag mismatch"
    sign1 = cose.sign1_create(SEED, b"x")
    assert str(_error(lambda: cose.mac0_verify(KEY, sign1))) == "not a COSE_Mac0 (tag 18)"


def test_sign1_round_trip_and_tamper():
    public = crypto.ed25519_public_key(SEED)
    data = cose.sign1_create(SEED, b"checkpoint", kid=cose.key_id(public), external_aad=b"cp")
    assert cose.sign1_verify(public, data, b"cp", kid=cose.key_id(public)).payload == b"checkpoint"
    changed = bytearray(data)
    changed[-70] ^= 1  # inside the payload
    assert str(_error(lambda: cose.sign1_verify(public, bytes(changed), b"cp"))) == (
        "signature invalid")
    changed = bytearray(data)
    changed[-1] ^= 1  # inside the signature
    assert str(_error(lambda: cose.sign1_verify(public, bytes(changed), b"cp"))) == (
        "signature invalid")
    assert cose.peek(data)["structure"] == "COSE_Sign1"


def test_session_both_sides_derive_equal_keys():
    d_priv = bytes(range(1, 33))
    g_priv = bytes(range(101, 133))
    d_pub = crypto.x25519_public_key(d_priv)
    g_pub = crypto.x25519_public_key(g_priv)
    device = session.DeviceHandshake("vb-dev-1", d_priv, g_pub, static_public=d_pub)
    gw, accept = session.gateway_accept(device.hello(), d_pub, g_priv, g_pub, now=NBF)
    dev = device.finish(accept)
    assert dev.session_id == gw.session_id and len(dev.session_id) == 8
    assert dev.device_mac_key == gw.device_mac_key and dev.gateway_time == NBF
    accept[2] = b"\x00" * 16  # tampered gateway nonce
    device2 = session.DeviceHandshake("vb-dev-1", d_priv, g_pub, static_public=d_pub)
    assert str(_error(lambda: device2.finish(accept))) == "accept proof invalid"


def test_checkpoint_chain():
    public = crypto.ed25519_public_key(SEED)
    sid = b"\x5a" * 8
    chain = checkpoint.HashChain(sid)
    tags = {}
    for seq in range(4):
        tags[seq] = cose.mac0_parse(cose.mac0_create(KEY, bytes([seq]), kid=sid)).tag
        chain.extend(seq, tags[seq])
    data = chain.checkpoint(SEED, "vb-dev-1", NBF, cose.key_id(public))
    assert checkpoint.verify_checkpoint(data, public, tags).status == "verified"
    del tags[2]
    verdict = checkpoint.verify_checkpoint(data, public, tags)
    assert verdict.status == "gap" and verdict.missing == [(2, 2)]
    tags[2] = bytes(32)
    assert checkpoint.verify_checkpoint(data, public, tags).status == "tag-mismatch"


def test_cwt_issue_verify_state():
    gw_pub = crypto.ed25519_public_key(GW_SEED)
    dev_pub = crypto.ed25519_public_key(SEED)
    exp = NBF + 365 * DAY
    data = cwt.issue_cwt(GW_SEED, "vb-gw-1", "vb-dev-1", dev_pub, NBF, exp,
                         agreement_key=b"\x09" * 32, role="device", cti=b"c" * 16)
    cert = cwt.verify_cwt(data, gw_pub)
    assert cert.subject == "vb-dev-1" and cert.public_key == dev_pub and cert.role == "device"
    assert cert.agreement_key == b"\x09" * 32
    renewal = NBF + (2 * 365 * DAY + 2) // 3
    assert cwt.validity_state(cert, NBF - 1) == "not-yet-valid"
    assert cwt.validity_state(cert, renewal - 1) == "valid"
    assert cwt.validity_state(cert, renewal) == "renewal-due"
    assert cwt.validity_state(cert, exp - 30 * DAY - 1) == "renewal-due"
    assert cwt.validity_state(cert, exp - 30 * DAY) == "expiring"
    assert cwt.validity_state(cert, exp) == "expired"
    assert "kid mismatch" in str(_error(lambda: cwt.verify_cwt(data, dev_pub)))


def test_replay_tracker():
    t = replay.SequenceTracker(window=16)
    verdicts = [t.record(s) for s in (0, 1, 4, 1, 2, 40, 20, 3)]
    assert verdicts == ["new", "new", "new", "duplicate", "new-late", "new", "too-old",
                        "too-old"]
    assert t.missing() == [(25, 39)] and t.lost == 1 + 20
    restored = replay.SequenceTracker.from_state(t.to_state())
    assert restored.record(39) == "new-late" and restored.record(39) == "duplicate"
    e = _error(lambda: t.record(-1))
    assert isinstance(e, ValidationError)
