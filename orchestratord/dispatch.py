"""The dispatcher: the one loop that moves jobs from the queue onto free slots, and owns their runs.

Wake-ups come from admission, from finished runs, from other replicas (a shared backend's wake
signals) and from a periodic tick (deadlines, position updates, retention, dead replicas' jobs).
Cancel signals arrive through the state store, from this or another replica. A heartbeat renews the
leases of the jobs this replica runs; on a shared backend, a replica that stops renewing them is
taken for dead and its jobs are reaped by the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol

import orjson

from orchestratord.core.capacity import can_serve, capacity_for, parse_routing_key
from orchestratord.core.placement import Assigned, NoCapacity, PlacementRequest, decide
from orchestratord.core.prediction import Capacity, ServiceTimes, predict_start_ms
from orchestratord.core.queue import QueueEntry
from orchestratord.core.tasks import JobState, TaskSpec, spec_from_dict
from orchestratord.errors import StateUnavailable
from orchestratord.execution import RunContext, Runner, RunStats, error_payload
from orchestratord.logs import bind, bind_job, get_logger, job_context, placement_fields
from orchestratord.metrics import NONE, Metrics
from orchestratord.state.base import StateStore
from orchestratord.state.shared import SharedState
from pool_manager.registry import PoolRegistry
from pool_manager.snapshot import PoolSnapshot
from worker_adapters.base import WorkerAdapter

log = get_logger(__name__)


@dataclass(slots=True)
class Running:
    job_id: str
    tenant: str
    pool_id: str
    replica_id: str
    started: float
    task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Published:
    position: int | None = None
    predicted: int | None = None
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    tick_s: float = 0.25
    metrics_interval_s: float = 1.0
    max_attempts: int = 3
    tenant_max_concurrent: Mapping[str, int] = field(default_factory=dict)
    heartbeat_s: float = 2.0  # lease renewal; a shared backend's lease TTL is a few heartbeats


class PlacementHooks(Protocol):
    """Session affinity for placement, and what the control plane adds to the dispatch `metrics`
    event (kv_warmth, remaining budgets)."""

    async def affinity(self, spec: TaskSpec) -> tuple[str, str] | None: ...

    async def placed(self, spec: TaskSpec, assigned: Assigned) -> Mapping[str, object]: ...


class Dispatcher:
    def __init__(
        self,
        store: StateStore,
        registry: PoolRegistry,
        adapters: Mapping[tuple[str, str], WorkerAdapter],
        metrics: Metrics,
        config: DispatchConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        hooks: PlacementHooks | None = None,
        shared: SharedState | None = None,
    ) -> None:
        self.store = store
        self.shared = shared
        self.hooks = hooks
        self.registry = registry
        self.adapters = adapters
        self.metrics = metrics
        self.config = config or DispatchConfig()
        self.times = ServiceTimes()
        self.snapshots: list[PoolSnapshot] = []
        self.running: dict[str, Running] = {}
        self._clock = clock
        self._wall = wall
        self._runner = Runner(store, metrics, clock)
        self._wake = asyncio.Event()
        self._published: dict[str, _Published] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._accepting = True
        self._state_down = False
        self.queue_depth = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        loops = [self._loop(), self._cancel_listener(), self._heartbeat()]
        if self.shared is not None:
            loops.append(self._wake_listener(self.shared))
        self._tasks = [asyncio.create_task(loop) for loop in loops]

    def wake(self) -> None:
        self._wake.set()

    def pause(self) -> None:
        """Take no more jobs from the queue (draining); running jobs and cancel signals carry on."""
        self._accepting = False

    async def stop(self) -> None:
        self._accepting = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def wait_idle(self, within_s: float) -> bool:
        """Wait for running jobs to end; True if all did within `within_s` seconds."""
        runs = [r.task for r in self.running.values() if r.task is not None]
        if not runs:
            return True
        _, pending = await asyncio.wait(runs, timeout=within_s)
        return not pending

    # -- capacity views --------------------------------------------------------------------------
    async def refresh(self) -> list[PoolSnapshot]:
        self.snapshots = await self.registry.snapshot()
        return self.snapshots

    def capacity(self, routing_key: str) -> Capacity:
        ages: dict[str, list[float]] = {}
        now = self._clock()
        for run in self.running.values():
            ages.setdefault(run.pool_id, []).append(now - run.started)
        return capacity_for(routing_key, self.snapshots, self.times, ages)

    def pool_labels(self, routing_key: str) -> tuple[str, str, str]:
        """(engine, engine_version, pool_id) a waiting job is counted under: the first pool serving it."""
        model, allowed = parse_routing_key(routing_key)
        for pool in sorted(self.registry.pools.values(), key=lambda p: p.spec.id):
            if model in pool.spec.models and (allowed is None or pool.spec.id in allowed):
                return pool.spec.engine, pool.engine_version, pool.spec.id
        return "none", "unknown", "none"

    def predict(self, routing_key: str, position: int) -> int | None:
        return predict_start_ms(position, self.capacity(routing_key))

    # -- the loop --------------------------------------------------------------------------------
    async def _loop(self) -> None:
        last_housekeeping = self._clock()
        while self._accepting:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that arrives as the
            # wake-up completes (stop() right after a run's wake()), and the loop would never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.tick_s):
                    await self._wake.wait()
            self._wake.clear()
            if self._clock() - last_housekeeping >= self.config.tick_s:  # even when wake-ups never pause
                last_housekeeping = self._clock()
                await self._housekeeping()
            try:
                await self._dispatch_ready()
                self._state_reachable(True)
            except StateUnavailable:
                self._state_reachable(False)
            except Exception:  # task root: log loudly, keep dispatching
                log.error("dispatch_loop_error", exc_info=True)

    def _state_reachable(self, ok: bool) -> None:
        """Log the shared backend going away and coming back once each, not on every tick."""
        if ok != self._state_down:
            return
        self._state_down = not ok
        if ok:
            log.info("state_backend_reachable")
        else:
            log.warning("state_backend_unreachable")

    async def _dispatch_ready(self) -> None:
        while self._accepting:
            snapshots = await self.refresh()
            await self._expire()  # a job past its deadline is never taken
            entry = await self.store.take(partial(_servable, snapshots), self._tenant_ok)
            if entry is None:
                return
            await self._dispatch(entry, snapshots)

    def _tenant_ok(self, tenant: str) -> bool:
        limit = self.config.tenant_max_concurrent.get(tenant)
        return limit is None or sum(1 for r in self.running.values() if r.tenant == tenant) < limit

    async def _dispatch(self, entry: QueueEntry, snapshots: list[PoolSnapshot]) -> None:
        record = await self.store.get(entry.job_id)
        if record is None or record.state is not JobState.QUEUED:
            return
        spec = spec_from_dict(orjson.loads(record.spec))
        admitted_mono = self._clock() - max(0.0, self._wall() - record.created_at)
        self._published.pop(spec.job_id, None)
        # Place and lease before taking the next job, so the next snapshot already counts this slot.
        assigned = await self._place(spec, entry, set())
        if assigned is None:
            return
        run = Running(spec.job_id, spec.tenant, "", "", self._clock())
        self.running[spec.job_id] = run
        run.task = asyncio.create_task(self._run(spec, entry, admitted_mono, run, assigned))

    # -- running one job, with failover before the first token -----------------------------------
    async def _run(
        self, spec: TaskSpec, entry: QueueEntry, admitted_mono: float, run: Running, first: Assigned
    ) -> None:
        tried: set[tuple[str, str]] = set()
        stats = RunStats()
        bind_job(spec)  # this task's context: every event of the run carries the job's fields
        try:
            for attempt in range(self.config.max_attempts):
                assigned = first if attempt == 0 else await self._place(spec, entry, tried)
                if assigned is None:
                    if tried:
                        break  # every candidate failed this job already: report the engine's error
                    return
                tried.add((assigned.pool_id, assigned.replica_id))
                stats = await self._attempt(spec, assigned, admitted_mono, run)
                if stats.outcome != "error" or stats.error is None:
                    return
                if stats.tokens > 0 or not stats.error.retriable:
                    break  # after the first token, or a non-retriable failure: no failover
            await self._fail_engine(spec, stats, run)
        except StateUnavailable:
            # The shared backend went away mid-run: the engine request is closed, the lease is no
            # longer renewed, and once it expires a replica that reaches the backend reaps the job.
            log.warning("task_lost_state_backend", tokens_out=stats.tokens)
        except Exception:  # task root: a bug here must still end the job, loudly
            log.error("job_run_crashed", job_id=spec.job_id, exc_info=True)
            if await self.store.finish(
                spec.job_id, JobState.FAILED, "error",
                {"code": "INTERNAL", "message": "internal error while running the job", "retriable": True},
            ) is not None:  # fmt: skip
                engine = self.registry.pools[run.pool_id].spec.engine if run.pool_id else NONE
                self.metrics.tasks_rejected.labels(engine=engine, reason="INTERNAL").inc()
                log.error("task_failed", code="INTERNAL", tokens_out=stats.tokens)
        finally:
            self.running.pop(spec.job_id, None)
            with contextlib.suppress(StateUnavailable):  # an unreleased shared lease expires by itself
                await self.registry.release(spec.job_id)
                await self._settle(spec, entry, stats, run)
            self.wake()

    async def _place(self, spec: TaskSpec, entry: QueueEntry, tried: set[tuple[str, str]]) -> Assigned | None:
        snapshots = await self.refresh()
        _, allowed = parse_routing_key(entry.model)
        usable = [_without(p, tried) for p in snapshots if allowed is None or p.pool_id in allowed]
        affinity = await self.hooks.affinity(spec) if self.hooks is not None else None
        req = PlacementRequest(
            spec.model_ref, spec.tokens_in_estimate + spec.max_tokens, spec.placement, affinity=affinity
        )
        decision = decide(req, usable)
        self.metrics.placement.labels(
            outcome="assigned" if isinstance(decision, Assigned) else decision.kind,
            pinned=str(decision.log.pinned).lower(),
            fallback=str(decision.log.fallback).lower(),
        ).inc()
        log.info(  # the first placement runs in the dispatch loop, not the job's task: fields explicit
            "placement_decided", outcome="assigned" if isinstance(decision, Assigned) else decision.kind,
            **job_context(spec), **placement_fields(decision),
        )  # fmt: skip
        if isinstance(decision, NoCapacity):
            if not tried and not (decision.kind == "busy" and await self._give_back(spec)):
                await self._fail_placement(spec, decision)
            return None
        if await self.registry.lease(spec.job_id, decision.pool_id, decision.replica_id) is None:
            if await self._give_back(spec):
                return None
            await self._fail_placement(spec, NoCapacity("busy", "the chosen slot was taken", decision.log))
            return None
        return decision

    async def _give_back(self, spec: TaskSpec) -> bool:
        """On a shared backend another replica may take the free slot between this replica's take and
        its lease: the job goes back to its place in the queue instead of failing."""
        if self.shared is None or not await self.shared.requeue(spec.job_id):
            return False
        log.info("task_requeued", job_id=spec.job_id, reason="another replica took the free slot first")
        return True

    async def _attempt(
        self, spec: TaskSpec, assigned: Assigned, admitted_mono: float, run: Running
    ) -> RunStats:
        pool = self.registry.pools[assigned.pool_id]
        record = await self.store.start(
            spec.job_id, pool_id=assigned.pool_id, replica_id=assigned.replica_id, engine=assigned.engine
        )
        if record is None and not run.pool_id:
            return RunStats(outcome="canceled")
        first_attempt = not run.pool_id
        bind(**placement_fields(assigned))
        run.pool_id, run.replica_id = assigned.pool_id, assigned.replica_id
        run.started = self._clock()
        labels = self._labels(assigned, spec)
        queue_time_ms = round((run.started - admitted_mono) * 1000)
        bind(queue_time_ms=queue_time_ms)
        extra = await self.hooks.placed(spec, assigned) if self.hooks is not None else {}
        await self.store.append(
            spec.job_id,
            "metrics",
            {
                "pool_id": assigned.pool_id,
                "replica_id": assigned.replica_id,
                "engine": assigned.engine,
                "queue_time_ms": queue_time_ms,
                "queue_depth": self.queue_depth,
                **extra,
            },
        )
        self.metrics.tasks_started.labels(**labels["engine"], priority=spec.priority).inc()
        if first_attempt:
            met = None if spec.deadline_ms is None else queue_time_ms <= spec.deadline_ms
            self.metrics.started(spec.tenant, spec.priority, met)
        log.info("task_started", tokens_in=spec.tokens_in_estimate)
        ctx = RunContext(
            spec,
            assigned,
            admitted_mono,
            lambda: self.queue_depth,
            self.config.metrics_interval_s,
            labels["queue"],
        )
        model = pool.spec.engine_model or spec.model_ref
        stats = await self._runner.attempt(ctx, self.adapters[(assigned.pool_id, assigned.replica_id)], model)
        self._count_tokens(spec, stats, labels["engine"])
        if stats.outcome == "error" and stats.error is not None:
            self.registry.record_failure(assigned.pool_id, assigned.replica_id, stats.error.message)
            await self.registry.release(spec.job_id)
        else:
            self.registry.record_success(assigned.pool_id, assigned.replica_id)
            self.times.observe(assigned.pool_id, self._clock() - run.started)
        return stats

    def _labels(self, assigned: Assigned, spec: TaskSpec) -> dict[str, dict[str, str]]:
        base = {
            "engine": assigned.engine,
            "engine_version": assigned.engine_version,
            "pool_id": assigned.pool_id,
        }
        return {
            "engine": {**base, "replica_id": assigned.replica_id},
            "queue": {**base, "priority": spec.priority},
        }

    def _count_tokens(self, spec: TaskSpec, stats: RunStats, labels: dict[str, str]) -> None:
        self.metrics.tokens_out.labels(**labels).inc(stats.tokens)
        prompt = stats.prompt_tokens if stats.prompt_tokens is not None else spec.tokens_in_estimate
        self.metrics.tokens_in.labels(**labels).inc(prompt)

    async def _fail_engine(self, spec: TaskSpec, stats: RunStats, run: Running) -> None:
        if stats.error is None:
            return
        payload = error_payload(stats.error, after_first_token=stats.tokens > 0, pool_id=run.pool_id)
        if await self.store.finish(spec.job_id, JobState.FAILED, "error", payload) is not None:
            self.metrics.tasks_rejected.labels(engine=stats.error.engine, reason=str(payload["code"])).inc()
            log.warning(
                "task_failed", code=payload["code"], message=payload["message"], tokens_out=stats.tokens
            )

    async def _fail_placement(self, spec: TaskSpec, decision: NoCapacity) -> None:
        code = {"unready": "POOL_UNREADY", "invalid": "INVALID_PARAMS"}.get(
            decision.kind, "REPLICA_EXHAUSTED"
        )
        payload = {"code": code, "message": decision.message, "retriable": decision.kind != "invalid"}
        if await self.store.finish(spec.job_id, JobState.FAILED, "error", payload) is not None:
            self.metrics.tasks_rejected.labels(engine=self._engine_of(spec.model_ref), reason=code).inc()
            log.warning(
                "task_failed", code=code, message=decision.message, tokens_out=0,
                **job_context(spec), **placement_fields(decision),
            )  # fmt: skip

    def _engine_of(self, model: str) -> str:
        engines = sorted({p.spec.engine for p in self.registry.pools.values() if model in p.spec.models})
        return engines[0] if engines else NONE

    async def _settle(self, spec: TaskSpec, entry: QueueEntry, stats: RunStats, run: Running) -> None:
        if entry.unit == "tokens":  # fairness by tokens: replace the estimate with the real count
            prompt = stats.prompt_tokens
            if prompt is None:
                prompt = spec.tokens_in_estimate if stats.tokens else 0
            await self.store.settle(spec.tenant, spec.priority, entry.cost, float(prompt + stats.tokens))

    # -- cancel ----------------------------------------------------------------------------------
    async def _cancel_listener(self) -> None:
        async for job_id in self.store.cancel_signals():
            run = self.running.get(job_id)
            if run is not None and run.pool_id:
                await self.adapters[(run.pool_id, run.replica_id)].cancel(job_id)

    # -- replicas ----------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """Renew the leases (and a shared backend's claims) of the jobs this replica runs."""
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                await self.registry.leases.renew(list(self.running))
            except StateUnavailable:
                self._state_reachable(False)
            except Exception:  # task root: a heartbeat that stops would get live jobs reaped
                log.error("heartbeat_error", exc_info=True)

    async def _wake_listener(self, shared: SharedState) -> None:
        async for _ in shared.wake_signals():
            self.wake()

    async def _reap(self, shared: SharedState) -> None:
        """End (or queue again) the jobs of replicas that stopped renewing their leases."""
        for reaped in await shared.reap(self._wall()):
            if reaped.action != "gone":
                log.warning("task_reaped", job_id=reaped.job_id, action=reaped.action, engine=reaped.engine)
            if reaped.action == "reset":
                self.metrics.tasks_rejected.labels(engine=reaped.engine or NONE, reason="WORKER_RESET").inc()

    # -- periodic work ---------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        try:
            if self.shared is not None:
                await self._reap(self.shared)
            await self._expire()
            await self._publish_positions()
            await self.store.purge(self._wall())
        except StateUnavailable:
            self._state_reachable(False)
        except Exception:  # task root
            log.error("housekeeping_error", exc_info=True)

    def _gauge_queue(self, queued: list[QueueEntry]) -> None:
        """queue_depth per pool and class; a waiting job counts toward the first pool that serves it."""
        self.queue_depth = len(queued)
        counts: dict[tuple[str, str, str, str], int] = {}
        for snap in self.snapshots:
            for priority in ("interactive", "batch"):
                counts[(snap.engine, snap.engine_version, snap.pool_id, priority)] = 0
        for entry in queued:
            key = (*self.pool_labels(entry.model), entry.priority)
            counts[key] = counts.get(key, 0) + 1
        for (engine, version, pool_id, priority), n in counts.items():
            self.metrics.queue_depth.labels(
                engine=engine, engine_version=version, pool_id=pool_id, priority=priority
            ).set(n)

    async def _expire(self) -> None:
        for entry in await self.store.expire(self._wall()):
            record = await self.store.get(entry.job_id)
            done = await self.store.finish(
                entry.job_id,
                JobState.FAILED,
                "error",
                {
                    "code": "DEADLINE_UNMET",
                    "message": "the job's deadline passed before a slot could start it",
                    "retriable": False,
                },
            )
            if done is None or record is None:
                continue
            engine, version, pool_id = self.pool_labels(entry.model)
            self.metrics.tasks_rejected.labels(engine=engine, reason="DEADLINE_UNMET").inc()
            self.metrics.deadline_missed(entry.priority)
            log.warning(
                "task_failed", code="DEADLINE_UNMET", job_id=entry.job_id, tenant=entry.tenant,
                priority=entry.priority, session_id=record.session_id, model_ref=record.model_ref,
                correlation_id=record.correlation_id, engine=engine, engine_version=version, pool_id=pool_id,
                tokens_out=0, queue_time_ms=round((self._wall() - record.created_at) * 1000),
            )  # fmt: skip

    async def _publish_positions(self) -> None:
        """A `metrics` event for each waiting job whose position or prediction changed (≤ 1/s)."""
        now = self._clock()
        queued = await self.store.queued()
        await self.refresh()
        self._gauge_queue(queued)
        if self.shared is not None and not await self.shared.lead("positions", ttl_s=2.0):
            return  # one replica publishes positions for the shared queue
        for entry in queued:
            seen = self._published.setdefault(entry.job_id, _Published(at=now))
            if now - seen.at < 1.0:
                continue
            position = await self.store.position(entry.job_id)
            if position is None:
                continue
            predicted = self.predict(entry.model, position)
            if (position, predicted) != (seen.position, seen.predicted):
                seen.position, seen.predicted, seen.at = position, predicted, now
                await self.store.append(
                    entry.job_id,
                    "metrics",
                    {"queue_position": position, "predicted_start_ms": predicted, "queue_depth": len(queued)},
                )
        live = {e.job_id for e in queued}
        for job_id in [j for j in self._published if j not in live]:
            del self._published[job_id]


def _servable(snapshots: list[PoolSnapshot], key: str) -> bool:
    return can_serve(key, snapshots)


def _without(pool: PoolSnapshot, tried: set[tuple[str, str]]) -> PoolSnapshot:
    """The pool with replicas that already failed this job marked not ready."""
    replicas = tuple(
        replace(r, ready=False) if (pool.pool_id, r.replica_id) in tried else r for r in pool.replicas
    )
    return replace(pool, replicas=replicas)
