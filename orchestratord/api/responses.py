"""Shared `responses=` declarations so every route lists its errors with the envelope schema."""

from __future__ import annotations

from typing import Any

from orchestratord.api.schemas import ErrorEnvelope

_SHOULD_RETRY = {
    "x-should-retry": {
        "schema": {"type": "string", "enum": ["true", "false"]},
        "description": "Whether a retry may succeed, from the envelope's `retriable`.",
    }
}
_RETRY_HEADERS = {
    **_SHOULD_RETRY,
    "Retry-After": {"schema": {"type": "integer"}, "description": "Whole seconds to wait before retrying."},
    "retry-after-ms": {"schema": {"type": "integer"}, "description": "Milliseconds to wait before retrying."},
    "X-Backoff-Ms": {"schema": {"type": "integer"}, "description": "Milliseconds to wait before retrying."},
}


def errors_for(*codes: int, retryable: tuple[int, ...] = (429, 503)) -> dict[int | str, dict[str, Any]]:
    """Every error declares x-should-retry; `retryable` statuses also Retry-After, retry-after-ms and
    X-Backoff-Ms."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorEnvelope, "description": "Error envelope."}
        entry["headers"] = _RETRY_HEADERS if code in retryable else _SHOULD_RETRY
        out[code] = entry
    return out


BUDGET_HEADERS: dict[str, dict[str, Any]] = {
    "X-Budget-Tokens-Remaining": {
        "schema": {"type": "integer"},
        "description": "Tokens left in the tighter of the session's and the tenant's budget (if limited).",
    },
    "X-Budget-Time-Remaining-Ms": {
        "schema": {"type": "integer"},
        "description": "Decode time left, ms, in the tighter budget (if limited).",
    },
    "X-Budget-Cost-Remaining": {
        "schema": {"type": "number"},
        "description": "Cost left in the tighter budget, in the unit of the configured prices (if limited).",
    },
}
