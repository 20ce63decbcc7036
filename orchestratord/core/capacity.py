"""Which queued work free slots can serve now, and the capacity figures predictions are made from.

A queued job waits for its route (`core.route.Route`): its model, plus the pools it is restricted to.
The queue asks `can_serve(route)` so a job whose pools are all busy never holds back one that a free
slot elsewhere can take; for the same snapshots, `can_serve(route)` is true exactly when placement
would assign the job a slot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from orchestratord.core.prediction import Capacity, ServiceTimes
from orchestratord.core.route import Route
from orchestratord.core.work import Progress, WorkRates
from pool_manager.snapshot import PoolSnapshot


def serving_pools(route: Route, pools: Sequence[PoolSnapshot]) -> list[PoolSnapshot]:
    return [p for p in pools if route.model in p.models and not p.draining and route.admits(p.pool_id)]


def held_back(pool: PoolSnapshot, holdback: float) -> int:
    """The slots of `pool` kept for interactive work: `floor(holdback x its usable slots)`."""
    return math.floor(holdback * pool.slots_total + 1e-9)


def can_serve(route: Route, pools: Sequence[PoolSnapshot], holdback: float = 0.0) -> bool:
    """Whether a free slot serves `route` now; for a batch job (`holdback` > 0), one that is not kept
    for interactive work."""
    return any(p.slots_free > held_back(p, holdback) for p in serving_pools(route, pools))


def has_spare(route: Route, pools: Sequence[PoolSnapshot]) -> bool:
    """Whether free slots serve `route` with one to spare: a job taken ahead of another that a second
    replica is about to take (state/lua/take.lua) then leaves that job a slot."""
    return sum(p.slots_free for p in serving_pools(route, pools)) >= 2


def slot_budget(
    route: Route, pools: Sequence[PoolSnapshot], holdback: float = 0.0
) -> list[tuple[str, int, int]]:
    """The pools serving `route` as (pool id, free slots, slots kept for interactive work): what a
    dispatch round that takes several jobs in one call may spend (state/lua/take.lua counts `can_serve`
    and `has_spare` from them as it takes)."""
    return [(p.pool_id, p.slots_free, held_back(p, holdback)) for p in serving_pools(route, pools)]


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
    *,
    progress: Mapping[str, Sequence[Progress]] | None = None,
    rates: WorkRates | None = None,
    queued_s: float | None = None,
    remote: Mapping[str, Sequence[float]] | None = None,
) -> Capacity:
    """Capacity of the pools serving `route`. The jobs running there are `progress` (pool_id -> each
    job's work, age and tokens), or only their ages (`running_ages`). A running job frees its slot
    after its expected remaining work at its pool's measured rates (`core.work`); where those are not
    known yet, after its pool's recent holding times (`ServiceTimes.remaining`). The jobs after the
    first round hold a slot for `queued_s` each (the mean expected service of the queued work for the
    route), else the pools' mean holding time; before anything is measured, the oldest running age
    stands in. `remote`: the remaining seconds of the jobs other replicas run (shared state)."""
    serving = serving_pools(route, pools)
    slots = {p.pool_id: p.slots_total for p in serving}
    runs: list[tuple[str, Progress]] = []
    for p in serving:
        if progress is not None:
            runs += [(p.pool_id, job) for job in progress.get(p.pool_id, ())]
        else:
            runs += [(p.pool_id, Progress(None, age, 0)) for age in running_ages.get(p.pool_id, ())]
    worked = {id(job): rates.remaining(pool_id, job) for pool_id, job in runs} if rates is not None else {}
    mean = times.combined(slots)
    measured = mean is not None
    if queued_s is not None:
        mean, measured = queued_s, True
    if mean is None and runs:
        mean = max(job.age_s for _, job in runs)
    releases: list[float] = []
    if mean is not None:
        for pool_id, job in runs:
            left = worked.get(id(job))
            if left is None:
                left = times.remaining(pool_id, job.age_s, _mean_or(times.mean(pool_id), mean))
            releases.append(left)
        for p in serving:
            releases += (remote or {}).get(p.pool_id, ())
        releases.sort()
    return Capacity(
        slots_total=sum(slots.values()),
        slots_free=sum(p.slots_free for p in serving),
        mean_service_s=mean,
        releases_s=tuple(releases),
        measured=measured,
        typical_s=times.typical(slots),
    )


def _mean_or(value: float | None, default: float) -> float:
    return default if value is None else value
