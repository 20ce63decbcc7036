"""structlog configuration: JSON lines (console output on a terminal), secrets redacted, and the job
context every lifecycle event carries.

A job's lifecycle events (`JOB_EVENTS`) all carry the same keys (`JOB_FIELDS`), null where a fact is not
known yet (no pool before placement, no tokens before the end). Job context is bound once with
`bind_job()`/`bind()` (structlog contextvars, so it follows the request or the job's runner task) and
merged into every event. Standard-library records (uvicorn, httpx) go through the same redaction and
renderer, so every line of the stream has one format.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from orchestratord.core.placement import Assigned, NoCapacity
from orchestratord.core.tasks import TaskSpec
from orchestratord.state.base import JobRecord

JOB_FIELDS = (
    "job_id", "session_id", "tenant", "priority", "engine", "engine_version", "pool_id", "replica_id",
    "model_ref", "queue_position", "predicted_start_ms", "queue_time_ms", "decode_time_ms", "tokens_in",
    "tokens_out", "correlation_id", "placement",
)  # fmt: skip
JOB_EVENTS = frozenset(
    {
        "task_admitted", "task_rejected", "placement_decided", "task_started", "task_first_token",
        "task_completed", "task_canceled", "task_failed",
    }
)  # fmt: skip
REDACTED = "[REDACTED]"
_SECRET_KEY_PARTS = ("authorization", "api_key", "apikey", "api-key", "password", "secret", "cookie")
_SECRET_KEYS = frozenset({"token", "key", "credential", "credentials"})
_PROMPT_KEYS = frozenset({"prompt", "messages"})
_TOKEN_LIKE = re.compile(
    r"(?i:\b(bearer|basic)\s+)[A-Za-z0-9._~+/=-]{6,}"  # an Authorization header's value
    r"|\b(?:sk|pk|rk|ok|key|api|tok|hf|ghp|gho|ghs|xox[abprs])[-_][A-Za-z0-9._-]{8,}"  # prefixed keys
    r"|\beyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*"  # JWTs
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key ids
)
# 32+ characters mixing upper case, lower case and digits: a random key without a known prefix
_RANDOM_KEY = re.compile(r"\b(?=[\w-]*[A-Z])(?=[\w-]*[a-z])(?=[\w-]*\d)[\w-]{32,}", re.ASCII)
_OURS = "_orchestratord_handler"


def _redact_text(text: str, *, an_id: bool = False) -> str:
    """Token-like strings out; an id (`*_id`, which the API validates) keeps long random-looking runs."""
    text = _TOKEN_LIKE.sub(lambda m: (m.group(1) + " " if m.group(1) else "") + REDACTED, text)
    return text if an_id else _RANDOM_KEY.sub(REDACTED, text)


def _secret_key(key: object) -> bool:
    lowered = str(key).lower()
    return lowered in _SECRET_KEYS or any(part in lowered for part in _SECRET_KEY_PARTS)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _redact_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if _secret_key(k) else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def redactor(log_prompts: bool) -> structlog.types.Processor:
    """A processor that redacts secrets and token-like strings everywhere, and drops prompts unless
    the operator opted in (`log_prompts: true`)."""

    def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in list(event):
            if key.lower() in _PROMPT_KEYS and not log_prompts:
                del event[key]
            elif _secret_key(key):
                event[key] = REDACTED
            elif key.endswith("_id") and isinstance(event[key], str):
                event[key] = _redact_text(event[key], an_id=True)
            else:
                event[key] = _redact_value(event[key])
        return event

    return redact


def job_fields(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Give every job lifecycle event the same keys, null where the fact is not known yet."""
    if event.get("event") in JOB_EVENTS:
        for name in JOB_FIELDS:
            event.setdefault(name, None)
    return event


def configure(
    level: str = "info", fmt: str = "auto", *, log_prompts: bool = False, stream: TextIO | None = None
) -> None:
    """Configure structlog (and the standard library's loggers) once, at start-up.
    `fmt="auto"`: console output when the stream is a terminal, JSON lines otherwise."""
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if use_console else structlog.processors.JSONRenderer()
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        job_fields,
    ]
    if not use_console:  # the console renderer formats exceptions itself
        shared.append(structlog.processors.format_exc_info)
    shared.append(redactor(log_prompts))
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    _route_stdlib(out, level, shared, renderer)


def _route_stdlib(
    out: TextIO, level: str, shared: list[structlog.types.Processor], renderer: structlog.types.Processor
) -> None:
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx: a line per engine request (the job events say it); sse_starlette: a line per SSE chunk at
    # debug, i.e. per token, with the generated text. Neither belongs in the log, at any level.
    for noisy in ("httpx", "httpcore", "sse_starlette"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def job_context(spec: TaskSpec) -> dict[str, Any]:
    """The job's identity, for an event logged outside the job's own context."""
    return {
        "job_id": spec.job_id,
        "session_id": spec.session_id,
        "tenant": spec.tenant,
        "priority": spec.priority,
        "model_ref": spec.model_ref,
        "correlation_id": spec.correlation_id,
    }


def placement_fields(decision: Assigned | NoCapacity) -> dict[str, Any]:
    """The placement decision, and the pool and replica it chose (if it chose one)."""
    fields: dict[str, Any] = {"placement": decision.log.as_dict()}
    if isinstance(decision, Assigned):
        fields.update(
            engine=decision.engine,
            engine_version=decision.engine_version,
            pool_id=decision.pool_id,
            replica_id=decision.replica_id,
        )
    return fields


def bind_job(spec: TaskSpec) -> None:
    """Bind the job's identity to the current context (a request, or the job's runner task)."""
    structlog.contextvars.bind_contextvars(**job_context(spec))


def bind(**fields: Any) -> None:
    """Add facts (pool, replica, placement, ...) to the current context's events."""
    structlog.contextvars.bind_contextvars(**fields)


def record_fields(record: JobRecord, *, engine_version: str | None) -> dict[str, Any]:
    """A stored job's fields, for events logged outside its own request or runner (cancel, expiry)."""
    started, finished = record.started_at, record.finished_at
    return {
        "job_id": record.job_id,
        "session_id": record.session_id,
        "tenant": record.tenant,
        "priority": record.priority,
        "model_ref": record.model_ref,
        "correlation_id": record.correlation_id,
        "engine": record.engine,
        "engine_version": engine_version,
        "pool_id": record.pool_id,
        "replica_id": record.replica_id,
        "tokens_out": record.tokens_out,
        "queue_time_ms": None if started is None else round((started - record.created_at) * 1000),
        "decode_time_ms": None if started is None or finished is None else round((finished - started) * 1000),
    }


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
