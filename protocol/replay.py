"""Sequence-number tracking against replay, duplicates and loss. Pure logic, no I/O.

One SequenceTracker per (device, session): the seq in each sealed message is classified as

    "new"       above everything seen so far (seqs skipped on the way become gaps)
    "new-late"  inside the window and not seen before: a gap being filled late
    "duplicate" already seen: drop it idempotently (same data, already stored)
    "too-old"   below what the tracker still knows (or below the session's first seq):
                it cannot be told from a replay

Only record a seq after its message's MAC verified: a forged seq must never move the window.
The window is a bitmap of `window` bits (default 1024 = 128 bytes) indexed by seq mod window,
so memory and per-message work stay constant; `lost` counts seqs that fell out of the window
without ever arriving. State round-trips through a small dict (to_state/from_state) for the
gateway's journal. Runs on MicroPython (bytearray bitmap, no big allocations per message).

History below the window (max_runs > 0): seqs that leave the window seen are kept as sorted,
disjoint runs [first, last]. Below the window a seq is then answered exactly, "duplicate" or
"new-late", so a device replaying an outbox far behind its live traffic is not mistaken for a
replay. A session's seqs are consecutive, so this is usually one run. Memory stays bounded:
past `max_runs` runs the lowest run is forgotten and `horizon` rises above it; seqs below the
horizon are "too-old" again (safe: never accepted twice). max_runs = 0 (the default) keeps no
history: everything below the window is "too-old".
"""

from protocol.checks import is_int
from protocol.errors import ValidationError

NEW = "new"
NEW_LATE = "new-late"
DUPLICATE = "duplicate"
TOO_OLD = "too-old"

DEFAULT_WINDOW = 1024
MAX_WINDOW = 65536
MAX_SEQ = 0xFFFFFFFFFFFFFFFF
MAX_RUNS = 4096
STATE_VERSION = 1


def _check_seq(field, seq):
    if not is_int(seq) or seq < 0 or seq > MAX_SEQ:
        raise ValidationError(field, "must be an integer in [0, 2**64-1]")
    return seq


def _check_window(window):
    if not is_int(window) or window < 8 or window > MAX_WINDOW or window % 8:
        raise ValidationError("window", "must be a multiple of 8 in [8, %d]" % MAX_WINDOW)
    return window


def _check_max_runs(max_runs):
    if not is_int(max_runs) or max_runs < 0 or max_runs > MAX_RUNS:
        raise ValidationError("max_runs", "must be an integer in [0, %d]" % MAX_RUNS)
    return max_runs


