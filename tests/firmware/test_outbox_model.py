"""The outbox policy on CPython: record codec under corruption, acknowledgement state against
a set model, and a rule-based state machine driving the real Outbox over an in-memory
segment store with power cuts at any write, link loss, acknowledgements and thinning."""

import os

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from firmware import outbox
from firmware.outbox import CHECKPOINT, SEALED, AckState, Entry, MemorySegments, Outbox
from protocol.device_link import Ack

SESSION_A = b"A" * 8
SESSION_B = b"B" * 8


def entries_strategy():
    return st.lists(
        st.tuples(st.integers(1, 4), st.binary(max_size=60), st.booleans(), st.booleans()),
        min_size=1, max_size=12,
    ).map(_build_entries)


def _build_entries(specs):
    out = []
    seq = 0
    for n, data, critical, checkpoint in specs:
        out.append(Entry(SEALED, SESSION_A, seq, seq + n - 1, data, critical))
        if checkpoint:
            out.append(Entry(CHECKPOINT, SESSION_A, seq, seq + n - 1, data[:20]))
        seq += n
    return out


# ---------------------------------------------------------------- record codec


@given(entries_strategy())
def test_scan_round_trip(entries) -> None:
    raw = b"".join(outbox.encode_entry(e) for e in entries)
    assert outbox.scan(raw) == (entries, 0)


@given(entries_strategy(), st.data())
def test_scan_recovers_every_untouched_record(entries, data) -> None:
    encoded = [outbox.encode_entry(e) for e in entries]
    raw = bytearray(b"".join(encoded))
    damage = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
    pos = data.draw(st.integers(0, len(raw) - 1))
    if damage == "flip":
        raw[pos] ^= data.draw(st.integers(1, 255))
        touched = (pos, pos + 1)
    elif damage == "truncate":
        del raw[pos:]
        touched = (pos, 1 << 30)
    else:
        raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=40))
        touched = (pos, pos + 1)
    found, skipped = outbox.scan(bytes(raw))
    start = 0
    for entry, blob in zip(entries, encoded, strict=True):
        end = start + len(blob)
        if end <= touched[0] or start >= touched[1]:
            assert entry in found  # records the damage did not touch survive
        start = end
    assert all(e in entries for e in found)  # nothing invented
    assert [e.key for e in found] == sorted(e.key for e in found)
    if damage != "truncate":
        assert skipped > 0  # the damage is noticed, not silently absorbed


@given(st.binary(max_size=400))
def test_scan_never_raises_on_garbage(raw: bytes) -> None:
    found, skipped = outbox.scan(raw)
    assert skipped <= len(raw)


# ---------------------------------------------------------------- acknowledgement state


@given(st.lists(st.tuples(st.sampled_from([SESSION_A, SESSION_B]),
                          st.none() | st.integers(0, 60),
                          st.lists(st.tuples(st.integers(0, 60), st.integers(0, 6)), max_size=3),
                          st.none() | st.integers(0, 60)),
                max_size=8),
       st.lists(st.tuples(st.sampled_from([SESSION_A, SESSION_B]), st.integers(0, 64),
                          st.integers(0, 3), st.booleans()), max_size=20))
def test_ack_state_matches_a_set_model(acks, probes) -> None:
    state = AckState()
    acked = {SESSION_A: set(), SESSION_B: set()}
    checkpoints = {SESSION_A: -1, SESSION_B: -1}
    for session, upto, ranges, cp in acks:
        ranges = [(a, a + n) for a, n in ranges]
        state.apply(Ack(session, upto, ranges, cp))
        if upto is not None:
            acked[session].update(range(upto + 1))
        for a, b in ranges:
            acked[session].update(range(a, b + 1))
        if cp is not None:
            checkpoints[session] = max(checkpoints[session], cp)
    restored = AckState.from_bytes(state.to_bytes())
    for session, first, n, is_checkpoint in probes:
        entry = Entry(CHECKPOINT if is_checkpoint else SEALED, session, first, first + n, b"")
        if is_checkpoint:
            expected = entry.last <= checkpoints[session]
        else:
            expected = set(range(first, first + n + 1)) <= acked[session]
        assert state.covers(entry) == expected
        assert restored.covers(entry) == expected


