"""structlog configuration: JSON lines (or console output on a terminal), with secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_KEYS = frozenset({"authorization", "api_key", "apikey", "token", "password", "secret", "x-api-key"})
_TOKEN_LIKE = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}|\b(sk|ok|key)[-_][A-Za-z0-9._-]{12,}")
_PROMPT_KEYS = frozenset({"prompt", "messages"})
REDACTED = "[REDACTED]"


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _TOKEN_LIKE.sub(lambda m: (m.group(1) or "") + REDACTED, value)
    if isinstance(value, dict):
        return {k: REDACTED if str(k).lower() in _SECRET_KEYS else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def redactor(log_prompts: bool) -> structlog.types.Processor:
    """A processor that drops secrets and, unless the operator opts in, prompts."""

    def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in list(event):
            lowered = key.lower()
            if lowered in _SECRET_KEYS:
                event[key] = REDACTED
            elif lowered in _PROMPT_KEYS and not log_prompts:
                event[key] = "[OMITTED]"
            else:
                event[key] = _redact_value(event[key])
        return event

    return redact


def configure(
    level: str = "info", fmt: str = "auto", *, log_prompts: bool = False, stream: TextIO | None = None
) -> None:
    """Configure structlog once, at start-up. `fmt="auto"`: console on a terminal, JSON otherwise."""
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor(log_prompts),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
