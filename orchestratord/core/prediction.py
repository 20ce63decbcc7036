"""Start-time predictions from measured service times (documented in docs/admission.md).

Each pool keeps an exponentially weighted moving average of how long its jobs hold a slot. Slots of
the pools serving a model free up at `slots / mean_service_time` per second, so the k-th job beyond
the free slots is expected to start after `k * mean / slots`. Before a pool has finished a job, the
longest-running job's elapsed time stands in for the mean (a real, if low, measurement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the pools that serve one model offer right now."""

    slots_total: int
    slots_free: int
    mean_service_s: float | None
    oldest_running_s: float | None = None

    @property
    def service_s(self) -> float | None:
        if self.mean_service_s is not None:
            return self.mean_service_s
        return self.oldest_running_s


class ServiceTimes:
    """EWMA of slot holding time per pool."""

    def __init__(self, alpha: float = 0.2) -> None:
        self._alpha = alpha
        self._mean: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def observe(self, pool_id: str, seconds: float) -> None:
        previous = self._mean.get(pool_id)
        self._mean[pool_id] = seconds if previous is None else previous + self._alpha * (seconds - previous)
        self._count[pool_id] = self._count.get(pool_id, 0) + 1

    def mean(self, pool_id: str) -> float | None:
        return self._mean.get(pool_id)

    def combined(self, pool_slots: dict[str, int]) -> float | None:
        """Slot-weighted mean over several pools, ignoring pools with no measurement yet."""
        known = [(self._mean[p], n) for p, n in pool_slots.items() if p in self._mean and n > 0]
        total = sum(n for _, n in known)
        return None if not total else sum(m * n for m, n in known) / total


def predict_start_ms(position: int, cap: Capacity) -> int | None:
    """Predicted wait for a job with `position` jobs ahead of it for the same model.

    None when it cannot be predicted: no ready slot serves the model, or nothing has been measured.
    """
    if position < cap.slots_free:
        return 0
    service = cap.service_s
    if service is None or cap.slots_total <= 0:
        return None
    ahead = position - cap.slots_free + 1
    return math.ceil(ahead * service / cap.slots_total * 1000)


def drain_interval_ms(cap: Capacity) -> int | None:
    """How long until the next slot frees at the measured drain rate; None without any measurement."""
    service = cap.service_s
    if service is None or cap.slots_total <= 0:
        return None
    return max(1, math.ceil(service / cap.slots_total * 1000))
