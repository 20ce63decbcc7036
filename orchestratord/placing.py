"""Placing a job taken from the queue: choose a replica (`core.placement.decide`, a pure function over
pool snapshots) and lease one of its slots.

Taking jobs and leasing their slots, and a failover's placement and lease, happen one round at a time
(under `exclusive()`): with the embedded backend nothing else leases, so a job taken because a slot was
free always gets that slot. The jobs a shared backend's round took together are chosen one after
another, each on the slots the ones before it chose, and their leases asked at once (one round trip).
A job that finds no slot goes back to its place in the queue when another orchestrator replica took
the slot first (shared state), and otherwise ends with the error `core.attempts.placement_error`
names.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from orchestratord.core.attempts import placement_error
from orchestratord.core.placement import Assigned, NoCapacity, PlacementRequest, decide
from orchestratord.core.route import Route
from orchestratord.core.tasks import TaskSpec
from orchestratord.endings import Endings
from orchestratord.logs import get_logger, job_context, placement_fields
from orchestratord.metrics import Metrics
from orchestratord.outlook import Outlook
from orchestratord.state.shared import SharedState
from pool_manager.registry import PoolRegistry
from pool_manager.snapshot import PoolSnapshot

log = get_logger(__name__)
Tried = set[tuple[str, str]]  # (pool_id, replica_id) an attempt of the job already failed on
# Prompt cache keys whose latest placement this process remembers itself: the hooks record a key's
# place when its job's run starts, after the next jobs of the key may already be placed (a request's
# several choices share one, `_Generation.fan_out`)
RECENT_KEYS = 1024


class PlacementHooks(Protocol):
    """Session affinity for placement, and what the control plane adds to the dispatch `metrics`
    event (kv_warmth, remaining budgets)."""

    async def affinity(self, spec: TaskSpec) -> tuple[str, str] | None: ...

    async def placed(self, spec: TaskSpec, assigned: Assigned) -> Mapping[str, object]: ...


class Placer:
    def __init__(
        self,
        registry: PoolRegistry,
        outlook: Outlook,
        endings: Endings,
        metrics: Metrics,
        *,
        hooks: PlacementHooks | None = None,
        shared: SharedState | None = None,
        holdback: float = 0.0,
    ) -> None:
        self._holdback = holdback  # the share of each pool's slots a batch job may not take
        self._registry = registry
        self._outlook = outlook
        self._endings = endings
        self._metrics = metrics
        self._hooks = hooks
        self._shared = shared
        self._lock = asyncio.Lock()
        self._recent: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()

    def exclusive(self) -> asyncio.Lock:
        """Held while a job is taken and leased, and while a failover places and leases."""
        return self._lock

    async def place(
        self, spec: TaskSpec, route: Route, tried: Tried, snapshots: Sequence[PoolSnapshot] | None = None
    ) -> Assigned | None:
        """Choose and lease a slot (under `exclusive()`). The first placement (nothing `tried`) ends or
        gives back the job if it finds none; a failover's placement only reports that there is none."""
        if snapshots is None:
            snapshots = await self._outlook.refresh()
        decision = await self._decide(spec, route, tried, snapshots)
        return await self._settle(spec, decision, await self._lease(spec, decision), first=not tried)

    async def place_several(
        self, jobs: Sequence[tuple[TaskSpec, Route]], snapshots: Sequence[PoolSnapshot]
    ) -> list[Assigned | None]:
        """The first placements of jobs taken from the queue together (under `exclusive()`): each
        chosen on the slots the ones before it chose, then every lease asked at once (on a shared
        backend, one round trip for them all). As `place` for each, in order."""
        decisions: list[Assigned | NoCapacity] = []
        for spec, route in jobs:
            decision = await self._decide(spec, route, set(), snapshots)
            if isinstance(decision, Assigned):
                snapshots = leased(snapshots, decision)
            decisions.append(decision)
        if len(decisions) == 1:  # the embedded backend's round, one job a take: no task for its lease
            leases = [await self._lease(jobs[0][0], decisions[0])]
        else:
            leases = await asyncio.gather(
                *(self._lease(spec, decision) for (spec, _), decision in zip(jobs, decisions, strict=True))
            )
        return [
            await self._settle(spec, decision, granted, first=True)
            for (spec, _), decision, granted in zip(jobs, decisions, leases, strict=True)
        ]

    async def _decide(
        self, spec: TaskSpec, route: Route, tried: Tried, snapshots: Sequence[PoolSnapshot]
    ) -> Assigned | NoCapacity:
        usable = [_without(p, tried) for p in snapshots if route.admits(p.pool_id)]
        key = None if spec.cache_key is None or spec.session_id is not None else (spec.tenant, spec.cache_key)
        affinity = self._recent.get(key) if key is not None else None
        if affinity is None and self._hooks is not None:
            affinity = await self._hooks.affinity(spec)
        req = PlacementRequest(
            spec.model_ref,
            spec.tokens_needed,
            spec.placement,
            affinity=affinity,
            tokens_out=spec.max_tokens,
            holdback=self._holdback if spec.priority == "batch" else 0.0,
        )
        decision = decide(req, usable)
        if key is not None and isinstance(decision, Assigned):
            self._recent[key] = (decision.pool_id, decision.replica_id)
            self._recent.move_to_end(key)
            if len(self._recent) > RECENT_KEYS:
                self._recent.popitem(last=False)
        self._count(decision)
        log.info(  # the first placement runs in the dispatch loop, not the job's task: fields explicit
            "placement_decided", outcome="assigned" if isinstance(decision, Assigned) else decision.kind,
            **job_context(spec), **placement_fields(decision),
        )  # fmt: skip
        return decision

    async def _lease(self, spec: TaskSpec, decision: Assigned | NoCapacity) -> bool:
        if isinstance(decision, NoCapacity):
            return False
        return await self._registry.lease(spec.job_id, decision.pool_id, decision.replica_id) is not None

    async def _settle(
        self, spec: TaskSpec, decision: Assigned | NoCapacity, granted: bool, *, first: bool
    ) -> Assigned | None:
        """The slot, if it was chosen and leased; else None, and a first placement's job given back or
        ended."""
        if isinstance(decision, NoCapacity):
            if first:
                await self._not_placed(spec, decision)
            return None
        if not granted:
            if first:
                await self._not_placed(spec, NoCapacity("busy", "the chosen slot was taken", decision.log))
            return None
        return decision

    async def placed(self, spec: TaskSpec, assigned: Assigned) -> Mapping[str, object]:
        """What the control plane adds to the job's dispatch `metrics` event."""
        return await self._hooks.placed(spec, assigned) if self._hooks is not None else {}

    def _count(self, decision: Assigned | NoCapacity) -> None:
        outcome = "assigned" if isinstance(decision, Assigned) else decision.kind
        self._metrics.placement.labels(
            outcome=outcome,
            pinned=str(decision.log.pinned).lower(),
            fallback=str(decision.log.fallback).lower(),
        ).inc()

    async def _not_placed(self, spec: TaskSpec, decision: NoCapacity) -> None:
        """A job taken from the queue found no slot. Busy never ends it: it goes back to its place."""
        if decision.kind == "busy":
            if await self._give_back(spec):
                return
            # The queue offers a job only to pools with a free slot that placement accepts, and with
            # the embedded backend only this loop leases: reaching this is a bug, said loudly.
            log.error(
                "placement_disagrees_with_queue", message=decision.message,
                **job_context(spec), **placement_fields(decision),
            )  # fmt: skip
        await self._endings.fail(spec.job_id, placement_error(decision))

    async def _give_back(self, spec: TaskSpec) -> bool:
        """On a shared backend another replica may take the free slot between this replica's take and
        its lease: the job goes back to its place in the queue instead of failing."""
        if self._shared is None or not await self._shared.requeue(spec.job_id):
            return False
        log.info("task_requeued", job_id=spec.job_id, reason="another replica took the free slot first")
        return True


def leased(snapshots: Sequence[PoolSnapshot], assigned: Assigned) -> list[PoolSnapshot]:
    """`snapshots` with the slot just leased on `assigned` counted as busy."""
    out = []
    for pool in snapshots:
        if pool.pool_id == assigned.pool_id:
            replicas = tuple(
                replace(r, slots_free=max(0, r.slots_free - 1)) if r.replica_id == assigned.replica_id else r
                for r in pool.replicas
            )
            pool = replace(pool, replicas=replicas)
        out.append(pool)
    return out


def _without(pool: PoolSnapshot, tried: Tried) -> PoolSnapshot:
    """The pool with replicas that already failed this job marked not ready."""
    replicas = tuple(
        replace(r, ready=False) if (pool.pool_id, r.replica_id) in tried else r for r in pool.replicas
    )
    return replace(pool, replicas=replicas)
