"""Job control: reading a job's status and canceling it, race-free, for its own tenant only."""

from __future__ import annotations

from collections.abc import Callable

from orchestratord.core.tasks import JobState
from orchestratord.errors import NotFound
from orchestratord.logs import get_logger, record_fields
from orchestratord.metrics import NONE, Metrics
from orchestratord.state.base import JobRecord, StateStore

log = get_logger(__name__)


class JobControl:
    def __init__(self, store: StateStore, metrics: Metrics, versions: Callable[[str | None], str]) -> None:
        self._store = store
        self._metrics = metrics
        self._versions = versions

    async def get(self, job_id: str, tenant: str) -> JobRecord:
        """The job, if it exists and belongs to `tenant`; NotFound otherwise (ids leak nothing)."""
        record = await self._store.get(job_id)
        if record is None or record.tenant != tenant:
            raise NotFound(f"no job {job_id!r}: it never existed, belongs to someone else, or has expired")
        return record

    async def cancel(self, job_id: str, tenant: str | None, reason: str = "client") -> bool:
        """End the job as canceled. Idempotent: False when it had already ended.

        The terminal `end` event is written in the same step as the state change, so after this
        returns no `token` can follow; the runner sees the refused append and closes the engine request.
        """
        record = await self._store.get(job_id)
        if record is None or (tenant is not None and record.tenant != tenant):
            raise NotFound(f"no job {job_id!r}: it never existed, belongs to someone else, or has expired")
        if record.state.terminal:
            return False
        await self._store.dequeue(job_id)
        if await self._store.finish(job_id, JobState.CANCELED, "end", {"stop_reason": "canceled"}) is None:
            return False
        # The job may have been dispatched since it was read: its owner, here or on another replica,
        # closes the engine request when this signal reaches it.
        await self._store.publish_cancel(job_id)
        final = await self._store.get(job_id) or record
        version = self._versions(final.pool_id) if final.pool_id else NONE
        self._metrics.tasks_canceled.labels(
            engine=final.engine or NONE,
            engine_version=version,
            pool_id=final.pool_id or NONE,
            replica_id=final.replica_id or NONE,
            reason=reason,
        ).inc()
        fields = record_fields(final, engine_version=version if final.pool_id else None)
        log.info("task_canceled", reason=reason, state_before=record.state.value, **fields)
        return True
