"""Robustness: watchdog feeding tied to task liveness, safe boot after repeated crashes,
explicit garbage collection, and the bounded queues the app uses everywhere.

* Liveness + WatchdogFeeder: the main loop feeds the hardware watchdog only while every
  registered task has beaten within its allowance. A task that hangs (or the whole loop
  blocking) starves the watchdog and the chip resets -- a stuck firmware never looks
  alive.
* SafeBoot: a small record file counts consecutive crashes: boots after a watchdog or
  hard reset (a panic), and exceptions the entry point caught (record_crash, then reset).
  After `limit` crashes without `stable_s` of normal running in between, the device boots
  into safe mode: no sensors, only the link, so it can be diagnosed and updated. A
  power-on reset clears the count (someone power-cycled it: try again); so does stable
  running in normal mode. The count survives everything else.
* collect()/configure_gc(): gc.collect() between cycles and a gc.threshold so collection
  happens in small steps rather than one long pause when the heap runs out.
* BoundedQueue: every queue has a maximum; when full the oldest (non-kept) item goes and
  is counted. Wake: an interruptible sleep on the HAL clock (virtual time in simulation).

Runs on MicroPython and CPython (the gc calls that CPython lacks are skipped).
"""

import asyncio
import gc

from firmware import fileio
from protocol import cbor

BOOT_FILE = "bootstate"
FILE_VERSION = 1
CRASH_CAUSES = ("watchdog", "hard")
_KEEP_CAUSES = 8


# ---------------------------------------------------------------- bounded queues


class BoundedQueue:
    """FIFO of at most `maxlen` items. put() never blocks and never grows past the bound:
    the oldest item not marked keep is dropped (counted in `dropped`); when every item is
    kept, the oldest kept item goes (counted in `dropped_kept` -- the caller reports it)."""

    def __init__(self, maxlen):
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        self.maxlen = maxlen
        self._items = []  # [item, keep]
        self.dropped = 0
        self.dropped_kept = 0

    def __len__(self):
        return len(self._items)

    def put(self, item, keep=False):
        """Append -> the item dropped to make room, or None."""
        dropped = None
        if len(self._items) >= self.maxlen:
            index = 0
            for i in range(len(self._items)):
                if not self._items[i][1]:
                    index = i
                    break
            else:
                if not keep:  # the newcomer is the least important
                    self.dropped += 1
                    return item
            dropped, was_kept = self._items.pop(index)
            if was_kept:
                self.dropped_kept += 1
            else:
                self.dropped += 1
        self._items.append([item, keep])
        assert len(self._items) <= self.maxlen
        return dropped

    def get(self):
        """The oldest item (IndexError when empty)."""
        return self._items.pop(0)[0]

    def peek(self):
        return self._items[0][0] if self._items else None

    def items(self):
        return [pair[0] for pair in self._items]

    def clear(self):
        self._items = []


class Wake:
    """sleep(ms) on the HAL clock that set() ends early. One sleeper at a time.

    set() cancels the sleeping task itself (the CancelledError is caught here), rather
    than running the sleep in a helper task: a task created per sleep would start late
    under the simulator's virtual clock, which only knows tasks that already sleep."""

    def __init__(self, hal):
        self.hal = hal
        self._flag = False
        self._sleeper = None  # the task inside sleep(), while it waits

    def set(self):
        self._flag = True
        sleeper = self._sleeper
        if sleeper is not None:
            self._sleeper = None
            sleeper.cancel()

    async def sleep(self, ms):
        """-> True if woken by set() (now or before the call), False after ms."""
        if not self._flag:
            self._sleeper = asyncio.current_task()
            try:
                await self.hal.asleep_ms(ms)
            except asyncio.CancelledError:
                if not self._flag:
                    raise  # cancelled by someone else: really stop
            finally:
                self._sleeper = None
        woken = self._flag
        self._flag = False
        return woken


# ---------------------------------------------------------------- liveness and watchdog


class Liveness:
    """Tasks beat; stale() names those silent for longer than their allowance."""

    def __init__(self, hal):
        self.hal = hal
        self._tasks = {}  # name -> [allowance_ms, last beat ticks]

    def register(self, name, allowance_ms):
        self._tasks[name] = [allowance_ms, self.hal.ticks_ms()]

    def unregister(self, name):
        self._tasks.pop(name, None)

    def beat(self, name):
        entry = self._tasks.get(name)
        if entry is not None:
            entry[1] = self.hal.ticks_ms()

    def stale(self):
        now = self.hal.ticks_ms()
        return [name for name in sorted(self._tasks)
                if self.hal.ticks_diff(now, self._tasks[name][1]) > self._tasks[name][0]]


