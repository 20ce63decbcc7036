"""Operational endpoints: liveness, readiness and the Prometheus scrape."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from orchestratord.api.deps import get_services
from orchestratord.api.schemas import Health
from orchestratord.errors import StateUnavailable
from orchestratord.services import Services

router = APIRouter(tags=["ops"])
ServicesDep = Annotated[Services, Depends(get_services)]


@router.get("/healthz", response_model=Health, operation_id="healthz")
async def healthz() -> Health:
    """The process is alive and serving HTTP."""
    return Health(status="ok", checks={"process": True})


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Not ready."}},
    operation_id="readyz",
)
async def readyz(services: ServicesDep) -> Response:
    """Ready: at least one pool has a ready replica, the state backend answers, and not shutting down."""
    store_ok = await services.store.ping()
    snapshots = list(services.outlook.snapshots)  # the last known, while the state backend is away
    if store_ok:  # answered within redis.timeout_s either way: no second wait on an unreachable one
        try:
            snapshots = await services.outlook.refresh()  # slot counts may live in the state backend
        except StateUnavailable:
            store_ok = False
    checks = {
        "pool_ready": any(p.ready for p in snapshots),
        "state_backend": store_ok,
        "accepting": services.admission.accepting,
    }
    ok = all(checks.values())
    body = Health(status="ok" if ok else "unready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
    operation_id="metrics",
)
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
