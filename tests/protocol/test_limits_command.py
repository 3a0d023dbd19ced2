"""Signed limit commands: layout, interop, wrong keys, tampering, replay, hostile input."""

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

from protocol import cose, crypto, vitals
from protocol import limits as lc
from protocol.errors import ProtocolError, SealError, ValidationError, VersionError

ORG_SEED = bytes(range(32))
ORG_PUB = crypto.ed25519_public_key(ORG_SEED)
OTHER_SEED = b"\x42" * 32
NOW = 1_767_225_600
CID = bytes.fromhex("00112233445566778899aabbccddeeff")
LIMITS = {"spo2": (None, [("red", 88, None), ("orange", 90, None)]),
          "pr": ("beat/min", [("yellow", 50, 100)])}
# The same bytes are verified on MicroPython (tests/mpy/test_limits.py): Ed25519 and our
# CBOR are deterministic, so CPython and the board must agree byte for byte.
GOLDEN = bytes.fromhex(
    "d28443a10127a1044856475aa75463474c587aaa0101025000112233445566778899aabbccddeeff03665"
    "02d30303031041a6955b900051a6955b900061a695ef38007a26270728268626561742f6d696e81836679"
    "656c6c6f77183218646473706f328261258283637265641858f683666f72616e6765185af6086d64722e"
    "6164614063656e74726509020af558409ed5fc3ebddd50b59bcb2e0f894ca39fb87e1923fec3659f18c6"
    "745751cfdd48b13f380ccd5449911925eb0f0f0195e3635f5db9694bc936be02492ab8fd1802")


def command(seed: bytes = ORG_SEED, **overrides) -> bytes:
    args = dict(command_id=CID, patient="P-0001", issued_at=NOW, valid_from=NOW,
                limits=LIMITS, issuer="dr.ada@centre", valid_until=NOW + 7 * 86400,
                spo2_scale=2, oxygen=True)
    args.update(overrides)
    return lc.build_command(seed, **args)


def sign_body(body: object, seed: bytes = ORG_SEED) -> bytes:
    """A correctly signed command around any body: what a compromised centre could send."""
    kid = cose.key_id(crypto.ed25519_public_key(seed))
    return cose.sign1_create(seed, cbor2.dumps(body), kid=kid)


def valid_body() -> dict:
    return cbor2.loads(cbor2.loads(command()).value[2])


def test_golden_vector_and_round_trip() -> None:
    assert command() == GOLDEN
    cmd = lc.verify_command(GOLDEN, ORG_PUB, now=NOW)
    assert cmd.verified and cmd.kid == cose.key_id(ORG_PUB)
    assert (cmd.command_id, cmd.patient, cmd.issued_at, cmd.valid_from, cmd.valid_until) == (
        CID, "P-0001", NOW, NOW, NOW + 7 * 86400)
    assert cmd.issuer == "dr.ada@centre" and cmd.spo2_scale == 2 and cmd.oxygen is True
    assert cmd.limits == {"spo2": ("%", (("red", 88, None), ("orange", 90, None))),
                          "pr": ("beat/min", (("yellow", 50, 100),))}
    assert cmd.in_force(NOW) and not cmd.in_force(NOW - 1) and not cmd.in_force(NOW + 7 * 86400)
    parsed = lc.parse_command(GOLDEN)
    assert not parsed.verified and parsed.patient == "P-0001"


def test_payload_layout_is_the_documented_one() -> None:
    assert valid_body() == {
        1: 1, 2: CID, 3: "P-0001", 4: NOW, 5: NOW, 6: NOW + 7 * 86400,
        7: {"spo2": ["%", [["red", 88, None], ["orange", 90, None]]],
            "pr": ["beat/min", [["yellow", 50, 100]]]},
        8: "dr.ada@centre", 9: 2, 10: True}


def test_pycose_verifies_the_organisation_signature() -> None:
    protected, unprotected, payload, sig = cbor2.loads(GOLDEN).value
    msg = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, sig], True)
    msg.key = OKPKey(crv=Ed25519, x=ORG_PUB)
    assert msg.verify_signature()


