"""Percentiles, the same definition in every benchmark."""

from __future__ import annotations

import math


def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no samples."""
    if not samples:
        return float("nan")
    s = sorted(samples)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]
