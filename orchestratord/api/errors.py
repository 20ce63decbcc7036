"""The one mapping from errors to the wire: the JSON error envelope of every error response."""

from __future__ import annotations

import math
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestratord.errors import (
    InvalidParams,
    MethodNotAllowed,
    NotFound,
    OrchestratorError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
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


def to_response(exc: OrchestratorError) -> Response:
    """The envelope, encoded by orjson (the bytes `JSONResponse` would send, without its `json.dumps`)."""
    return Response(
        orjson.dumps(envelope(exc)),
        status_code=exc.http_status,
        headers=_headers(exc),
        media_type="application/json",
    )


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


def describe_unparsable(cause: BaseException | None) -> str:
    """Why FastAPI could not parse a JSON body (it says only "There was an error parsing the body")."""
    if isinstance(cause, RecursionError):
        return "request body is nested too deeply to parse; send a flatter JSON document"
    if isinstance(cause, UnicodeDecodeError):
        return f"request body is not valid UTF-8 (byte {cause.start}); send JSON encoded as UTF-8"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "request body holds a number too long to parse (over 4300 digits)"
    return "request body could not be parsed as JSON"


_BY_STATUS: dict[int, type[OrchestratorError]] = {
    400: InvalidParams,
    404: NotFound,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


async def _http(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        return to_response(
            MethodNotAllowed(f"method not allowed here; allowed: {allow}", headers={"Allow": allow})
        )
    if exc.status_code == 404 and exc.detail == "Not Found":
        return to_response(NotFound("no such route; see /openapi.json for the API"))
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        return to_response(InvalidParams(describe_unparsable(exc.__cause__)))
    error = _BY_STATUS.get(exc.status_code, OrchestratorError)(str(exc.detail))
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
