"""POST /v1/tasks, GET /v1/tasks/{job_id}, POST /v1/tasks/{job_id}/cancel."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from orchestratord.api.deps import correlation_id, get_services, get_tenant, require_json
from orchestratord.api.responses import errors_for
from orchestratord.api.schemas import AdmissionResponse, TaskError, TaskRequest, TaskStatus
from orchestratord.services import Services
from orchestratord.state.base import JobRecord

router = APIRouter(tags=["tasks"])
ServicesDep = Annotated[Services, Depends(get_services)]
TenantDep = Annotated[str, Depends(get_tenant)]


@router.post(
    "/v1/tasks",
    status_code=202,
    response_model=AdmissionResponse,
    responses=errors_for(400, 413, 415, 429, 503),
    dependencies=[Depends(require_json)],
    operation_id="submitTask",
)
async def submit_task(
    body: TaskRequest,
    services: ServicesDep,
    tenant: TenantDep,
    cid: Annotated[str | None, Depends(correlation_id)],
) -> AdmissionResponse:
    began = time.perf_counter()
    job_id = str(uuid.uuid4())
    result = await services.admission.admit(body.to_spec(job_id=job_id, tenant=tenant, correlation_id=cid))
    services.metrics.admission_latency.observe((time.perf_counter() - began) * 1000)
    return AdmissionResponse(
        job_id=job_id,
        sse_url=f"/v1/tasks/{job_id}/stream",
        status_url=f"/v1/tasks/{job_id}",
        queue_position=result.queue_position,
        predicted_start_ms=result.predicted_start_ms,
        backoff_ms=result.backoff_ms,
    )


@router.get(
    "/v1/tasks/{job_id}", response_model=TaskStatus, responses=errors_for(400, 404), operation_id="getTask"
)
async def get_task(job_id: uuid.UUID, services: ServicesDep, tenant: TenantDep) -> TaskStatus:
    return status_of(await services.jobs.get(str(job_id), tenant))


@router.post(
    "/v1/tasks/{job_id}/cancel",
    status_code=204,
    response_class=Response,
    responses=errors_for(400, 404),
    operation_id="cancelTask",
)
async def cancel_task(job_id: uuid.UUID, services: ServicesDep, tenant: TenantDep) -> Response:
    await services.jobs.cancel(str(job_id), tenant)
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
        created_at=_iso(record.created_at) or "",
        started_at=_iso(record.started_at),
        finished_at=_iso(record.finished_at),
        tokens_out=record.tokens_out,
        stop_reason=record.stop_reason,
        error=error,
        pool_id=record.pool_id,
        replica_id=record.replica_id,
        text=record.text if record.state.terminal else None,
    )


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
