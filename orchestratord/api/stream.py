"""GET /v1/tasks/{job_id}/stream: the job's event log as Server-Sent Events, resumable by id."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from sse_starlette import EventSourceResponse, ServerSentEvent

from orchestratord.api.deps import get_services, get_tenant
from orchestratord.api.responses import BUDGET_HEADERS, errors_for
from orchestratord.errors import InvalidParams
from orchestratord.services import Services

router = APIRouter(tags=["tasks"])


@router.get(
    "/v1/tasks/{job_id}/stream",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "The job's events.",
            "headers": BUDGET_HEADERS,
        },
        **errors_for(400, 404),
    },
    operation_id="streamTask",
)
async def stream_task(
    job_id: uuid.UUID,
    services: Annotated[Services, Depends(get_services)],
    tenant: Annotated[str, Depends(get_tenant)],
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
) -> EventSourceResponse:
    record = await services.jobs.get(str(job_id), tenant)
    if last_event_id is not None and not services.store.valid_event_id(last_event_id):
        raise InvalidParams(f"Last-Event-ID {last_event_id!r} is not an event id of this stream")
    budget = await services.control.gate.budget_headers(tenant, record.session_id)
    return EventSourceResponse(
        frames(services, record.job_id, last_event_id),
        ping=services.settings.stream.keepalive_s,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **budget},
        sep="\n",
    )


async def frames(services: Services, job_id: str, after: str | None) -> AsyncIterator[ServerSentEvent]:
    """Tail the event log. A reader never touches the engine: leaving only updates presence."""
    await services.presence.attach(job_id)
    try:
        async for event in services.store.read(job_id, after):
            yield ServerSentEvent(data=event.data, event=event.name, id=event.id)
    finally:
        await asyncio.shield(services.presence.detach(job_id))
