"""Patient feedback: LED and buzzer patterns for the four alarm grades and the device state.

Alarm grades map onto IEC 60601-1-8 priorities (design brief): red = high, orange =
medium, yellow = low, blue = information/technical. Signals, chosen inside the ranges of
IEC 60601-1-8 Tables 1, 3 and 4 as they are commonly quoted (docs/firmware-app.md):

    red     red LED flashing 2 Hz, 50 % on (standard: 1.4-2.8 Hz, 20-60 %); the
            10-pulse high-priority burst  x-x-x---x-x ..... x-x-x---x-x  at 880 Hz,
            pulses 150 ms, spacing 100 ms (x; 3rd-4th 2x+td), 700 ms between the two
            halves, burst repeated after 6 s
    orange  orange LED flashing 0.5 Hz, 50 % on (standard: 0.4-0.8 Hz); the 3-pulse
            medium-priority burst at 660 Hz, pulses 200 ms, spacing 200 ms, every 15 s
    yellow  yellow LED steady; one 2-pulse low-priority burst (440 Hz) when raised
    blue    blue LED steady; no tone (information)

Device state on the status LED: provisioning (double blink every 2 s), connecting (short
blink every 2 s), connected (a blip every 3 s), enrolled (steady 3 s when a certificate has
been installed, then the link state), error (4 Hz; the blue LED on). Transient patterns:
identify (status LED 5 Hz with chirps for 10 s) and the enrollment code (one group of
blinks per digit, 0 = ten blinks; firmware/enrollment.blink_counts).

Who decides. The gateway's rules (per-patient limits, persistence, acknowledgement) are
authoritative: while a session with the gateway is up (set_gateway_control(True)) only
the gateway's `feedback` commands choose the alarm signal. Local critical values
(config "critical") are the offline fallback: with no gateway in control they show the
highest local grade, together with whatever the gateway last commanded (a red alarm
latches until the gateway says otherwise). "silence" pauses the audio for silence_s; a
newly raised higher grade ends the pause.

Patterns are pure data (Timeline); Feedback.run() renders them with the HAL's LEDs and
buzzer and wakes at once when the selection changes. Runs on MicroPython.
"""

from firmware.robust import Wake

GRADES = ("red", "orange", "yellow", "blue")  # highest priority first
STATES = ("provisioning", "connecting", "connected", "enrolled", "error")
MAX_STEP_MS = 60000  # the longest a rendering step waits (liveness allowance)
COMMANDS = GRADES + ("off", "silence", "identify")
GATEWAY = "gateway"


class Timeline:
    """Cyclic (or one-shot) list of (duration_ms, value) segments."""

    def __init__(self, segments, repeat=True):
        if not segments:
            raise ValueError("a timeline needs segments")
        for duration, _ in segments:
            if duration <= 0:
                raise ValueError("segment durations must be > 0")
        self.segments = segments
        self.repeat = repeat
        self.period = sum([d for d, _ in segments])

    def at(self, elapsed_ms):
        """-> (segment index, value, ms until the next segment); (-1, 0, None) when a
        one-shot timeline is over."""
        if elapsed_ms >= self.period:
            if not self.repeat:
                return -1, 0, None
            elapsed_ms %= self.period
        start = 0
        for i in range(len(self.segments)):
            duration, value = self.segments[i]
            if elapsed_ms < start + duration:
                return i, value, start + duration - elapsed_ms
            start += duration
        return -1, 0, None  # unreachable: elapsed < period


def _high_priority_burst(freq=880, td=150, x=100, halves_gap=700, interburst=6000):
    pulses = []
    # Gaps after pulses 1..9 (IEC 60601-1-8 Table 3 high priority: x, x, 2x+td, x, ts, x,
    # x, 2x+td, x), then the interburst interval.
    gaps = (x, x, 2 * x + td, x, halves_gap, x, x, 2 * x + td, x, interburst)
    for gap in gaps:
        pulses.append((td, freq))
        pulses.append((gap, 0))
    return Timeline(pulses)


