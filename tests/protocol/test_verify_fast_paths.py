"""The verification fast paths against the general code they shortcut (the oracle).

Each fast path returns None on anything it does not recognise and the general code then
decides, so the property is: on any input, genuine, mutated or random, the public function
gives the same answer (value, types, or error class, field and message) with the fast path
as without it. Covered: senml `_decode_wire` (SenML pack bytes -> Readings), cose
`_mac0_common` (the sealed-batch COSE_Mac0), `cbor.scalar_at` (one item), the parse-once
`mac0_verify_parsed` / `sealing.open_parsed`, and the CPython keyed HMAC.
"""

import hmac

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import cbor, cose, crypto, sealing, senml, vitals
from protocol.errors import ProtocolError, ValidationError

KEY = bytes(range(32))
KID = b"\x07" * 8
T0 = 1_767_225_600

QUANTITIES = sorted(name for name in vitals.QUANTITIES if ":" not in name)


# ---------------------------------------------------------------- strategies


@st.composite
def plain_records(draw: st.DrawFn) -> list[dict]:
    """Records as a device makes them (mostly valid; values may leave the range)."""
    count = draw(st.integers(1, 12))
    first = draw(st.integers(0, (1 << 32) - 20))
    timed = draw(st.integers(0, 3)) > 0  # untimed packs are relative: the general path
    records = []
    for i in range(count):
        quantity = draw(st.sampled_from(QUANTITIES))
        entry = vitals.QUANTITIES[quantity]
        unit = draw(st.sampled_from(entry["units"]))
        low, high = entry["limits"][unit][0], entry["limits"][unit][1]
        value = draw(st.integers(int(low), int(high)) if draw(st.integers(0, 3)) else
                     st.one_of(st.floats(low, high, allow_nan=False),
                               st.floats(allow_nan=True, allow_infinity=True)))
        extras = {}
        if draw(st.integers(0, 5)) == 0:
            extras["ut"] = draw(st.integers(0, 100_000))
        if draw(st.integers(0, 8)) == 0:
            extras["s"] = draw(st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6)))
        time = draw(st.one_of(st.integers(T0 - 10**6, T0 + 10**6),
                              st.floats(T0 - 1000, T0 + 1000))) if timed else None
        records.append(senml.make_record(quantity, value, unit, time, first + i, **extras))
    return records


@st.composite
def packs(draw: st.DrawFn) -> bytes:
    """Genuine pack bytes (the fast path's shape), then often one hostile edit."""
    records = draw(plain_records())
    base = draw(st.sampled_from(["urn:dev:vb:ox-1:", "", "urn:dev:vb:SN-9:", "bad name:"]))
    try:
        data = senml.encode_pack(records, base_name=base)
    except (ValidationError, ValueError):
        data = cbor2.dumps([dict(r) for r in records], canonical=True)
    return draw(mutated(data))


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    edit = draw(st.integers(-6, 6))
    if edit <= 0 or not data:  # half of them unedited
        return data
    at = draw(st.integers(0, len(data) - 1))
    if edit == 1:  # flip bits of one byte
        return data[:at] + bytes((data[at] ^ draw(st.integers(1, 255)),)) + data[at + 1:]
    if edit == 2:  # truncate
        return data[:at]
    if edit == 3:  # insert
        return data[:at] + draw(st.binary(min_size=1, max_size=3)) + data[at:]
    if edit == 4:  # drop a byte
        return data[:at] + data[at + 1:]
    if edit == 5:  # trailing bytes
        return data + draw(st.binary(min_size=1, max_size=3))
    return data[:at] + bytes((draw(st.sampled_from(INTERESTING)),)) + data[at + 1:]


# Heads that change an item's kind or size: maps, arrays, null, bools, floats, 0x19/0x1a,
# indefinite lengths, tags, duplicate-key candidates, bn/bt/unknown labels.
INTERESTING = [0x00, 0x02, 0x03, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1F, 0x20, 0x21,
               0x22, 0x23, 0x38, 0x40, 0x5F, 0x60, 0x78, 0x7F, 0x80, 0x98, 0x9F, 0xA0, 0xB7,
               0xB8, 0xBF, 0xC1, 0xF4, 0xF5, 0xF6, 0xF7, 0xF9, 0xFA, 0xFB, 0xFF]


# ---------------------------------------------------------------- helpers


