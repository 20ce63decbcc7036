"""How a job ends from any path but its own success: failed with a domain error, or canceled.

`Endings.fail` is the one way to fail a job, wherever the failure happens (admission's eviction, a
deadline, placement, an engine, a drain, a shutdown, a bug): it takes the job out of the queue, moves
it to FAILED with its `error` event in one step, counts it in `tasks_rejected_total`, logs
`task_failed` with the job's fields, and has its engine request closed (the run then returns its slot
lease). `Endings.cancel` does the same for a canceled job. `errors.error_event` is the one mapping
from a domain error to the stream's `error` event.
"""

from __future__ import annotations

from typing import Any, Protocol

from orchestratord.core.tasks import JobState
from orchestratord.errors import OrchestratorError, error_event
from orchestratord.logs import get_logger
from orchestratord.metrics import NONE, Metrics
from orchestratord.state.base import JobQueue, JobRecord, JobRegistry, Readers
from orchestratord.state.shared import Reaped
from pool_manager.registry import PoolRegistry

log = get_logger(__name__)


class _Store(JobRegistry, JobQueue, Readers, Protocol):
    """The roles ending a job touches."""


class Endings:
    def __init__(self, store: _Store, registry: PoolRegistry, metrics: Metrics) -> None:
        self._store = store
        self._registry = registry
        self._metrics = metrics

    async def fail(
        self,
        job_id: str,
        error: OrchestratorError,
        *,
        pool_id: str | None = None,
        from_run: bool = False,
        queued_only: bool = False,
    ) -> bool:
        """End the job (queued or running) with `error`. `pool_id`: the pool it ran on or waited for,
        when its record does not say; `from_run`: the job's own run ends it (and closes its request
        itself); `queued_only`: the caller found the job in the queue, and ends it only if it is still
        there: a dispatcher that took it since (on any replica, while the caller was ending others)
        started it in time or places it, and its placement ends it if it must. False if it had
        already ended, or left the queue when `queued_only`."""
        if not from_run and await self._store.dequeue(job_id) is None and queued_only:
            return False
        if await self._store.finish(job_id, JobState.FAILED, "error", error_event(error)) is None:
            return False
        if not from_run:  # its owner, here or on another replica, closes the run and frees its slot
            await self._store.publish_cancel(job_id)
        record = await self._store.get(job_id)
        fields = self._fields(job_id, record, pool_id or error.pool_id)
        engine = fields.get("engine") or error.engine or self.engine_serving(fields.get("model_ref"))
        fields["engine"] = engine
        self._metrics.tasks_rejected.labels(engine=engine, reason=error.kind.value).inc()
        if error.policy_label is not None:
            fields["policy"] = error.policy_label
        log.warning("task_failed", code=error.kind.value, message=error.message, **fields)
        return True

    async def cancel(self, job_id: str, reason: str, before: JobRecord) -> bool:
        """End the job as canceled (`reason`: client, no_reader, client_disconnect). `before`: its record
        as the caller read it. False if it had already ended."""
        await self._store.dequeue(job_id)
        # The engine's count never arrives for a canceled job: its tokens_out counts the token events.
        canceled = {"stop_reason": "canceled", "tokens_out_estimated": True}
        if await self._store.finish(job_id, JobState.CANCELED, "end", canceled) is None:
            return False
        # The job may have been dispatched since it was read: its owner, here or on another replica,
        # closes the engine request when this signal reaches it.
        await self._store.publish_cancel(job_id)
        final = await self._store.get(job_id) or before
        fields = self._fields(job_id, final, None)
        self._metrics.tasks_canceled.labels(
            engine=final.engine or NONE,
            engine_version=fields["engine_version"] or NONE,
            pool_id=final.pool_id or NONE,
            replica_id=final.replica_id or NONE,
            reason=reason,
        ).inc()
        log.info("task_canceled", reason=reason, state_before=before.state.value, **fields)
        return True

    def reaped(self, reaped: Reaped) -> None:
        """A dead replica's job that a shared backend ended (or queued again) in its own atomic step."""
        if reaped.action != "gone":
            log.warning("task_reaped", job_id=reaped.job_id, action=reaped.action, engine=reaped.engine)
        if reaped.action == "reset":
            self._metrics.tasks_rejected.labels(engine=reaped.engine or NONE, reason="WORKER_RESET").inc()

    def engine_serving(self, model: str | None) -> str:
        """The engine a job for `model` is counted under before it runs anywhere: the first, by name,
        of the engines serving it."""
        pools = self._registry.pools.values()
        engines = sorted({p.spec.engine for p in pools if model is not None and model in p.spec.models})
        return engines[0] if engines else NONE

    def _fields(self, job_id: str, record: JobRecord | None, pool_id: str | None) -> dict[str, Any]:
        """The job's log fields, from its record; for a job that never started, the pool it waited for."""
        if record is None:
            return {"job_id": job_id}
        pool = self._registry.get(record.pool_id or pool_id or "")
        fields = record_fields(record, engine_version=pool.engine_version if pool is not None else None)
        if record.pool_id is None and pool is not None:
            fields.update(pool_id=pool.spec.id, engine=pool.spec.engine)
        if record.started_at is None and record.finished_at is not None:  # it waited, then failed
            fields["queue_time_ms"] = round((record.finished_at - record.created_at) * 1000)
        return fields


def record_fields(record: JobRecord, *, engine_version: str | None) -> dict[str, Any]:
    """A stored job's fields, for events logged outside its own request or runner (cancel, expiry)."""
    started, finished = record.started_at, record.finished_at
    return {
        "job_id": record.job_id,
        "session_id": record.session_id,
        "tenant": record.tenant,
        "priority": record.priority,
        "model_ref": record.model_ref,
        "correlation_id": record.correlation_id,
        "engine": record.engine,
        "engine_version": engine_version,
        "pool_id": record.pool_id,
        "replica_id": record.replica_id,
        "tokens_out": record.tokens_out,
        "queue_time_ms": None if started is None else round((started - record.created_at) * 1000),
        "decode_time_ms": None if started is None or finished is None else round((finished - started) * 1000),
    }
