"""Heart rate, SpO2, perfusion index and signal quality from raw red/IR PPG samples.

Input is what a MAX30102/MAX30101 FIFO delivers: unsigned ADC counts (18-bit full scale)
of the red and infrared channels, sampled together at `fs` Hz. The method (documented
with its accuracy in docs/firmware-hardware.md):

1. Finger check: mean IR of the last second below `finger_threshold` counts means no
   finger (only ambient light reaches the photodiode); near full scale means saturation.
2. Band-pass: subtract a 1 s centred moving average (removes DC, respiration and drift),
   then smooth with a ~0.1 s centred moving average (removes noise above ~5 Hz). Both are
   linear and identical on both channels, so they preserve the red/IR amplitude ratio.
3. Beats: systolic peaks of the inverted, filtered IR signal (raw light *drops* when the
   arteries fill). A candidate is a local maximum above an adaptive threshold (half the
   80th percentile of candidate heights, so a dicrotic wave or a noise wiggle does not
   count); a refractory period (60/max_hr s) keeps the taller of two close candidates,
   and intervals shorter than 0.6 x the median interval are merged. Peak times are
   refined to a fraction of a sample by parabolic interpolation.
4. Heart rate: 60 / mean of the beat-to-beat intervals within 0.7..1.4 x their median.
5. SpO2: the ratio of ratios R = (AC_red/DC_red) / (AC_ir/DC_ir). DC is the window mean
   of each channel. AC_red/AC_ir is a least-squares slope of the red pulse on the IR
   pulse, where each beat (diastole to diastole, on the lightly smoothed raw signal) is
   measured from the straight line joining its two diastolic points -- which removes
   drift and respiration -- and the beats are pooled. Every sample contributes, and
   unlike peak-minus-trough amplitudes the slope is not biased by picking extremes out
   of noise. R goes through the calibration curve. Per-beat slopes give per-beat SpO2
   values whose spread feeds the quality index.
6. Perfusion index: 100 x median over beats of AC_ir/DC_ir, where AC is the systolic dip
   below the diastolic baseline interpolated between the surrounding diastoles (percent).
7. Quality 0..100: product of scores in 0..1 -- beat-shape consistency (correlation of
   each beat with the average beat), beat-interval regularity, spread of the per-beat
   SpO2 values, agreement of SpO2 with the ratio measured only at the heart-rate
   harmonics (motion spreads over all frequencies), perfusion, and the share of
   intervals that agree with the median.

Arithmetic: sums of raw counts are integers (exact); intermediate signals are centred on
the window mean and kept in array('f') (float32, no heap object per sample) so results
are the same on ESP32 (single-precision floats) and on 64-bit hosts.
"""

import math
from array import array

FULL_SCALE = (1 << 18) - 1  # 18-bit ADC
DEFAULT_FINGER_THRESHOLD = 50000  # IR counts at the driver defaults (7.2 mA, 4096 nA range)
_SATURATION = int(FULL_SCALE * 0.97)
_SE_GOOD = 0.4  # % SpO2: standard error of the pooled value that costs no quality...
_SE_SPAN = 1.0  # ...and the further error that brings that score to 0


class Calibration:
    """SpO2 (%) = a*R^2 + b*R + c on the decreasing branch of the curve.

    Below the curve's maximum (R < r_peak) the value is held at the maximum, and the
    result is clamped to 0..100. Empirical curves like these are only as good as the
    optics they were fitted to: a product needs its own calibration against arterial
    blood samples (ISO 80601-2-61); see docs/firmware-hardware.md.
    """

    def __init__(self, name, a, b, c):
        if a > 0 or (a == 0 and b >= 0):
            raise ValueError("calibration curve must decrease with R")
        self.name = name
        self.a = float(a)
        self.b = float(b)
        self.c = float(c)
        self.r_peak = -self.b / (2 * self.a) if self.a else 0.0

    def spo2(self, ratio):
        r = ratio if ratio > self.r_peak else self.r_peak
        value = (self.a * r + self.b) * r + self.c
        return min(100.0, max(0.0, value))

    def ratio_for(self, spo2):
        """The R this curve maps to `spo2` (inverse on the decreasing branch)."""
        a, b, c = self.a, self.b, self.c
        if a == 0:
            return max(0.0, (spo2 - c) / b)
        disc = b * b - 4 * a * (c - spo2)
        if disc <= 0:  # above the curve's maximum
            return self.r_peak
        return (-b - math.sqrt(disc)) / (2 * a)


