"""GET /v1/tasks: the operators' list of every tenant's jobs (contracts/openapi/control.yaml)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from orchestratord.api.deps import get_services
from orchestratord.api.responses import errors_for
from orchestratord.api.schemas import TaskFields
from orchestratord.api.tasks import status_of
from orchestratord.core.tasks import JobState
from orchestratord.jobs import MAX_PAGE, JobFilter, ListedJob
from orchestratord.services import Services

router = APIRouter(tags=["tasks"])
State = Literal["queued", "running", "succeeded", "failed", "canceled"]


class TaskSummary(TaskFields):
    tenant: str
    queue_position: int | None
    predicted_start_ms: int | None


class TaskList(BaseModel):
    tasks: list[TaskSummary]
    next_cursor: str | None


@router.get(
    "/v1/tasks",
    response_model=TaskList,
    responses=errors_for(400, 503),
    operation_id="listTasks",
)
async def list_tasks(
    services: Annotated[Services, Depends(get_services)],
    state: Annotated[list[State] | None, Query()] = None,
    tenant: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    pool_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    model_ref: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
) -> TaskList:
    where = JobFilter(frozenset(JobState(s) for s in state or ()), tenant, pool_id, model_ref)
    page = await services.jobs.listing(where, limit=limit, cursor=cursor)
    return TaskList(tasks=[summary(job) for job in page.jobs], next_cursor=page.next_cursor)


def summary(job: ListedJob) -> TaskSummary:
    status = status_of(job.record).model_dump(exclude={"text"})
    return TaskSummary(
        **status,
        tenant=job.record.tenant,
        queue_position=job.queue_position,
        predicted_start_ms=job.predicted_start_ms,
    )
