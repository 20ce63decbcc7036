"""Which queued work free slots can serve now, and the capacity figures predictions are made from.

A queued job waits for its route (`core.route.Route`): its model, plus the pools it is restricted to.
The queue asks `can_serve(route)` so a job whose pools are all busy never holds back one that a free
slot elsewhere can take; for the same snapshots, `can_serve(route)` is true exactly when placement
would assign the job a slot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from orchestratord.core.prediction import Capacity, ServiceTimes
from orchestratord.core.route import Route
from pool_manager.snapshot import PoolSnapshot


def serving_pools(route: Route, pools: Sequence[PoolSnapshot]) -> list[PoolSnapshot]:
    return [p for p in pools if route.model in p.models and not p.draining and route.admits(p.pool_id)]


def can_serve(route: Route, pools: Sequence[PoolSnapshot]) -> bool:
    return any(p.slots_free > 0 for p in serving_pools(route, pools))


def unservable(
    route: Route, pools: Sequence[PoolSnapshot], cause: str | None
) -> tuple[str | None, str] | None:
    """None if some pool that is not draining serves the route; else the pool to name (`cause`, the
    pool whose drain or reload made it so, when it is one of the route's) and why, for the job's error."""
    mine = [p for p in pools if route.admits(p.pool_id)]
    if any(route.model in p.models and not p.draining for p in mine):
        return None
    draining = sorted(p.pool_id for p in mine if route.model in p.models)
    named = cause if cause is not None and any(p.pool_id == cause for p in mine) else None
    if named is None and draining:
        named = draining[0]
    model = route.model
    if named is not None and named in draining:
        why = f"pool {named!r} is draining and no other pool that can take this job serves {model!r}"
    elif named is not None:
        why = f"pool {named!r} no longer serves {model!r} and no other pool that can take this job does"
    else:
        why = f"no pool that can take this job serves {model!r} any more"
    return named, f"{why}; retry later"


def capacity_for(
    route: Route,
    pools: Sequence[PoolSnapshot],
    times: ServiceTimes,
    running_ages: Mapping[str, Sequence[float]],
) -> Capacity:
    """Capacity of the pools serving `route`; `running_ages` maps pool_id to the ages (seconds) of the
    jobs running there. Each running job is expected to free its slot after its pool's mean service
    time; before a pool has a measurement, the combined mean, else the oldest running age, stands in.
    """
    serving = serving_pools(route, pools)
    slots = {p.pool_id: p.slots_total for p in serving}
    ages = [(p.pool_id, age) for p in serving for age in running_ages.get(p.pool_id, ())]
    mean = times.combined(slots)
    measured = mean is not None
    if mean is None and ages:
        mean = max(age for _, age in ages)
    releases: list[float] = []
    if mean is not None:
        releases = sorted(
            times.remaining(pool_id, age, _mean_or(times.mean(pool_id), mean)) for pool_id, age in ages
        )
    return Capacity(
        slots_total=sum(slots.values()),
        slots_free=sum(p.slots_free for p in serving),
        mean_service_s=mean,
        releases_s=tuple(releases),
        measured=measured,
    )


def _mean_or(value: float | None, default: float) -> float:
    return default if value is None else value
