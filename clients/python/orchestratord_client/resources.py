"""The server's answers as values: an admitted `Job`, a `JobStatus`, a `Session`.

Each is read from its JSON with `from_json`, which takes the fields this client knows and ignores
the rest, so a server that adds fields never breaks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

TERMINAL_STATES = frozenset({"succeeded", "failed", "canceled"})


@dataclass(frozen=True, slots=True)
class Job:
    """An admitted job: where to read its events (`sse_url`) and its state (`status_url`), both
    relative to the server's base URL, and where it stood in the queue when admitted."""

    job_id: str
    sse_url: str
    status_url: str
    queue_position: int
    predicted_start_ms: int | None
    backoff_ms: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        return cls(
            job_id=data["job_id"],
            sse_url=data["sse_url"],
            status_url=data["status_url"],
            queue_position=data["queue_position"],
            predicted_start_ms=data.get("predicted_start_ms"),
            backoff_ms=data.get("backoff_ms", 0),
        )


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A job's state (`queued`, `running`, `succeeded`, `failed`, `canceled`) and its full `text`
    once it has finished; `error_code` and `error_message` when it failed."""

    job_id: str
    state: str
    model_ref: str
    priority: str
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    tokens_out: int
    stop_reason: str | None
    error_code: str | None
    error_message: str | None
    pool_id: str | None
    replica_id: str | None
    text: str | None

    @property
    def done(self) -> bool:
        """Whether the job has ended (nothing about it will change any more)."""
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobStatus:
        error = data.get("error") or {}
        return cls(
            job_id=data["job_id"],
            state=data["state"],
            model_ref=data.get("model_ref", ""),
            priority=data.get("priority", "interactive"),
            created_at=_time(data.get("created_at")),
            started_at=_time(data.get("started_at")),
            finished_at=_time(data.get("finished_at")),
            tokens_out=data.get("tokens_out", 0),
            stop_reason=data.get("stop_reason"),
            error_code=error.get("code"),
            error_message=error.get("message"),
            pool_id=data.get("pool_id"),
            replica_id=data.get("replica_id"),
            text=data.get("text"),
        )


@dataclass(frozen=True, slots=True)
class Session:
    """A session: its turns so far, time to live, warmth and remaining budgets (None where no
    budget applies)."""

    session_id: str
    ttl_ms_remaining: int
    turns: int
    max_turns: int
    kv_warmth: bool
    pool_id: str | None
    replica_id: str | None
    tokens_budget_remaining: int | None
    time_budget_remaining_ms: int | None
    cost_budget_remaining: float | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Session:
        return cls(
            session_id=data["session_id"],
            ttl_ms_remaining=data.get("ttl_ms_remaining", 0),
            turns=data.get("turns", 0),
            max_turns=data.get("max_turns", 0),
            kv_warmth=bool(data.get("kv_warmth", False)),
            pool_id=data.get("pool_id"),
            replica_id=data.get("replica_id"),
            tokens_budget_remaining=data.get("tokens_budget_remaining"),
            time_budget_remaining_ms=data.get("time_budget_remaining_ms"),
            cost_budget_remaining=data.get("cost_budget_remaining"),
        )


def _time(value: object) -> datetime | None:
    """An RFC 3339 timestamp (the server's `...Z` form included); None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
