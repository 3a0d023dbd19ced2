"""Small inline SVG charts for the report page (no JS, no external assets).

Every caller-supplied string goes through html.escape; numbers are formatted by us.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 40
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
FAULT_FILL = "#c62828"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About count round-numbered ticks covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / count
    if not math.isfinite(raw) or raw == 0:       # extreme or subnormal span: just the ends
        return [low, high]
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9 and len(ticks) <= count * 3:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value = first + step * len(ticks)
    return ticks


def histogram_chart(bins: Sequence[dict[str, Any]], title: str, x_label: str) -> str:
    """Bars for [{lo, hi, count}] (the summary's histogram)."""
    if not bins:
        return _empty(title, "no values")
    low, high = bins[0]["lo"], bins[-1]["hi"]
    if high <= low:                      # every value identical: one centred bar
        low, high = low - 0.5, high + 0.5
    peak = max(b["count"] for b in bins) or 1
    parts = [_frame(title, x_label, "count")]
    for b in bins:
        if not b["count"]:
            continue
        lo = max(b["lo"], low)
        hi = min(b["hi"], high) if b["hi"] > b["lo"] else lo + (high - low) / 20
        x0, x1 = _x(lo, low, high), _x(hi, low, high)
        h = PLOT_H * b["count"] / peak
        parts.append(
            f'<rect class="bar" x="{x0:.1f}" y="{TOP + PLOT_H - h:.1f}" '
            f'width="{max(x1 - x0 - 1, 1):.1f}" height="{h:.1f}" fill="#546e7a">'
            f'<title>{escape(_fmt(b["lo"]))} to {escape(_fmt(b["hi"]))}: {b["count"]}</title>'
            f'</rect>')
    parts += _x_axis(low, high) + _y_axis(0, peak)
    parts.append("</svg>")
    return "".join(parts)


def line_chart(points: Sequence[tuple[float, float]], faults: Sequence[dict[str, Any]],
               title: str, y_label: str, t_end: float) -> str:
    """y over run time (seconds) with every fault drawn as a shaded band on the time axis."""
    times = [t for t, _ in points] + [f["at"] + f["duration_s"] for f in faults] + [t_end]
    low = min([0.0] + [t for t, _ in points] + [f["at"] for f in faults])
    high = max(times)
    if high <= low:
        high = low + 1
    peak = max([y for _, y in points] + [0])
    floor = min([y for _, y in points] + [0])
    if peak <= floor:
        peak = floor + 1
    parts = [_frame(title, "run time (s)", y_label)]
    for fault in faults:
        x0 = _x(fault["at"], low, high)
        x1 = max(_x(fault["at"] + fault["duration_s"], low, high), x0 + 2)
        label = f'{fault["name"]} on {fault["target"]} at {_fmt(fault["at"])} s'
        parts.append(
            f'<rect class="fault" x="{x0:.1f}" y="{TOP}" width="{x1 - x0:.1f}" '
            f'height="{PLOT_H}" fill="{FAULT_FILL}" fill-opacity="0.18">'
            f'<title>{escape(label)}</title></rect>'
            f'<text x="{x0 + 2:.1f}" y="{TOP + 10}" font-size="9" fill="{FAULT_FILL}">'
            f'{escape(fault["name"])}</text>')
    if points:
        path = " ".join(f"{_x(t, low, high):.1f},{_y(y, floor, peak):.1f}" for t, y in points)
        parts.append(f'<polyline class="series" points="{path}" fill="none" '
                     f'stroke="#1565c0" stroke-width="1.5"/>')
    else:
        parts.append(f'<text x="{LEFT + PLOT_W / 2:.1f}" y="{TOP + PLOT_H / 2:.1f}" '
                     f'text-anchor="middle" fill="#777">no samples</text>')
    parts += _x_axis(low, high) + _y_axis(floor, peak)
    parts.append("</svg>")
    return "".join(parts)


def _frame(title: str, x_label: str, y_label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">'
            f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>'
            f'<rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="none" '
            f'stroke="#999"/>'
            f'<text x="{LEFT + PLOT_W / 2:.1f}" y="{HEIGHT - 4}" font-size="11" '
            f'text-anchor="middle">{escape(x_label)}</text>'
            f'<text x="12" y="{TOP + PLOT_H / 2:.1f}" font-size="11" text-anchor="middle" '
            f'transform="rotate(-90 12 {TOP + PLOT_H / 2:.1f})">{escape(y_label)}</text>')


def _empty(title: str, message: str) -> str:
    return (_frame(title, "", "") + f'<text x="{LEFT + PLOT_W / 2:.1f}" '
            f'y="{TOP + PLOT_H / 2:.1f}" text-anchor="middle" fill="#777">'
            f'{escape(message)}</text></svg>')


def _x_axis(low: float, high: float) -> list[str]:
    out = []
    for tick in nice_ticks(low, high):
        x = _x(tick, low, high)
        out.append(f'<line x1="{x:.1f}" y1="{TOP + PLOT_H}" x2="{x:.1f}" '
                   f'y2="{TOP + PLOT_H + 4}" stroke="#555"/>'
                   f'<text x="{x:.1f}" y="{TOP + PLOT_H + 16}" font-size="10" '
                   f'text-anchor="middle">{escape(_fmt(tick))}</text>')
    return out


def _y_axis(low: float, high: float) -> list[str]:
    out = []
    for tick in nice_ticks(low, high, 4):
        y = _y(tick, low, high)
        out.append(f'<line x1="{LEFT - 4}" y1="{y:.1f}" x2="{LEFT}" y2="{y:.1f}" stroke="#555"/>'
                   f'<text x="{LEFT - 6}" y="{y + 3:.1f}" font-size="10" '
                   f'text-anchor="end">{escape(_fmt(tick))}</text>')
    return out


def _x(value: float, low: float, high: float) -> float:
    return LEFT + PLOT_W * _fraction(value, low, high)


def _y(value: float, low: float, high: float) -> float:
    return TOP + PLOT_H * (1 - _fraction(value, low, high))


def _fraction(value: float, low: float, high: float) -> float:
    # halved operands keep extreme (finite) values from overflowing to inf
    span = high / 2 - low / 2
    return 0.0 if span <= 0 else min(max((value / 2 - low / 2) / span, 0.0), 1.0)


def _fmt(value: float) -> str:
    if isinstance(value, int) or (abs(value) < 1e15 and float(value).is_integer()):
        return str(int(value))
    return f"{value:.4g}"
