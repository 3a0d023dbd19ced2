"""Declarative filter chains for sampled values: small composable objects, pure logic.

A chain is a list of filters a value passes in order; each filter returns the value to
pass on (possibly changed) or None to stop it here:

    median(n)                  median of the last n accepted values (n odd: a true sample)
    moving_average(n)          mean of the last n values
    plausibility(lo, hi, max_step=0, max_gap_s=30)
                               drop values outside lo..hi; a jump larger than max_step
                               from the last accepted value is held back until the next
                               value confirms the new level (a one-sample spike is
                               dropped, a real change passes one sample later); after
                               max_gap_s without a value there is nothing to jump from
    throttle(min_interval_s, max_interval_s, min_change)
                               pass a value when it moved by >= min_change since the last
                               one passed and min_interval_s has elapsed, or when
                               max_interval_s has elapsed (the heartbeat: a steady value is
                               still reported, so silence means "no data", never "no
                               change"). An *urgent* value (a local critical value) always
                               passes.

Specs are lists such as [["plausibility", 50, 100, 8], ["median", 3], ["throttle", 5, 60, 1]]
(firmware/config.py); build_chain(spec) validates them and raises ValueError naming the
problem. Time is seconds from any monotonic origin. Every filter keeps at most
MAX_WINDOW values: memory is bounded whatever the configuration. Runs on MicroPython.
"""

MAX_WINDOW = 32


def _number(value):
    kind = type(value)
    return (kind is int or kind is float) and value - value == 0  # finite, not bool


def _check_window(name, n):
    if type(n) is not int or not 1 <= n <= MAX_WINDOW:
        raise ValueError("%s: window must be an integer 1..%d, not %r" % (name, MAX_WINDOW, n))
    return n


def _check_nonneg(name, what, value):
    if not _number(value) or value < 0:
        raise ValueError("%s: %s must be a number >= 0, not %r" % (name, what, value))
    return value


class _Window:
    """The last n values (n <= MAX_WINDOW); subclasses reduce them to one."""

    name = "window"

    def __init__(self, n):
        self.n = _check_window(self.name, n)
        self.values = []

    def _push(self, value):
        self.values.append(value)
        if len(self.values) > self.n:
            self.values.pop(0)
        return self.values

    def reset(self):
        self.values = []


class Median(_Window):
    """Median of the last n values (for even n the mean of the middle two)."""

    name = "median"

    def apply(self, value, t, urgent=False):
        ordered = sorted(self._push(value))
        mid = len(ordered) // 2
        if len(ordered) % 2:
            return ordered[mid]
        return (ordered[mid - 1] + ordered[mid]) / 2


class MovingAverage(_Window):
    """Mean of the last n values."""

    name = "moving_average"

    def apply(self, value, t, urgent=False):
        values = self._push(value)
        return sum(values) / len(values)


class Plausibility:
    """Range check plus jump confirmation (see the module docstring)."""

    name = "plausibility"

    def __init__(self, low, high, max_step=0, max_gap_s=30):
        if not _number(low) or not _number(high) or low > high:
            raise ValueError("plausibility: need numbers low <= high, not %r, %r" % (low, high))
        self.low = low
        self.high = high
        self.max_step = _check_nonneg(self.name, "max_step", max_step)
        self.max_gap_s = _check_nonneg(self.name, "max_gap_s", max_gap_s)
        self.rejected = 0  # values dropped (range or unconfirmed jump)
        self.reset()

    def reset(self):
        self.last = None
        self.last_t = None
        self.candidate = None

    def apply(self, value, t, urgent=False):
        if not _number(value) or not self.low <= value <= self.high:
            self.rejected += 1
            return None
        if (self.max_step and self.last is not None and t - self.last_t <= self.max_gap_s
                and abs(value - self.last) > self.max_step):
            candidate = self.candidate
            if candidate is None or abs(value - candidate) > self.max_step:
                self.candidate = value  # wait for a second value at the new level
                self.rejected += 1
                return None
        self.candidate = None
        self.last = value
        self.last_t = t
        return value


class Throttle:
    """Report on change (rate-limited) and as a heartbeat (see the module docstring)."""

    name = "throttle"

    def __init__(self, min_interval_s, max_interval_s, min_change=0):
        _check_nonneg(self.name, "min_interval_s", min_interval_s)
        _check_nonneg(self.name, "max_interval_s", max_interval_s)
        if max_interval_s < min_interval_s:
            raise ValueError("throttle: max_interval_s must be >= min_interval_s")
        self.min_interval_s = min_interval_s
        self.max_interval_s = max_interval_s
        self.min_change = _check_nonneg(self.name, "min_change", min_change)
        self.reset()

    def reset(self):
        self.last = None
        self.last_t = None

    def apply(self, value, t, urgent=False):
        if not urgent and self.last is not None:
            elapsed = t - self.last_t
            if elapsed < self.max_interval_s and (
                    elapsed < self.min_interval_s or abs(value - self.last) < self.min_change):
                return None
        self.last = value
        self.last_t = t
        return value


FILTERS = {
    "median": Median,
    "moving_average": MovingAverage,
    "plausibility": Plausibility,
    "throttle": Throttle,
    "heartbeat": Throttle,  # the same filter under the name of its other half
}


class Chain:
    """Filters applied in order. push(value, t, urgent) -> value or None."""

    def __init__(self, filters):
        self.filters = list(filters)
        self.passed = 0
        self.dropped = 0

    def push(self, value, t, urgent=False):
        for f in self.filters:
            value = f.apply(value, t, urgent)
            if value is None:
                self.dropped += 1
                return None
        self.passed += 1
        return value

    def reset(self):
        """Forget history (after a sensor restart or a finger put back)."""
        for f in self.filters:
            f.reset()


def make_filter(spec):
    """One filter from ["name", arg, ...] -> filter object; ValueError when invalid."""
    if not isinstance(spec, (list, tuple)) or not spec or not isinstance(spec[0], str):
        raise ValueError("a filter is [name, arguments...], not %r" % (spec,))
    cls = FILTERS.get(spec[0])
    if cls is None:
        raise ValueError("unknown filter %r (known: %s)" % (spec[0], ", ".join(sorted(FILTERS))))
    try:
        return cls(*spec[1:])
    except TypeError:
        raise ValueError("%s: wrong number of arguments %r" % (spec[0], list(spec[1:]))) from None


def build_chain(specs):
    """A Chain from a list of filter specs; ValueError names the first bad one."""
    if not isinstance(specs, (list, tuple)):
        raise ValueError("a filter chain is a list of filters, not %r" % (specs,))
    if len(specs) > 8:
        raise ValueError("at most 8 filters in a chain")
    return Chain([make_filter(spec) for spec in specs])
