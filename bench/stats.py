"""Percentiles and the small summaries every scenario reports."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Iterable[float | None], digits: int = 3) -> dict[str, Any]:
    """count, mean, p50, p95, p99, max of the values that are not None."""
    data = [v for v in values if v is not None]
    if not data:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    out: dict[str, Any] = {"count": len(data), "mean": round(sum(data) / len(data), digits)}
    for q in (50, 95, 99):
        value = percentile(data, q)
        out[f"p{q}"] = None if value is None else round(value, digits)
    out["max"] = round(max(data), digits)
    return out


def difference(a: dict[str, Any], b: dict[str, Any], digits: int = 3) -> dict[str, Any]:
    """a - b for each percentile both have (the added latency of one path over another)."""
    out: dict[str, Any] = {}
    for key in ("p50", "p95", "p99"):
        if a.get(key) is not None and b.get(key) is not None:
            out[key] = round(a[key] - b[key], digits)
        else:
            out[key] = None
    return out


def slope_per_minute(samples: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) samples, per minute."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    return cov / var * 60
