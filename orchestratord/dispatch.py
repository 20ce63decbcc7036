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
from typing import Any, Protocol

import orjson

from orchestratord.core.capacity import can_serve, capacity_for, parse_routing_key
from orchestratord.core.placement import Assigned, NoCapacity, PlacementRequest, decide
from orchestratord.core.prediction import Capacity, ServiceTimes, predict_start_ms
from orchestratord.core.queue import QueueEntry
from orchestratord.core.tasks import JobState, TaskSpec, spec_from_dict
from orchestratord.errors import ErrorKind, StateUnavailable
from orchestratord.execution import RunContext, Runner, RunStats, error_payload
from orchestratord.housekeeping import Housekeeper
from orchestratord.logs import bind, bind_job, get_logger, job_context, placement_fields, record_fields
from orchestratord.metrics import NONE, Metrics
from orchestratord.state.base import JobRecord, StateStore
from orchestratord.state.shared import SharedState
from pool_manager.registry import PoolRegistry
from pool_manager.snapshot import PoolSnapshot
from worker_adapters.base import WorkerAdapter

log = get_logger(__name__)
RETRY_AFTER_MS = 1000
# Engine failures that say something about the replica's health and count toward its circuit breaker;
# the others (INVALID_PARAMS: the request itself was refused) are the client's.
REPLICA_FAULTS = frozenset(
    {ErrorKind.POOL_UNAVAILABLE, ErrorKind.WORKER_RESET, ErrorKind.DECODE_TIMEOUT, ErrorKind.INTERNAL}
)


