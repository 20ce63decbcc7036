"""PoolRegistry: the live state of every pool and replica, and the snapshots placement reads."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from pool_manager.leases import Lease, LeaseStore, MemoryLeases
from pool_manager.snapshot import PoolSnapshot, ReplicaSnapshot
from pool_manager.specs import PoolSpec
from worker_adapters.base import WorkerHealth, WorkerProps


@dataclass(slots=True)
class ReplicaState:
    """What the health prober and the dispatcher have learned about one replica."""

    replica_id: str
    url: str
    slots_total: int
    live: bool = False
    ready: bool = False
    last_error: str | None = None
    consecutive_failures: int = 0
    circuit_open: bool = False
    engine_version: str | None = None
    kv_cache_usage_ratio: float | None = None
    checked_at: float | None = None
    serves: frozenset[str] | None = None  # the models the engine listed at its last probe
    ctx_max: int | None = None  # the engine's own context per request (prompt and output), if it says
    max_tokens_out: int | None = None  # the engine's own output limit per request, if it says
    slots_source: Literal["config", "engine"] = "config"


@dataclass(slots=True)
class PoolState:
    spec: PoolSpec
    replicas: dict[str, ReplicaState]
    draining: bool = False
    drain_deadline: float | None = None
    engine_version: str = field(default="unknown")

    @property
    def ctx_max(self) -> int:
        """The context a job may use here: the configured `ctx_max`, or less where an engine says its
        own is smaller (llama.cpp's per-slot `n_ctx`, vLLM's `max_model_len`, TGI's
        `max_total_tokens`), so admission refuses what the engine would refuse or cut short."""
        return min([self.spec.ctx_max, *(r.ctx_max for r in self.replicas.values() if r.ctx_max)])

    @property
    def ctx_max_source(self) -> Literal["config", "engine"]:
        return "engine" if self.ctx_max < self.spec.ctx_max else "config"

    @property
    def max_tokens_out(self) -> int:
        """The most tokens a job may generate here: the configured `max_tokens_out`, or less where an
        engine's own limit is lower (llama.cpp's `--n-predict`, an Ollama model's `num_predict`)."""
        engine = [r.max_tokens_out for r in self.replicas.values() if r.max_tokens_out]
        return min([self.spec.max_tokens_out, *engine])

    @property
    def max_tokens_out_source(self) -> Literal["config", "engine"]:
        return "engine" if self.max_tokens_out < self.spec.max_tokens_out else "config"

    @property
    def engine_version_source(self) -> Literal["config", "engine", "unknown"]:
        if self.spec.engine_version:
            return "config"
        return "engine" if any(r.engine_version for r in self.replicas.values()) else "unknown"

    @property
    def slots_source(self) -> Literal["config", "engine"]:
        return "engine" if any(r.slots_source == "engine" for r in self.replicas.values()) else "config"


