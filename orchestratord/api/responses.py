"""Shared `responses=` declarations so every route lists its errors with the envelope schema."""

from __future__ import annotations

from typing import Any

from orchestratord.api.schemas import ErrorEnvelope

_RETRY_HEADERS = {
    "Retry-After": {"schema": {"type": "integer"}, "description": "Whole seconds to wait before retrying."},
    "X-Backoff-Ms": {"schema": {"type": "integer"}, "description": "Milliseconds to wait before retrying."},
}


def errors_for(*codes: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorEnvelope, "description": "Error envelope."}
        if code in (429, 503):
            entry["headers"] = _RETRY_HEADERS
        out[code] = entry
    return out
