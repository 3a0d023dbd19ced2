# protocol.reseal on MicroPython: statements round-trip and refuse tampering.
from protocol import crypto, reseal
from protocol.errors import ProtocolError, ValidationError

SEED = bytes(range(32))


def test_round_trip():
    public = crypto.ed25519_public_key(SEED)
    st = reseal.create(SEED, "gw-1", "eventlog-checkpoint", b"orig", b"12345678", "valid",
                       1700000000)
    found = reseal.verify(public, st, b"orig", "gw-1")
    assert found.verdict == "valid" and found.time == 1700000000
    assert found.original_kid == b"12345678" and found.digest == crypto.sha256(b"orig")


def test_tampering_refused():
    public = crypto.ed25519_public_key(SEED)
    st = reseal.create(SEED, "gw-1", "journal-seal", b"orig", b"k", "invalid", 1)
    try:
        reseal.verify(public, st, b"changed")
        raise AssertionError("altered original accepted")
    except ValidationError:
        pass
    bad = bytearray(st)
    bad[-1] ^= 1
    try:
        reseal.verify(public, bytes(bad))
        raise AssertionError("bad signature accepted")
    except ProtocolError:
        pass
