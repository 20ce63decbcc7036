"""POST /v1/tasks, GET /v1/tasks/{job_id}, POST /v1/tasks/{job_id}/cancel."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response

from orchestratord.api.deps import Caller, get_caller, get_json_caller
from orchestratord.api.responses import BUDGET_HEADERS, errors_for
from orchestratord.api.schemas import AdmissionResponse, TaskError, TaskRequest, TaskStatus
from orchestratord.api.submission import submit
from orchestratord.core.tasks import new_job_id
from orchestratord.idempotency import fingerprint
from orchestratord.state.base import JobRecord

router = APIRouter(tags=["tasks"])
CallerDep = Annotated[Caller, Depends(get_caller)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)]
# W3C trace context: declared for the contract; the caller dependency reads it (a malformed one is ignored)
Traceparent = Annotated[str | None, Header(alias="traceparent")]


@router.post(
    "/v1/tasks",
    status_code=202,
    response_model=AdmissionResponse,
    responses={
        202: {"headers": BUDGET_HEADERS},
        **errors_for(400, 409, 413, 415, 429, 503, retryable=(409, 429, 503)),
    },
    operation_id="submitTask",
)
async def submit_task(
    body: TaskRequest,
    caller: Annotated[Caller, Depends(get_json_caller)],
    response: Response,
    idempotency_key: IdempotencyKey = None,
    traceparent: Traceparent = None,
) -> AdmissionResponse:
    spec = body.to_spec(job_id=new_job_id(), tenant=caller.tenant, correlation_id=caller.correlation_id)
    result = await submit(
        caller, spec, idempotency_key=idempotency_key, body=lambda: fingerprint(body.model_dump(mode="json"))
    )
    job_id = result.job_id
    response.headers.update(result.headers)  # X-Budget-* from the control plane's checks
    return AdmissionResponse(
        job_id=job_id,
        sse_url=f"/v1/tasks/{job_id}/stream",
        status_url=f"/v1/tasks/{job_id}",
        queue_position=result.queue_position,
        predicted_start_ms=result.predicted_start_ms,
        backoff_ms=result.backoff_ms,
    )


@router.get(
    "/v1/tasks/{job_id}",
    response_model=TaskStatus,
    responses=errors_for(400, 404, 503),
    operation_id="getTask",
)
async def get_task(job_id: uuid.UUID, caller: CallerDep) -> TaskStatus:
    return status_of(await caller.services.jobs.get(str(job_id), caller.owner))


@router.post(
    "/v1/tasks/{job_id}/cancel",
    status_code=204,
    response_class=Response,
    responses=errors_for(400, 404, 503),
    operation_id="cancelTask",
)
async def cancel_task(job_id: uuid.UUID, caller: CallerDep) -> Response:
    await caller.services.jobs.cancel(str(job_id), caller.owner)
    return Response(status_code=204)


def status_of(record: JobRecord) -> TaskStatus:
    error = None
    if record.error_code is not None:
        error = TaskError(code=record.error_code, message=record.error_message or "")
    return TaskStatus(
        job_id=record.job_id,
        state=record.state.value,
        model_ref=record.model_ref,
        priority=record.priority,
        created_at=iso(record.created_at) or "",
        started_at=iso(record.started_at),
        finished_at=iso(record.finished_at),
        tokens_out=record.tokens_out,
        stop_reason=record.stop_reason,
        error=error,
        pool_id=record.pool_id,
        replica_id=record.replica_id,
        text=record.text if record.state.terminal else None,
    )


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