def test_open_ended_command_and_defaults() -> None:
    data = lc.build_command(ORG_SEED, CID, "P-2", NOW, NOW, {"temp": (None, [("red", 35.1, None)])},
                            "dr.b")
    cmd = lc.verify_command(data, ORG_PUB, now=NOW + 10 * 365 * 86400)
    assert cmd.valid_until is None and cmd.spo2_scale is None and cmd.oxygen is None
    assert 6 not in cbor2.loads(cbor2.loads(data).value[2])


def test_wrong_key_is_refused_with_a_reason() -> None:
    with pytest.raises(SealError, match="signed by another key"):
        lc.verify_command(command(OTHER_SEED), ORG_PUB)
    # someone signs with their own key but claims the organisation's kid
    forged = lc.build_command(OTHER_SEED, CID, "P-1", NOW, NOW, LIMITS, "x",
                              kid=cose.key_id(ORG_PUB))
    with pytest.raises(SealError, match="signature invalid"):
        lc.verify_command(forged, ORG_PUB)
    no_kid = cose.sign1_create(ORG_SEED, cbor2.loads(GOLDEN).value[2])
    with pytest.raises(SealError, match="kid missing"):
        lc.verify_command(no_kid, ORG_PUB)


def test_unsigned_commands_are_refused() -> None:
    body = cbor2.loads(GOLDEN).value[2]
    with pytest.raises(SealError):
        lc.verify_command(body, ORG_PUB)  # the bare CBOR map
    mac = cose.mac0_create(b"\x01" * 32, body, kid=cose.key_id(ORG_PUB))
    with pytest.raises(SealError):
        lc.verify_command(mac, ORG_PUB)
    with pytest.raises(SealError):
        lc.verify_command(b"", ORG_PUB)


def test_every_tampered_byte_is_refused() -> None:
    for i in range(len(GOLDEN)):
        for flip in (0x01, 0x80):
            tampered = bytearray(GOLDEN)
            tampered[i] ^= flip
            with pytest.raises(ProtocolError):
                lc.verify_command(bytes(tampered), ORG_PUB)


def test_time_checks() -> None:
    with pytest.raises(ValidationError, match="future"):
        lc.verify_command(command(issued_at=NOW + 301), ORG_PUB, now=NOW)
    lc.verify_command(command(issued_at=NOW + 300), ORG_PUB, now=NOW)
    with pytest.raises(ValidationError, match="expired"):
        lc.verify_command(command(), ORG_PUB, now=NOW + 7 * 86400)
    with pytest.raises(ValidationError, match="after valid_from"):
        command(valid_until=NOW)


def test_replay_guard() -> None:
    guard = lc.ReplayGuard()
    first = lc.verify_command(command(), ORG_PUB)
    guard.admit(first)
    with pytest.raises(ValidationError, match="replayed"):
        guard.admit(lc.verify_command(command(), ORG_PUB))
    # same second, different id: a second, genuine command
    guard.admit(lc.verify_command(command(command_id=b"\x02" * 16), ORG_PUB))
    with pytest.raises(ValidationError, match="older"):
        guard.check(lc.verify_command(command(command_id=b"\x03" * 16, issued_at=NOW - 1),
                                      ORG_PUB))
    newer = lc.verify_command(command(command_id=CID, issued_at=NOW + 1), ORG_PUB)
    guard.admit(newer)  # the old id at a newer time is a new command
    other_patient = lc.verify_command(command(patient="P-2", issued_at=NOW - 100), ORG_PUB)
    guard.admit(other_patient)  # patients are independent
    restored = lc.ReplayGuard.from_state(cbor2.loads(cbor2.dumps(guard.to_state())))
    with pytest.raises(ValidationError, match="replayed"):
        restored.check(newer)
    with pytest.raises(ValidationError, match="older"):
        restored.check(first)
    for bad in ([], {"P": [1]}, {"P": [-1, []]}, {"P": [1, [b"short"]]}, {1: [1, []]}):
        with pytest.raises(ValidationError):
            lc.ReplayGuard.from_state(bad)


