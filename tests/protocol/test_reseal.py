"""protocol.reseal: statements round-trip, bind the original's digest, and decoding hostile
input raises only ProtocolError subclasses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import cbor, cose, crypto, reseal
from protocol.errors import ProtocolError, SealError, ValidationError, VersionError

SEED = bytes(range(32))
PUBLIC = crypto.ed25519_public_key(SEED)
OTHER = crypto.ed25519_public_key(bytes(32))


@given(st.sampled_from(reseal.KINDS), st.binary(max_size=300), st.binary(min_size=1, max_size=16),
       st.sampled_from(reseal.VERDICTS), st.integers(0, reseal.MAX_TIME - 1))
def test_round_trip_binds_digest_kid_verdict_and_time(kind: str, original: bytes, kid: bytes,
                                                      verdict: str, time: int) -> None:
    statement = reseal.create(SEED, "gw-1", kind, original, kid, verdict, time)
    found = reseal.verify(PUBLIC, statement, original, "gw-1")
    assert (found.kind, found.original_kid, found.verdict, found.time) == (kind, kid, verdict,
                                                                           time)
    assert found.digest == crypto.sha256(original) and found.signer_kid == cose.key_id(PUBLIC)
    assert reseal.signer_kid(statement) == cose.key_id(PUBLIC)
    with pytest.raises(ValidationError):
        reseal.verify(PUBLIC, statement, original + b"x")


def test_wrong_key_gateway_or_aad_is_refused() -> None:
    statement = reseal.create(SEED, "gw-1", "journal-seal", b"abc", b"k" * 8, "valid", 5)
    with pytest.raises(SealError):
        reseal.verify(OTHER, statement)
    with pytest.raises(ValidationError):
        reseal.verify(PUBLIC, statement, gateway="gw-2")
    # the same payload signed for another purpose (other external AAD) is not a statement
    payload = reseal.encode_body("gw-1", "journal-seal", crypto.sha256(b"abc"), b"k" * 8,
                                 "valid", 5)
    foreign = cose.sign1_create(SEED, payload, kid=cose.key_id(PUBLIC), external_aad=b"other")
    with pytest.raises(SealError):
        reseal.verify(PUBLIC, foreign)


@pytest.mark.parametrize("body", [
    {0: 2, 1: "gw", 2: "journal-seal", 3: bytes(32), 4: b"k", 5: "valid", 6: 1},
    {0: 1, 1: "gw", 2: "other", 3: bytes(32), 4: b"k", 5: "valid", 6: 1},
    {0: 1, 1: "gw", 2: "journal-seal", 3: bytes(31), 4: b"k", 5: "valid", 6: 1},
    {0: 1, 1: "gw", 2: "journal-seal", 3: bytes(32), 4: b"", 5: "valid", 6: 1},
    {0: 1, 1: "gw", 2: "journal-seal", 3: bytes(32), 4: b"k", 5: "maybe", 6: 1},
    {0: 1, 1: "gw", 2: "journal-seal", 3: bytes(32), 4: b"k", 5: "valid", 6: -1},
    {0: 1, 1: "gw", 2: "journal-seal", 3: bytes(32), 4: b"k", 5: "valid", 6: True},
    {0: 1, 1: "gw", 2: "journal-seal", 3: bytes(32), 4: b"k", 5: "valid"},
    {0: 1, 1: "gw", 2: "journal-seal", 3: bytes(32), 4: b"k", 5: "valid", 6: 1, 7: 0},
    [1, 2, 3],
])
def test_malformed_bodies_are_refused(body: object) -> None:
    with pytest.raises((ValidationError, VersionError)):
        reseal.decode_body(cbor.dumps(body))


@given(st.binary(max_size=200))
def test_decoding_garbage_raises_only_protocol_errors(data: bytes) -> None:
    for call in (lambda: reseal.decode_body(data), lambda: reseal.verify(PUBLIC, data),
                 lambda: reseal.signer_kid(data)):
        try:
            call()
        except ProtocolError:
            pass
