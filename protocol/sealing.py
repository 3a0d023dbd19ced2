"""Sealed reading batches: a SenML pack inside a COSE_Mac0 under the session's device key.

This composes senml, cose and checkpoint into the one operation each side needs:
the device seals a batch and chains its tag; the gateway (and the centre) open it.

A batch carries records with consecutive sequence numbers, and its MAC tag is chained once
per record seq it carries. So the checkpoint's hash chain runs over record seqs, a gap in
the chain names exactly the readings missing, and a thinned batch shows up as a gap rather
than disappearing silently.
"""

from protocol import cose, senml
from protocol.errors import ValidationError

MAX_BATCH = 64


def seal_batch(mac_key, kid, records, base_name, base_time=None, chain=None):
    """Records (senml.make_record dicts with seq) -> COSE_Mac0 bytes; extends `chain`
    (a checkpoint.HashChain) with the tag once per record seq when given."""
    seqs = _consecutive_seqs([r.get(senml.SEQ) for r in records])
    payload = senml.encode_pack(records, base_name=base_name, base_time=base_time)
    sealed = cose.mac0_create(mac_key, payload, kid=kid, content_type=cose.CT_SENML_CBOR)
    if chain is not None:
        # Our own COSE_Mac0 ends with its tag as a 32-byte bstr (0x58 0x20 + tag): read it
        # there instead of decoding the whole message again (a third of the seal cost on
        # MicroPython).
        tag = sealed[-cose.MAC_TAG_SIZE:]
        for seq in seqs:
            chain.extend(seq, tag)
    return sealed


class OpenedBatch:
    """A verified batch: its readings (senml.Reading), MAC tag and the seqs it carries."""

    def __init__(self, readings, tag, kid, seqs=None):
        self.readings = readings
        self.tag = tag
        self.kid = kid
        self.seqs = [r.seq for r in readings] if seqs is None else seqs

    @property
    def first_seq(self):
        return self.seqs[0]

    @property
    def last_seq(self):
        return self.seqs[-1]


def open_batch(mac_key, kid, data, now=None):
    """Verify and decode a sealed batch. Raises SealError (seal), DecodeError or
    ValidationError (content), each naming what was wrong."""
    return _opened(cose.mac0_verify(mac_key, data, kid=kid), now)


def open_parsed(mac_key, kid, msg, now=None):
    """`open_batch` for a COSE_Mac0 that `cose.mac0_parse` already returned (the gateway
    parses a batch once to find its session by kid): same checks, same errors."""
    return _opened(cose.mac0_verify_parsed(mac_key, msg, kid=kid), now)


def _opened(msg, now):
    if msg.content_type != cose.CT_SENML_CBOR:
        raise ValidationError("content_type", "expected %d (SenML CBOR), got %r"
                              % (cose.CT_SENML_CBOR, msg.content_type))
    readings = senml.decode_pack(msg.payload, max_records=MAX_BATCH, now=now)
    seqs = _consecutive_seqs([r.seq for r in readings])
    return OpenedBatch(readings, msg.tag, msg.kid, seqs)


def _consecutive_seqs(seqs):
    if not seqs:
        raise ValidationError("records", "a batch needs at least one record")
    if len(seqs) > MAX_BATCH:
        raise ValidationError("records", "more than %d records in one batch" % MAX_BATCH)
    for i in range(len(seqs)):
        seq = seqs[i]
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise ValidationError("records[%d].seq" % i, "missing or not an integer")
        if i and seq != seqs[i - 1] + 1:
            raise ValidationError("records[%d].seq" % i,
                                  "%d does not follow %d: seqs in a batch are consecutive"
                                  % (seq, seqs[i - 1]))
    return seqs