@pytest.mark.parametrize("bands, reason", [
    ([("red", 92, 80)], "low > high"),
    ([("red", None, None)], "needs a low or a high"),
    ([("red", 88, None), ("red", 90, None)], "given twice"),
    ([("blue", 88, None)], "grade must be"),
    ([("red", float("nan"), None)], "finite"),
    ([("red", True, None)], "finite"),
    ([("red", 101, None)], "outside the possible range"),
    ([("red", 95, None), ("yellow", None, 90)], "no value is inside every band"),
    ([], "1..3 bands"),
    ([("red", 88)], "grade, low, high"),
])
def test_bad_bands_are_refused(bands, reason) -> None:
    with pytest.raises(ValidationError, match=reason):
        lc.check_bands("spo2", None, bands)
    with pytest.raises(ValidationError, match=reason):
        command(limits={"spo2": (None, bands)})
    body = valid_body()
    body[7] = {"spo2": ["%", [list(b) for b in bands]]}
    with pytest.raises(ValidationError, match=reason):
        lc.verify_command(sign_body(body), ORG_PUB)


def test_unknown_quantity_and_wrong_unit_are_refused() -> None:
    with pytest.raises(ValidationError, match="unknown quantity"):
        lc.check_bands("lactate", None, [("red", 1, None)])
    with pytest.raises(ValidationError, match="not allowed"):
        lc.check_bands("spo2", "Cel", [("red", 1, None)])


@pytest.mark.parametrize("key, value, error", [
    (1, 2, VersionError), (1, "1", ValidationError), (2, b"short", ValidationError),
    (2, "text-not-bytes", ValidationError), (3, "", ValidationError), (3, 7, ValidationError),
    (4, -1, ValidationError), (4, 1.5, ValidationError), (4, True, ValidationError),
    (5, None, ValidationError), (6, NOW - 1, ValidationError), (7, [], ValidationError),
    (7, {"spo2": ["%"]}, ValidationError), (7, {3: ["%", []]}, ValidationError),
    (8, "x" * 129, ValidationError), (9, 3, ValidationError), (9, True, ValidationError),
    (10, 1, ValidationError), (11, 0, ValidationError), ("a", 0, ValidationError),
])
def test_bad_fields_are_refused(key, value, error) -> None:
    body = valid_body()
    body[key] = value
    with pytest.raises(error):
        lc.verify_command(sign_body(body), ORG_PUB)


def test_missing_fields_and_empty_commands_are_refused() -> None:
    for key in (1, 2, 3, 4, 5, 7, 8):
        body = valid_body()
        del body[key]
        with pytest.raises(ValidationError, match="missing"):
            lc.verify_command(sign_body(body), ORG_PUB)
    body = valid_body()
    body[7] = {}
    del body[9], body[10]
    with pytest.raises(ValidationError, match="must set limits"):
        lc.verify_command(sign_body(body), ORG_PUB)
    body[9] = 1  # a scale alone is a valid prescription
    assert lc.verify_command(sign_body(body), ORG_PUB).spo2_scale == 1
    with pytest.raises(ValidationError, match="map"):
        lc.verify_command(sign_body([1, 2]), ORG_PUB)
    every = {q: (None, [("red", entry["limits"][entry["units"][0]][1], None)])
             for q, entry in vitals.QUANTITIES.items()}
    assert len(lc.verify_command(command(limits=every), ORG_PUB).limits) == len(every)
    body = valid_body()
    body[7] = {f"q{i}": ["%", [["red", 1, None]]] for i in range(17)}
    with pytest.raises(ValidationError, match="at most 16"):
        lc.verify_command(sign_body(body), ORG_PUB)


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        lc.verify_command(data, ORG_PUB)


_cbor_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64),
                       st.floats(allow_nan=True), st.text(max_size=12), st.binary(max_size=40))
_cbor_value = st.recursive(_cbor_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.integers(-3, 12), st.text(max_size=6)), inner, max_size=4)),
    max_leaves=12)


@given(st.dictionaries(st.integers(1, 11), _cbor_value, max_size=11))
def test_signed_hostile_bodies_raise_only_protocol_errors(mutation: dict) -> None:
    body = valid_body()
    body.update(mutation)
    try:
        cmd = lc.verify_command(sign_body(body), ORG_PUB)
    except ProtocolError:
        return
    assert cmd.verified and isinstance(cmd.patient, str)