def _burst(count, freq, td, gap, interburst, repeat=True):
    segments = []
    for i in range(count):
        segments.append((td, freq))
        segments.append((gap if i < count - 1 else interburst, 0))
    return Timeline(segments, repeat)


def _flash(on_ms, off_ms):
    return Timeline([(on_ms, 1), (off_ms, 0)])


def _steady():
    return Timeline([(MAX_STEP_MS, 1)])


# grade -> (LED name, LED timeline, tone timeline or None)
ALARM_PATTERNS = {
    "red": ("red", _flash(250, 250), _high_priority_burst()),
    "orange": ("orange", _flash(1000, 1000), _burst(3, 660, 200, 200, 15000)),
    "yellow": ("yellow", _steady(), _burst(2, 440, 200, 200, 1000, repeat=False)),
    "blue": ("blue", _steady(), None),
}

STATE_PATTERNS = {
    "provisioning": Timeline([(150, 1), (150, 0), (150, 1), (1550, 0)]),
    "connecting": _flash(100, 1900),
    "connected": _flash(50, 2950),
    "enrolled": Timeline([(3000, 1)], repeat=False),
    "error": _flash(125, 125),
}

IDENTIFY_PATTERN = (Timeline([(100, 1), (100, 0)] * 50, repeat=False),
                    Timeline([(50, 2000), (950, 0)] * 10, repeat=False))


def code_timeline(counts, repeats=3):
    """Blink groups for an enrollment code (blink_counts): 200 ms on/off per blink, 1 s
    between digits, 3 s between repeats."""
    segments = []
    for _ in range(repeats):
        for count in counts:
            for i in range(count):
                segments.append((200, 1))
                segments.append((200 if i < count - 1 else 1000, 0))
        segments.append((3000, 0))
    return Timeline(segments, repeat=False)


