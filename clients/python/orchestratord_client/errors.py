"""Every error the client raises, typed by what a caller can do about it, and the one mapping from
HTTP answers and transport failures to them.

OrchestratordError            code, message, retriable, status, retry_after_s (+ envelope extras)
  ├─ InvalidRequest           (400, 413, 415, 422, 431)  the request is wrong; resending cannot help
  ├─ Unauthorized             (401)  no API key, or a wrong one
  ├─ Forbidden                (403)  the key's role may not do this
  ├─ NotFound                 (404)  no such job or session (or another tenant's)
  ├─ Conflict                 (409)  an Idempotency-Key reused with another body; retriable while
  │                                  the first request with the key is still being admitted
  ├─ RateLimited              (429)  any refusal to admit now
  │    ├─ QueueFull           (429)  the queue (or the tenant's share of it) is full
  │    └─ BudgetExceeded      (429)  a session or tenant budget is spent
  ├─ Unavailable              (503)  no pool can take the job now, or the server is draining
  ├─ ServerError              (other 5xx)
  ├─ JobFailed                the job's stream ended in an `error` event (no HTTP status)
  └─ ConnectionFailed         no HTTP answer: refused, reset or timed out (no HTTP status)
       └─ StreamInterrupted   a stream broke and could not be resumed; `last_event_id` resumes it

`retriable` is the server's own verdict (the envelope's `retriable`), never guessed from the status
when the server gave one; the clients retry only errors that carry it.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from orchestratord_client import events


class OrchestratordError(Exception):
    """Base of every error of this client. `status` is the HTTP status (None when there was no
    HTTP answer); `retry_after_s` the server's hint, from `retry-after-ms` before `Retry-After`."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retriable: bool = False,
        status: int | None = None,
        retry_after_s: float | None = None,
        policy_label: str | None = None,
        engine: str | None = None,
        pool_id: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retriable = retriable
        self.status = status
        self.retry_after_s = retry_after_s
        self.policy_label = policy_label
        self.engine = engine
        self.pool_id = pool_id
        self.correlation_id = correlation_id  # quote it to the operator: the server's logs carry it

    def __str__(self) -> str:
        prefix = f"{self.status} {self.code}" if self.status is not None else self.code
        return f"{prefix}: {self.message}"


class InvalidRequest(OrchestratordError):
    """The request is malformed or refused as asked (bad field, too large, unmeetable deadline)."""


class Unauthorized(OrchestratordError):
    """The server wants `Authorization: Bearer <key>` (pass `api_key` or set ORCHD_API_KEY)."""


class Forbidden(OrchestratordError):
    """The key is valid but its role may not do this (an admin-only endpoint)."""


class NotFound(OrchestratordError):
    """No such job, stream or session for this tenant (it may have expired)."""


class Conflict(OrchestratordError):
    """The Idempotency-Key was used with a different body, or its first request is in flight."""


class RateLimited(OrchestratordError):
    """The server refused to admit the job now (429); `retry_after_s` says when to try again."""


class QueueFull(RateLimited):
    """The queue, or this tenant's share of it, is full (`policy_label` names the policy)."""


class BudgetExceeded(RateLimited):
    """A session or tenant budget is spent; retriable only when a tenant window will reset."""


class Unavailable(OrchestratordError):
    """No pool can serve the job now: unready, draining, retired, or the server is shutting down."""


class ServerError(OrchestratordError):
    """The server failed (5xx other than 503)."""


class JobFailed(OrchestratordError):
    """The job was admitted and ran, but its stream ended in an `error` event (`event`)."""

    def __init__(self, job_id: str, event: events.Error) -> None:
        super().__init__(
            event.code,
            event.message,
            retriable=event.retriable,
            retry_after_s=None if event.retry_after_ms is None else event.retry_after_ms / 1000,
            engine=event.engine,
            pool_id=event.pool_id,
        )
        self.job_id = job_id
        self.event = event


class ConnectionFailed(OrchestratordError):
    """The server gave no HTTP answer (connection refused or reset, or a timeout)."""


