"""A job's run on this replica, from its first placed slot to its end.

Each attempt is relayed by `relay.Relay`. After a failed attempt `core.attempts.after_failure` decides:
before the first token a transient failure fails over to another replica (the client sees only a
later dispatch, and the job's record names the replica that runs it now); otherwise, or when no other
replica can take it, the job ends through `Endings.fail`. Only the replica's own faults count toward
its circuit breaker. On every path the run returns its slot lease, settles its flow in the fair queue
(fairness by tokens) and wakes the dispatcher; a bug in the run still ends the job, loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from orchestratord.core.attempts import Fail, after_failure, counts_against_replica, engine_error
from orchestratord.core.placement import Assigned
from orchestratord.core.queue import QueueEntry
from orchestratord.core.tasks import TaskSpec
from orchestratord.endings import Endings
from orchestratord.errors import Internal, StateUnavailable
from orchestratord.logs import bind, bind_job, get_logger, placement_fields
from orchestratord.metrics import Metrics
from orchestratord.outlook import Outlook
from orchestratord.placing import Placer
from orchestratord.relay import Relay, RunContext, RunStats
from orchestratord.runs import Running, Runs
from orchestratord.state.base import EventLog, JobQueue, JobRegistry
from orchestratord.tracing import JobSpan, Tracer
from pool_manager.registry import PoolRegistry
from worker_adapters.base import WorkerAdapter

log = get_logger(__name__)


class _Store(JobRegistry, EventLog, JobQueue, Protocol):
    """The roles a run uses: the job's record and log, and the queue's settlement."""


@dataclass(frozen=True, slots=True)
class RunConfig:
    max_attempts: int = 3
    metrics_interval_s: float = 1.0  # progress `metrics` events while decoding


class Execution:
    def __init__(
        self,
        store: _Store,
        registry: PoolRegistry,
        adapters: Mapping[tuple[str, str], WorkerAdapter],
        metrics: Metrics,
        *,
        runs: Runs,
        outlook: Outlook,
        endings: Endings,
        placer: Placer,
        config: RunConfig | None = None,
        tracer: Tracer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tracer = tracer
        self._store = store
        self._registry = registry
        self._adapters = adapters
        self._metrics = metrics
        self._runs = runs
        self._outlook = outlook
        self._endings = endings
        self._placer = placer
        self._config = config or RunConfig()
        self._clock = clock
        self._relay = Relay(store, metrics, clock)

    def start(
        self,
        spec: TaskSpec,
        entry: QueueEntry,
        admitted_mono: float,
        first: Assigned,
        ended: Callable[[], None],
    ) -> None:
        """Run the job (placed on `first`, its slot leased) in a task of its own; `ended` is called
        once the run has returned its slot."""
        run = Running(spec.job_id, spec.tenant, "", "", self._clock(), work=self._outlook.work(spec, entry))
        self._runs.add(run)
        run.task = asyncio.create_task(self._run(spec, entry, admitted_mono, run, first, ended))

    async def _run(
        self,
        spec: TaskSpec,
        entry: QueueEntry,
        admitted_mono: float,
        run: Running,
        first: Assigned,
        ended: Callable[[], None],
    ) -> None:
        stats = RunStats()
        tried = set[tuple[str, str]]()
        assigned: Assigned | None = first
        bind_job(spec)  # this task's context: every event of the run carries the job's fields
        span = None if self._tracer is None else self._tracer.start(spec, admitted_mono)
        run.traceparent = None if span is None else span.traceparent
        try:
            while assigned is not None:  # the attempt awaited right here: no frame more per token
                tried.add((assigned.pool_id, assigned.replica_id))
                stats = await self._attempt(spec, assigned, admitted_mono, run)
                if span is not None and stats.error is not None:
                    span.event("attempt_failed", {"orchestratord.replica": f"{run.pool_id}/{run.replica_id}",
                                                  "error.type": stats.error.code})  # fmt: skip
                assigned = await self._next(spec, entry, run, stats, tried)
        except StateUnavailable:
            # The shared backend went away mid-run: the engine request is closed, the lease is no
            # longer renewed, and once it expires a replica that reaches the backend reaps the job.
            log.warning("task_lost_state_backend", tokens_out=stats.tokens)
        except Exception:  # task root: a bug here must still end the job, loudly
            log.error("job_run_crashed", job_id=spec.job_id, exc_info=True)
            crashed = Internal("internal error while running the job", retriable=True)
            await self._endings.fail(spec.job_id, crashed, pool_id=run.pool_id or None, from_run=True)
        finally:
            if span is not None:
                self._end_span(span, run, stats, admitted_mono)
            self._runs.drop(spec.job_id)
            with contextlib.suppress(StateUnavailable):  # an unreleased shared lease expires by itself
                await self._store.run_over(spec.job_id)
                await self._registry.release(spec.job_id)
                await self._settle(spec, entry, stats)
            ended()

    def _end_span(self, span: JobSpan, run: Running, stats: RunStats, admitted: float) -> None:
        first = stats.first_token_at
        queued_ms = round((run.started - admitted) * 1000) if run.pool_id else None
        span.set(
            {
                "gen_ai.usage.input_tokens": stats.prompt_tokens,
                "gen_ai.usage.output_tokens": stats.tokens_out,
                "gen_ai.response.finish_reasons": [stats.stop_reason] if stats.stop_reason else None,
                "orchestratord.pool_id": run.pool_id or None,
                "orchestratord.replica_id": run.replica_id or None,
                "orchestratord.queue_time_ms": queued_ms,
                "orchestratord.time_to_first_token_ms": None
                if first is None
                else round((first - admitted) * 1000),
            }
        )
        error = None
        if stats.outcome == "error" and stats.error is not None:
            error = f"{stats.error.code}: {stats.error.message}"
        span.end(error=error)

    async def _next(
        self, spec: TaskSpec, entry: QueueEntry, run: Running, stats: RunStats, tried: set[tuple[str, str]]
    ) -> Assigned | None:
        """After an attempt: the replica to fail over to, or None when the run is over (it ended well,
        was canceled, or has just been failed)."""
        if stats.outcome != "error" or stats.error is None:
            return None
        step = after_failure(
            stats.error,
            tokens=stats.tokens,
            attempt=len(tried) - 1,
            max_attempts=self._config.max_attempts,
            pool_id=run.pool_id,
        )
        if not isinstance(step, Fail):
            async with self._placer.exclusive():
                failover = await self._placer.place(spec, entry.route, tried)
            if failover is not None:
                return failover
            # every candidate failed this job already: report the engine's error
            step = Fail(engine_error(stats.error, after_first_token=False, pool_id=run.pool_id))
        await self._endings.fail(spec.job_id, step.error, from_run=True)
        return None

    async def _attempt(
        self, spec: TaskSpec, assigned: Assigned, admitted_mono: float, run: Running
    ) -> RunStats:
        pool = self._registry.pools[assigned.pool_id]
        # Bound before any await: a reload that rebinds the replica meanwhile leaves this run (and
        # its cancels) on the adapter it is about to use, which stays open until the run ends.
        adapter = self._adapters[(assigned.pool_id, assigned.replica_id)]
        run.adapter = adapter
        record = await self._store.start(
            spec.job_id, pool_id=assigned.pool_id, replica_id=assigned.replica_id, engine=assigned.engine
        )
        if record is None:  # ended meanwhile (canceled, drained), or no longer claimed by this replica
            return RunStats(outcome="canceled")
        first_attempt = not run.pool_id
        bind(**placement_fields(assigned))
        self._runs.attempt(run, assigned.pool_id, assigned.replica_id, self._clock())
        queue_time_ms = round((run.started - admitted_mono) * 1000)
        self._outlook.started(spec.job_id, queue_time_ms / 1000)
        bind(queue_time_ms=queue_time_ms)
        await self._dispatched(spec, assigned, queue_time_ms)
        labels = _labels(assigned)
        self._metrics.tasks_started.labels(**labels, priority=spec.priority).inc()
        if first_attempt:
            met = None if spec.deadline_ms is None else queue_time_ms <= spec.deadline_ms
            self._metrics.started(spec.tenant, spec.priority, met)
        log.info("task_started", tokens_in=spec.tokens_in_estimate)
        ctx = RunContext(
            spec,
            assigned,
            admitted_mono,
            lambda: self._outlook.queue_depth,
            self._config.metrics_interval_s,
            {k: v for k, v in labels.items() if k != "replica_id"} | {"priority": spec.priority},
            traceparent=run.traceparent,
            run=run,
        )
        stats = await self._relay.attempt(ctx, adapter, pool.spec.engine_name(spec.model_ref))
        self._count_tokens(spec, stats, labels)
        self._learn(spec, assigned, run, stats)
        if stats.outcome == "error":
            await self._registry.release(spec.job_id)  # a failover leases its next slot anew
        return stats

    async def _dispatched(self, spec: TaskSpec, assigned: Assigned, queue_time_ms: int) -> None:
        """The job's dispatch `metrics` event: where it runs and how long it waited."""
        extra = await self._placer.placed(spec, assigned)
        await self._store.append(
            spec.job_id,
            "metrics",
            {
                "pool_id": assigned.pool_id,
                "replica_id": assigned.replica_id,
                "engine": assigned.engine,
                "queue_time_ms": queue_time_ms,
                "queue_depth": self._outlook.queue_depth,
                **extra,
            },
        )

    def _learn(self, spec: TaskSpec, assigned: Assigned, run: Running, stats: RunStats) -> None:
        """What the attempt says of the replica: a fault toward its breaker, a success that closes it
        (the engine generated: a token, or a good end), and only a run that ended well is a service time
        (a canceled or failed run says nothing of how long a job holds a slot)."""
        if stats.outcome == "error" and stats.error is not None:
            if counts_against_replica(stats.error):
                self._registry.record_failure(assigned.pool_id, assigned.replica_id, stats.error.message)
            return
        if stats.tokens > 0 or stats.outcome == "succeeded":
            self._registry.record_success(assigned.pool_id, assigned.replica_id)
        if stats.outcome != "succeeded":
            return
        now, first = self._clock(), stats.first_token_at
        self._outlook.served(
            assigned.pool_id,
            now - run.started,
            prompt_tokens=spec.tokens_in_estimate if stats.prompt_tokens is None else stats.prompt_tokens,
            first_token_s=None if first is None else first - run.started,
            tokens=stats.tokens_out,
            decode_s=0.0 if first is None else now - first,
        )
        if stats.stop_reason not in ("max_tokens", "context_length"):  # it stopped on its own
            self._outlook.stopped(spec.model_ref, spec.tenant, stats.tokens_out)

    def _count_tokens(self, spec: TaskSpec, stats: RunStats, labels: dict[str, str]) -> None:
        self._metrics.tokens_out.labels(**labels).inc(stats.tokens_out)
        self._metrics.settled(spec.tenant, stats.tokens_out)
        prompt = stats.prompt_tokens if stats.prompt_tokens is not None else spec.tokens_in_estimate
        self._metrics.tokens_in.labels(**labels).inc(prompt)

    async def _settle(self, spec: TaskSpec, entry: QueueEntry, stats: RunStats) -> None:
        if entry.unit == "tokens":  # fairness by tokens: replace the estimate with the real count
            prompt = stats.prompt_tokens
            if prompt is None:
                prompt = spec.tokens_in_estimate if stats.tokens else 0
            await self._store.settle(spec.tenant, spec.priority, entry.cost, float(prompt + stats.tokens_out))


def _labels(assigned: Assigned) -> dict[str, str]:
    return {
        "engine": assigned.engine,
        "engine_version": assigned.engine_version,
        "pool_id": assigned.pool_id,
        "replica_id": assigned.replica_id,
    }