class Feedback:
    """The patient-facing signals of one device (see the module docstring)."""

    def __init__(self, hal, buzzer=True, silence_s=120, beat=None, echo=None):
        self.hal = hal
        self._beat = beat  # called on every step (robust.Liveness), so a dead task shows
        # print-like: one console line per change of the alarm signal, the only evidence
        # of the LED state a test can read on a real board (docs/firmware-app.md)
        self._echo = echo
        self._announced = None  # the grade last announced (None: off)
        self.buzzer_enabled = buzzer
        self.silence_ms = silence_s * 1000
        self.state = "connecting"
        self.gateway_control = False
        self._gateway_grade = None
        self._local = {}  # source -> grade
        self._silenced_at = None
        self._silenced_grade = None
        self._transient = None  # (status timeline, tone timeline, started ticks)
        self._state_after = None
        self._wake = Wake(hal)
        self.running = True
        self.shown = None  # (grade, state) being rendered

    # ------------------------------------------------------------ inputs

    def set_state(self, state):
        if state not in STATES:
            raise ValueError("unknown state %r" % (state,))
        if state == "enrolled":
            self._state_after = self.state if self.state != "enrolled" else "connecting"
        if state != self.state:
            self.state = state
            self._changed()

    def set_gateway_control(self, on):
        if bool(on) != self.gateway_control:
            self.gateway_control = bool(on)
            self._changed()

    def local_alarm(self, source, grade):
        """Raise (grade) or clear (None) a locally detected condition, keyed by source."""
        if grade is not None and grade not in GRADES:
            raise ValueError("unknown grade %r" % (grade,))
        if self._local.get(source) == grade:
            return
        if grade is None:
            self._local.pop(source, None)
        else:
            self._local[source] = grade
        self._changed()

    def command(self, name):
        """A gateway `feedback` command: a grade, "off", "silence" or "identify"."""
        if name not in COMMANDS:
            raise ValueError("unknown feedback pattern %r (known: %s)"
                             % (name, ", ".join(COMMANDS)))
        if name == "identify":
            self.play(IDENTIFY_PATTERN[0], IDENTIFY_PATTERN[1])
            return
        if name == "silence":
            self._silenced_at = self.hal.ticks_ms()
            self._silenced_grade = self.grade()
        else:
            self._gateway_grade = None if name == "off" else name
        self._changed()

    def show_code(self, counts):
        """Blink an enrollment confirmation code on the status LED."""
        self.play(code_timeline(counts), None)

    def play(self, status_timeline, tone_timeline):
        self._transient = (status_timeline, tone_timeline, self.hal.ticks_ms())
        self._changed()

    def stop(self):
        self.running = False
        self._wake.set()

    def _changed(self):
        self._wake.set()

    # ------------------------------------------------------------ selection (pure)

    def grade(self):
        """The alarm grade shown now, or None."""
        candidates = []
        if self._gateway_grade is not None:
            candidates.append(self._gateway_grade)
        if not self.gateway_control:
            candidates.extend(self._local.values())
        for grade in GRADES:
            if grade in candidates:
                return grade
        return None

    def source(self, grade):
        """Who chose `grade` (None: off): "gateway" or "local"."""
        if grade == self._gateway_grade and (grade is not None or self.gateway_control):
            return GATEWAY
        return "local"

    def audible(self, grade):
        if grade is None or not self.buzzer_enabled:
            return False
        if self._silenced_at is None:
            return True
        if self.hal.ticks_diff(self.hal.ticks_ms(), self._silenced_at) >= self.silence_ms:
            self._silenced_at = None
            return True
        # Only a grade higher than the one silenced sounds during the pause.
        silenced = self._silenced_grade
        return silenced is not None and GRADES.index(grade) < GRADES.index(silenced)

    # ------------------------------------------------------------ rendering

    async def run(self):
        """Render until stop(): restarts the patterns whenever the selection changes."""
        while self.running:
            grade = self.grade()
            state = self.state
            self.shown = (grade, state)
            if grade != self._announced:
                self._announced = grade
                if self._echo is not None:
                    self._echo("feedback grade=%s source=%s"
                               % (grade or "off", self.source(grade)))
            await self._render(grade, state)

    def _leds_off(self, keep=None):
        for name in GRADES:
            if name != keep:
                self.hal.led(name).off()

    async def _render(self, grade, state):
        """Drive the LEDs and buzzer until the selection changes -> returns."""
        hal = self.hal
        started = hal.ticks_ms()
        led_name = led_tl = alarm_tone = None
        if grade is not None:
            led_name, led_tl, alarm_tone = ALARM_PATTERNS[grade]
        audible = self.audible(grade)
        tone_tl = alarm_tone if audible else None
        self._leds_off(led_name)
        if state == "error" and grade is None:
            hal.led("blue").on()
        status_tl = STATE_PATTERNS[state]
        status_start = started
        tone_start = started
        transient = self._transient
        if transient is not None:
            status_tl, extra_tone, status_start = transient
            if tone_tl is None and extra_tone is not None:
                tone_tl = extra_tone
                tone_start = status_start
        buzzer = hal.buzzer()
        buzzer.off()
        last_tone = -1
        while self.running:
            if self._beat is not None:
                self._beat()
            now = hal.ticks_ms()
            waits = []
            if led_tl is not None:
                _, lit, wait = led_tl.at(hal.ticks_diff(now, started))
                hal.led(led_name).value(lit)
                waits.append(wait)
            index, lit, wait = status_tl.at(hal.ticks_diff(now, status_start))
            if index < 0:  # a one-shot status pattern is over
                if transient is not None:
                    self._transient = None
                elif state == "enrolled":
                    self.state = self._state_after or "connecting"
                return
            hal.led("status").value(lit)
            waits.append(wait)
            if tone_tl is not None:
                index, freq, wait = tone_tl.at(hal.ticks_diff(now, tone_start))
                if index != last_tone:
                    last_tone = index
                    if freq:
                        buzzer.tone(freq, tone_tl.segments[index][0])
                if wait is not None:
                    waits.append(wait)
            if await self._wake.sleep(min(waits)):
                return
            if grade is not None and self.audible(grade) != audible:
                return  # a silence pause ended: sound again