def outcome(call, *args, **kwargs) -> tuple:
    """A comparable result: readings with the types of their numbers, or the error."""
    try:
        result = call(*args, **kwargs)
    except ProtocolError as exc:
        return ("error", type(exc).__name__, getattr(exc, "field", None), str(exc))
    if isinstance(result, list):
        return ("readings", [(type(r.value), type(r.time), r.as_dict(),
                              sorted((k, type(v)) for k, v in r.extras.items()))
                             for r in result])
    return ("value", result)


def general_decode_pack(data: bytes, max_records: int, now: int | None) -> list:
    """decode_pack with the wire fast path switched off: the oracle."""
    saved = senml._decode_wire
    senml._decode_wire = lambda *args: None
    try:
        return senml.decode_pack(data, max_records=max_records, now=now)
    finally:
        senml._decode_wire = saved


def check_pack(data: bytes, max_records: int = 64, now: int | None = T0) -> bool:
    """decode_pack equals the general path on `data`; -> whether the fast path took it."""
    fast = senml._decode_wire(data, max_records)
    expected = outcome(general_decode_pack, data, max_records, now)
    assert outcome(senml.decode_pack, data, max_records=max_records, now=now) == expected
    if fast is not None:
        assert expected[0] == "readings"
        assert outcome(lambda: fast) == expected
    return fast is not None


# ---------------------------------------------------------------- senml


def test_wire_path_takes_the_packs_devices_send() -> None:
    records = [senml.make_record("spo2" if i % 2 else "pr", 70 + i, time=T0 + i // 2,
                                 seq=70_000 + i) for i in range(10)]
    data = senml.encode_pack(records, base_name="urn:dev:vb:ox-1:")
    assert check_pack(data)
    readings = senml.decode_pack(data, max_records=64)
    assert [(r.quantity, r.value, r.time, r.seq) for r in readings] == [
        (r[senml.N], r[senml.V], r[senml.T], r[senml.SEQ]) for r in records]


@pytest.mark.parametrize("data", [
    bytes.fromhex("81a3006268720218480015"),          # seq key with its value missing
    bytes.fromhex("81a4006268720218480207150700"),    # v twice
    bytes.fromhex("81a3020700626872150700"),          # keys out of canonical order
    bytes.fromhex("81a30062687202f61507"),            # null value
    bytes.fromhex("81a300626872021848151907"),        # truncated 2-byte seq
    bytes.fromhex("81a3006268720218481507ff"),        # trailing byte
    bytes.fromhex("81a30062ff72021848150700"),        # invalid UTF-8 name
    bytes.fromhex("82a3006268720218481507"),          # declares two records, holds one
    bytes.fromhex("9f a3006268720218481507 ff".replace(" ", "")),  # indefinite array
])
def test_wire_path_leaves_hostile_shapes_to_the_general_path(data: bytes) -> None:
    assert senml._decode_wire(data, 64) is None
    check_pack(data)


def test_wire_path_respects_max_records_and_size() -> None:
    records = [senml.make_record("hr", 60, time=T0, seq=i) for i in range(5)]
    data = senml.encode_pack(records)
    assert senml._decode_wire(data, 4) is None
    check_pack(data, max_records=4)
    assert senml._decode_wire(bytearray(data), 64) is None  # bytes only
    assert senml._decode_wire(b"\x81" + b"\x00" * cbor.MAX_SIZE, 64) is None


@settings(max_examples=300, deadline=None)
@given(packs())
def test_decode_pack_equals_the_general_path(data: bytes) -> None:
    check_pack(data)
    check_pack(data, max_records=3, now=None)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80), st.sampled_from([0x81, 0x82, 0x8A, 0x98]))
def test_decode_pack_equals_the_general_path_on_random_bytes(tail: bytes, head: int) -> None:
    check_pack(bytes((head,)) + tail)
    check_pack(bytes((head, 0xA3)) + tail)


# ---------------------------------------------------------------- cbor.scalar_at


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.integers(-(1 << 64), (1 << 64) - 1), st.floats(), st.text(max_size=40)),
       st.binary(max_size=3))
def test_scalar_at_reads_what_loads_reads(value: object, tail: bytes) -> None:
    for data in (cbor.dumps(value), cbor2.dumps(value)):  # shortest and cbor2's forms
        found = cbor.scalar_at(data + tail, 0)
        assert found is not None and found[1] == len(data)
        expected = cbor.loads(data)
        assert type(found[0]) is type(expected)
        assert found[0] == expected or (found[0] != found[0] and expected != expected)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=12))
