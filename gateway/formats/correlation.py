"""Rank statistics shared by the trainer's evaluation and the gateway's best-of-N calibration: average ranks with
ties, Pearson's and Spearman's correlation. Plain Python, no numpy; must not import anything from the project.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given their average rank (what Spearman and the Mann-Whitney AUC need)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            out[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's correlation; None for fewer than 2 pairs or a constant side; ValueError for unequal lengths."""
    if len(x) != len(y):
        raise ValueError(f"a correlation needs pairs, got {len(x)} and {len(y)} values")
    if len(x) < 2:
        return None
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's of the average ranks), with pearson's None and ValueError cases."""
    if len(x) != len(y):
        raise ValueError(f"a correlation needs pairs, got {len(x)} and {len(y)} values")
    return pearson(ranks(x), ranks(y))
