"""Graceful shutdown (SIGTERM): every open stream gets its terminal event before the process exits.

1. Refuse new work: `POST /v1/tasks` answers 503 SHUTTING_DOWN with Retry-After, `/readyz` 503.
2. Take no more jobs from the queue. Queued jobs end at once with a retriable SHUTTING_DOWN error
   (embedded backend; with shared state they stay queued for another replica).
3. Running jobs may finish within `shutdown_grace_s`; those still running then end with a retriable
   WORKER_RESET error and their engine requests are closed.
"""

from __future__ import annotations

from typing import Any

from orchestratord.logs import get_logger
from orchestratord.services import Services

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
    if services.store.shared:
        return  # shared state: the jobs stay queued and another replica runs them
    for entry in await services.store.queued():
        await services.dispatcher.fail(entry.job_id, _stopping("SHUTTING_DOWN"))


async def _end_running(services: Services) -> None:
    for job_id in list(services.dispatcher.running):
        await services.dispatcher.end_running(job_id, _stopping("WORKER_RESET"))
