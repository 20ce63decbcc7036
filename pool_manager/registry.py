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

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(slots=True)
class Breaker:
    """A replica's circuit breaker, fed by real requests, never by health probes: an engine whose
    `/health` is fine while its generations fail (out of memory, device errors) stays out.

    `threshold` failures in a row (errors before a token, resets, timeouts) open it. After a backoff
    that doubles with each opening without a success in between (`backoff_s` … `max_backoff_s`) it
    half-opens: placement offers the replica one request, a trial. The trial's success closes it; its
    failure opens it again, for twice as long. A trial that ends without telling (canceled before a
    token) lets another through."""

    state: BreakerState = "closed"
    reason: str | None = None  # the failure that opened it
    failures: int = 0  # in a row
    openings: int = 0  # in a row, without a success between
    reopen_at: float | None = None  # when an open breaker half-opens (monotonic)
    trial: bool = False  # a half-open trial is in flight


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    threshold: int = 3
    backoff_s: float = 5.0
    max_backoff_s: float = 300.0


@dataclass(slots=True)
class ReplicaState:
    """What the health prober and the dispatcher have learned about one replica."""

    replica_id: str
    url: str
    slots_total: int
    live: bool = False
    ready: bool = False
    last_error: str | None = None
    breaker: Breaker = field(default_factory=Breaker)
    engine_version: str | None = None
    kv_cache_usage_ratio: float | None = None
    checked_at: float | None = None
    serves: frozenset[str] | None = None  # the models the engine listed at its last probe
    ctx_max: int | None = None  # the engine's own context per request (prompt and output), if it says
    max_tokens_out: int | None = None  # the engine's own output limit per request, if it says
    slots_source: Literal["config", "engine"] = "config"
    # Since when placement could not offer it a job (down, unready, or its breaker open); None while it
    # can. A replica starts down until its first passing probe.
    down_since: float | None = None

    def admits(self) -> bool:
        """Placement may offer this replica a job: it is ready and its breaker lets one through."""
        b = self.breaker
        return self.ready and (b.state == "closed" or (b.state == "half_open" and not b.trial))


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
        breaker: BreakerPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pools: dict[str, PoolState] = {spec.id: _initial_state(spec, clock()) for spec in specs}
        self.leases: LeaseStore = leases or MemoryLeases()
        self.breaker_policy = breaker or BreakerPolicy()
        self._clock = clock
        self._started = clock()

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
        self._track_down(replica)
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
        self._track_down(replica)

    def _track_down(self, replica: ReplicaState) -> None:
        if replica.ready and replica.breaker.state != "open":
            replica.down_since = None
        elif replica.down_since is None:
            replica.down_since = self._clock()

    def down_for(self, pool_id: str, model: str) -> float:
        """Seconds since any replica of the pool could last take a job for `model` (0: one can now). A
        model that no replica's engine lists counts from the registry's start (its listing's history is
        not kept)."""
        now = self._clock()
        pool = self.pools[pool_id]
        name = pool.spec.engine_name(model)  # what the engines list it as (`engine_model`)
        waits = [
            0.0 if r.down_since is None else now - r.down_since
            for r in pool.replicas.values()
            if r.serves is None or name in r.serves
        ]
        return min(waits, default=now - self._started)

    def record_failure(self, pool_id: str, replica_id: str, error: str) -> None:
        """A request failed on this replica: enough in a row, or a failed half-open trial, open its
        breaker (see `Breaker`)."""
        replica = self.pools[pool_id].replicas[replica_id]
        replica.last_error = error
        b = replica.breaker
        b.failures += 1
        if b.state == "half_open" or (b.state == "closed" and b.failures >= self.breaker_policy.threshold):
            b.openings += 1
            policy = self.breaker_policy
            backoff = min(policy.max_backoff_s, policy.backoff_s * 2 ** (b.openings - 1))
            b.state, b.reason, b.trial = "open", error, False
            b.reopen_at = self._clock() + backoff
            self._track_down(replica)

    def record_success(self, pool_id: str, replica_id: str) -> None:
        """A request succeeded on this replica (it produced a token or ended well): the breaker closes."""
        replica = self.pools[pool_id].replicas[replica_id]
        replica.breaker = Breaker()
        if replica.ready:
            replica.last_error = None
        self._track_down(replica)

    def breaker(self, pool_id: str, replica_id: str) -> tuple[Breaker, float | None]:
        """A replica's breaker as of now, and (while open) the seconds until it half-opens."""
        b = self._breaker_now(self.pools[pool_id].replicas[replica_id])
        wait = None if b.state != "open" or b.reopen_at is None else max(0.0, b.reopen_at - self._clock())
        return b, wait

    def _breaker_now(self, replica: ReplicaState) -> Breaker:
        b = replica.breaker
        if b.state == "open" and b.reopen_at is not None and self._clock() >= b.reopen_at:
            b.state, b.trial = "half_open", False
        return b

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
        b = self._breaker_now(replica)
        if b.state == "open" or (b.state == "half_open" and b.trial):
            return None
        lease = Lease(job_id, pool_id, replica_id, self.pools[pool_id].spec.engine)
        if not await self.leases.acquire(lease, replica.slots_total):
            return None
        if b.state == "half_open":
            b.trial = True  # this job is the trial: no other until it tells
        return lease

    async def release(self, job_id: str) -> Lease | None:
        lease = await self.leases.release(job_id)
        if lease is not None:
            replica = self.pools[lease.pool_id].replicas.get(lease.replica_id)
            if replica is not None and replica.breaker.state == "half_open":
                replica.breaker.trial = False  # the trial ended without telling: another may try
        return lease

    # -- snapshots -------------------------------------------------------------------------------
    async def snapshot(self) -> list[PoolSnapshot]:
        slots = [(pool_id, r) for pool_id, pool in self.pools.items() for r in pool.replicas]
        held = dict(zip(slots, await self.leases.held_each(slots), strict=True))  # one look for all
        return [self._pool_snapshot(pool_id, held) for pool_id in self.pools]

    async def pool_snapshot(self, pool_id: str) -> PoolSnapshot:
        slots = [(pool_id, r) for r in self.pools[pool_id].replicas]
        return self._pool_snapshot(pool_id, dict(zip(slots, await self.leases.held_each(slots), strict=True)))

    def _pool_snapshot(self, pool_id: str, held: dict[tuple[str, str], int]) -> PoolSnapshot:
        pool = self.pools[pool_id]
        replicas = []
        for r in pool.replicas.values():
            b = self._breaker_now(r)
            # (a replica a reload added while the counts were read: none held yet, as far as known)
            free = max(0, r.slots_total - held.get((pool_id, r.replica_id), 0))
            replicas.append(
                ReplicaSnapshot(
                    replica_id=r.replica_id,
                    ready=r.admits(),
                    slots_total=r.slots_total,
                    slots_free=min(free, 1) if b.state == "half_open" else free,
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


def _initial_state(spec: PoolSpec, now: float) -> PoolState:
    replicas = {
        r.id: ReplicaState(replica_id=r.id, url=r.url, slots_total=spec.slots, down_since=now)
        for r in spec.replicas
    }
    return PoolState(spec=spec, replicas=replicas, engine_version=spec.engine_version or "unknown")
