"""Sealing on the device: SenML batches become COSE_Mac0 under the current session, their
tags extend the session's hash chain, and a signed checkpoint follows at least every 60 s
(of the injected clock) and at once after a batch holding a critical value.

Order per batch: reserve seqs (durable before use) -> seal (extends the chain) -> commit
the seqs -> outbox. A batch that fails to seal consumes no seq and leaves the chain as it
was. A new session starts a new chain; the old chain's unsigned tail is signed first so
every sealed reading stays covered by a checkpoint of the session it was sealed in.
"""

from firmware.outbox import CHECKPOINT, SEALED, Entry
from protocol import senml
from protocol.checkpoint import HashChain
from protocol.errors import ValidationError
from protocol.sealing import seal_batch

CHECKPOINT_INTERVAL = 60


class SealerError(Exception):
    """Sealing is not possible now (no session)."""


class Sealer:
    """device_id: the certificate subject; keystore: signs checkpoints; seqs: a loaded
    SeqStore; outbox: a loaded Outbox; now() -> int seconds. base_name: SenML bn."""

    def __init__(self, device_id, keystore, seqs, outbox, now, base_name=None,
                 checkpoint_interval=CHECKPOINT_INTERVAL):
        self.device_id = device_id
        self._keys = keystore
        self._seqs = seqs
        self._outbox = outbox
        self._now = now
        self.base_name = base_name or "urn:dev:vb:%s:" % device_id
        self.checkpoint_interval = checkpoint_interval
        self.session = None
        self.chain = None
        self._window_start = None  # time of the oldest tag not yet under a checkpoint
        self.checkpoints = 0

    def start_session(self, session):
        """Use a newly established protocol.session.Session -> events. The previous
        chain's unsigned tail gets its checkpoint first."""
        events = self.checkpoint() if self.chain is not None else []
        self.session = session
        self.chain = HashChain(session.session_id)
        self._window_start = None
        return events

    def end_session(self):
        """The link is gone: sign what is pending, then seal nothing until a new session."""
        events = self.checkpoint() if self.chain is not None else []
        self.session = None
        self.chain = None
        return events

    def seal(self, records, critical=False, base_time=None):
        """Seal SenML records (senml.make_record dicts; seqs are assigned here) -> events.

        critical=True: the batch holds a critical value; it is flushed to flash before this
        returns and a checkpoint is signed at once. Raises ProtocolError subclasses for
        invalid records (nothing consumed), SealerError without a session."""
        if self.session is None:
            raise SealerError("no session: establish one before sealing")
        count = len(records)
        if count == 0:
            raise ValidationError("records", "a batch needs at least one record")
        first = self._seqs.reserve(count)
        numbered = []
        for i in range(count):
            record = dict(records[i])
            record[senml.SEQ] = first + i
            numbered.append(record)
        # seal_batch validates every record before it extends the chain.
        sealed = seal_batch(self.session.device_mac_key, self.session.session_id, numbered,
                            self.base_name, base_time=base_time, chain=self.chain)
        self._seqs.commit(first, count)
        if self._window_start is None:
            self._window_start = self._now()
        events = self._outbox.put(Entry(SEALED, self.session.session_id, first,
                                        first + count - 1, sealed, critical))
        if critical:
            events.extend(self.checkpoint(critical=True))
        else:
            events.extend(self.tick())
        return events

    def due(self):
        """True when the oldest unsigned tag has waited checkpoint_interval seconds."""
        return (self._window_start is not None
                and self._now() - self._window_start >= self.checkpoint_interval)

    def tick(self):
        """Call periodically: checkpoint when due -> events."""
        if self.due():
            return self.checkpoint()
        return []

    def checkpoint(self, critical=False):
        """Sign the chain window now (if it holds any tag) and queue it -> events."""
        if self.chain is None or self.chain.count == 0:
            return []
        first = self.chain.first_seq
        last = self.chain.last_seq
        signed = self._keys.sign_checkpoint(self.chain, self.device_id, self._now())
        self._window_start = None
        self.checkpoints += 1
        return self._outbox.put(Entry(CHECKPOINT, self.chain.session_id, first, last, signed,
                                      critical))