class SequenceTracker:
    """Sliding-window tracker for one sequence space.

    start: the session's first seq, if known: anything below it is "too-old" and seqs from
    it on count as gaps until seen. Without it the first seq recorded sets the baseline and
    an earlier seq still inside the window is accepted as "new-late".
    max_runs: how many runs of seen seqs below the window to remember (module docstring).
    """

    def __init__(self, window=DEFAULT_WINDOW, start=None, max_runs=0):
        self.window = _check_window(window)
        self.max_runs = _check_max_runs(max_runs)
        self._bits = bytearray(window // 8)
        self.lost = 0
        self.runs = []  # [[first, last], ...] seen below the window, sorted, disjoint
        self.horizon = 0  # below it (and below the window) nothing is known any more
        if start is None:
            self.floor = None
            self.base = None
            self.high = None
        else:
            _check_seq("start", start)
            self.floor = start
            self.base = start
            self.high = start - 1  # "nothing seen yet, expecting start next"

    # ------------------------------------------------------------ bitmap

    def _seen(self, seq):
        slot = seq % self.window
        return (self._bits[slot >> 3] >> (slot & 7)) & 1

    def _mark(self, seq):
        slot = seq % self.window
        self._bits[slot >> 3] |= 1 << (slot & 7)

    def _clear(self, seq):
        slot = seq % self.window
        self._bits[slot >> 3] &= 0xFF ^ (1 << (slot & 7))

    # ------------------------------------------------------------ classification

    def classify(self, seq):
        """What record(seq) would answer, without changing anything."""
        _check_seq("seq", seq)
        if self.high is None or seq > self.high:
            return NEW
        if self.floor is not None and seq < self.floor:
            return TOO_OLD
        if seq <= self.high - self.window:
            if not self.max_runs or seq < self.horizon:
                return TOO_OLD
            return DUPLICATE if self._run_index(seq) >= 0 else NEW_LATE
        if self._seen(seq):
            return DUPLICATE
        return NEW_LATE

    def record(self, seq):
        """Classify `seq` and remember it. Returns NEW, NEW_LATE, DUPLICATE or TOO_OLD."""
        verdict = self.classify(seq)
        if verdict == NEW:
            if self.high is None:
                self.base = seq
            else:
                self._advance(seq)
            self.high = seq
            self._mark(seq)
        elif verdict == NEW_LATE:
            if seq <= self.high - self.window:
                if seq >= self.base and self.lost:
                    self.lost -= 1  # counted lost when it left the window; it came after all
                self._remember(seq, seq)
            else:
                self._mark(seq)
            if seq < self.base:
                self.base = seq
        return verdict

    def record_range(self, first, last):
        """`record(seq)` for every seq first..last in order (first <= last), the usual case
        (a durable batch of consecutive seqs above everything seen) without a classification
        and a window step per seq. Answers nothing: every seq of that case is "new"."""
        _check_seq("first", first)
        _check_seq("last", last)
        if last < first:
            raise ValidationError("last", "must not be below first")
        window = self.window
        if self.high is None or first <= self.high or last - first >= window:
            seq = first
            while seq <= last:  # not the usual case: one at a time
                self.record(seq)
                seq += 1
            return
        self.record(first)  # sets the baseline or makes a jump over unseen seqs
        bits = self._bits
        base = self.base
        run_start = None  # seen seqs leaving the window, remembered as runs (not one by one)
        seq = first + 1
        while seq <= last:
            leaving = seq - window  # same slot as seq: read before seq is marked
            slot = seq % window
            if leaving >= base:
                if (bits[slot >> 3] >> (slot & 7)) & 1:
                    if run_start is None:
                        run_start = leaving
                else:
                    self.lost += 1
                    if run_start is not None:
                        self._remember(run_start, leaving - 1)
                        run_start = None
            bits[slot >> 3] |= 1 << (slot & 7)
            seq += 1
        if run_start is not None:
            self._remember(run_start, last - window)
        self.high = last

    def seen_through(self, start):
        """The highest s >= start - 1 such that every seq start..s classifies "duplicate"
        (seen): how far a cumulative acknowledgement from `start` may reach."""
        _check_seq("start", start)
        high = self.high
        if high is None or (self.floor is not None and start < self.floor):
            return start - 1
        seq = start
        below = high - self.window  # seqs up to here are below the window
        while seq <= below:
            if not self.max_runs or seq < self.horizon:
                return seq - 1
            index = self._run_index(seq)
            if index < 0:
                return seq - 1
            seq = self.runs[index][1] + 1  # runs never touch: the next one is not seen
        bits = self._bits
        window = self.window
        while seq <= high:
            slot = seq % window
            if not (bits[slot >> 3] >> (slot & 7)) & 1:
                break
            seq += 1
        return seq - 1

    # ------------------------------------------------------------ history below the window

    def keep_history(self, max_runs):
        """Start remembering seqs that leave the window from now on. What is below the
        window already is unknown (it was never kept), so it stays "too-old"."""
        self.max_runs = _check_max_runs(max_runs)
        if self.max_runs and not self.runs and self.high is not None:
            self.horizon = max(self.horizon, self.high - self.window + 1, 0)

    def _run_index(self, seq):
        """Index of the run holding seq, else -(insertion point) - 1 (binary search)."""
        runs = self.runs
        lo = 0
        hi = len(runs)
        while lo < hi:
            mid = (lo + hi) // 2
            if runs[mid][1] < seq:
                lo = mid + 1
            elif runs[mid][0] > seq:
                hi = mid
            else:
                return mid
        return -lo - 1

    def _remember(self, first, last):
        """Add seen seqs first..last (none of them in a run yet) to the runs, merging
        neighbours; past max_runs the lowest run is forgotten (the horizon rises)."""
        if not self.max_runs:
            return
        runs = self.runs
        at = -self._run_index(first) - 1
        if at > 0 and runs[at - 1][1] + 1 == first:
            at -= 1
            runs[at][1] = last
        else:
            runs.insert(at, [first, last])
        if at + 1 < len(runs) and runs[at + 1][0] == runs[at][1] + 1:
            runs[at][1] = runs[at + 1][1]
            runs.pop(at + 1)
        while len(runs) > self.max_runs:
            self.horizon = runs.pop(0)[1] + 1

    def _advance(self, seq):
        """Slide the window top from self.high to seq, counting seqs that fall out unseen."""
        high = self.high
        window = self.window
        if seq - high >= window:
            old = max(self.base, high - window + 1)
            run_start = None
            while old <= high:
                if not self._seen(old):
                    self.lost += 1
                    if run_start is not None:
                        self._remember(run_start, old - 1)
                        run_start = None
                elif run_start is None:
                    run_start = old
                old += 1
            if run_start is not None:
                self._remember(run_start, high)
            # seqs high+1 .. seq-window never entered the window
            self.lost += max(0, seq - window - high)
            for i in range(len(self._bits)):
                self._bits[i] = 0
            return
        new = high + 1
        while new <= seq:
            leaving = new - window
            if leaving >= self.base:
                if self._seen(leaving):
                    self._remember(leaving, leaving)
                else:
                    self.lost += 1
            self._clear(new)
            new += 1

    # ------------------------------------------------------------ reporting

    def missing(self, limit=64):
        """Gaps inside the window: [(first, last), ...] runs of seqs not yet seen, oldest
        first, at most `limit` runs. They may still arrive ("new-late")."""
        runs = []
        if self.high is None:
            return runs
        seq = max(self.base, self.high - self.window + 1)
        run_start = None
        while seq <= self.high:
            if self._seen(seq):
                if run_start is not None:
                    runs.append((run_start, seq - 1))
                    run_start = None
                    if len(runs) >= limit:
                        return runs
            elif run_start is None:
                run_start = seq
            seq += 1
        if run_start is not None:
            runs.append((run_start, self.high))
        return runs[:limit]

    def missing_count(self):
        """Number of seqs inside the window not yet seen."""
        count = 0
        for first, last in self.missing(limit=self.window):
            count += last - first + 1
        return count

    # ------------------------------------------------------------ persistence

    def to_state(self):
        """A small dict (CBOR/JSON-able but for `bits`, which is bytes) for persistence.
        The history keys appear only with max_runs > 0, so a tracker without history keeps
        the state it always had (and a reader that ignores them stays safe: "too-old")."""
        state = {
            "v": STATE_VERSION,
            "window": self.window,
            "floor": self.floor,
            "base": self.base,
            "high": self.high,
            "bits": bytes(self._bits),
            "lost": self.lost,
        }
        if self.max_runs:
            state["max_runs"] = self.max_runs
            state["horizon"] = self.horizon
            state["runs"] = [[first, last] for first, last in self.runs]
        return state

    @classmethod
    def from_state(cls, state):
        """Rebuild a tracker from to_state() output. Raises ValidationError if inconsistent."""
        if not isinstance(state, dict):
            raise ValidationError("state", "must be a dict")
        if state.get("v") != STATE_VERSION or not is_int(state.get("v")):
            raise ValidationError("state", "unknown version %r" % (state.get("v"),))
        tracker = cls(state.get("window"))
        floor = state.get("floor")
        base = state.get("base")
        high = state.get("high")
        bits = state.get("bits")
        lost = state.get("lost")
        if not isinstance(bits, (bytes, bytearray)) or len(bits) != tracker.window // 8:
            raise ValidationError("bits", "must be %d bytes" % (tracker.window // 8))
        if not is_int(lost) or lost < 0:
            raise ValidationError("lost", "must be a non-negative integer")
        if floor is not None:
            _check_seq("floor", floor)
        if high is None:
            if base is not None or floor is not None:
                raise ValidationError("high", "missing while base/floor are set")
        else:
            _check_seq("base", base)
            if not is_int(high) or high < base - 1 or high > MAX_SEQ:
                raise ValidationError("high", "must be an integer >= base - 1")
            if floor is not None and base < floor:
                raise ValidationError("base", "below floor")
        tracker.floor = floor
        tracker.base = base
        tracker.high = high
        tracker._bits = bytearray(bits)
        tracker.lost = lost
        tracker.max_runs = _check_max_runs(state.get("max_runs", 0))
        tracker.horizon, tracker.runs = _history(state, tracker)
        return tracker


def _history(state, tracker):
    """(horizon, runs) from a state dict, checked: sorted, disjoint, not touching, below
    the window and at most max_runs of them."""
    horizon = state.get("horizon", 0)
    runs = state.get("runs", [])
    _check_seq("horizon", horizon)
    if not isinstance(runs, (list, tuple)) or len(runs) > tracker.max_runs:
        raise ValidationError("runs", "must be a list of at most max_runs runs")
    checked = []
    floor = horizon
    for run in runs:
        if not isinstance(run, (list, tuple)) or len(run) != 2:
            raise ValidationError("runs", "each run must be [first, last]")
        first = _check_seq("runs", run[0])
        last = _check_seq("runs", run[1])
        if first < floor or last < first:
            raise ValidationError("runs", "must be sorted, disjoint and above the horizon")
        if tracker.high is None or last > tracker.high - tracker.window:
            raise ValidationError("runs", "must lie below the window")
        checked.append([first, last])
        floor = last + 2  # touching runs would have been merged
    return horizon, checked
