"""Which queued work free slots can serve now, and the capacity figures predictions are made from.

A queued job carries a routing key: its model, plus the pools it is restricted to when it is pinned
or may not fall back (`model@pool-a,pool-b`). The queue asks `can_serve(key)` so a job whose pools
are all busy never holds back one that a free slot elsewhere can take.
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
    running_elapsed: Mapping[str, float],
) -> Capacity:
    """Capacity of the pools serving `key`; `running_elapsed` maps pool_id to its oldest job's age."""
    serving = serving_pools(key, pools)
    slots = {p.pool_id: p.slots_total for p in serving}
    elapsed = [running_elapsed[p.pool_id] for p in serving if p.pool_id in running_elapsed]
    return Capacity(
        slots_total=sum(slots.values()),
        slots_free=sum(p.slots_free for p in serving),
        mean_service_s=times.combined(slots),
        oldest_running_s=max(elapsed) if elapsed else None,
    )
