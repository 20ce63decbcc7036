"""GET /v1/capabilities: what this deployment can do, computed from the live pool registry."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from orchestratord.api.deps import get_services, get_tenant
from orchestratord.api.openapi import contract
from orchestratord.services import Services
from pool_manager.registry import PoolState

router = APIRouter(tags=["capabilities"])
Workload = Literal["completion", "chat"]


class Features(BaseModel):
    streaming: bool
    cancel: bool
    seed: bool
    chat: bool


class LimitSources(BaseModel):
    ctx_max: Literal["config", "engine"]
    max_tokens_out: Literal["config", "engine"]
    slots: Literal["config", "engine"]
    engine_version: Literal["config", "engine", "unknown"]


def limit_sources(pool: PoolState) -> LimitSources:
    return LimitSources(
        ctx_max=pool.ctx_max_source,
        max_tokens_out=pool.max_tokens_out_source,
        slots=pool.slots_source,
        engine_version=pool.engine_version_source,
    )


class PoolCapabilities(BaseModel):
    pool_id: str
    engine: str
    engine_version: str
    models: list[str]
    ctx_max: int
    max_tokens_out: int
    slots: int
    sources: LimitSources
    replicas: int
    ready: bool
    draining: bool
    workloads: list[Workload]
    features: Features


class EngineCapabilities(BaseModel):
    engine: str
    engine_versions: list[str]
    pools: list[str]


class RateLimits(BaseModel):
    requests_per_s: float | None
    burst: int | None
    max_concurrent: int | None
    queue_capacity: int
    tenant_queue_capacity: int | None
    max_tokens: int
    max_body_bytes: int


class SessionLimits(BaseModel):
    ttl_ms: int
    max_turns: int


class Capabilities(BaseModel):
    api_version: str
    pools: list[PoolCapabilities]
    engines: list[EngineCapabilities]
    rate_limits: RateLimits
    sessions: SessionLimits


@router.get("/v1/capabilities", response_model=Capabilities, operation_id="getCapabilities")
async def capabilities(
    services: Annotated[Services, Depends(get_services)], tenant: Annotated[str, Depends(get_tenant)]
) -> Capabilities:
    pools = [pool_capabilities(p) for p in sorted(services.registry.pools.values(), key=lambda p: p.spec.id)]
    settings = services.settings
    return Capabilities(
        api_version=str(contract("data.yaml")["info"]["version"]),
        pools=pools,
        engines=engine_capabilities(pools),
        rate_limits=rate_limits(services, tenant),
        sessions=SessionLimits(
            ttl_ms=round(settings.sessions.ttl_s * 1000), max_turns=settings.sessions.max_turns
        ),
    )


def pool_capabilities(pool: PoolState) -> PoolCapabilities:
    """A pool as its registry knows it now: probed engine version and slots, current models, drain."""
    spec = pool.spec
    # A `completion` pool refuses messages; `chat` takes a prompt as one user message; `auto` routes both.
    workloads: list[Workload] = ["completion"] if spec.api == "completion" else ["completion", "chat"]
    return PoolCapabilities(
        pool_id=spec.id,
        engine=spec.engine,
        engine_version=pool.engine_version,
        models=list(spec.models),
        ctx_max=pool.ctx_max,
        max_tokens_out=pool.max_tokens_out,
        slots=sum(r.slots_total for r in pool.replicas.values()),
        sources=limit_sources(pool),
        replicas=len(pool.replicas),
        ready=not pool.draining and any(r.admits() for r in pool.replicas.values()),
        draining=pool.draining,
        workloads=workloads,
        # Every adapter streams, cancels and forwards the request's seed (the WorkerAdapter contract).
        features=Features(streaming=True, cancel=True, seed=True, chat="chat" in workloads),
    )


def engine_capabilities(pools: list[PoolCapabilities]) -> list[EngineCapabilities]:
    engines = sorted({p.engine for p in pools})
    return [
        EngineCapabilities(
            engine=engine,
            engine_versions=sorted({p.engine_version for p in pools if p.engine == engine}),
            pools=[p.pool_id for p in pools if p.engine == engine],
        )
        for engine in engines
    ]


def rate_limits(services: Services, tenant: str) -> RateLimits:
    settings = services.settings
    own = next((t for t in settings.tenants if t.id == tenant), None)
    return RateLimits(
        requests_per_s=None if own is None else own.rps,
        burst=None if own is None or own.rps is None else own.burst or max(1, math.ceil(own.rps)),
        max_concurrent=None if own is None else own.max_concurrent,
        queue_capacity=settings.queue.capacity,
        tenant_queue_capacity=settings.queue.tenant_capacity,
        max_tokens=settings.limits.max_tokens,
        max_body_bytes=settings.limits.max_body_bytes,
    )
