"""The one mapping from errors to the wire: the JSON envelope for responses, `event: error` for streams."""

from __future__ import annotations

import math
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sse_starlette import ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestratord.errors import InvalidParams, MethodNotAllowed, NotFound, OrchestratorError
from orchestratord.logs import get_logger

log = get_logger(__name__)
CORRELATION_HEADER = "X-Correlation-Id"


def envelope(exc: OrchestratorError) -> dict[str, Any]:
    return {
        "code": exc.kind.value,
        "message": exc.message,
        "retriable": exc.retriable,
        "retry_after_ms": exc.retry_after_ms,
        "policy_label": exc.policy_label,
        "engine": exc.engine,
        "pool_id": exc.pool_id,
    }


def _headers(exc: OrchestratorError) -> dict[str, str]:
    headers = dict(exc.headers)
    if exc.retry_after_ms is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_ms / 1000)))
        headers["X-Backoff-Ms"] = str(exc.retry_after_ms)
    cid = structlog.contextvars.get_contextvars().get("correlation_id")
    if cid:
        headers[CORRELATION_HEADER] = str(cid)
    return headers


def to_response(exc: OrchestratorError) -> JSONResponse:
    return JSONResponse(envelope(exc), status_code=exc.http_status, headers=_headers(exc))


def to_sse(exc: OrchestratorError) -> ServerSentEvent:
    return ServerSentEvent(data=orjson.dumps(envelope(exc)).decode(), event="error")


def describe_validation(exc: RequestValidationError) -> str:
    """A message that names the field: `max_tokens: Input should be greater than or equal to 1`."""
    parts = []
    for err in exc.errors()[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        where = ".".join(loc) or "body"
        if err.get("type") == "json_invalid":
            parts.append(f"request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
        elif err.get("type") == "extra_forbidden":
            parts.append(f"{where}: unknown field")
        elif err.get("type") == "missing":
            parts.append(f"{where}: field required")
        else:
            parts.append(f"{where}: {str(err.get('msg', 'invalid'))[:200]}")
    return "; ".join(parts) or "invalid request"


async def _domain(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, OrchestratorError)
    return to_response(exc)


async def _validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return to_response(InvalidParams(describe_validation(exc)))


async def _http(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        return to_response(
            MethodNotAllowed(f"method not allowed here; allowed: {allow}", headers={"Allow": allow})
        )
    if exc.status_code == 404:
        return to_response(NotFound("no such route; see /openapi.json for the API"))
    error = OrchestratorError(str(exc.detail))
    error.http_status = exc.status_code
    return to_response(error)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled_error", path=request.url.path, exc_info=exc)
    return to_response(OrchestratorError("internal error; the incident is logged with this correlation id"))


def install(app: FastAPI) -> None:
    app.add_exception_handler(OrchestratorError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