# Maxim reference design MAXREFDES117 (RD117, algorithm.h): its SpO2 table "is
# approximated as -45.060*R*R + 30.354*R + 94.845". Vendor curve for this sensor family.
MAXIM_RD117 = Calibration("maxim-rd117", -45.060, 30.354, 94.845)
# The textbook straight line SpO2 = 110 - 25 R, kept for comparison and for boards
# calibrated to it.
LINEAR_110_25 = Calibration("linear-110-25r", 0.0, -25.0, 110.0)

STATUS_OK = "ok"
STATUS_TOO_SHORT = "too-short"
STATUS_NO_FINGER = "no-finger"
STATUS_SATURATED = "saturated"
STATUS_NO_PULSE = "no-pulse"


class Estimate:
    """Result of one analysis window.

    hr (beat/min), spo2 (%), pi (perfusion index, %) and ratio (R) are None when they
    could not be computed; quality is 0..100; finger says whether tissue covers the
    sensor; beats counts detected systolic peaks; status is one of the STATUS_* strings.
    """

    def __init__(self, status, finger, hr=None, spo2=None, pi=None, ratio=None,
                 quality=0, beats=0, dc_red=0, dc_ir=0):
        self.status = status
        self.finger = finger
        self.hr = hr
        self.spo2 = spo2
        self.pi = pi
        self.ratio = ratio
        self.quality = quality
        self.beats = beats
        self.dc_red = dc_red
        self.dc_ir = dc_ir

    def valid(self, min_quality=50):
        return self.status == STATUS_OK and self.quality >= min_quality

    def as_dict(self):
        return {
            "status": self.status, "finger": self.finger, "hr": self.hr, "spo2": self.spo2,
            "pi": self.pi, "ratio": self.ratio, "quality": self.quality, "beats": self.beats,
            "dc_red": self.dc_red, "dc_ir": self.dc_ir,
        }

    def __repr__(self):
        return "Estimate(%s)" % self.as_dict()


def _floats(n):
    """n zeros as float32 storage, on MicroPython and CPython."""
    try:
        out = array("f", bytes(4 * n))  # MicroPython fills from the buffer: n floats
        if len(out) == n:
            return out
    except TypeError:  # CPython refuses bytes for a float array
        pass
    return array("f", [0.0]) * n


def _odd(width):
    width = int(width)
    if width < 1:
        width = 1
    return width if width % 2 else width + 1


def _moving_average(src, width, out, offset=0):
    """Centred moving average of src - offset into out; the window shrinks at the edges."""
    n = len(src)
    half = width // 2
    total = 0
    lo = 0
    hi = 0
    for i in range(n):
        want_hi = i + half + 1
        if want_hi > n:
            want_hi = n
        want_lo = i - half
        if want_lo < 0:
            want_lo = 0
        while hi < want_hi:
            total += src[hi] - offset
            hi += 1
        while lo < want_lo:
            total -= src[lo] - offset
            lo += 1
        out[i] = total / (hi - lo)
    return out


def _band_pass(raw, mean, fs):
    """(detrended, smoothed detrended, smoothed raw-minus-mean) of one channel."""
    n = len(raw)
    baseline = _moving_average(raw, _odd(fs), _floats(n), mean)
    smooth_width = _odd(max(3, round(fs * 0.1)))
    smoothed_raw = _moving_average(raw, smooth_width, _floats(n), mean)
    for i in range(n):
        baseline[i] = smoothed_raw[i] - baseline[i]  # reuse: now band-passed
    return baseline, smoothed_raw


def _percentile(values, fraction):
    ordered = sorted(values)
    index = int(fraction * (len(ordered) - 1) + 0.5)
    return ordered[index]


def _clamp01(x):
    return 0.0 if x < 0 else (1.0 if x > 1 else x)


