"""Device outbox: sealed messages wait in a flash ring of segment files until the gateway
acknowledges them; they survive reboots and link loss. docs/firmware-identity.md has the
trade-offs; in short:

* Writes are batched: entries collect in RAM and go to flash every `flush_count` entries,
  `flush_bytes` bytes or `flush_age` seconds, and at once for a critical entry (put()
  returns only after it is synced). A power cut loses at most the unflushed routine
  entries, never a critical one. Entries acknowledged while still in RAM never touch flash.
* Capacity is `segments * segment_size` bytes. When a flush would pass it, acknowledged
  entries are dropped first, then routine sealed entries are thinned oldest segment first
  (reported as "thinned" events so the gateway can tell thinned from lost). Critical
  entries and checkpoints are never thinned; they may use one extra segment of reserve,
  and past that put() raises OutboxFull (the caller raises a local technical alarm).
* Each record carries a CRC: a torn append (power cut mid-write) or a flipped bit loses
  only the records it touches; scan() resynchronises on the next valid record.
* Order: entries are kept in key order (last seq, kind); replay after a (re)connection
  yields every unacknowledged entry in that order. RAM holds a summary per segment and
  reads one segment at a time.

Record: u16 magic 0x5AA5 | u8 kind | u8 flags | u16 length | session id (8) | u32 first
seq | u32 last seq | payload | u32 CRC-32 of everything before it (little endian).

The policy runs against a segment store object: FlashSegments (files) on the device,
MemorySegments in the simulator and the CPython model tests. Runs on MicroPython.
"""

import os
import struct

from firmware import fileio
from protocol import cbor
from protocol.device_link import normalise_ranges
from protocol.frames import crc32

SEALED = 0
CHECKPOINT = 1
KINDS = (SEALED, CHECKPOINT)
FLAG_CRITICAL = 1

_MAGIC = 0x5AA5
_MAGIC_BYTES = b"\xa5\x5a"
_HEADER = "<HBBH8sII"
_HEADER_SIZE = 22
_CRC_SIZE = 4
OVERHEAD = _HEADER_SIZE + _CRC_SIZE
MAX_PAYLOAD = 4096
SESSION_ID_SIZE = 8


class OutboxFull(Exception):
    """No room even in the reserve for critical entries. They wait in RAM, up to twice
    `max_buffer` entries; past that the new entry is refused and named in `refused` (the
    caller reports its seqs as lost). `events` holds the events of the failed call."""

    def __init__(self, message, events, refused=None):
        super().__init__(message)
        self.events = events
        self.refused = refused


class Entry:
    """One stored message: a sealed batch (seqs first..last) or a checkpoint over them."""

    def __init__(self, kind, session, first, last, data, critical=False):
        if kind not in KINDS:
            raise ValueError("unknown kind %r" % (kind,))
        if len(session) != SESSION_ID_SIZE or not 0 <= first <= last < (1 << 32):
            raise ValueError("bad session id or seq range")
        if len(data) > MAX_PAYLOAD:
            raise ValueError("payload larger than %d bytes" % MAX_PAYLOAD)
        self.kind = kind
        self.session = bytes(session)
        self.first = first
        self.last = last
        self.data = bytes(data)
        self.critical = bool(critical)

    @property
    def key(self):
        """Total order of the outbox: seqs only grow, and a checkpoint follows its batch."""
        return (self.last, self.kind)

    @property
    def keep(self):
        """Never thinned: critical readings and checkpoints (device provenance)."""
        return self.critical or self.kind == CHECKPOINT

    @property
    def size(self):
        return OVERHEAD + len(self.data)

    def __eq__(self, other):
        return (isinstance(other, Entry) and self.key == other.key and self.kind == other.kind
                and self.session == other.session and self.first == other.first
                and self.data == other.data and self.critical == other.critical)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "<Entry %s %d..%d%s>" % ("checkpoint" if self.kind else "sealed", self.first,
                                        self.last, " critical" if self.critical else "")


