"""Errors on the HTTP wire: every error response, in the shape its surface speaks. Our API answers
with the JSON error envelope (`envelope`); the OpenAI-compatible endpoints with OpenAI's error object
(`openai_error`, which also renders an error inside an OpenAI stream, and, with the HTTP status, the
error frame of a Responses WebSocket: `socket_error`). Both carry the same retry
headers: `Retry-After`, `retry-after-ms` and `X-Backoff-Ms` when there is a hint, and
`x-should-retry` from the error's `retriable` (the OpenAI SDKs otherwise retry any 429 or 5xx)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from orchestratord.errors import (
    ErrorKind,
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
    headers["x-should-retry"] = "true" if exc.retriable else "false"
    if exc.retry_after_ms is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_ms / 1000)))
        headers["retry-after-ms"] = str(exc.retry_after_ms)
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


# The OpenAI error object's `type`, by HTTP status (OpenAI's own values).
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                 429: "rate_limit_error"}  # fmt: skip
OPENAI_PATHS = (
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/responses",
    "/tokenize", "/detokenize",  # vLLM's
)  # fmt: skip
_BY_KIND: dict[str, type[OrchestratorError]] = {}


def openai_error(kind: ErrorKind | str, message: str, *, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object for one of our errors: `code` is our error code, lower-cased."""
    status = _status_of(str(kind))
    kind_type = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    if kind == ErrorKind.BUDGET_EXCEEDED:
        kind_type = "insufficient_quota"
    return {"message": message, "type": kind_type, "param": param, "code": str(kind).lower()}


def response_error(kind: ErrorKind | str, message: str) -> dict[str, Any]:
    """The `error` of a failed Responses object (OpenAI's shape there: code and message)."""
    return {"code": str(kind).lower(), "message": message}


def socket_error(exc: OrchestratorError, stream_id: str | None = None) -> dict[str, Any]:
    """The error frame of the Responses API's WebSocket mode (OpenAI's `error` event there): OpenAI's
    error object, the HTTP status the request would have had, and the retry headers it would have
    carried (in `error.headers`, as the SDKs' type has them, and beside it, where Codex reads them).
    A previous response the socket cannot carry on is `previous_response_not_found`, a 400, as OpenAI
    names it on this transport. A lane's error names its `stream_id`."""
    error = openai_error(exc.kind, exc.message, param=exc.param)
    status = exc.http_status
    if isinstance(exc, NotFound) and exc.param == "previous_response_id":
        status, error["type"], error["code"] = 400, "invalid_request_error", "previous_response_not_found"
    headers = {name.lower(): value for name, value in _headers(exc).items()}
    error["headers"] = headers
    frame: dict[str, Any] = {"type": "error", "status": status, "error": error, "headers": headers}
    if stream_id is not None:
        frame["stream_id"] = stream_id
    return frame


def to_openai_response(exc: OrchestratorError) -> Response:
    return Response(
        _openai_body(exc), status_code=exc.http_status, headers=_headers(exc), media_type="application/json"
    )


def error_body(path: str, exc: OrchestratorError) -> bytes:
    """The error response's body for a request to `path`: OpenAI's error object on the OpenAI paths,
    the envelope everywhere else. The one choice of wire, for the app and for the middleware."""
    if path.startswith(OPENAI_PATHS):
        return _openai_body(exc)
    return orjson.dumps(envelope(exc))


def _openai_body(exc: OrchestratorError) -> bytes:
    return orjson.dumps({"error": openai_error(exc.kind, exc.message, param=exc.param)})


def error_headers(exc: OrchestratorError) -> dict[str, str]:
    return _headers(exc)


def _status_of(kind: str) -> int:
    if not _BY_KIND:
        stack: list[type[OrchestratorError]] = [OrchestratorError]
        while stack:
            cls = stack.pop()
            _BY_KIND.setdefault(cls.kind.value, cls)
            stack.extend(cls.__subclasses__())
    found = _BY_KIND.get(kind)
    return 500 if found is None else found.http_status


