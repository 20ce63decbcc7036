"""Request dependencies: the services, the caller's tenant, the request's correlation id."""

from __future__ import annotations

from typing import Any, cast

from fastapi import Request

from orchestratord.errors import UnsupportedMediaType
from orchestratord.services import Services

DEFAULT_TENANT = "default"


def get_services(request: Request) -> Services:
    return cast(Services, request.app.state.services)


def get_tenant(request: Request) -> str:
    """The caller's tenant. Until API keys exist every caller is the default tenant; a tenant named
    by the client (a header, a field) is never trusted."""
    state: Any = request.scope.get("state", {})
    return str(state.get("tenant", DEFAULT_TENANT))


def correlation_id(request: Request) -> str | None:
    state: Any = request.scope.get("state", {})
    value = state.get("correlation_id")
    return None if value is None else str(value)


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"send the body as application/json, not {content_type!r}")
