"""Every domain error, with its wire code, HTTP status and retry semantics on the class.

OrchestratorError
  ├─ InvalidParams            (400, INVALID_PARAMS)
  ├─ DeadlineUnmet            (400, DEADLINE_UNMET)
  ├─ UntrustedArtifact        (400, UNTRUSTED_ARTIFACT)
  ├─ ModelDeprecated          (400, MODEL_DEPRECATED)
  ├─ Unauthorized             (401, UNAUTHORIZED)
  ├─ Forbidden                (403, FORBIDDEN)
  ├─ NotFound                 (404, NOT_FOUND)
  ├─ MethodNotAllowed         (405, METHOD_NOT_ALLOWED)
  ├─ RequestTimeout           (408, REQUEST_TIMEOUT, retriable)  a body too slow, or a slow connection
  │                                                  evicted for another client
  ├─ Conflict                 (409, CONFLICT)
  │    └─ IdempotencyInProgress (409, CONFLICT, retriable)
  ├─ PayloadTooLarge          (413, PAYLOAD_TOO_LARGE)
  │    └─ HeadersTooLarge     (431, PAYLOAD_TOO_LARGE)
  ├─ UnsupportedMediaType     (415, UNSUPPORTED_MEDIA_TYPE)
  ├─ AdmissionRejected        (429, ADMISSION_REJECT)   carries policy_label and retry_after_ms
  ├─ BudgetExceeded           (429, BUDGET_EXCEEDED)    policy_label "quota"; a session or tenant budget
  ├─ QueueFullDropLru         (429)  the terminal error of a queued job evicted by a newer one
  ├─ PoolUnready / PoolUnavailable / ReplicaExhausted / ShuttingDown (503)
  ├─ StateUnavailable         (503, STATE_UNAVAILABLE)  the shared state backend (Redis) is unreachable
  ├─ StateLost                (404, STATE_LOST, retriable)  the state backend lost the job's data (Redis
  │                                                  restarted empty, a key evicted): resubmit
  └─ DecodeTimeout / WorkerReset / Internal (500-class; in streams they are `error` events)

Each wire has one mapping from these classes: `api.errors.to_response` (the HTTP envelope) and
`error_event` here (a job's `error` event). Whatever ends a job badly raises or passes one of them
to `endings.Endings.fail`, never a hand-built payload.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

# The retry hint of an error that has no measured one (a drain, a shutdown, an unservable job).
DEFAULT_RETRY_AFTER_MS = 1000


class ErrorKind(StrEnum):
    ADMISSION_REJECT = "ADMISSION_REJECT"
    QUEUE_FULL_DROP_LRU = "QUEUE_FULL_DROP_LRU"
    INVALID_PARAMS = "INVALID_PARAMS"
    POOL_UNREADY = "POOL_UNREADY"
    POOL_UNAVAILABLE = "POOL_UNAVAILABLE"
    REPLICA_EXHAUSTED = "REPLICA_EXHAUSTED"
    DECODE_TIMEOUT = "DECODE_TIMEOUT"
    WORKER_RESET = "WORKER_RESET"
    INTERNAL = "INTERNAL"
    DEADLINE_UNMET = "DEADLINE_UNMET"
    MODEL_DEPRECATED = "MODEL_DEPRECATED"
    UNTRUSTED_ARTIFACT = "UNTRUSTED_ARTIFACT"
    NOT_FOUND = "NOT_FOUND"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    CONFLICT = "CONFLICT"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    STATE_UNAVAILABLE = "STATE_UNAVAILABLE"
    STATE_LOST = "STATE_LOST"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"


class OrchestratorError(Exception):
    """Base of every domain error. Raise it; `api.errors` turns it into the envelope, once."""

    kind: ErrorKind = ErrorKind.INTERNAL
    http_status: int = 500
    retriable: bool = False

    def __init__(
        self,
        message: str,
        *,
        retry_after_ms: int | None = None,
        policy_label: str | None = None,
        engine: str | None = None,
        pool_id: str | None = None,
        headers: dict[str, str] | None = None,
        retriable: bool | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.param = param  # the request field at fault, when one is (the OpenAI error names it)
        if retriable is not None:  # this instance's own verdict, over its class's
            self.retriable = retriable
        self.message = message
        self.retry_after_ms = retry_after_ms
        self.policy_label = policy_label
        self.engine = engine
        self.pool_id = pool_id
        self.headers = headers or {}


def error_event(exc: OrchestratorError) -> dict[str, Any]:
    """The data of a job's terminal `error` event (the contract's ErrorEvent)."""
    data: dict[str, Any] = {"code": exc.kind.value, "message": exc.message, "retriable": exc.retriable}
    if exc.retry_after_ms is not None:
        data["retry_after_ms"] = exc.retry_after_ms
    if exc.engine is not None:
        data["engine"] = exc.engine
    if exc.pool_id is not None:
        data["pool_id"] = exc.pool_id
    return data


class InvalidParams(OrchestratorError):
    kind = ErrorKind.INVALID_PARAMS
    http_status = 400


class DeadlineUnmet(OrchestratorError):
    kind = ErrorKind.DEADLINE_UNMET
    http_status = 400


class UntrustedArtifact(OrchestratorError):
    kind = ErrorKind.UNTRUSTED_ARTIFACT
    http_status = 400


class ModelDeprecated(OrchestratorError):
    kind = ErrorKind.MODEL_DEPRECATED
    http_status = 400


class Unauthorized(OrchestratorError):
    kind = ErrorKind.UNAUTHORIZED
    http_status = 401


class Forbidden(OrchestratorError):
    kind = ErrorKind.FORBIDDEN
    http_status = 403


class NotFound(OrchestratorError):
    kind = ErrorKind.NOT_FOUND
    http_status = 404


class MethodNotAllowed(OrchestratorError):
    kind = ErrorKind.METHOD_NOT_ALLOWED
    http_status = 405


class RequestTimeout(OrchestratorError):
    """The client did not send its request in time (answered by the HTTP protocol, not the app)."""

    kind = ErrorKind.REQUEST_TIMEOUT
    http_status = 408
    retriable = True


class Conflict(OrchestratorError):
    kind = ErrorKind.CONFLICT
    http_status = 409


class IdempotencyInProgress(Conflict):
    """The first request with this Idempotency-Key is still being admitted; retry shortly."""

    retriable = True


class PayloadTooLarge(OrchestratorError):
    kind = ErrorKind.PAYLOAD_TOO_LARGE
    http_status = 413


class HeadersTooLarge(PayloadTooLarge):
    """The request's headers, not its body, are over the limit (answered before the app sees it)."""

    http_status = 431


