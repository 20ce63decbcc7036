"""Who got the slots: each tenant's slot-seconds in recent time buckets, against its weight.

A pure function over job intervals (when each job held a slot), for the queue page's fair-share
chart: a tenant's share of a bucket is its slot-seconds over everyone's; its entitlement is its weight
over the weights of the tenants that were served or waiting then."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Held:
    """One job's time on a slot: from its start to its end (or now, while it runs)."""

    tenant: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Bucket:
    start: float  # wall seconds
    slot_s: Mapping[str, float]  # tenant -> slot-seconds within the bucket


def buckets(held: Iterable[Held], *, now: float, window_s: float, count: int) -> list[Bucket]:
    """`count` equal buckets covering the `window_s` seconds before `now`, oldest first."""
    width = window_s / count
    first = now - window_s
    sums: list[dict[str, float]] = [{} for _ in range(count)]
    for h in held:
        start, end = max(h.start, first), min(h.end, now)
        if end <= start:
            continue
        i = min(int((start - first) // width), count - 1)
        while i < count and start < end:
            edge = min(first + (i + 1) * width, end)
            sums[i][h.tenant] = sums[i].get(h.tenant, 0.0) + (edge - start)
            start, i = edge, i + 1
    return [Bucket(first + i * width, s) for i, s in enumerate(sums)]


def entitled(tenants: Iterable[str], weight: Callable[[str], float]) -> dict[str, float]:
    """Each tenant's fair share among `tenants`: its weight over theirs."""
    weights = {t: weight(t) for t in tenants}
    total = sum(weights.values())
    return {t: (w / total if total > 0 else 0.0) for t, w in weights.items()}
