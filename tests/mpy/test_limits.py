# Signed limit commands on MicroPython: the CPython golden vector verifies here, the board
# builds the same bytes, and wrong keys, tampering, replays and bad bands are refused.
# (CPython side with pycose interop and hypothesis: tests/protocol/test_limits_command.py.)
# Run: .venv/bin/micropython -X heapsize=8M tests/mpy/run.py test_limits
from binascii import unhexlify

from test_seals import _error  # the ProtocolError fn raises (tests/mpy is on sys.path)

from protocol import cbor, cose, crypto
from protocol import limits as lc
from protocol.errors import SealError, ValidationError

ORG_SEED = bytes(range(32))
OTHER_SEED = b"\x42" * 32
NOW = 1767225600
CID = unhexlify("00112233445566778899aabbccddeeff")
LIMITS = {"spo2": (None, [("red", 88, None), ("orange", 90, None)]),
          "pr": ("beat/min", [("yellow", 50, 100)])}
GOLDEN = unhexlify(
    "d28443a10127a1044856475aa75463474c587aaa0101025000112233445566778899aabbccddeeff03665"
    "02d30303031041a6955b900051a6955b900061a695ef38007a26270728268626561742f6d696e81836679"
    "656c6c6f77183218646473706f328261258283637265641858f683666f72616e6765185af6086d64722e"
    "6164614063656e74726509020af558409ed5fc3ebddd50b59bcb2e0f894ca39fb87e1923fec3659f18c6"
    "745751cfdd48b13f380ccd5449911925eb0f0f0195e3635f5db9694bc936be02492ab8fd1802")


def _org_public():
    return crypto.ed25519_public_key(ORG_SEED)


def _build(seed=ORG_SEED, command_id=CID, issued_at=NOW):
    return lc.build_command(seed, command_id, "P-0001", issued_at, NOW, LIMITS, "dr.ada@centre",
                            valid_until=NOW + 7 * 86400, spo2_scale=2, oxygen=True)


def test_golden_vector_verifies_and_is_rebuilt_byte_for_byte():
    cmd = lc.verify_command(GOLDEN, _org_public(), NOW)
    assert cmd.verified and cmd.patient == "P-0001" and cmd.issuer == "dr.ada@centre"
    assert cmd.limits["spo2"] == ("%", (("red", 88, None), ("orange", 90, None)))
    assert cmd.limits["pr"] == ("beat/min", (("yellow", 50, 100),))
    assert cmd.spo2_scale == 2 and cmd.oxygen is True and cmd.valid_until == NOW + 7 * 86400
    assert _build() == GOLDEN


def test_wrong_key_and_forged_kid_are_refused():
    exc = _error(lambda: lc.verify_command(_build(OTHER_SEED), _org_public()))
    assert isinstance(exc, SealError) and "another key" in str(exc)
    forged = lc.build_command(OTHER_SEED, CID, "P-1", NOW, NOW, LIMITS, "x",
                              kid=cose.key_id(_org_public()))
    exc = _error(lambda: lc.verify_command(forged, _org_public()))
    assert "signature invalid" in str(exc)


def test_tampered_bytes_are_refused():
    public = _org_public()
    for i in range(0, len(GOLDEN), 7):
        tampered = bytearray(GOLDEN)
        tampered[i] ^= 0x01
        _error(lambda: lc.verify_command(bytes(tampered), public))  # noqa: B023 (called at once)


def test_replay_guard():
    public = _org_public()
    guard = lc.ReplayGuard()
    guard.admit(lc.verify_command(GOLDEN, public))
    exc = _error(lambda: guard.admit(lc.verify_command(GOLDEN, public)))
    assert "replayed" in str(exc)
    older = lc.verify_command(_build(command_id=b"\x05" * 16, issued_at=NOW - 5), public)
    assert "older" in str(_error(lambda: guard.check(older)))
    guard.admit(lc.verify_command(_build(command_id=b"\x06" * 16), public))
    restored = lc.ReplayGuard.from_state(cbor.loads(cbor.dumps(guard.to_state())))
    assert "replayed" in str(_error(lambda: restored.check(lc.verify_command(GOLDEN, public))))


def test_bad_bands_and_hostile_input():
    exc = _error(lambda: lc.check_bands("spo2", None, [("red", 92, 80)]))
    assert isinstance(exc, ValidationError) and "low > high" in str(exc)
    _error(lambda: lc.check_bands("spo2", None, [("red", 95, None), ("yellow", None, 90)]))
    _error(lambda: lc.check_bands("spo2", None, [("red", float("nan"), None)]))
    for junk in (b"", b"\xa0", b"\xd2\x84", GOLDEN[:-1], GOLDEN + b"\x00", b"\xff" * 40):
        _error(lambda: lc.verify_command(junk, _org_public()))  # noqa: B023 (called at once)
