"""Job control: reading a job's status and canceling it, race-free, for its own tenant only."""

from __future__ import annotations

from orchestratord.endings import Endings
from orchestratord.errors import NotFound
from orchestratord.state.base import JobRecord, JobRegistry


class JobControl:
    def __init__(self, store: JobRegistry, endings: Endings) -> None:
        self._store = store
        self._endings = endings

    async def get(self, job_id: str, tenant: str) -> JobRecord:
        """The job, if it exists and belongs to `tenant`; NotFound otherwise (ids leak nothing)."""
        record = await self._store.get(job_id)
        if record is None or record.tenant != tenant:
            raise NotFound(f"no job {job_id!r}: it never existed, belongs to someone else, or has expired")
        return record

    async def cancel(self, job_id: str, tenant: str | None, reason: str = "client") -> bool:
        """End the job as canceled (`Endings.cancel`). Idempotent: False when it had already ended.

        The terminal `end` event is written in the same step as the state change, so after this
        returns no `token` can follow; the run sees the refused append and closes the engine request.
        """
        record = await self._store.get(job_id)
        if record is None or (tenant is not None and record.tenant != tenant):
            raise NotFound(f"no job {job_id!r}: it never existed, belongs to someone else, or has expired")
        if record.state.terminal:
            return False
        return await self._endings.cancel(job_id, reason, record)