# ---------------------------------------------------------------- record codec (pure)


def encode_entry(entry):
    body = struct.pack(_HEADER, _MAGIC, entry.kind, FLAG_CRITICAL if entry.critical else 0,
                       len(entry.data), entry.session, entry.first, entry.last) + entry.data
    return body + struct.pack("<I", crc32(body))


def _entry_at(data, pos):
    """(Entry, size) if a valid record starts at pos, else (None, 0)."""
    if len(data) - pos < OVERHEAD:
        return None, 0
    magic, kind, flags, length, session, first, last = struct.unpack(
        _HEADER, data[pos:pos + _HEADER_SIZE])
    end = pos + _HEADER_SIZE + length
    if (magic != _MAGIC or kind not in KINDS or flags & ~FLAG_CRITICAL or length > MAX_PAYLOAD
            or end + _CRC_SIZE > len(data) or last < first):
        return None, 0
    if struct.unpack("<I", data[end:end + _CRC_SIZE])[0] != crc32(data[pos:end]):
        return None, 0
    entry = Entry(kind, session, first, last, data[pos + _HEADER_SIZE:end],
                  flags & FLAG_CRITICAL)
    return entry, end + _CRC_SIZE - pos


def scan(data):
    """Every valid record in a segment's bytes -> (entries, bytes skipped as corrupt)."""
    entries = []
    skipped = 0
    pos = 0
    while pos < len(data):
        entry, size = _entry_at(data, pos)
        if entry is not None:
            entries.append(entry)
            pos += size
            continue
        nxt = data.find(_MAGIC_BYTES, pos + 1)
        if nxt < 0:
            nxt = len(data)
        skipped += nxt - pos
        pos = nxt
    return entries, skipped


# ---------------------------------------------------------------- acknowledgements (pure)


class AckState:
    """What the gateway acknowledged, per session: upto, selective ranges, checkpoints upto.

    Bounded: at most `max_sessions` sessions and `max_ranges` ranges each. Forgetting an
    acknowledgement only causes a resend (the gateway drops duplicates), never a loss.
    """

    def __init__(self, max_sessions=8, max_ranges=32):
        self.max_sessions = max_sessions
        self.max_ranges = max_ranges
        self.sessions = []  # [session, upto (-1: none), ranges, checkpoints upto (-1)]

    def _find(self, session):
        for item in self.sessions:
            if item[0] == session:
                return item
        return None

    def apply(self, ack):
        """Merge a protocol.device_link.Ack."""
        item = self._find(ack.session_id)
        if item is None:
            item = [ack.session_id, -1, [], -1]
            self.sessions.append(item)
            if len(self.sessions) > self.max_sessions:
                self.sessions.pop(0)
        if ack.upto is not None and ack.upto > item[1]:
            item[1] = ack.upto
        if ack.checkpoints_upto is not None and ack.checkpoints_upto > item[3]:
            item[3] = ack.checkpoints_upto
        ranges = []
        for first, last in normalise_ranges(item[2] + list(ack.ranges)):
            if last > item[1]:
                ranges.append((max(first, item[1] + 1), last))
        item[2] = ranges[-self.max_ranges:]

    def covers(self, entry):
        item = self._find(entry.session)
        if item is None:
            return False
        if entry.kind == CHECKPOINT:
            return entry.last <= item[3]
        # Seqs up to the watermark are acknowledged; the rest of the entry must lie in one
        # range (apply() trims ranges to start after the watermark, so an entry straddling
        # both is covered by the watermark for its head and a range for its tail).
        start = entry.first if entry.first > item[1] else item[1] + 1
        if start > entry.last:
            return True
        for first, last in item[2]:
            if first <= start and entry.last <= last:
                return True
        return False

    def covers_all(self, sessions):
        """Cheap whole-segment test from its summary {session: [sealed max, checkpoint max]}
        (watermarks only; entries acked by ranges are found when a segment is read)."""
        for session in sessions:
            item = self._find(session)
            sealed_max, checkpoint_max = sessions[session]
            if item is None or sealed_max > item[1] or checkpoint_max > item[3]:
                return False
        return True

    def prune(self, live_sessions):
        """Forget sessions no stored entry belongs to any more."""
        self.sessions = [item for item in self.sessions if item[0] in live_sessions]

    def to_bytes(self):
        return cbor.dumps([[s, u, [[a, b] for a, b in r], c] for s, u, r, c in self.sessions])

    @classmethod
    def from_bytes(cls, data, max_sessions=8, max_ranges=32):
        state = cls(max_sessions, max_ranges)
        for s, u, r, c in cbor.loads(data)[-max_sessions:]:
            state.sessions.append([s, u, [(a, b) for a, b in r][-max_ranges:], c])
        return state


