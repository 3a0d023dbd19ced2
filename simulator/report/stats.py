"""Order statistics and histograms for the report (pure, exact, documented).

Percentiles use the nearest-rank method: the p-th percentile of n sorted values is the
value at 1-based rank ceil(p/100 * n). It always returns an observed value (never an
interpolated one), so "p99 = 412 ms" means a reading really took 412 ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

HISTOGRAM_BINS = 20


def nearest_rank(values: Sequence[float], percentile: float) -> float | None:
    """The nearest-rank percentile of values (None when there are none)."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    if not values:
        return None
    ordered = sorted(values)
    # Exact rational arithmetic: float ceil(0.99 * 100) would give rank 100 or 99 by luck.
    exact = Fraction(str(percentile)) * len(ordered) / 100
    rank = -(-exact.numerator // exact.denominator)
    return ordered[max(rank, 1) - 1]


def histogram(values: Sequence[float], bins: int = HISTOGRAM_BINS) -> list[dict[str, float]]:
    """Equal-width bins from min to max: [{lo, hi, count}]; the last bin includes max."""
    if not values:
        return []
    low, high = min(values), max(values)
    if low == high:
        return [{"lo": low, "hi": high, "count": len(values)}]
    # Halved operands: high - low of two finite doubles can overflow to inf.
    span = high / 2 - low / 2
    counts = [0] * bins
    for value in values:
        index = int((value / 2 - low / 2) / span * bins)
        counts[min(index, bins - 1)] += 1
    edges = [2 * (low / 2 + span / bins * i) if i < bins else high for i in range(bins + 1)]
    return [{"lo": edges[i], "hi": edges[i + 1], "count": count}
            for i, count in enumerate(counts)]
