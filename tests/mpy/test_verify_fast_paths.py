# The verification fast paths on MicroPython, against the general code (the oracle):
# senml._decode_wire, cose._mac0_common, cbor.scalar_at. CPython side, with hypothesis:
# tests/protocol/test_verify_fast_paths.py. Here: genuine inputs and every one-byte edit
# of them (flip, truncate, drop, interesting head bytes), deterministic.
from protocol import cbor, cose, senml
from protocol.errors import ProtocolError

T0 = 1767225600
KEY = bytes(range(32))
KID = b"\x07" * 8
HEADS = (0x00, 0x02, 0x15, 0x18, 0x19, 0x1A, 0x1F, 0x21, 0x22, 0x40, 0x60, 0x78, 0x80,
         0x98, 0xA0, 0xB8, 0xF6, 0xF9, 0xFA, 0xFB, 0xFF)


def _pack():
    records = []
    for i in range(6):
        quantity = "spo2" if i % 2 else "pr"
        records.append(senml.make_record(quantity, 70 + i, time=T0 + i // 2, seq=300 + i))
    records.append(senml.make_record("temp", 36.6, time=T0 + 3, seq=306, ut=60))
    return senml.encode_pack(records, base_name="urn:dev:vb:ox-1:")


def _outcome(fn, *args):
    try:
        result = fn(*args)
    except ProtocolError as exc:
        return ("error", type(exc).__name__, str(exc))
    return ("ok", [(type(r.value), type(r.time), r.as_dict()) for r in result])


def _general(data, max_records):
    saved = senml._decode_wire
    senml._decode_wire = lambda *args: None
    try:
        return senml.decode_pack(data, max_records, T0)
    finally:
        senml._decode_wire = saved


def _edits(data):
    yield data
    for at in range(len(data)):
        yield data[:at]
        yield data[:at] + data[at + 1:]
        yield data[:at] + bytes((data[at] ^ 0x01,)) + data[at + 1:]
        for head in HEADS:
            yield data[:at] + bytes((head,)) + data[at + 1:]


def test_decode_pack_fast_path_equals_general_path():
    taken = 0
    for data in _edits(_pack()):
        for max_records in (64, 3):
            expected = _outcome(_general, data, max_records)
            assert _outcome(senml.decode_pack, data, max_records, T0) == expected
            fast = senml._decode_wire(data, max_records)
            if fast is not None:
                taken += 1
                assert _outcome(lambda result=fast: result) == expected
    assert taken > 0


def _parsed(fn, *args):
    try:
        msg = fn(*args)
    except ProtocolError as exc:
        return ("error", type(exc).__name__, str(exc))
    return ("ok", msg.structure, msg.tagged, msg.protected_bytes, msg.protected,
            msg.unprotected, msg.payload, msg.tag, msg.verified)


def test_mac0_parse_fast_path_equals_general_parse():
    sealed = cose.mac0_create(KEY, _pack(), kid=KID, content_type=cose.CT_SENML_CBOR)
    assert cose._mac0_common(sealed, 65536) is not None
    for data in _edits(sealed[:40] + sealed[-36:]):  # edits of a short message's shape
        general = _parsed(cose._parse, data, cose.TAG_MAC0, cose.ALG_HMAC_256_256,
                          cose.MAC_TAG_SIZE, 65536, cose.Mac0)
        assert _parsed(cose.mac0_parse, data) == general


def test_scalar_at_reads_what_loads_reads():
    for value in (0, 23, 24, 255, 256, 65535, 65536, 2**32, 2**64 - 1, -1, -25, -2**64,
                  1.5, -0.0, 1e300, 3.4028234663852886e38, "", "hr", "é" * 30):
        data = cbor.dumps(value)
        found = cbor.scalar_at(data + b"\x00", 0)
        assert found is not None and found[1] == len(data)
        assert type(found[0]) is type(value) and found[0] == value
    for data in (b"\x19\x01", b"\x62\xff\xfe", b"\xf6", b"\x9f", b"\x1c", b"\x7f"):
        assert cbor.scalar_at(data, 0) is None