class StreamInterrupted(ConnectionFailed):
    """A job's stream broke more times in a row than `max_resumes` allows. Nothing is lost: pass
    `last_event_id` to `events()` to go on from the last event received."""

    def __init__(self, job_id: str, last_event_id: str | None, message: str) -> None:
        super().__init__("STREAM_INTERRUPTED", message, retriable=True)
        self.job_id = job_id
        self.last_event_id = last_event_id


# Failures after which the request may be sent again: it either never reached the server or, when
# it did, every call of this client is idempotent (submits carry an Idempotency-Key).
_TRANSIENT = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
_BY_STATUS: dict[int, type[OrchestratordError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
    431: InvalidRequest,
    503: Unavailable,
}
# Without the server's verdict (a proxy's answer, with no envelope), these statuses mean "later".
_RETRIABLE_STATUSES = frozenset({429, 502, 503, 504})


def from_transport(exc: httpx.TransportError) -> ConnectionFailed:
    """The error for a request that got no answer; retriable when the failure is transient."""
    kind = type(exc).__name__
    return ConnectionFailed("CONNECTION_FAILED", f"{kind}: {exc}", retriable=isinstance(exc, _TRANSIENT))


def from_response(response: httpx.Response) -> OrchestratordError:
    """The typed error for an error answer (its body read), from the envelope when it has one."""
    envelope = _envelope(response)
    status = response.status_code
    code = str(envelope.get("code") or f"HTTP_{status}")
    message = str(envelope.get("message") or response.text[:500] or response.reason_phrase)
    return _class_for(status, code, envelope.get("policy_label"))(
        code,
        message,
        retriable=_retriable(response, envelope),
        status=status,
        retry_after_s=_retry_after_s(response, envelope),
        policy_label=envelope.get("policy_label"),
        engine=envelope.get("engine"),
        pool_id=envelope.get("pool_id"),
        correlation_id=response.headers.get("X-Correlation-Id"),
    )


def _envelope(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:  # not JSON: a proxy's page, say
        return {}
    return body if isinstance(body, dict) and "code" in body else {}


def _class_for(status: int, code: str, policy_label: object) -> type[OrchestratordError]:
    if code == "BUDGET_EXCEEDED":
        return BudgetExceeded
    if status == 429 and code in ("ADMISSION_REJECT", "QUEUE_FULL_DROP_LRU") and policy_label != "rate-limit":
        return QueueFull
    return _BY_STATUS.get(status, ServerError if status >= 500 else OrchestratordError)


def _retriable(response: httpx.Response, envelope: dict[str, Any]) -> bool:
    """The envelope's verdict; else the `x-should-retry` header; else what the status means."""
    if isinstance(envelope.get("retriable"), bool):
        return bool(envelope["retriable"])
    should = str(response.headers.get("x-should-retry", ""))
    if should in ("true", "false"):
        return should == "true"
    return response.status_code in _RETRIABLE_STATUSES


def _retry_after_s(response: httpx.Response, envelope: dict[str, Any]) -> float | None:
    """`retry-after-ms` (exact), then `Retry-After` (whole seconds or an HTTP date), then the
    envelope's `retry_after_ms`; None when there is no usable hint."""
    millis = _number(response.headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    header = response.headers.get("Retry-After")
    seconds = _number(header)
    if seconds is None and header:
        seconds = _seconds_until(header, response.headers.get("Date"))
    if seconds is not None:
        return seconds
    millis = _number(envelope.get("retry_after_ms"))
    return None if millis is None else millis / 1000


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if 0 <= number < float("inf") else None


def _seconds_until(http_date: str, now: str | None) -> float | None:
    """Seconds from the answer's `Date` to the `Retry-After` date (the server's clock, not ours)."""
    try:
        until = parsedate_to_datetime(http_date)
        base = parsedate_to_datetime(now) if now else None
    except (TypeError, ValueError):
        return None
    if base is None or until.tzinfo is None or base.tzinfo is None:
        return None
    return max(0.0, (until - base).total_seconds())