def _find_peaks(pulse, fs, max_hr):
    """Indices of systolic peaks in `pulse` (positive = more blood)."""
    n = len(pulse)
    candidates = []
    for i in range(1, n - 1):
        v = pulse[i]
        if v > 0 and v > pulse[i - 1] and v >= pulse[i + 1]:
            candidates.append(i)
    if not candidates:
        return []
    threshold = 0.5 * _percentile([pulse[i] for i in candidates], 0.8)
    refractory = fs * 60.0 / max_hr
    peaks = []
    for i in candidates:
        if pulse[i] < threshold:
            continue
        if peaks and i - peaks[-1] < refractory:
            if pulse[i] > pulse[peaks[-1]]:
                peaks[-1] = i
            continue
        peaks.append(i)
    if len(peaks) < 3:
        return peaks
    # Merge beats closer than 0.6 x the median interval (a missed threshold cut).
    median = _percentile([peaks[k] - peaks[k - 1] for k in range(1, len(peaks))], 0.5)
    merged = [peaks[0]]
    for i in peaks[1:]:
        if i - merged[-1] < 0.6 * median:
            if pulse[i] > pulse[merged[-1]]:
                merged[-1] = i
        else:
            merged.append(i)
    return merged


def _refine(pulse, i):
    """Sub-sample position of the peak at i (parabola through three points)."""
    if i <= 0 or i >= len(pulse) - 1:
        return float(i)
    left, mid, right = pulse[i - 1], pulse[i], pulse[i + 1]
    denominator = left - 2 * mid + right
    if denominator >= 0:
        return float(i)
    return i + 0.5 * (left - right) / denominator


def _argmin(values, lo, hi):
    best = lo
    for i in range(lo + 1, hi):
        if values[i] < values[best]:
            best = i
    return best


def _beat_ratio(smooth, mean, left, peak, right):
    """(AC, DC) of one beat on a lightly smoothed raw channel."""
    span = right - left
    if span <= 0:
        return 0.0, 0.0
    base = smooth[left] + (smooth[right] - smooth[left]) * (peak - left) / span
    return base - smooth[peak], base + mean


def _beat_regression(y, x, left, right):
    """(Sxy, Sxx) of channel y on channel x over one beat, after removing from each the
    straight line through its values at the two diastolic points.

    The line removes baseline drift and respiration that a fixed high-pass leaves in; the
    centred sums make the slope Sxy/Sxx independent of any offset. Pooling the sums of
    all beats gives the least-squares slope with a free offset per beat.
    """
    span = right - left
    if span < 3:
        return 0.0, 0.0
    x0, y0 = x[left], y[left]
    dx = (x[right] - x0) / span
    dy = (y[right] - y0) / span
    sx = sy = sxy = sxx = 0.0
    n = span + 1
    for j in range(n):
        u = x0 + dx * j - x[left + j]  # pulse: baseline minus signal (light lost to blood)
        v = y0 + dy * j - y[left + j]
        sx += u
        sy += v
        sxy += u * v
        sxx += u * u
    return sxy - sx * sy / n, sxx - sx * sx / n


def _correlation(x, y):
    n = len(x)
    mx = sum(x) / n
    my = sum(y) / n
    sxy = sxx = syy = 0.0
    for i in range(n):
        dx = x[i] - mx
        dy = y[i] - my
        sxy += dx * dy
        sxx += dx * dx
        syy += dy * dy
    if sxx <= 0 or syy <= 0:
        return 0.0
    return sxy / math.sqrt(sxx * syy)


