"""Operators' pool endpoints: list, health, drain, undrain, reload (contracts/openapi/control.yaml)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from orchestratord.api.capabilities import LimitSources, limit_sources
from orchestratord.api.deps import get_services
from orchestratord.api.responses import errors_for
from orchestratord.errors import NotFound
from orchestratord.services import Services
from pool_manager.snapshot import PoolSnapshot

router = APIRouter(tags=["pools"])
ServicesDep = Annotated[Services, Depends(get_services)]
PoolId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class BreakerInfo(BaseModel):
    state: Literal["closed", "open", "half_open"]
    reason: str | None
    half_opens_in_ms: int | None
    failures: int


class ReplicaInfo(BaseModel):
    id: str
    ready: bool
    slots_total: int
    slots_free: int
    last_error: str | None
    breaker: BreakerInfo


class PoolHealth(BaseModel):
    live: bool
    ready: bool
    draining: bool
    slots_total: int
    slots_free: int
    last_error: str | None


class PoolInfo(BaseModel):
    id: str
    engine: str
    engine_version: str
    models: list[str]
    ctx_max: int
    ctx_max_source: Literal["config", "engine"]
    max_tokens_out: int
    sources: LimitSources
    health: PoolHealth
    replicas: list[ReplicaInfo]


class PoolList(BaseModel):
    pools: list[PoolInfo]


class DrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    deadline_ms: int = Field(ge=0, le=86_400_000)


class DrainAccepted(BaseModel):
    pool_id: str
    deadline_ms: int
    running: int


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    new_model_ref: str = Field(min_length=1, max_length=256)


class ReloadDone(BaseModel):
    pool_id: str
    models: list[str]


@router.get("/v1/pools", response_model=PoolList, operation_id="listPools", responses=errors_for(401, 403))
async def list_pools(services: ServicesDep) -> PoolList:
    return await pool_list(services)


async def pool_list(services: Services) -> PoolList:
    """Every pool as this replica's registry sees it now (also the queue page's, orchestratord.api.ui)."""
    snapshots = await services.outlook.refresh()
    return PoolList(pools=[_info(services, s) for s in snapshots])


@router.get(
    "/v1/pools/{pool_id}/health",
    response_model=PoolHealth,
    operation_id="poolHealth",
    responses=errors_for(400, 401, 403, 404),
)
async def pool_health(pool_id: PoolId, services: ServicesDep) -> PoolHealth:
    return _health(services, await _snapshot(services, pool_id))


@router.post(
    "/v1/pools/{pool_id}/drain",
    status_code=202,
    response_model=DrainAccepted,
    operation_id="drainPool",
    responses=errors_for(400, 401, 403, 404),
)
async def drain_pool(pool_id: PoolId, body: DrainRequest, services: ServicesDep) -> DrainAccepted:
    started = await services.pools.drain(pool_id, body.deadline_ms)
    return DrainAccepted(pool_id=started.pool_id, deadline_ms=started.deadline_ms, running=started.running)


@router.post(
    "/v1/pools/{pool_id}/undrain",
    response_model=PoolHealth,
    operation_id="undrainPool",
    responses=errors_for(400, 401, 403, 404),
)
async def undrain_pool(pool_id: PoolId, services: ServicesDep) -> PoolHealth:
    await services.pools.undrain(pool_id)
    return _health(services, await _snapshot(services, pool_id))


@router.post(
    "/v1/pools/{pool_id}/reload",
    response_model=ReloadDone,
    operation_id="reloadPool",
    responses=errors_for(400, 401, 403, 404, 409),
)
async def reload_pool(pool_id: PoolId, body: ReloadRequest, services: ServicesDep) -> ReloadDone:
    await services.pools.reload(pool_id, body.new_model_ref)
    snapshot = await _snapshot(services, pool_id)
    return ReloadDone(pool_id=pool_id, models=list(snapshot.models))


async def _snapshot(services: Services, pool_id: str) -> PoolSnapshot:
    if services.registry.get(pool_id) is None:
        raise NotFound(f"no pool {pool_id!r}; pools: {', '.join(services.registry.pools)}")
    return await services.registry.pool_snapshot(pool_id)


def _health(services: Services, snap: PoolSnapshot) -> PoolHealth:
    state = services.registry.pools[snap.pool_id]
    errors = [r.last_error for r in state.replicas.values() if r.last_error]
    return PoolHealth(
        live=any(r.live for r in state.replicas.values()),
        ready=snap.ready,
        draining=snap.draining,
        slots_total=snap.slots_total,
        slots_free=snap.slots_free,
        last_error=errors[0] if errors else None,
    )


def _breaker(services: Services, pool_id: str, replica_id: str) -> BreakerInfo:
    b, wait_s = services.registry.breaker(pool_id, replica_id)
    wait_ms = None if wait_s is None else round(wait_s * 1000)
    return BreakerInfo(state=b.state, reason=b.reason, half_opens_in_ms=wait_ms, failures=b.failures)


def _info(services: Services, snap: PoolSnapshot) -> PoolInfo:
    return PoolInfo(
        id=snap.pool_id,
        engine=snap.engine,
        engine_version=snap.engine_version,
        models=list(snap.models),
        ctx_max=snap.ctx_max,
        ctx_max_source=services.registry.pools[snap.pool_id].ctx_max_source,
        max_tokens_out=snap.max_tokens_out,
        sources=limit_sources(services.registry.pools[snap.pool_id]),
        health=_health(services, snap),
        replicas=[
            ReplicaInfo(
                id=r.replica_id,
                ready=r.ready,
                slots_total=r.slots_total,
                slots_free=r.slots_free,
                last_error=r.last_error,
                breaker=_breaker(services, snap.pool_id, r.replica_id),
            )
            for r in snap.replicas
        ],
    )