def flush_due(count, size, oldest_at, now, critical, max_count, max_bytes, max_age):
    """The batching rule: flush on a critical entry, or when count, bytes or age reach
    their limit."""
    if count == 0:
        return False
    return critical or count >= max_count or size >= max_bytes or now - oldest_at >= max_age


def shrink(entries, acks, thin):
    """Policy for one segment -> (kept, thinned): acknowledged entries go; with thin=True
    routine sealed entries go too (reported as thinned); keep-entries always stay."""
    kept = []
    thinned = []
    for entry in entries:
        if acks.covers(entry):
            continue
        if thin and not entry.keep:
            thinned.append(entry)
        else:
            kept.append(entry)
    return kept, thinned


def thinned_ranges(entries):
    """Thinned entries -> [(session, first, last)], adjacent seqs of a session merged."""
    ranges = []
    for entry in entries:
        if ranges and ranges[-1][0] == entry.session and ranges[-1][2] + 1 == entry.first:
            ranges[-1] = (entry.session, ranges[-1][1], entry.last)
        else:
            ranges.append((entry.session, entry.first, entry.last))
    return ranges


# ---------------------------------------------------------------- segment stores


class MemorySegments:
    """Segments in RAM (simulator, CPython model tests). tear(no, n) drops a segment's
    last n bytes, as a power cut in the middle of an append would."""

    def __init__(self):
        self.files = {}
        self.state = None

    def numbers(self):
        return sorted(self.files)

    def read(self, no):
        return bytes(self.files[no])

    def size(self, no):
        return len(self.files[no])

    def append(self, no, data):
        self.files[no] = self.files.get(no, b"") + bytes(data)

    def replace(self, no, data):
        self.files[no] = bytes(data)

    def delete(self, no):
        self.files.pop(no, None)

    def read_state(self):
        return self.state

    def write_state(self, data):
        self.state = bytes(data)

    def tear(self, no, n):
        self.files[no] = self.files[no][:max(0, len(self.files[no]) - n)]


class FlashSegments:
    """Segment files seg<no>.log under `directory` plus the acknowledgement file."""

    def __init__(self, directory):
        self.directory = directory
        fileio.make_dirs(directory)

    def _path(self, no):
        return "%s/seg%08d.log" % (self.directory, no)

    def numbers(self):
        found = {}
        for name in os.listdir(self.directory):
            if name.startswith("seg") and name.endswith(".log"):
                found[int(name[3:-4])] = True
            elif name.startswith("seg") and name.endswith(".log" + fileio.TMP_SUFFIX):
                no = int(name[3:-8])
                tmp = self._path(no) + fileio.TMP_SUFFIX
                if fileio.exists(self._path(no)):
                    fileio.remove_if_exists(tmp)  # a replace cut before its rename
                else:
                    fileio._rename(tmp, self._path(no))  # FAT: cut after the unlink
                    found[no] = True
        return sorted(found)

    def read(self, no):
        data = fileio.read_file(self._path(no))
        return b"" if data is None else data

    def size(self, no):
        return max(0, fileio.size(self._path(no)))

    def append(self, no, data):
        fileio.append_synced(self._path(no), data)

    def replace(self, no, data):
        fileio.write_atomic(self._path(no), data)

    def delete(self, no):
        fileio.remove_if_exists(self._path(no))

    def read_state(self):
        payload, _ = fileio.read_record(self.directory + "/acks")
        return payload

    def write_state(self, data):
        fileio.write_record(self.directory + "/acks", data)