def analyse(red, ir, fs, calibration=MAXIM_RD117, finger_threshold=DEFAULT_FINGER_THRESHOLD,
            max_hr=240):
    """Estimate from one window of samples (sequences of ints, same rate `fs` Hz)."""
    if fs <= 0:
        raise ValueError("fs must be positive")
    n = min(len(red), len(ir))
    fs = float(fs)
    if n == 0:
        return Estimate(STATUS_TOO_SHORT, False)
    recent = int(fs) if 0 < int(fs) < n else n  # finger state from the last second
    recent_ir = sum(ir[n - recent:n]) // recent
    recent_red = sum(red[n - recent:n]) // recent
    if recent_ir < finger_threshold:
        return Estimate(STATUS_NO_FINGER, False, quality=0, dc_red=recent_red, dc_ir=recent_ir)
    if recent_ir >= _SATURATION or recent_red >= _SATURATION:
        return Estimate(STATUS_SATURATED, True, dc_red=recent_red, dc_ir=recent_ir)
    if n < 2 * fs or n < 8:
        return Estimate(STATUS_TOO_SHORT, True, dc_red=recent_red, dc_ir=recent_ir)
    if len(red) != n:
        red = red[:n]
    if len(ir) != n:
        ir = ir[:n]
    mean_ir = sum(ir) // n
    mean_red = sum(red) // n
    if mean_red <= 0:  # red LED dark: no ratio to take
        return Estimate(STATUS_NO_PULSE, True, dc_red=mean_red, dc_ir=mean_ir)
    band_ir, smooth_ir = _band_pass(ir, mean_ir, fs)
    band_red, smooth_red = _band_pass(red, mean_red, fs)
    for i in range(n):
        band_ir[i] = -band_ir[i]  # systole up
        band_red[i] = -band_red[i]

    def no_pulse(beats):
        return Estimate(STATUS_NO_PULSE, True, beats=beats, dc_red=mean_red, dc_ir=mean_ir)

    peaks = _find_peaks(band_ir, fs, max_hr)
    if len(peaks) < 3:
        return no_pulse(len(peaks))
    times = [_refine(band_ir, i) for i in peaks]
    intervals = [times[k] - times[k - 1] for k in range(1, len(times))]
    median = _percentile(intervals, 0.5)
    good = [x for x in intervals if 0.7 * median <= x <= 1.4 * median]
    if len(good) < 2:
        return no_pulse(len(peaks))
    mean_interval = sum(good) / len(good)
    hr = 60.0 * fs / mean_interval
    if hr > max_hr or hr < 20:
        return no_pulse(len(peaks))

    # Diastolic points (raw maxima) between consecutive peaks delimit the beats.
    valleys = []
    for k in range(1, len(peaks)):
        valleys.append(_argmin(band_ir, peaks[k - 1] + 1, peaks[k]))
    scale = mean_ir / mean_red
    ratios = []
    perfusions = []
    pooled_xy = pooled_xx = 0.0
    for k in range(1, len(valleys)):
        left, right = valleys[k - 1], valleys[k]
        sxy, sxx = _beat_regression(smooth_red, smooth_ir, left, right)
        if sxx > 0:
            ratios.append(sxy / sxx * scale)
            pooled_xy += sxy
            pooled_xx += sxx
        ac, dc = _beat_ratio(smooth_ir, mean_ir, left, peaks[k], right)
        if ac > 0 and dc > 0:
            perfusions.append(ac / dc)
    if len(ratios) < 2 or not perfusions or pooled_xx <= 0 or pooled_xy <= 0:
        return no_pulse(len(peaks))
    ratio = pooled_xy / pooled_xx * scale
    pi = 100.0 * _percentile(perfusions, 0.5)
    spo2 = calibration.spo2(ratio)

    variance = sum((x - mean_interval) * (x - mean_interval) for x in good) / len(good)
    rhythm_cv = math.sqrt(variance) / mean_interval
    beat_spo2 = [calibration.spo2(r) for r in ratios]
    # Standard error of the pooled SpO2, from the beats' interquartile range (IQR/1.35
    # estimates a standard deviation): many noisy beats can still give a firm value.
    spo2_error = ((_percentile(beat_spo2, 0.75) - _percentile(beat_spo2, 0.25)) / 1.35
                  / math.sqrt(len(beat_spo2)))
    harmonic = _harmonic_slope(band_red, band_ir, 1.0 / mean_interval)
    disagreement = abs(calibration.spo2(harmonic * scale) - spo2) if harmonic else 100.0
    score = (
        _clamp01((_morphology(band_ir, peaks, median) - 0.5) / 0.4)
        * _clamp01(1.0 - (rhythm_cv - 0.05) / 0.2)
        * _clamp01(1.0 - (spo2_error - _SE_GOOD) / _SE_SPAN)
        * _clamp01(1.0 - (disagreement - 0.5) / 1.5)
        * _clamp01((pi - 0.05) / 0.25)
        * len(good) / len(intervals)
    )
    return Estimate(
        STATUS_OK, True, hr=hr, spo2=spo2, pi=pi, ratio=ratio, quality=int(100 * score + 0.5),
        beats=len(peaks), dc_red=mean_red, dc_ir=mean_ir,
    )