class PoolRegistry:
    """Owns pool state. Knows nothing of HTTP or metrics: probes and dispatch report into it."""

    def __init__(
        self,
        specs: Iterable[PoolSpec],
        *,
        leases: LeaseStore | None = None,
        breaker_threshold: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pools: dict[str, PoolState] = {spec.id: _initial_state(spec) for spec in specs}
        self.leases: LeaseStore = leases or MemoryLeases()
        self.breaker_threshold = breaker_threshold
        self._clock = clock

    def get(self, pool_id: str) -> PoolState | None:
        return self.pools.get(pool_id)

    def models(self) -> list[str]:
        return sorted({m for p in self.pools.values() for m in p.spec.models})

    # -- reports from the health prober and the dispatcher ---------------------------------------
    def apply_health(self, pool_id: str, replica_id: str, health: WorkerHealth, props: WorkerProps) -> None:
        """A probe answered: readiness from the engine, capacity from the engine where it reports it."""
        pool = self.pools[pool_id]
        replica = pool.replicas[replica_id]
        replica.checked_at = self._clock()
        replica.live = health.live
        replica.ready = health.live and health.ready
        replica.last_error = None if replica.ready else (health.detail or "engine not ready")
        if replica.ready:
            replica.circuit_open = False
            replica.consecutive_failures = 0
        if props.slots:
            replica.slots_total = props.slots
            replica.slots_source = "engine"
        if props.engine_version:
            replica.engine_version = props.engine_version
            pool.engine_version = pool.spec.engine_version or props.engine_version
        replica.kv_cache_usage_ratio = props.kv_cache_usage_ratio
        replica.serves = frozenset(props.models) if props.models else None
        if props.ctx_max:
            replica.ctx_max = props.ctx_max
        if props.max_tokens_out:
            replica.max_tokens_out = props.max_tokens_out

    def apply_probe_error(self, pool_id: str, replica_id: str, error: str) -> None:
        replica = self.pools[pool_id].replicas[replica_id]
        replica.checked_at = self._clock()
        replica.live = False
        replica.ready = False
        replica.last_error = error

    def record_failure(self, pool_id: str, replica_id: str, error: str) -> None:
        """A request failed on this replica; enough in a row open its circuit until a probe passes."""
        replica = self.pools[pool_id].replicas[replica_id]
        replica.consecutive_failures += 1
        replica.last_error = error
        if replica.consecutive_failures >= self.breaker_threshold:
            replica.circuit_open = True
            replica.ready = False

    def record_success(self, pool_id: str, replica_id: str) -> None:
        self.pools[pool_id].replicas[replica_id].consecutive_failures = 0

    # -- operator actions ------------------------------------------------------------------------
    def drain(self, pool_id: str, deadline: float) -> None:
        pool = self.pools[pool_id]
        pool.draining = True
        pool.drain_deadline = deadline

    def undrain(self, pool_id: str) -> None:
        pool = self.pools[pool_id]
        pool.draining = False
        pool.drain_deadline = None

    def set_models(self, pool_id: str, models: tuple[str, ...]) -> None:
        """The pool serves `models` now, under those names (a reload names the engine's model)."""
        pool = self.pools[pool_id]
        pool.spec = replace(pool.spec, models=models, engine_model=None)

    # -- leases ----------------------------------------------------------------------------------
    async def lease(self, job_id: str, pool_id: str, replica_id: str) -> Lease | None:
        replica = self.pools[pool_id].replicas[replica_id]
        lease = Lease(job_id, pool_id, replica_id)
        return lease if await self.leases.acquire(lease, replica.slots_total) else None

    async def release(self, job_id: str) -> Lease | None:
        return await self.leases.release(job_id)

    # -- snapshots -------------------------------------------------------------------------------
    async def snapshot(self) -> list[PoolSnapshot]:
        return [await self.pool_snapshot(pool_id) for pool_id in self.pools]

    async def pool_snapshot(self, pool_id: str) -> PoolSnapshot:
        pool = self.pools[pool_id]
        replicas = []
        for r in pool.replicas.values():
            held = await self.leases.held(pool_id, r.replica_id)
            replicas.append(
                ReplicaSnapshot(
                    replica_id=r.replica_id,
                    ready=r.ready and not r.circuit_open,
                    slots_total=r.slots_total,
                    slots_free=max(0, r.slots_total - held),
                    last_error=r.last_error,
                    kv_cache_usage_ratio=r.kv_cache_usage_ratio,
                    serves=r.serves,
                )
            )
        spec = pool.spec
        return PoolSnapshot(
            pool_id=pool_id,
            engine=spec.engine,
            engine_version=pool.engine_version,
            models=spec.models,
            ctx_max=pool.ctx_max,
            max_tokens_out=pool.max_tokens_out,
            draining=pool.draining,
            replicas=tuple(replicas),
            device_mask=spec.device_mask,
            labels=spec.labels,
            engine_model=spec.engine_model,
        )


def _initial_state(spec: PoolSpec) -> PoolState:
    replicas = {r.id: ReplicaState(replica_id=r.id, url=r.url, slots_total=spec.slots) for r in spec.replicas}
    return PoolState(spec=spec, replicas=replicas, engine_version=spec.engine_version or "unknown")
