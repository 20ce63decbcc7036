"""Graceful shutdown (SIGTERM): every open stream gets its terminal event before the process exits.

1. Refuse new work: `POST /v1/tasks` answers 503 SHUTTING_DOWN with Retry-After, `/readyz` 503.
2. Take no more jobs from the queue. Queued jobs end at once with a retriable SHUTTING_DOWN error
   (embedded backend; with shared state they stay queued for another replica).
3. Running jobs may finish within `shutdown_grace_s`; those still running then end with a retriable
   WORKER_RESET error and their engine requests are closed.
4. Half a second later the streams still open are closed: with shared state, those of jobs that go
   on in another replica (their clients resume there from their last event id).
"""

from __future__ import annotations

from orchestratord.errors import DEFAULT_RETRY_AFTER_MS, ShuttingDown, WorkerReset
from orchestratord.logs import get_logger
from orchestratord.services import Services

log = get_logger(__name__)
CANCEL_WAIT_S = 2.0
STOPPING = "the orchestrator is shutting down; retry"


async def drain_and_stop(services: Services) -> None:
    services.admission.stop_accepting()
    services.dispatcher.pause()
    await _end_queued(services)
    grace = services.settings.shutdown_grace_s
    if not await services.runs.wait(grace):
        await _end_running(services)
        await services.runs.wait(CANCEL_WAIT_S)
    await _end_queued(services)  # a job whose admission was already under way when draining began
    services.shutdown.set()
    services.streams.close_soon()  # those of jobs that go on in another replica, once the rest are written
    log.info("drained", grace_s=grace)


async def _end_queued(services: Services) -> None:
    if services.store.shared is not None:
        return  # shared state: the jobs stay queued and another replica runs them
    for entry in await services.store.queued():
        await services.endings.fail(
            entry.job_id, ShuttingDown(STOPPING, retry_after_ms=DEFAULT_RETRY_AFTER_MS)
        )


async def _end_running(services: Services) -> None:
    for job_id in services.runs.job_ids():
        await services.endings.fail(job_id, WorkerReset(STOPPING, retry_after_ms=DEFAULT_RETRY_AFTER_MS))
