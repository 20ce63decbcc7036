"""GET and DELETE /v1/sessions/{session_id}: a caller's own session (contracts/openapi/control.yaml)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel

from orchestratord.api.deps import get_services, get_tenant
from orchestratord.api.responses import errors_for
from orchestratord.services import Services

router = APIRouter(tags=["sessions"])
ServicesDep = Annotated[Services, Depends(get_services)]
TenantDep = Annotated[str, Depends(get_tenant)]
SessionId = Annotated[str, Path(min_length=1, max_length=128)]


class SessionInfo(BaseModel):
    session_id: str
    ttl_ms_remaining: int
    turns: int
    max_turns: int
    kv_warmth: bool
    pool_id: str | None
    replica_id: str | None
    tokens_budget_remaining: int | None
    time_budget_remaining_ms: int | None
    cost_budget_remaining: float | None


@router.get(
    "/v1/sessions/{session_id}",
    response_model=SessionInfo,
    responses=errors_for(400, 404),
    operation_id="getSession",
)
async def get_session(session_id: SessionId, services: ServicesDep, tenant: TenantDep) -> SessionInfo:
    view = await services.control.sessions.view(tenant, session_id)
    record = view.record
    return SessionInfo(
        session_id=record.session_id,
        ttl_ms_remaining=view.ttl_ms_remaining,
        turns=record.turns,
        max_turns=view.max_turns,
        kv_warmth=record.kv_warmth,
        pool_id=record.last_pool_id,
        replica_id=record.last_replica_id,
        tokens_budget_remaining=view.remaining.tokens,
        time_budget_remaining_ms=view.remaining.time_ms,
        cost_budget_remaining=view.remaining.cost,
    )


@router.delete(
    "/v1/sessions/{session_id}",
    status_code=204,
    response_class=Response,
    responses=errors_for(400, 404),
    operation_id="deleteSession",
)
async def delete_session(session_id: SessionId, services: ServicesDep, tenant: TenantDep) -> Response:
    await services.control.sessions.delete(tenant, session_id)
    return Response(status_code=204)
