"""Request dependencies: the services, the caller (tenant and role, from its API key), the request's
correlation id, and the role guards the composition root puts on each router."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, cast

import structlog
from fastapi import Depends, Request

from orchestratord.api.responses import errors_for
from orchestratord.auth import Principal, Role, authorize
from orchestratord.errors import UnsupportedMediaType
from orchestratord.services import Services

# Every dependency is `async def`: FastAPI runs plain `def` dependencies in a worker thread, which
# the benchmark profile showed as a fifth of the CPU of a job's requests.


def _services(request: Request) -> Services:
    return cast(Services, request.app.state.services)


def _principal(request: Request) -> Principal:
    principal = _services(request).control.keys.principal(request.headers.get("authorization"))
    structlog.contextvars.bind_contextvars(tenant=principal.tenant)
    return principal


async def get_services(request: Request) -> Services:
    return _services(request)


async def get_principal(request: Request) -> Principal:
    """The caller, from its `Authorization: Bearer` key (401 when missing or wrong). With no keys
    configured, the default tenant with the admin role."""
    return _principal(request)


async def get_tenant(principal: Annotated[Principal, Depends(get_principal)]) -> str:
    """The caller's tenant: always from its credential; a tenant named by the client (a header, a
    field) is never trusted."""
    return principal.tenant


def require(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        authorize(principal, role)
        return principal

    return check


def guard(role: Role) -> dict[str, Any]:
    """`include_router` arguments: the role check on every route, and its 401/403 in the schema."""
    return {"dependencies": [Depends(require(role))], "responses": errors_for(401, 403)}


async def _ops_access(request: Request) -> None:
    if request.url.path not in _services(request).settings.auth.open_paths:
        authorize(_principal(request), "admin")


def guard_ops() -> dict[str, Any]:
    """/healthz, /readyz, /metrics: open when listed in `auth.open_paths` (all three by default),
    otherwise for admin keys only."""
    return {"dependencies": [Depends(_ops_access)], "responses": errors_for(401, 403)}


async def correlation_id(request: Request) -> str | None:
    state: Any = request.scope.get("state", {})
    value = state.get("correlation_id")
    return None if value is None else str(value)


async def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"send the body as application/json, not {content_type!r}")
