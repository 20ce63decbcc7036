"""Graceful shutdown (SIGTERM): every open stream gets its terminal event before the process exits.

1. Refuse new work: `POST /v1/tasks` answers 503 SHUTTING_DOWN with Retry-After, `/readyz` 503.
2. Take no more jobs from the queue. Queued jobs end at once with a retriable SHUTTING_DOWN error
   (embedded backend; with shared state they stay queued for another replica).
3. Running jobs may finish within `shutdown_grace_s`; those still running then end with a retriable
   WORKER_RESET error and their engine requests are closed.
"""

from __future__ import annotations

from typing import Any

from orchestratord.core.tasks import JobState
from orchestratord.logs import get_logger, record_fields
from orchestratord.metrics import NONE
from orchestratord.services import Services
from orchestratord.state.memory import MemoryStore

log = get_logger(__name__)
RETRY_AFTER_MS = 1000
CANCEL_WAIT_S = 2.0


async def drain_and_stop(services: Services) -> None:
    services.admission.accepting = False
    services.dispatcher.pause()
    await _end_queued(services)
    grace = services.settings.shutdown_grace_s
    if not await services.dispatcher.wait_idle(grace):
        await _end_running(services)
        await services.dispatcher.wait_idle(CANCEL_WAIT_S)
    await _end_queued(services)  # a job whose admission was already under way when draining began
    services.shutdown.set()
    log.info("drained", grace_s=grace)


def _stopping(code: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": "the orchestrator is shutting down; retry",
        "retriable": True,
        "retry_after_ms": RETRY_AFTER_MS,
    }


async def _end_queued(services: Services) -> None:
    if not isinstance(services.store, MemoryStore):
        return  # shared state: the jobs stay queued and another replica runs them
    for entry in await services.store.queued():
        engine = services.dispatcher.pool_labels(entry.model)[0]
        if await services.store.finish(entry.job_id, JobState.FAILED, "error", _stopping("SHUTTING_DOWN")):
            await _ended(services, entry.job_id, "SHUTTING_DOWN", engine)


async def _end_running(services: Services) -> None:
    for job_id, run in list(services.dispatcher.running.items()):
        if await services.store.finish(job_id, JobState.FAILED, "error", _stopping("WORKER_RESET")):
            engine = services.registry.pools[run.pool_id].spec.engine if run.pool_id else NONE
            await _ended(services, job_id, "WORKER_RESET", engine)
        await services.store.publish_cancel(job_id)


async def _ended(services: Services, job_id: str, code: str, engine: str) -> None:
    """A job the shutdown ended is counted and logged like any other failed job."""
    services.metrics.tasks_rejected.labels(engine=engine, reason=code).inc()
    record = await services.store.get(job_id)
    if record is not None:
        pool = services.registry.get(record.pool_id) if record.pool_id else None
        fields = record_fields(record, engine_version=pool.engine_version if pool else None)
        log.warning("task_failed", code=code, message="the orchestrator is shutting down", **fields)