# ---------------------------------------------------------------- the outbox


class _Segment:
    """RAM summary of one segment file."""

    def __init__(self, no):
        self.no = no
        self.size = 0
        self.last_key = None
        self.sessions = {}  # session -> [max sealed last seq, max checkpoint last seq]

    def add(self, entry):
        self.size += entry.size
        self.last_key = entry.key
        marks = self.sessions.get(entry.session)
        if marks is None:
            marks = [-1, -1]
            self.sessions[entry.session] = marks
        slot = 1 if entry.kind == CHECKPOINT else 0
        if entry.last > marks[slot]:
            marks[slot] = entry.last


class Outbox:
    """The outbox over a segment `store`; now() -> int seconds (injected clock)."""

    def __init__(self, store, now, segments=8, segment_size=8192, flush_count=16,
                 flush_bytes=2048, flush_age=30, max_buffer=64):
        self.store = store
        self._now = now
        self.segment_size = segment_size
        self.capacity = segments * segment_size
        self.reserve = segment_size
        self.flush_count = flush_count
        self.flush_bytes = flush_bytes
        self.flush_age = flush_age
        self.max_buffer = max_buffer
        self.acks = AckState()
        self._segments = []
        self._buffer = []
        self._buffer_size = 0
        self._buffer_since = 0
        self._last_key = None
        self._cursor = None
        self._acks_dirty = False
        self._acks_saved_at = 0
        self._events = []
        self.thinned = 0
        self.corrupt_bytes = 0

    def _take_events(self):
        events = self._events
        self._events = []
        return events

    # ------------------------------------------------------------ boot

    def load(self):
        """Rebuild the summaries from the store -> events (outbox-corrupt per damaged
        segment). Damaged or duplicated segments are rewritten with their valid entries,
        so nothing is ever appended behind garbage."""
        now = self._now()
        try:
            state = self.store.read_state()
            self.acks = AckState.from_bytes(state) if state is not None else AckState()
        except (ValueError, TypeError):
            self.acks = AckState()  # lost acknowledgements only cause resends
        self._segments = []
        self._last_key = None
        for no in self.store.numbers():
            entries, skipped = scan(self.store.read(no))
            fresh = []
            for entry in entries:
                # A cut between a merge and its delete leaves entries twice: keep one.
                if self._last_key is None or entry.key > self._last_key:
                    fresh.append(entry)
                    self._last_key = entry.key
            if skipped or len(fresh) != len(entries):
                self.corrupt_bytes += skipped
                if skipped:
                    self._events.append({"event": "outbox-corrupt", "time": now,
                                         "segment": no, "bytes": skipped})
                self._rewrite(no, fresh)
            if fresh:
                self._segments.append(self._summary(no, fresh))
        self._drop_acked_segments()
        self.acks.prune(self._live_sessions())
        return self._take_events()

    def _summary(self, no, entries):
        seg = _Segment(no)
        for entry in entries:
            seg.add(entry)
        return seg

    def _rewrite(self, no, entries):
        if entries:
            self.store.replace(no, b"".join([encode_entry(e) for e in entries]))
        else:
            self.store.delete(no)

    # ------------------------------------------------------------ writing

    def put(self, entry):
        """Queue an entry (keys must grow) -> events (thinned ranges). A critical entry is
        on flash when this returns. Raises OutboxFull, keeping the entry in RAM, when not
        even the reserve can hold it; past 2 * max_buffer entries in RAM a critical entry is
        refused instead (OutboxFull.refused names it)."""
        if self._last_key is not None and entry.key <= self._last_key:
            raise ValueError("entry %r is not after the last one" % (entry,))
        if len(self._buffer) >= self.max_buffer:
            # The flash may still be full of critical entries: that must not lose this one
            # (it is placed below, and the failure is raised again by the flush after it).
            flash_full = self._try_flush()
            if len(self._buffer) >= self.max_buffer:
                if not entry.keep:
                    self._last_key = entry.key
                    self._thin([entry])
                    if flash_full is not None:
                        raise OutboxFull(flash_full, self._take_events())
                    return self._take_events()
                # A critical entry may wait in RAM beyond the routine limit, up to a hard
                # bound (RAM is finite): past it, it is refused and the caller reports it.
                if len(self._buffer) >= 2 * self.max_buffer:
                    self._last_key = entry.key
                    raise OutboxFull("outbox and its RAM buffer are full of critical entries",
                                     self._take_events(), refused=entry)
        if not self._buffer:
            self._buffer_since = self._now()
        self._buffer.append(entry)
        self._buffer_size += entry.size
        self._last_key = entry.key
        if flush_due(len(self._buffer), self._buffer_size, self._buffer_since, self._now(),
                     entry.critical, self.flush_count, self.flush_bytes, self.flush_age):
            self._flush()
        return self._take_events()

    def tick(self):
        """Call periodically: flushes an aged buffer, saves acknowledgements -> events."""
        now = self._now()
        if flush_due(len(self._buffer), self._buffer_size, self._buffer_since, now, False,
                     self.flush_count, self.flush_bytes, self.flush_age):
            self._flush()
        self._save_acks(now, force=False)
        return self._take_events()

    def _try_flush(self):
        """_flush() -> None, or the OutboxFull message with its events put back."""
        try:
            self._flush()
        except OutboxFull as exc:
            self._events = exc.events + self._events
            return str(exc)
        return None

    def flush(self):
        """Write the RAM buffer to flash (synced) -> events (thinned ranges)."""
        self._flush()
        return self._take_events()

    def _flush(self):
        if self._buffer:
            batch = self._buffer
            if not self._make_room(sum([e.size for e in batch])):
                # Even with the old routine entries thinned, the batch does not fit.
                self._thin([e for e in batch if not e.keep])
                batch = [e for e in batch if e.keep]
                need = sum([e.size for e in batch])
                self._buffer = batch
                self._buffer_size = need
                if self._used() + need > self.capacity + self.reserve:
                    raise OutboxFull("no room for %d critical entries" % len(batch),
                                     self._take_events())
            self._append(batch)
            self._buffer = []
            self._buffer_size = 0
            self._save_acks(self._now(), force=False)

    def _used(self):
        return sum([seg.size for seg in self._segments])

    def _append(self, batch):
        chunk = []
        chunk_size = 0
        head = self._segments[-1] if self._segments else None
        for entry in batch:
            if head is None or head.size + chunk_size + entry.size > self.segment_size:
                self._write_chunk(head, chunk)
                head = _Segment(self._segments[-1].no + 1 if self._segments else 0)
                self._segments.append(head)
                chunk = []
                chunk_size = 0
            chunk.append(entry)
            chunk_size += entry.size
        self._write_chunk(head, chunk)

    def _write_chunk(self, seg, chunk):
        if chunk:
            self.store.append(seg.no, b"".join([encode_entry(e) for e in chunk]))
            for entry in chunk:
                seg.add(entry)

    def _make_room(self, need):
        """Free space for `need` bytes within capacity: acknowledged entries first, then
        routine entries oldest segment first -> True if it fits."""
        for thinning in (False, True):
            for seg in list(self._segments):
                if self._used() + need <= self.capacity:
                    return True
                entries, _ = scan(self.store.read(seg.no))
                kept, thinned = shrink(entries, self.acks, thinning)
                if len(kept) != len(entries):
                    self._replace_segment(seg, kept)
                    self._thin(thinned)  # reported once they are really gone
        return self._used() + need <= self.capacity

    def _replace_segment(self, seg, kept):
        index = self._segments.index(seg)
        prev = self._segments[index - 1] if index else None
        kept_size = sum([e.size for e in kept])
        if kept and prev is not None and prev.size + kept_size <= self.segment_size:
            # Merge the older neighbour in, so thinning does not multiply small files. The
            # merged file takes this (newer) slot: a cut before the delete leaves the older
            # entries twice, and load() keeps one copy of each.
            older, _ = scan(self.store.read(prev.no))
            kept = [e for e in older if not self.acks.covers(e)] + kept
            self._rewrite(seg.no, kept)
            self.store.delete(prev.no)
            self._segments[index] = self._summary(seg.no, kept)
            self._segments.pop(index - 1)
            return
        self._rewrite(seg.no, kept)
        if kept:
            self._segments[index] = self._summary(seg.no, kept)
        else:
            self._segments.pop(index)

    def _thin(self, entries):
        self.thinned += len(entries)
        now = self._now()
        for session, first, last in thinned_ranges(entries):
            self._events.append({"event": "thinned", "time": now, "session": session,
                                 "first": first, "last": last})

    # ------------------------------------------------------------ acknowledgements

    def ack(self, ack):
        """Apply a protocol.device_link.Ack: acknowledged entries leave the RAM buffer at
        once and their segments as soon as every entry in them is acknowledged. The
        acknowledgement state is saved with the next flush or tick (losing it on a power
        cut only causes resends)."""
        self.acks.apply(ack)
        self._acks_dirty = True
        kept = [e for e in self._buffer if not self.acks.covers(e)]
        if len(kept) != len(self._buffer):
            self._buffer = kept
            self._buffer_size = sum([e.size for e in kept])
        self._drop_acked_segments()

    def _drop_acked_segments(self):
        for seg in list(self._segments):
            if self.acks.covers_all(seg.sessions):
                self.store.delete(seg.no)
                self._segments.remove(seg)

    def _live_sessions(self):
        live = {}
        for seg in self._segments:
            for session in seg.sessions:
                live[session] = True
        for entry in self._buffer:
            live[entry.session] = True
        return live

    def _save_acks(self, now, force=True):
        if not self._acks_dirty or (not force and now - self._acks_saved_at < self.flush_age):
            return
        self.acks.prune(self._live_sessions())
        self.store.write_state(self.acks.to_bytes())
        self._acks_dirty = False
        self._acks_saved_at = now

    def save(self):
        """Flush the buffer and the acknowledgement state now (orderly shutdown)."""
        self._flush()
        self._save_acks(self._now())
        return self._take_events()

    # ------------------------------------------------------------ replay

    def unacked(self, after=None):
        """Unacknowledged entries with key > after, in order (a generator; one segment
        in RAM at a time)."""
        for seg in list(self._segments):
            if after is not None and seg.last_key <= after:
                continue
            entries, _ = scan(self.store.read(seg.no))
            for entry in entries:
                if (after is None or entry.key > after) and not self.acks.covers(entry):
                    yield entry
        for entry in list(self._buffer):
            if (after is None or entry.key > after) and not self.acks.covers(entry):
                yield entry

    def reconnected(self):
        """A new link: the next take_unsent() starts again from the oldest unacknowledged."""
        self._cursor = None

    def take_unsent(self, limit=8):
        """Up to `limit` unacknowledged entries not yet sent on this link, in order."""
        out = []
        for entry in self.unacked(self._cursor):
            out.append(entry)
            if len(out) >= limit:
                break
        if out:
            self._cursor = out[-1].key
        return out

    @property
    def buffered(self):
        """The entries still only in RAM (lost if the power goes now), oldest first."""
        return tuple(self._buffer)

    def stats(self):
        return {"segments": len(self._segments), "bytes": self._used(),
                "buffered": len(self._buffer), "thinned": self.thinned,
                "corrupt_bytes": self.corrupt_bytes}