@dataclass(slots=True)
class Running:
    job_id: str
    tenant: str
    pool_id: str  # of the current attempt; "" until the first attempt starts (the lease says where)
    replica_id: str
    started: float
    task: asyncio.Task[None] | None = None
    adapter: WorkerAdapter | None = None  # the adapter the current attempt runs through


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    tick_s: float = 0.25
    metrics_interval_s: float = 1.0
    max_attempts: int = 3
    tenant_max_concurrent: Mapping[str, int] = field(default_factory=dict)
    heartbeat_s: float = 2.0  # lease renewal; a shared backend's lease TTL is a few heartbeats
    cancel_timeout_s: float = 5.0  # longest wait for an engine to take a cancel


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
        self._tasks: list[asyncio.Task[None]] = []
        self._cancels: set[asyncio.Task[None]] = set()
        # Taking a job and leasing its slot, and a failover's placement and lease, happen one at a
        # time: with the embedded backend nothing else leases, so a taken job always gets its slot.
        self._placing = asyncio.Lock()
        self._accepting = True
        self._state_down = False
        self.queue_depth = 0
        self.housekeeper = Housekeeper(self, clock=clock, wall=wall)

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
        """Stop the loops, every run and every engine cancel still under way, and wait for them: the
        app closes the adapters and the store right after."""
        self._accepting = False
        runs = [r.task for r in self.running.values() if r.task is not None]
        tasks = [*self._tasks, *runs, *self._cancels]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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
                await self.housekeeper.run_once()
            try:
                await self._dispatch_ready()
                self.state_reachable(True)
            except StateUnavailable:
                self.state_reachable(False)
            except Exception:  # task root: log loudly, keep dispatching
                log.error("dispatch_loop_error", exc_info=True)

    def state_reachable(self, ok: bool) -> None:
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
            async with self._placing:
                snapshots = await self.refresh()
                await self.housekeeper.expire()  # a job past its deadline is never taken
                entry = await self.store.take(partial(_servable, snapshots), self._tenant_ok)
                if entry is None:
                    return
                await self._dispatch(entry, snapshots)

    def _tenant_ok(self, tenant: str) -> bool:
        limit = self.config.tenant_max_concurrent.get(tenant)
        return limit is None or sum(1 for r in self.running.values() if r.tenant == tenant) < limit

    async def _dispatch(self, entry: QueueEntry, snapshots: list[PoolSnapshot]) -> None:
        """Place and lease a job just taken from the queue, and start its run. Whatever goes wrong
        here ends the job: it has left the queue, and nothing else would ever end it."""
        record: JobRecord | None = None
        try:
            record = await self.store.get(entry.job_id)
            if record is None or record.state is not JobState.QUEUED:
                return
            spec = spec_from_dict(orjson.loads(record.spec))
            admitted_mono = self._clock() - max(0.0, self._wall() - record.created_at)
            self.housekeeper.forget(spec.job_id)
            # Place on the snapshots the job was taken with (the queue's `can_serve` saw a free slot
            # there, so placement finds it), and lease before taking the next job, so the next
            # snapshot already counts this slot.
            assigned = await self._place(spec, entry, set(), snapshots)
            if assigned is None:
                return
            run = Running(spec.job_id, spec.tenant, "", "", self._clock())
            self.running[spec.job_id] = run
            run.task = asyncio.create_task(self._run(spec, entry, admitted_mono, run, assigned))
        except StateUnavailable:
            raise  # the shared backend is away: the claim expires and a replica reaps the job
        except Exception as exc:  # the job has left the queue: a bug here must still end it, loudly
            log.error(
                "dispatch_failed", error=type(exc).__name__, exc_info=True, **_entry_fields(entry, record)
            )
            await self._dispatch_failed(entry, exc)

    async def _dispatch_failed(self, entry: QueueEntry, exc: Exception) -> None:
        self.running.pop(entry.job_id, None)
        with contextlib.suppress(StateUnavailable):  # an unreleased shared lease expires by itself
            await self.registry.release(entry.job_id)
            if entry.unit == "tokens":  # it never ran: its flow is not charged for it
                await self.store.settle(entry.tenant, entry.priority, entry.cost, 0.0)
        payload = {
            "code": "INTERNAL",
            "message": "internal error while dispatching the job",
            "retriable": bool(getattr(exc, "retriable", False)),
        }
        await self.fail(entry.job_id, payload)

    # -- running one job, with failover before the first token -----------------------------------
    async def _run(
        self, spec: TaskSpec, entry: QueueEntry, admitted_mono: float, run: Running, first: Assigned
    ) -> None:
        tried: set[tuple[str, str]] = set()
        stats = RunStats()
        bind_job(spec)  # this task's context: every event of the run carries the job's fields
        try:
            for attempt in range(self.config.max_attempts):
                if attempt == 0:
                    assigned: Assigned | None = first
                else:
                    async with self._placing:
                        assigned = await self._place(spec, entry, tried)
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

    async def _place(
        self,
        spec: TaskSpec,
        entry: QueueEntry,
        tried: set[tuple[str, str]],
        snapshots: list[PoolSnapshot] | None = None,
    ) -> Assigned | None:
        """Choose and lease a slot (under `_placing`). The first placement ends or gives back the job
        if it finds none; a failover's placement only reports that there is none."""
        if snapshots is None:
            snapshots = await self.refresh()
        _, allowed = parse_routing_key(entry.model)
        usable = [_without(p, tried) for p in snapshots if allowed is None or p.pool_id in allowed]
        affinity = await self.hooks.affinity(spec) if self.hooks is not None else None
        req = PlacementRequest(
            spec.model_ref,
            spec.tokens_in_estimate + spec.max_tokens,
            spec.placement,
            affinity=affinity,
            tokens_out=spec.max_tokens,
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
            if not tried:
                await self._not_placed(spec, decision)
            return None
        if await self.registry.lease(spec.job_id, decision.pool_id, decision.replica_id) is None:
            if not tried:
                await self._not_placed(spec, NoCapacity("busy", "the chosen slot was taken", decision.log))
            return None
        return decision

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
        await self._fail_placement(spec, decision)

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
        # Bound before any await: a reload that rebinds the replica meanwhile leaves this run (and
        # its cancels) on the adapter it is about to use, which stays open until the run ends.
        adapter = self.adapters[(assigned.pool_id, assigned.replica_id)]
        run.adapter = adapter
        record = await self.store.start(
            spec.job_id, pool_id=assigned.pool_id, replica_id=assigned.replica_id, engine=assigned.engine
        )
        if record is None:  # ended meanwhile (canceled, drained), or no longer claimed by this replica
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
        stats = await self._runner.attempt(ctx, adapter, model)
        self._count_tokens(spec, stats, labels["engine"])
        if stats.outcome == "error" and stats.error is not None:
            if stats.error.code in REPLICA_FAULTS:  # not the client's INVALID_PARAMS
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

    # -- ending jobs from outside their run -----------------------------------------------------
    async def fail(self, job_id: str, payload: Mapping[str, Any], *, pool_id: str | None = None) -> bool:
        """End a job (queued or running) with `payload` as its `error` event, count it in
        `tasks_rejected_total` and log `task_failed` with the job's fields. `pool_id`: the pool it was
        placed on or waited for, when its record does not name one. False if it had already ended."""
        if await self.store.finish(job_id, JobState.FAILED, "error", payload) is None:
            return False
        record = await self.store.get(job_id)
        pool = self.registry.get(record.pool_id or pool_id or "") if record is not None else None
        fields: dict[str, Any] = {"job_id": job_id}
        if record is not None:
            fields = record_fields(record, engine_version=pool.engine_version if pool is not None else None)
        if pool is not None:
            fields.update(pool_id=pool.spec.id, engine=pool.spec.engine)
        engine = fields.get("engine") or (self._engine_of(record.model_ref) if record is not None else NONE)
        self.metrics.tasks_rejected.labels(engine=engine, reason=str(payload["code"])).inc()
        log.warning("task_failed", code=payload["code"], message=payload["message"], **fields)
        return True

    async def end_running(
        self, job_id: str, payload: Mapping[str, Any], *, pool_id: str | None = None
    ) -> bool:
        """`fail` a job this replica runs, and close its engine request."""
        ended = await self.fail(job_id, payload, pool_id=pool_id)
        await self.store.publish_cancel(job_id)
        return ended

    async def end_unservable(self, cause: str | None = None) -> int:
        """End every queued job that no pool can ever take any more (each pool that fits it drains, or
        no longer serves its model) with a retriable POOL_UNAVAILABLE; `cause` names the pool whose
        drain or reload made it so. Returns how many ended.

        Pool state (drains, reloads) is this replica's own: with a shared backend the queued jobs stay
        for the replicas whose pools still serve them."""
        if self.store.shared:
            return 0
        ended = 0
        reasons: dict[str, tuple[str | None, str] | None] = {}
        for entry in await self.store.queued():
            if entry.model not in reasons:
                reasons[entry.model] = self._unservable(entry.model, cause)
            reason = reasons[entry.model]
            if reason is None:
                continue
            pool_id, message = reason
            await self.store.dequeue(entry.job_id)
            payload = {
                "code": "POOL_UNAVAILABLE",
                "message": message,
                "retriable": True,
                "retry_after_ms": RETRY_AFTER_MS,
                "pool_id": pool_id,
            }
            if await self.fail(entry.job_id, payload, pool_id=pool_id):
                ended += 1
        return ended

    def _unservable(self, key: str, cause: str | None) -> tuple[str | None, str] | None:
        """None if some pool that is not draining serves the routing key; else the pool to name and why."""
        model, allowed = parse_routing_key(key)
        pools = [p for p in self.registry.pools.values() if allowed is None or p.spec.id in allowed]
        if any(model in p.spec.models and not p.draining for p in pools):
            return None
        draining = sorted(p.spec.id for p in pools if model in p.spec.models)
        named = cause if cause is not None and any(p.spec.id == cause for p in pools) else None
        if named is None and draining:
            named = draining[0]
        if named is not None and named in draining:
            why = f"pool {named!r} is draining and no other pool that can take this job serves {model!r}"
        elif named is not None:
            why = f"pool {named!r} no longer serves {model!r} and no other pool that can take this job does"
        else:
            why = f"no pool that can take this job serves {model!r} any more"
        return named, f"{why}; retry later"

    # -- cancel ----------------------------------------------------------------------------------
    async def _cancel_listener(self) -> None:
        """Close the engine request of each job of this replica that ends from outside its run. Each
        cancel runs in its own task, so a slow or failing engine never holds up the others."""
        async for job_id in self.store.cancel_signals():
            run = self.running.get(job_id)
            if run is None or run.adapter is None:
                continue  # not running here, or not submitted yet: its start finds the job ended
            task = asyncio.create_task(self._cancel_run(job_id, run, run.adapter))
            self._cancels.add(task)
            task.add_done_callback(self._cancels.discard)

    async def _cancel_run(self, job_id: str, run: Running, adapter: WorkerAdapter) -> None:
        try:
            async with asyncio.timeout(self.config.cancel_timeout_s):
                await adapter.cancel(job_id)
            return
        except TimeoutError:
            log.warning(
                "engine_cancel_failed", job_id=job_id, pool_id=run.pool_id, replica_id=run.replica_id,
                error=f"no answer within {self.config.cancel_timeout_s} s",
            )  # fmt: skip
        except Exception as exc:  # task root: one engine's failure is logged, never spreads
            log.warning(
                "engine_cancel_failed", job_id=job_id, pool_id=run.pool_id, replica_id=run.replica_id,
                error=type(exc).__name__, exc_info=True,
            )  # fmt: skip
        # The engine did not take the cancel: stop the run from this side, which closes its request.
        if run.task is not None and not run.task.done() and self.running.get(job_id) is run:
            run.task.cancel()

    # -- replicas ----------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """Renew the leases (and a shared backend's claims) of the jobs this replica runs."""
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                await self.registry.leases.renew(list(self.running))
            except StateUnavailable:
                self.state_reachable(False)
            except Exception:  # task root: a heartbeat that stops would get live jobs reaped
                log.error("heartbeat_error", exc_info=True)

    async def _wake_listener(self, shared: SharedState) -> None:
        async for _ in shared.wake_signals():
            self.wake()


def _entry_fields(entry: QueueEntry, record: JobRecord | None) -> dict[str, Any]:
    """A queued job's log fields, from its record when there is one."""
    if record is not None:
        return record_fields(record, engine_version=None)
    return {"job_id": entry.job_id, "tenant": entry.tenant, "priority": entry.priority, "tokens_out": 0}


def _servable(snapshots: list[PoolSnapshot], key: str) -> bool:
    return can_serve(key, snapshots)


def _without(pool: PoolSnapshot, tried: set[tuple[str, str]]) -> PoolSnapshot:
    """The pool with replicas that already failed this job marked not ready."""
    replicas = tuple(
        replace(r, ready=False) if (pool.pool_id, r.replica_id) in tried else r for r in pool.replicas
    )
    return replace(pool, replicas=replicas)