def from_event(data: dict[str, Any]) -> OrchestratorError:
    """The domain error a job's `error` event records (for a surface that answers it as a response).
    An INTERNAL error that names an engine is the engine's failure (its HTTP 500, a stream it broke),
    answered as a gateway does: 502 Bad Gateway, as WORKER_RESET is and DECODE_TIMEOUT's 504."""
    _status_of(str(data.get("code")))
    error = _BY_KIND.get(str(data.get("code")), OrchestratorError)(
        str(data.get("message", "")),
        retry_after_ms=data.get("retry_after_ms"),
        engine=data.get("engine"),
        pool_id=data.get("pool_id"),
    )
    error.retriable = bool(data.get("retriable", error.retriable))
    return as_gateway(error)


def as_gateway(error: OrchestratorError) -> OrchestratorError:
    """`error`, answered as a gateway answers an upstream's failure: an INTERNAL error that names an
    engine (its HTTP 500, a stream it broke) is 502 Bad Gateway."""
    if error.kind is ErrorKind.INTERNAL and error.engine is not None:
        error.http_status = 502
    return error


def render(request: Request, exc: OrchestratorError) -> Response:
    """The error in the shape of the surface the request was for."""
    return Response(
        error_body(request.url.path, exc), status_code=exc.http_status, headers=_headers(exc),
        media_type="application/json",
    )  # fmt: skip


def describe_validation(exc: RequestValidationError | ValidationError) -> str:
    """A message that names the field: `max_tokens: Input should be greater than or equal to 1`."""
    parts = []
    for err in exc.errors()[:5]:
        where = _where(err.get("loc", ())) or "body"
        if err.get("type") == "json_invalid":
            parts.append(f"request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
        elif err.get("type") == "extra_forbidden":
            parts.append(f"{where}: unknown field")
        elif err.get("type") == "missing":
            parts.append(f"{where}: field required")
        else:
            parts.append(f"{where}: {str(err.get('msg', 'invalid'))[:200]}")
    return "; ".join(parts) or "invalid request"


async def _domain(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OrchestratorError)
    return render(request, exc)


def _where(loc: Sequence[int | str]) -> str:
    """A validation error's location as a client names the field (`messages.0.content`): without
    `body`, and without the labels pydantic gives the branches of a union (`list[...]`,
    `function-after[...]`, a model's class name), which name no field."""
    return ".".join(
        str(p) for p in loc if p != "body" and not (isinstance(p, str) and ("[" in p or _CLASS.match(p)))
    )


_CLASS = re.compile(r"[A-Z][a-z]+[A-Z]\w*\Z")  # CamelCase: a model's name (field names are snake_case)


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return render(request, invalid(exc))


def invalid(exc: RequestValidationError | ValidationError) -> InvalidParams:
    """A body that does not validate, as the refusal that names its first wrong field."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    return InvalidParams(describe_validation(exc), param=_where(first.get("loc", ())) or None)


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


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return render(request, _from_http(request, exc))


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.routes):
            allowed.append(method)
    return ", ".join(allowed)


def _from_http(request: Request, exc: StarletteHTTPException) -> OrchestratorError:
    if exc.status_code == 405:
        allow = _allowed(request) or (exc.headers or {}).get("Allow", "")
        return MethodNotAllowed(f"method not allowed here; allowed: {allow}", headers={"Allow": allow})
    if exc.status_code == 404 and exc.detail == "Not Found":
        return NotFound("no such route; see /openapi.json for the API")
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        return InvalidParams(describe_unparsable(exc.__cause__))
    error = _BY_STATUS.get(exc.status_code, OrchestratorError)(str(exc.detail))
    error.http_status = exc.status_code
    return error


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled_error", path=request.url.path, exc_info=exc)
    return render(
        request, OrchestratorError("internal error; the incident is logged with this correlation id")
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(OrchestratorError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
