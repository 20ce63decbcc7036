"""Request dependencies: the services, the caller (tenant and role, from its API key), the request's
correlation id, and the role guards the composition root puts on each router."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import structlog
from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from orchestratord.api.responses import errors_for
from orchestratord.auth import Principal, Role, authorize
from orchestratord.errors import UnsupportedMediaType
from orchestratord.services import Services
from orchestratord.tracing import valid_traceparent

# Every dependency is `async def`: FastAPI runs plain `def` dependencies in a worker thread, which
# the benchmark profile showed as a fifth of the CPU of a job's requests. And every dependency takes
# the request itself, never another dependency: FastAPI's cost is per dependency (a recursive solve
# and four parameter scans each), so the caller is authenticated once and kept in the request's scope.

_PRINCIPAL = "principal"  # the key of the authenticated caller in the request's `state`


@dataclass(frozen=True, slots=True)
class Caller:
    """What a data-plane handler needs of its request, solved as one dependency."""

    services: Services
    tenant: str
    correlation_id: str | None
    traceparent: str | None = None  # the client's W3C trace context, when valid (orchestratord.tracing)
    owner: str | None = None  # whose jobs it may read and cancel: its tenant's, or (None) an admin any


def _services(request: HTTPConnection) -> Services:
    return cast(Services, request.app.state.services)


def _principal(request: HTTPConnection) -> Principal:
    """The caller, from its `Authorization: Bearer` key (401 when missing or wrong), authenticated on
    the first call of a request and kept for the others. With no keys configured, the default tenant
    with the admin role. The tenant is always from the credential; one named by the client (a header,
    a field) is never trusted."""
    state: dict[str, Any] = request.scope.setdefault("state", {})
    principal = state.get(_PRINCIPAL)
    if principal is None:
        principal = _services(request).control.keys.principal(request.headers.get("authorization"))
        state[_PRINCIPAL] = principal
        structlog.contextvars.bind_contextvars(tenant=principal.tenant)
    return cast(Principal, principal)


def _correlation_id(request: HTTPConnection) -> str | None:
    value = request.scope.get("state", {}).get("correlation_id")
    return None if value is None else str(value)


async def get_services(request: Request) -> Services:
    return _services(request)


async def get_tenant(request: Request) -> str:
    """The caller's tenant."""
    return _principal(request).tenant


async def get_caller(request: HTTPConnection) -> Caller:
    """The services, the caller's tenant and the request's correlation id (of a request, or of a
    WebSocket's opening handshake)."""
    return _caller(request)


async def get_json_caller(request: Request) -> Caller:
    """`get_caller` for a request whose body must be JSON (`require_json`), as one dependency."""
    _require_json(request)
    return _caller(request)


def _caller(request: HTTPConnection) -> Caller:
    traceparent = valid_traceparent(request.headers.get("traceparent"))
    principal = _principal(request)
    return Caller(
        _services(request), principal.tenant, _correlation_id(request), traceparent, _owner(principal)
    )


async def get_owner(request: Request) -> str | None:
    """Whose jobs the caller may read and cancel: its own tenant's; an admin's, any tenant's (None)."""
    return _owner(_principal(request))


def _owner(principal: Principal) -> str | None:
    return None if principal.role == "admin" else principal.tenant


def require(role: Role) -> Callable[[HTTPConnection], Awaitable[Principal]]:
    # (an HTTPConnection: FastAPI passes a WebSocket's handshake to it too, never to a `Request`)
    async def check(request: HTTPConnection) -> Principal:
        principal = _principal(request)
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


async def require_json(request: Request) -> None:
    _require_json(request)


def _require_json(request: Request) -> None:
    """UnsupportedMediaType (415) unless the body is declared JSON (no Content-Type is taken as JSON)."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"send the body as application/json, not {content_type!r}")