def _harmonic_slope(y, x, cycles_per_sample, harmonics=3):
    """Red/IR amplitude ratio at the first harmonics of the heart rate (Hann window).

    Motion and noise spread over all frequencies, the arterial pulse sits on its
    harmonics: when this ratio disagrees with the all-samples slope, something other
    than the pulse drives the signals. Rotations are updated by recurrence (no trig
    call per sample).
    """
    n = len(x)
    num = 0.0
    den = 0.0
    window_step = 2 * math.pi / (n - 1)
    wc, ws = math.cos(window_step), math.sin(window_step)
    for h in range(1, harmonics + 1):
        step = 2 * math.pi * cycles_per_sample * h
        if step >= math.pi:  # at or above Nyquist
            break
        sc, ss = math.cos(step), math.sin(step)
        c, s = 1.0, 0.0  # rotation e^(-j*step*k)
        hc, hs = 1.0, 0.0  # rotation for the Hann window
        xr = xi = yr = yi = 0.0
        for k in range(n):
            w = 0.5 - 0.5 * hc
            xr += w * x[k] * c
            xi -= w * x[k] * s
            yr += w * y[k] * c
            yi -= w * y[k] * s
            c, s = c * sc - s * ss, s * sc + c * ss
            hc, hs = hc * wc - hs * ws, hs * wc + hc * ws
        num += yr * xr + yi * xi
        den += xr * xr + xi * xi
    if den <= 0:
        return None
    return num / den


_TEMPLATE_POINTS = 16


def _morphology(pulse, peaks, period):
    """Mean correlation of each beat with the average beat (1 = identical shapes).

    Beats are cut from 0.4 period before to 0.6 period after each peak and resampled to
    16 points; motion and noise change beat shapes, a clean rhythm repeats them.
    """
    n = len(pulse)
    beats = []
    for peak in peaks:
        start = peak - 0.4 * period
        if start < 0 or start + period > n - 1:
            continue
        beat = _floats(_TEMPLATE_POINTS)
        for j in range(_TEMPLATE_POINTS):
            x = start + period * j / (_TEMPLATE_POINTS - 1)
            i = int(x)
            f = x - i
            beat[j] = pulse[i] * (1 - f) + pulse[i + 1] * f if i + 1 < n else pulse[i]
        beats.append(beat)
    if len(beats) < 2:
        return 0.0
    template = _floats(_TEMPLATE_POINTS)
    for beat in beats:
        for j in range(_TEMPLATE_POINTS):
            template[j] += beat[j]
    return sum(_correlation(beat, template) for beat in beats) / len(beats)


class PulseOximeter:
    """Streaming front end: keeps the last `window_s` seconds of samples and analyses them.

    Feed it batches from the driver with add(); call estimate() when a value is due. A
    discontinuity (FIFO overflow, sensor reset) clears the window, because a gap would
    read as a missing beat; so does a finger put on or taken off (judged on the batch's
    mean IR), so the first estimate after placing a finger sees no step.
    """

    def __init__(self, fs, window_s=8, calibration=MAXIM_RD117,
                 finger_threshold=DEFAULT_FINGER_THRESHOLD):
        self.fs = fs
        self.capacity = int(fs * window_s)
        self.calibration = calibration
        self.finger_threshold = finger_threshold
        self.red = array("i")
        self.ir = array("i")
        self._finger = None

    def reset(self):
        self.red = array("i")
        self.ir = array("i")

    def add(self, red, ir, discontinuity=False):
        count = min(len(red), len(ir))
        if count:
            finger = sum(ir[:count]) // count >= self.finger_threshold
            if finger != self._finger:
                discontinuity = True
                self._finger = finger
        if discontinuity:
            self.reset()
        if count >= self.capacity:
            self.red = array("i", red[count - self.capacity:count])
            self.ir = array("i", ir[count - self.capacity:count])
            return
        excess = len(self.ir) + count - self.capacity
        if excess > 0:
            self.red = self.red[excess:]
            self.ir = self.ir[excess:]
        for i in range(count):
            self.red.append(red[i])
            self.ir.append(ir[i])

    def seconds(self):
        return len(self.ir) / self.fs

    def estimate(self):
        return analyse(self.red, self.ir, self.fs, self.calibration, self.finger_threshold)