def test_scalar_at_on_hostile_bytes_agrees_with_loads(data: bytes) -> None:
    found = cbor.scalar_at(data, 0)
    if found is None:
        return  # not a complete int/float/text item: the caller falls back to loads
    value, end = found
    expected = cbor.loads(data[:end])
    assert type(value) is type(expected) and type(value) in (int, float, str)
    assert value == expected or (value != value and expected != expected)


# ---------------------------------------------------------------- cose


def general_parse(data: object) -> cose.Mac0:
    return cose._parse(data, cose.TAG_MAC0, cose.ALG_HMAC_256_256, cose.MAC_TAG_SIZE, 65536,
                       cose.Mac0)


def parsed(call, *args) -> tuple:
    try:
        msg = call(*args)
    except ProtocolError as exc:
        return ("error", type(exc).__name__, str(exc))
    return ("mac0", {k: (type(v), v) for k, v in vars(msg).items()})


@st.composite
def mac0s(draw: st.DrawFn) -> bytes:
    payload = draw(st.binary(max_size=300))
    common = draw(st.booleans())  # the sealed-batch shape, or anything mac0_create makes
    kid = draw(st.binary(min_size=1, max_size=23) if common else
               st.one_of(st.binary(max_size=30), st.none()))
    content_type = 112 if common else draw(st.sampled_from([112, 111, None, "text/plain"]))
    data = cose.mac0_create(KEY, payload, kid=kid, content_type=content_type,
                            tagged=common or draw(st.booleans()))
    return draw(mutated(data))


@settings(max_examples=300, deadline=None)
@given(mac0s())
def test_mac0_parse_equals_the_general_parse(data: bytes) -> None:
    assert parsed(cose.mac0_parse, data) == parsed(general_parse, data)
    fast = cose._mac0_common(data, 65536)
    if fast is not None:
        assert parsed(lambda: fast) == parsed(general_parse, data)
    assert cose._mac0_common(data, len(data) - 1) is None  # max_size is the general's


def test_mac0_fast_path_takes_a_sealed_batch() -> None:
    records = [senml.make_record("hr", 60, time=T0, seq=i) for i in range(10)]
    sealed = sealing.seal_batch(KEY, KID, records, "urn:dev:vb:ox-1:")
    assert cose._mac0_common(sealed, 65536) is not None
    assert parsed(cose.mac0_parse, sealed) == parsed(general_parse, sealed)
    assert cose._mac0_common(bytearray(sealed), 65536) is None


@settings(max_examples=200, deadline=None)
@given(mac0s(), st.sampled_from([KID, b"\x08" * 8, None]), st.sampled_from([KEY, bytes(32)]))
def test_verify_parsed_equals_verify(data: bytes, kid: bytes | None, key: bytes) -> None:
    def via_parse() -> cose.Mac0:
        return cose.mac0_verify_parsed(key, cose.mac0_parse(data), kid=kid)

    assert parsed(via_parse) == parsed(cose.mac0_verify, key, data, b"", kid)
    try:
        opened = sealing.open_parsed(KEY, kid, cose.mac0_parse(data), now=T0)
    except ProtocolError as exc:
        with pytest.raises(type(exc), match="^" + __import__("re").escape(str(exc)) + "$"):
            sealing.open_batch(KEY, kid, data, now=T0)
    else:
        again = sealing.open_batch(KEY, kid, data, now=T0)
        assert (opened.readings, opened.tag, opened.kid, opened.seqs) == (
            again.readings, again.tag, again.kid, again.seqs)


def test_verify_parsed_refuses_a_message_verified_already() -> None:
    sealed = cose.mac0_create(KEY, b"x", kid=KID, content_type=112)
    msg = cose.mac0_verify(KEY, sealed, kid=KID)
    with pytest.raises(ValidationError):
        cose.mac0_verify_parsed(KEY, msg, kid=KID)
    with pytest.raises(ValidationError):
        cose.mac0_verify_parsed(KEY, object(), kid=KID)


# ---------------------------------------------------------------- crypto


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=70), st.binary(max_size=300), st.binary(max_size=40))
def test_keyed_hmac_equals_one_shot_hmac(key: bytes, data: bytes, more: bytes) -> None:
    keyed = crypto.hmac_key(key)
    for _ in range(2):  # the keyed state is copied, never consumed
        assert keyed.digest(bytearray(data), more) == hmac.digest(key, data + more, "sha256")
