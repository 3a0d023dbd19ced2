"""Per-device sequence numbers that survive power loss and are never reused.

Seqs are handed out from a reserved block: before the first seq of a block leaves this
module, `reserved` = next + BLOCK is written atomically to flash (one write per block, to
spare the flash). After a reboot numbering resumes at the persisted reservation, so the
unused rest of the last block becomes a gap; a seq that may have been used is never issued
again. Gaps are normal (the gateway reports them); reuse would let a replay pass as new.

A reservation file that exists but cannot be read (no valid copy) blocks the store: it
cannot know where numbering stopped. It then issues nothing until set_floor() gives a
floor from outside (the gateway's highest seen seq, via the "seq-floor" command).

File: a fileio record holding the CBOR map {0: 1, 1: reserved}. Runs on MicroPython.
"""

from firmware import fileio
from protocol import cbor
from protocol.senml import SEQ_LIMIT

FILE_VERSION = 1
DEFAULT_BLOCK = 64

NEW = "new"
RESUMED = "resumed"
BLOCKED = "blocked"


class SeqStoreError(Exception):
    """No seq can be issued (store blocked, exhausted, or misused)."""


class SeqStore:
    """Sequence numbers persisted in the file `path`; `block` seqs per flash write."""

    def __init__(self, path, block=DEFAULT_BLOCK, limit=SEQ_LIMIT):
        if block < 1:
            raise ValueError("block must be >= 1")
        self.path = path
        self.block = block
        self.limit = limit
        self._next = 0
        self._reserved = 0
        self.state = None
        self.writes = 0

    def load(self):
        """Read the reservation -> "new" (no file), "resumed" or "blocked"."""
        payload, where = fileio.read_record(self.path)
        reserved = _decode(payload)
        if reserved is not None:
            self._next = self._reserved = reserved
            self.state = RESUMED
        elif where == fileio.MISSING:
            self._next = self._reserved = 0
            self.state = NEW
        else:
            self.state = BLOCKED
        return self.state

    @property
    def next(self):
        """The seq the next reserve() would return (not reserved by reading it)."""
        return self._next

    def _persist(self, reserved):
        fileio.write_record(self.path, cbor.dumps({0: FILE_VERSION, 1: reserved}))
        self.writes += 1
        self._reserved = reserved

    def reserve(self, count=1):
        """First of `count` consecutive seqs, durably reserved but not yet consumed: a
        failed seal can leave them unused and the next reserve() returns them again.
        Consume them with commit(first, count)."""
        if self.state is None:
            raise SeqStoreError("load() first")
        if self.state == BLOCKED:
            raise SeqStoreError("sequence store unreadable: waiting for a seq floor")
        if count < 1:
            raise SeqStoreError("count must be >= 1")
        end = self._next + count
        if end > self.limit:
            raise SeqStoreError("sequence numbers exhausted")
        if end > self._reserved:
            # The write must be durable before any seq of it leaves; one write covers
            # the next `block` seqs.
            self._persist(min(self._next + max(count, self.block), self.limit))
        return self._next

    def commit(self, first, count=1):
        """Consume the seqs reserve() returned."""
        if first != self._next or first + count > self._reserved:
            raise SeqStoreError("commit of %d+%d does not follow the reservation" % (first, count))
        self._next = first + count

    def take(self, count=1):
        """reserve() and commit() in one: the first of `count` consumed seqs."""
        first = self.reserve(count)
        self.commit(first, count)
        return first

    def set_floor(self, floor):
        """Never issue a seq below `floor` again (unblocks a blocked store)."""
        if not isinstance(floor, int) or floor < 0 or floor >= self.limit:
            raise SeqStoreError("floor out of range")
        start = max(floor, self._next)
        self._persist(start)
        self._next = start
        self.state = RESUMED


def _decode(payload):
    if payload is None:
        return None
    try:
        m = cbor.loads(payload)
    except ValueError:
        return None
    if not isinstance(m, dict) or m.get(0) != FILE_VERSION:
        return None
    reserved = m.get(1)
    if not isinstance(reserved, int) or isinstance(reserved, bool) or reserved < 0:
        return None
    return reserved
