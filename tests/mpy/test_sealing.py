# Device-side sealing of a reading batch on MicroPython, opened again by the same module.
from protocol import checkpoint, sealing, senml
from protocol.errors import SealError

KEY = bytes(range(32))
KID = b"\x01" * 8


def _records(first, n):
    return [senml.make_record("spo2", 95 + (i % 3), time=1700000000 + i, seq=first + i)
            for i in range(n)]


def test_seal_and_open():
    chain = checkpoint.HashChain(KID)
    sealed = sealing.seal_batch(KEY, KID, _records(7, 10), "urn:dev:vb:ox-1:", chain=chain)
    opened = sealing.open_batch(KEY, KID, sealed)
    assert opened.seqs == list(range(7, 17))
    assert chain.count == 10 and chain.last_seq == 16
    assert len(sealed) <= 480


def test_tamper_refused():
    sealed = bytearray(sealing.seal_batch(KEY, KID, _records(0, 2), "urn:dev:vb:ox-1:"))
    sealed[-1] ^= 1
    try:
        sealing.open_batch(KEY, KID, bytes(sealed))
    except SealError:
        return
    raise AssertionError("tampered batch accepted")
