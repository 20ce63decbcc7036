"""Which queued work free slots can serve now, and the capacity figures predictions are made from.

A queued job carries a routing key: its model, plus the pools it is restricted to when it may not run
on every pool serving the model (`model@pool-a,pool-b`): it is pinned or may not fall back, or its
context or `max_tokens` fits only some pools. The queue asks `can_serve(key)` so a job whose pools
are all busy never holds back one that a free slot elsewhere can take; for the same snapshots,
`can_serve(key)` is true exactly when placement would assign the job a slot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from orchestratord.core.prediction import Capacity, ServiceTimes
from pool_manager.snapshot import PoolSnapshot


def routing_key(model: str, allowed: Sequence[str] | None) -> str:
    return model if allowed is None else f"{model}@{','.join(sorted(allowed))}"


def parse_routing_key(key: str) -> tuple[str, frozenset[str] | None]:
    model, sep, pools = key.rpartition("@")
    if not sep:
        return key, None
    return model, frozenset(p for p in pools.split(",") if p)


def serving_pools(key: str, pools: Sequence[PoolSnapshot]) -> list[PoolSnapshot]:
    model, allowed = parse_routing_key(key)
    return [
        p for p in pools if model in p.models and not p.draining and (allowed is None or p.pool_id in allowed)
    ]


def can_serve(key: str, pools: Sequence[PoolSnapshot]) -> bool:
    return any(p.slots_free > 0 for p in serving_pools(key, pools))


def capacity_for(
    key: str,
    pools: Sequence[PoolSnapshot],
    times: ServiceTimes,
    running_ages: Mapping[str, Sequence[float]],
) -> Capacity:
    """Capacity of the pools serving `key`; `running_ages` maps pool_id to the ages (seconds) of the
    jobs running there. Each running job is expected to free its slot after its pool's mean service
    time; before a pool has a measurement, the combined mean, else the oldest running age, stands in.
    """
    serving = serving_pools(key, pools)
    slots = {p.pool_id: p.slots_total for p in serving}
    ages = [(p.pool_id, age) for p in serving for age in running_ages.get(p.pool_id, ())]
    mean = times.combined(slots)
    measured = mean is not None
    if mean is None and ages:
        mean = max(age for _, age in ages)
    releases: list[float] = []
    if mean is not None:
        releases = sorted(max(0.0, _mean_or(times.mean(pool_id), mean) - age) for pool_id, age in ages)
    return Capacity(
        slots_total=sum(slots.values()),
        slots_free=sum(p.slots_free for p in serving),
        mean_service_s=mean,
        releases_s=tuple(releases),
        measured=measured,
    )


def _mean_or(value: float | None, default: float) -> float:
    return default if value is None else value
