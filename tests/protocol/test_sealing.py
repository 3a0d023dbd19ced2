"""Sealed batches: device seal -> gateway open, chained tags, and every refusal named."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import checkpoint, cose, crypto, sealing, senml
from protocol.errors import ProtocolError, SealError, ValidationError

KEY = bytes(range(32))
KID = b"\x01" * 8
BASE = "urn:dev:vb:ox-1:"


def _records(first_seq: int, n: int = 10) -> list[dict]:
    return [senml.make_record("hr", 60 + i, time=1_700_000_000 + i, seq=first_seq + i)
            for i in range(n)]


def test_seal_open_round_trip_and_chain() -> None:
    chain = checkpoint.HashChain(KID)
    sealed = sealing.seal_batch(KEY, KID, _records(100), BASE, chain=chain)
    opened = sealing.open_batch(KEY, KID, sealed)
    assert opened.seqs == list(range(100, 110))
    assert [r.value for r in opened.readings] == [60 + i for i in range(10)]
    assert opened.readings[0].device == BASE
    # The tag is chained once per record seq, so the checkpoint covers record seqs.
    seed = bytes(32)
    pub = crypto.ed25519_public_key(seed)
    cp = chain.checkpoint(seed, "ox-1", 1_700_000_100, cose.key_id(pub))
    verdict = checkpoint.verify_checkpoint(cp, pub, {s: opened.tag for s in opened.seqs})
    assert verdict.ok, verdict.reason


def test_missing_batch_is_a_gap_at_the_centre() -> None:
    chain = checkpoint.HashChain(KID)
    first = sealing.seal_batch(KEY, KID, _records(0, 3), BASE, chain=chain)
    sealing.seal_batch(KEY, KID, _records(3, 3), BASE, chain=chain)  # never arrives
    seed = bytes(32)
    pub = crypto.ed25519_public_key(seed)
    cp = chain.checkpoint(seed, "ox-1", 1, cose.key_id(pub))
    tag = sealing.open_batch(KEY, KID, first).tag
    verdict = checkpoint.verify_checkpoint(cp, pub, {0: tag, 1: tag, 2: tag})
    assert verdict.status == "gap"
    assert verdict.missing == [(3, 5)]


def test_wrong_key_or_kid_is_refused() -> None:
    sealed = sealing.seal_batch(KEY, KID, _records(0, 2), BASE)
    with pytest.raises(SealError, match="tag mismatch"):
        sealing.open_batch(bytes(32), KID, sealed)
    with pytest.raises(SealError):
        sealing.open_batch(KEY, b"\x02" * 8, sealed)


def test_non_consecutive_seqs_are_refused_on_both_sides() -> None:
    records = _records(0, 3)
    records[2][senml.SEQ] = 7
    with pytest.raises(ValidationError, match=r"records\[2\]\.seq"):
        sealing.seal_batch(KEY, KID, records, BASE)
    payload = senml.encode_pack(records, base_name=BASE)
    forged = cose.mac0_create(KEY, payload, kid=KID, content_type=cose.CT_SENML_CBOR)
    with pytest.raises(ValidationError, match="consecutive"):
        sealing.open_batch(KEY, KID, forged)


def test_wrong_content_type_is_refused() -> None:
    payload = senml.encode_pack(_records(0, 1), base_name=BASE)
    sealed = cose.mac0_create(KEY, payload, kid=KID, content_type=60)
    with pytest.raises(ValidationError, match="content_type"):
        sealing.open_batch(KEY, KID, sealed)


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_any_byte_change_is_refused(position: int, value: int) -> None:
    sealed = bytearray(sealing.seal_batch(KEY, KID, _records(5, 4), BASE))
    position %= len(sealed)
    if sealed[position] == value:
        value ^= 0xFF
    sealed[position] = value
    with pytest.raises(ProtocolError):
        sealing.open_batch(KEY, KID, bytes(sealed))


def test_batch_of_ten_is_small() -> None:
    sealed = sealing.seal_batch(KEY, KID, _records(1000), BASE, base_time=1_700_000_000)
    assert len(sealed) / 10 <= 48


def test_chained_tag_is_the_mac0_tag() -> None:
    chain = checkpoint.HashChain(KID)
    sealed = sealing.seal_batch(KEY, KID, _records(0, 1), BASE, chain=chain)
    expected = checkpoint.chain_step(checkpoint.chain_start(KID), cose.mac0_parse(sealed).tag)
    assert chain.head == expected
    assert sealed[-34:-32] == b"\x58\x20"