class UnsupportedMediaType(OrchestratorError):
    kind = ErrorKind.UNSUPPORTED_MEDIA_TYPE
    http_status = 415


class AdmissionRejected(OrchestratorError):
    kind = ErrorKind.ADMISSION_REJECT
    http_status = 429
    retriable = True


class BudgetExceeded(OrchestratorError):
    """A job would exceed its session's or tenant's budget (tokens, time, cost, turns); refused before
    it is queued. Retriable only when a tenant budget's window will reset (then with retry_after_ms)."""

    kind = ErrorKind.BUDGET_EXCEEDED
    http_status = 429

    def __init__(self, message: str, *, retry_after_ms: int | None = None, **fields: Any) -> None:
        super().__init__(message, retry_after_ms=retry_after_ms, **{"policy_label": "quota", **fields})
        self.retriable = retry_after_ms is not None


class QueueFullDropLru(OrchestratorError):
    kind = ErrorKind.QUEUE_FULL_DROP_LRU
    http_status = 429
    retriable = True


class PoolUnready(OrchestratorError):
    kind = ErrorKind.POOL_UNREADY
    http_status = 503
    retriable = True


class PoolUnavailable(OrchestratorError):
    kind = ErrorKind.POOL_UNAVAILABLE
    http_status = 503
    retriable = True


class ReplicaExhausted(OrchestratorError):
    kind = ErrorKind.REPLICA_EXHAUSTED
    http_status = 503
    retriable = True


class ShuttingDown(OrchestratorError):
    kind = ErrorKind.SHUTTING_DOWN
    http_status = 503
    retriable = True


class StateUnavailable(OrchestratorError):
    """The shared state backend (Redis) does not answer; the request can be retried once it does."""

    kind = ErrorKind.STATE_UNAVAILABLE
    http_status = 503
    retriable = True


class StateLost(OrchestratorError):
    """The state backend no longer holds a job it held (Redis restarted empty, or evicted its keys):
    its events and status are gone for good, and only a new job gets the work done."""

    kind = ErrorKind.STATE_LOST
    http_status = 404
    retriable = True


class DecodeTimeout(OrchestratorError):
    kind = ErrorKind.DECODE_TIMEOUT
    http_status = 504
    retriable = True


class WorkerReset(OrchestratorError):
    kind = ErrorKind.WORKER_RESET
    http_status = 502
    retriable = True


class Internal(OrchestratorError):
    kind = ErrorKind.INTERNAL
    http_status = 500