def test_flush_rule() -> None:
    assert not outbox.flush_due(0, 0, 0, 100, True, 16, 2048, 30)
    assert outbox.flush_due(1, 30, 0, 0, True, 16, 2048, 30)          # critical: at once
    assert not outbox.flush_due(15, 100, 0, 29, False, 16, 2048, 30)  # routine: wait
    assert outbox.flush_due(16, 100, 0, 0, False, 16, 2048, 30)       # count
    assert outbox.flush_due(1, 2048, 0, 0, False, 16, 2048, 30)       # bytes
    assert outbox.flush_due(1, 30, 0, 30, False, 16, 2048, 30)        # age


def test_thinned_ranges_merge_adjacent_seqs_per_session() -> None:
    thinned = [Entry(SEALED, SESSION_A, 1, 2, b""), Entry(SEALED, SESSION_A, 3, 3, b""),
               Entry(SEALED, SESSION_B, 4, 4, b""), Entry(SEALED, SESSION_B, 6, 7, b"")]
    assert outbox.thinned_ranges(thinned) == [(SESSION_A, 1, 3), (SESSION_B, 4, 4),
                                              (SESSION_B, 6, 7)]


# ---------------------------------------------------------------- the state machine


class PowerCut(Exception):
    pass


class CuttingStore(MemorySegments):
    """arm(skip, n): after `skip` more writes, the next one stores only n bytes of an
    append (nothing of an atomic replace, delete or state write), then the power goes."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = None
        self.skip = 0

    def _cut_now(self) -> bool:
        if self.armed is None:
            return False
        if self.skip:
            self.skip -= 1
            return False
        return True

    def _cut(self) -> None:
        self.armed = None
        raise PowerCut()

    def append(self, no, data):
        if self._cut_now():
            super().append(no, data[: self.armed])
            self._cut()
        super().append(no, data)

    def replace(self, no, data):
        if self._cut_now():
            self._cut()
        super().replace(no, data)

    def delete(self, no):
        if self._cut_now():
            self._cut()
        super().delete(no)

    def write_state(self, data):
        if self._cut_now():
            self._cut()
        super().write_state(data)


SEGMENTS = 3
SEGMENT_SIZE = 300


class OutboxMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = 0
        self.store = CuttingStore()
        self.box = self._boot()
        self.session = os.urandom(8)
        self.seq = 0
        self.checkpointed = 0  # first seq not yet under a checkpoint in this session
        self.put = {}          # key -> Entry, every entry put() accepted
        self.acked = set()     # keys acknowledged
        self.thinned = set()   # keys reported thinned
        self.refused = set()   # critical keys refused at RAM's hard bound (reported)
        self.lost = set()      # keys gone in a power cut while only in RAM
        self.maybe = set()     # keys a power cut may or may not have taken / brought back
        self.ever_acked = set()
        self.cursor = None

    def _boot(self) -> Outbox:
        box = Outbox(self.store, lambda: self.clock, segments=SEGMENTS, segment_size=SEGMENT_SIZE,
                     flush_count=4, flush_bytes=400, flush_age=20, max_buffer=12)
        self._events(box.load())
        return box

    def _events(self, events) -> None:
        for report in events:
            if report["event"] != "thinned":
                continue
            for key, entry in self.put.items():
                if (entry.session == report["session"] and entry.kind == SEALED
                        and report["first"] <= entry.first and entry.last <= report["last"]):
                    assert not entry.keep, "a critical entry or checkpoint was thinned"
                    self.thinned.add(key)
                    event("routine entry thinned")

    def _put(self, entry: Entry) -> None:
        self.put[entry.key] = entry
        try:
            self._events(self.box.put(entry))
        except outbox.OutboxFull as exc:
            event("outbox full")
            self._events(exc.events)
            if exc.refused is not None:  # RAM's hard bound: refused, and said so
                assert exc.refused is entry and entry.keep
                assert len(self.box.buffered) >= 2 * self.box.max_buffer
                self.refused.add(entry.key)
            return
        if entry.critical:
            assert entry not in self.box.buffered, "critical entry not on flash at return"

    @rule(n=st.integers(1, 3), size=st.integers(0, 120), odds=st.integers(0, 3))
    def put_sealed(self, n: int, size: int, odds: int) -> None:
        critical = odds == 0  # critical values are the rarer case
        entry = Entry(SEALED, self.session, self.seq, self.seq + n - 1, os.urandom(size),
                      critical)
        self.seq += n
        self._put(entry)

    @precondition(lambda self: self.seq > self.checkpointed)
    @rule()
    def put_checkpoint(self) -> None:
        entry = Entry(CHECKPOINT, self.session, self.checkpointed, self.seq - 1, os.urandom(90))
        self.checkpointed = self.seq
        self._put(entry)

    @rule()
    def new_session(self) -> None:
        self.session = os.urandom(8)
        self.checkpointed = self.seq

    @rule(dt=st.integers(0, 40))
    def tick(self, dt: int) -> None:
        self.clock += dt
        try:
            self._events(self.box.tick())
        except outbox.OutboxFull as exc:
            self._events(exc.events)

    @rule()
    def flush(self) -> None:
        try:
            self._events(self.box.flush())
        except outbox.OutboxFull as exc:
            self._events(exc.events)

    @precondition(lambda self: self.put)
    @rule(data=st.data())
    def ack(self, data) -> None:
        entries = list(self.put.values())
        session = data.draw(st.sampled_from(entries)).session
        # The gateway acknowledges only what it has: seqs of entries that exist.
        sealed = sorted({e.last for e in entries if e.session == session and e.kind == SEALED})
        checkpoints = sorted({e.last for e in entries
                              if e.session == session and e.kind == CHECKPOINT})
        upto = data.draw(st.none() | st.sampled_from(sealed)) if sealed else None
        ranges = []
        if sealed and data.draw(st.booleans()):
            a = data.draw(st.sampled_from(sealed))
            ranges = [(a, min(sealed[-1], a + data.draw(st.integers(0, 6))))]
        cp = data.draw(st.none() | st.sampled_from(checkpoints)) if checkpoints else None
        self.box.ack(Ack(session, upto, ranges, cp))
        seen = {e.key: e for e in entries if e.session == session}
        state = self.box.acks
        for key, entry in seen.items():
            if state.covers(entry):
                self.acked.add(key)
                self.ever_acked.add(key)
        # Independent check of what that ack must cover.
        for key, entry in seen.items():
            if entry.kind == SEALED and upto is not None and entry.last <= upto:
                assert key in self.acked
            if entry.kind == CHECKPOINT and cp is not None and entry.last <= cp:
                assert key in self.acked

    @rule(limit=st.integers(1, 5), reconnect=st.booleans())
    def send(self, limit: int, reconnect: bool) -> None:
        if reconnect:
            self.box.reconnected()
            self.cursor = None
        batch = self.box.take_unsent(limit)
        keys = [e.key for e in batch]
        assert keys == sorted(set(keys))
        if self.cursor is not None and keys:
            assert keys[0] > self.cursor  # never the same entry twice on one link
        if keys:
            self.cursor = keys[-1]

    @rule(cut_at=st.none() | st.integers(0, 200), skip=st.integers(0, 3),
          critical=st.booleans())
    def power_cut(self, cut_at, skip: int, critical: bool) -> None:
        in_ram = {e.key for e in self.box.buffered}
        if cut_at is not None:
            # The cut hits a write of the flush that put() of this entry triggers. Routine
            # entries the interrupted call thinned are gone without a report (the report
            # was in RAM): the gateway sees a gap. Critical ones must all survive.
            on_flash = {e.key for e in self.box.unacked() if not e.keep} - in_ram
            self.store.armed = cut_at
            self.store.skip = skip
            entry = Entry(SEALED, self.session, self.seq, self.seq, os.urandom(50), critical)
            self.seq += 1
            self.put[entry.key] = entry
            in_ram.add(entry.key)
            try:
                self._events(self.box.put(entry))
                self._events(self.box.flush())
            except PowerCut:
                event("cut during a write")
                in_ram |= on_flash
            except outbox.OutboxFull as exc:
                self._events(exc.events)
            self.store.armed = None
        # Entries only in RAM may be lost (or, when a cut append got them out whole, kept);
        # acknowledgements not yet saved may be forgotten (a resend, not a loss).
        self.maybe |= in_ram | self.acked
        self.box = self._boot()
        self.cursor = None
        present = {e.key for e in self.box.unacked()}
        for key in self.maybe:
            if key in present:
                event("entry survived a cut (whole record) or ack forgotten")
                self.acked.discard(key)
                self.lost.discard(key)
            elif key not in self.acked:
                self.lost.add(key)
        self.maybe = set()

    @invariant()
    def contents_are_exactly_the_unacknowledged_entries(self) -> None:
        present = list(self.box.unacked())
        keys = [e.key for e in present]
        assert keys == sorted(set(keys)), "replay out of order or duplicated"
        for entry in present:
            assert self.put[entry.key] == entry, "stored bytes changed"
        expected = set(self.put) - self.acked - self.thinned - self.lost - self.refused
        assert set(keys) == expected

    @invariant()
    def thinning_is_oldest_first_and_bounded(self) -> None:
        if self.thinned:
            newest_thinned = max(self.thinned)
            for entry in self.box.unacked():
                if not entry.keep and entry.key not in self.ever_acked:
                    assert entry.key > newest_thinned, "a newer routine entry went first"
        assert self.box.stats()["bytes"] <= SEGMENTS * SEGMENT_SIZE + SEGMENT_SIZE


OutboxMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50,
                                           deadline=None)
test_outbox_state_machine = OutboxMachine.TestCase


def test_an_hour_without_link_thins_routine_and_keeps_critical() -> None:
    clock = [0]
    box = Outbox(MemorySegments(), lambda: clock[0], segments=4, segment_size=1024)
    box.load()
    thinned = []
    critical = []
    session = b"S" * 8
    for second in range(3600):
        clock[0] = second
        is_critical = second % 600 == 0
        entry = Entry(SEALED, session, second, second, bytes(60), is_critical)
        if is_critical:
            critical.append(entry.key)
        thinned += box.put(entry)
        thinned += box.tick()
    keys = [e.key for e in box.unacked()]
    assert set(critical) <= set(keys)
    routine = [k for k in keys if k not in critical]
    assert routine == [(s, 0) for s in range(routine[0][0], 3600)]  # the newest survive
    lost = {s for s in range(3600)} - {k[0] for k in keys}
    reported = {s for e in thinned for s in range(e["first"], e["last"] + 1)}
    assert reported == lost  # every thinned reading is reported, nothing else is missing
    assert box.stats()["bytes"] <= 4 * 1024


def test_out_of_order_put_refused() -> None:
    box = Outbox(MemorySegments(), lambda: 0)
    box.load()
    box.put(Entry(SEALED, SESSION_A, 5, 5, b"x"))
    with pytest.raises(ValueError):
        box.put(Entry(SEALED, SESSION_A, 4, 4, b"x"))


def test_an_entry_straddling_the_watermark_and_a_range_is_covered() -> None:
    """Found by the set model: upto=0 with a range (0, 1) left entry 0..1 unacknowledged, so
    the device would have re-sent it for ever."""
    state = AckState()
    state.apply(Ack(SESSION_A, 0, [(0, 1)], None))
    assert state.covers(Entry(SEALED, SESSION_A, 0, 1, b""))
    assert AckState.from_bytes(state.to_bytes()).covers(Entry(SEALED, SESSION_A, 0, 1, b""))
    assert not state.covers(Entry(SEALED, SESSION_A, 0, 2, b""))


def test_a_full_flash_does_not_lose_the_entry_that_finds_ram_full() -> None:
    """Regression (found by the state machine in CI): with the flash full of critical
    entries and RAM at max_buffer, put() flushed first, the flush raised OutboxFull, and the
    new entry was neither kept nor refused. Now it waits in RAM (critical/checkpoint) or is
    reported thinned (routine), and OutboxFull is still raised."""
    box = Outbox(MemorySegments(), lambda: 0, segments=2, segment_size=300, flush_count=4,
                 flush_bytes=400, flush_age=20, max_buffer=4)
    box.load()
    session = b"S" * 8
    accepted = []
    seq = 0
    while len(box.buffered) < box.max_buffer:
        entry = Entry(SEALED, session, seq, seq, bytes(100), critical=True)
        seq += 1
        accepted.append(entry.key)
        try:
            box.put(entry)
        except outbox.OutboxFull as exc:
            assert exc.refused is None
    critical = Entry(SEALED, session, seq, seq, bytes(10), critical=True)
    with pytest.raises(outbox.OutboxFull) as raised:
        box.put(critical)
    assert raised.value.refused is None
    assert critical in box.buffered
    checkpoint = Entry(CHECKPOINT, session, 0, seq, bytes(10))
    with pytest.raises(outbox.OutboxFull):
        box.put(checkpoint)
    assert checkpoint in box.buffered
    routine = Entry(SEALED, session, seq + 1, seq + 1, bytes(10))
    with pytest.raises(outbox.OutboxFull) as raised:
        box.put(routine)
    assert {"first": seq + 1, "last": seq + 1} == {
        k: raised.value.events[-1][k] for k in ("first", "last")}
    assert raised.value.events[-1]["event"] == "thinned"
    keys = {e.key for e in box.unacked()}
    assert set(accepted) | {critical.key, checkpoint.key} == keys