class WatchdogFeeder:
    """Starts the hardware watchdog and feeds it only while `liveness` is all fresh."""

    def __init__(self, hal, timeout_ms, liveness):
        self.hal = hal
        self.timeout_ms = timeout_ms
        self.liveness = liveness
        self.watchdog = None
        self.starved = []  # the stale task names when feeding was last refused

    def start(self):
        self.watchdog = self.hal.watchdog(self.timeout_ms)
        self.watchdog.feed()

    def feed(self):
        """Feed if every task is alive -> True; else leave the watchdog to bite."""
        stale = self.liveness.stale()
        if stale:
            self.starved = stale
            return False
        if self.watchdog is not None:
            self.watchdog.feed()
        return True


# ---------------------------------------------------------------- memory


def configure_gc(threshold):
    """Enable automatic collection, in steps of `threshold` allocated bytes (0: default)."""
    gc.enable()
    set_threshold = getattr(gc, "threshold", None)
    if set_threshold is not None and threshold:
        try:
            set_threshold(threshold)
        except TypeError:  # CPython's gc.threshold does not exist; other ports differ
            pass


def collect():
    """gc.collect() -> free heap bytes where the port reports them, else None."""
    gc.collect()
    mem_free = getattr(gc, "mem_free", None)
    return mem_free() if mem_free is not None else None


# ---------------------------------------------------------------- safe boot


class SafeBoot:
    """Consecutive-crash counter in `directory`/bootstate (see the module docstring)."""

    def __init__(self, directory, limit=3):
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.path = directory + "/" + BOOT_FILE
        self.directory = directory
        self.limit = limit
        self.crashes = 0
        self.causes = []  # the last few crash causes, newest last
        self.pending = None  # a crash the entry point recorded before resetting
        self.safe_mode = False
        self.writes = 0

    def _load(self):
        payload, _ = fileio.read_record(self.path)
        self.crashes = 0
        self.causes = []
        self.pending = None
        if payload is None:
            return
        try:
            state = cbor.loads(payload)
        except ValueError:
            return
        if not isinstance(state, dict) or state.get(0) != FILE_VERSION:
            return
        crashes = state.get(1)
        causes = state.get(2)
        pending = state.get(3)
        if isinstance(crashes, int) and not isinstance(crashes, bool) and crashes >= 0:
            self.crashes = crashes
        if isinstance(causes, list):
            self.causes = [c for c in causes if isinstance(c, str)][-_KEEP_CAUSES:]
        if isinstance(pending, str):
            self.pending = pending

    def _save(self):
        fileio.make_dirs(self.directory)
        fileio.write_record(self.path, cbor.dumps({0: FILE_VERSION, 1: self.crashes,
                                                   2: self.causes, 3: self.pending}))
        self.writes += 1

    def boot(self, reset_cause, now=0):
        """Count this boot -> events ([] on a clean boot). Sets safe_mode."""
        self._load()
        crash = None
        if self.pending is not None:
            crash = self.pending
        elif reset_cause in CRASH_CAUSES:
            crash = reset_cause
        events = []
        if crash is not None:
            self.crashes += 1
            self.causes = (self.causes + [crash])[-_KEEP_CAUSES:]
            self.pending = None
            self._save()
            events.append({"event": "crash-recovered", "time": now, "cause": crash[:100],
                           "crashes": self.crashes})
        elif reset_cause == "power-on" and (self.crashes or self.causes):
            self.crashes = 0
            self.causes = []
            self._save()
        self.safe_mode = self.crashes >= self.limit
        if self.safe_mode:
            events.append({"event": "safe-mode", "time": now, "crashes": self.crashes,
                           "causes": ",".join(self.causes)[:100]})
        return events

    def record_crash(self, reason):
        """Called by the entry point with an uncaught exception, before it resets."""
        self._load()
        self.pending = str(reason)[:100] or "exception"
        self._save()

    def mark_stable(self):
        """Normal mode ran stable_s without crashing: the count starts again."""
        if self.safe_mode or (self.crashes == 0 and not self.causes):
            return False
        self.crashes = 0
        self.causes = []
        self._save()
        return True
