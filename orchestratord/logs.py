"""structlog configuration: JSON lines (console output on a terminal), secrets redacted, and the job
context every lifecycle event carries.

A job's lifecycle events (`JOB_EVENTS`) all carry the same keys (`JOB_FIELDS`), null where a fact is not
known yet (no pool before placement, no tokens before the end). Job context is bound once with
`bind_job()`/`bind()` (structlog contextvars, so it follows the request or the job's runner task) and
merged into every event. Standard-library records (uvicorn, httpx) go through the same redaction and
renderer, so every line of the stream has one format.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

from orchestratord.core.placement import Assigned, NoCapacity
from orchestratord.core.tasks import TaskSpec

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
# Prefixes of API keys, grouped by length (the pre-check below needs fixed-width look-behinds).
_KEY_PREFIXES = ("sk|pk|rk|ok|hf", "key|api|tok|ghp|gho|ghs", "xox[abprs]")
_TOKEN_LIKE = re.compile(
    r"(?i:\b(bearer|basic)\s+)[A-Za-z0-9._~+/=-]{6,}"  # an Authorization header's value
    rf"|\b(?:{'|'.join(_KEY_PREFIXES)})[-_][A-Za-z0-9._-]{{8,}}"  # prefixed keys
    r"|\beyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*"  # JWTs
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key ids
)
_SHORTEST_TOKEN = 11  # the shortest text `_TOKEN_LIKE` matches: a 2-letter prefix, "-" and 8 characters
# Where `_TOKEN_LIKE`'s prefixed keys could match, found from their separator: a pattern that starts
# with a character class is scanned in C, where `_TOKEN_LIKE` tries a dozen branches at each position.
_PREFIXED_KEY = re.compile(
    "[-_](?:" + "|".join(rf"(?<=\b(?:{group})[-_])" for group in _KEY_PREFIXES) + ")[A-Za-z0-9._-]{8}"
)
# 32+ characters mixing upper case, lower case and digits: a random key without a known prefix
_RANDOM_KEY = re.compile(r"\b(?=[\w-]*[A-Z])(?=[\w-]*[a-z])(?=[\w-]*\d)[\w-]{32,}", re.ASCII)
_SHORTEST_RANDOM = 32
_OURS = "_orchestratord_handler"

# What the redactor does with a key's value, decided once per key name: events carry a small, fixed
# set of names, and classifying one costs a dozen substring searches.
_PLAIN, _PROMPT, _SECRET, _ID = range(4)
_KINDS_KEPT = 4096  # a bound, should keys ever come from data (the dictionaries of a nested value)
_kinds: dict[str, int] = {}


def _keep_scheme(match: re.Match[str]) -> str:
    return (match.group(1) + " " if match.group(1) else "") + REDACTED


def _may_hold_token(text: str) -> bool:
    """False only when `_TOKEN_LIKE` cannot match `text`: none of its literal parts occurs, and no
    separator follows a key prefix. Several times cheaper than the pattern itself on ordinary text."""
    if not text.isascii():
        return True  # Unicode case folding (U+017F matches `s`) is left to the pattern itself
    lowered = text.lower()
    return (
        "bearer" in lowered
        or "basic" in lowered
        or "eyJ" in text
        or "AKIA" in text
        or (("-" in text or "_" in text) and _PREFIXED_KEY.search(text) is not None)
    )


def _redact_text(text: str, *, an_id: bool = False) -> str:
    """Token-like strings out; an id (`*_id`, which the API validates) keeps long random-looking runs."""
    if len(text) >= _SHORTEST_TOKEN and _may_hold_token(text):
        text = _TOKEN_LIKE.sub(_keep_scheme, text)
    if an_id or len(text) < _SHORTEST_RANDOM:
        return text
    return _RANDOM_KEY.sub(REDACTED, text)


def _secret_key(key: object) -> bool:
    lowered = str(key).lower()
    return lowered in _SECRET_KEYS or any(part in lowered for part in _SECRET_KEY_PARTS)


def _classify(key: str) -> int:
    if key.lower() in _PROMPT_KEYS:
        return _PROMPT
    if _secret_key(key):
        return _SECRET
    # An id keeps long random-looking runs (the API validates ids), except the correlation id: any
    # client may send one, and one that looks like a key is redacted like any other text.
    return _ID if key.endswith("_id") and key != "correlation_id" else _PLAIN


def _kind(key: str) -> int:
    kind = _kinds.get(key)
    if kind is None:
        kind = _classify(key)
        if len(_kinds) < _KINDS_KEPT:
            _kinds[key] = kind
    return kind


def _secret(key: object) -> bool:
    return _kind(key) == _SECRET if isinstance(key, str) else _secret_key(key)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _redact_text(value)
    if value is None or isinstance(value, int | float):
        return value
    if isinstance(value, dict):
        return {k: REDACTED if _secret(k) else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def redactor(log_prompts: bool) -> structlog.types.Processor:
    """A processor that redacts secrets and token-like strings everywhere, and drops prompts unless
    the operator opted in (`log_prompts: true`)."""

    def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in list(event.items()):
            kind = _kind(key)
            if isinstance(value, str) and kind in (_PLAIN, _ID):  # most values: one call
                event[key] = _redact_text(value, an_id=kind == _ID)
            elif kind == _PROMPT and not log_prompts:
                del event[key]
            elif kind == _SECRET:
                event[key] = REDACTED
            elif value is not None:
                event[key] = _redact_value(value)
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
        structlog.dev.ConsoleRenderer(colors=False) if use_console else render_json
    )
    shared: list[structlog.types.Processor] = [structlog.contextvars.merge_contextvars]
    if not use_console:  # the console renderer formats exceptions itself
        shared.append(structlog.processors.format_exc_info)
    # The redactor sees everything that comes from a caller or a context; the level, the time and the
    # nulls of the job fields are ours and are added after it, not searched for secrets on every line.
    shared += [
        redactor(log_prompts),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        job_fields,
    ]
    writer = structlog.WriteLogger(out)  # one for every logger: it only holds the stream and its lock
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=False,  # structlog.testing.capture_logs must still reach every logger
    )
    _route_stdlib(out, level, shared, renderer)


def render_json(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
    """One JSON line. orjson is ten times faster than `json`; what it refuses (an integer beyond 64 bits,
    a lone surrogate), `json` still renders, so no event is lost."""
    try:
        return orjson.dumps(event, default=_unknown, option=_JSON_OPTIONS).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(event, default=_unknown, separators=(",", ":"))


# Dataclasses and datetimes go through `_unknown` (their repr), as they did with `json`.
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def _unknown(value: Any) -> Any:
    """What `json` cannot encode: the value's own `__structlog__` form, else its repr."""
    own = getattr(value, "__structlog__", None)
    return own() if callable(own) else repr(value)


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
    # httpx(2): a line per engine request (the job events say it). It does not belong in the log, at
    # any level.
    for noisy in ("httpx", "httpcore", "httpx2", "httpcore2"):
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


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
