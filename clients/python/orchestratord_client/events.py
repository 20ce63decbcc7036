"""The typed events of a job's stream, and their decoding from SSE frames.

A stream is `Started`, then `Token`s (with `Metrics` and `ToolCall`s between them, and a thinking
model's `Reasoning` before them), then exactly one terminal `End` or `Error`. Each event carries the
SSE `id` it came with: the value to resume after. An event this client does not know, or one whose
data it cannot read, becomes an `UnknownEvent` rather than an exception, so a newer server never
breaks an older client mid-stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from orchestratord_client._sse import Frame


@dataclass(frozen=True, slots=True)
class Started:
    """The job left the queue and was placed; `queue_position` and `predicted_start_ms` are the
    figures it was admitted with."""

    job_id: str
    queue_position: int
    predicted_start_ms: int | None = None
    correlation_id: str | None = None
    id: str | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class Token:
    """What the engine sent in one step (usually one token). `index` counts the job's `Token`
    events from 0 without gaps, across reconnects too."""

    text: str
    index: int
    logprobs: list[dict[str, Any]] | None = field(default=None, compare=False)
    id: str | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class Reasoning:
    """A piece of a thinking model's reasoning, which comes before its answer and is not part of it."""

    text: str
    id: str | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class Metrics:
    """A progress report. The server's metrics object is open (it grows), so each figure is
    optional and `data` keeps the whole object, fields this client does not name included."""

    queue_position: int | None = None
    predicted_start_ms: int | None = None
    queue_depth: int | None = None
    tokens_out: int | None = None
    tokens_per_s: float | None = None
    pool_id: str | None = None
    replica_id: str | None = None
    engine: str | None = None
    queue_time_ms: int | None = None
    kv_warmth: bool | None = None
    data: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    id: str | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A fragment of a tool call: `call_id` and `name` come with a call's first fragment, and the
    `arguments` of one `index` are JSON text to be joined in order."""

    index: int
    arguments: str
    call_id: str | None = None
    name: str | None = None
    id: str | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class End:
    """The job's terminal success (or cancel: `stop_reason == "canceled"`, without `tokens_in`)."""

    stop_reason: str
    tokens_out: int
    tokens_in: int | None = None
    decode_time_ms: int | None = None
    tokens_out_estimated: bool = False
    tokens_in_estimated: bool = False
    id: str | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class Error:
    """The job's terminal failure. `retriable` is the server's verdict on submitting it again."""

    code: str
    message: str
    retriable: bool = False
    retry_after_ms: int | None = None
    engine: str | None = None
    pool_id: str | None = None
    id: str | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """An event this client cannot type: its name, and its data (parsed JSON, or the raw text)."""

    name: str
    data: Any
    id: str | None = field(default=None, kw_only=True)


Event: TypeAlias = Started | Token | Reasoning | Metrics | ToolCall | End | Error | UnknownEvent
TERMINAL = (End, Error)


def _started(d: Mapping[str, Any], id: str | None) -> Started:
    return Started(
        d["job_id"], d["queue_position"], d.get("predicted_start_ms"), d.get("correlation_id"), id=id
    )


def _token(d: Mapping[str, Any], id: str | None) -> Token:
    return Token(d["t"], d["i"], d.get("logprobs"), id=id)


def _reasoning(d: Mapping[str, Any], id: str | None) -> Reasoning:
    return Reasoning(d["t"], id=id)


_METRIC_FIELDS = frozenset(Metrics.__dataclass_fields__) - {"data", "id"}


def _metrics(d: Mapping[str, Any], id: str | None) -> Metrics:
    return Metrics(**{k: v for k, v in d.items() if k in _METRIC_FIELDS}, data=dict(d), id=id)


def _tool_call(d: Mapping[str, Any], id: str | None) -> ToolCall:
    return ToolCall(d["index"], d.get("arguments", ""), d.get("id"), d.get("name"), id=id)


def _end(d: Mapping[str, Any], id: str | None) -> End:
    return End(
        d["stop_reason"],
        d["tokens_out"],
        d.get("tokens_in"),
        d.get("decode_time_ms", d.get("decode_ms")),
        bool(d.get("tokens_out_estimated", False)),
        bool(d.get("tokens_in_estimated", False)),
        id=id,
    )


def _error(d: Mapping[str, Any], id: str | None) -> Error:
    return Error(
        d["code"],
        d.get("message", ""),
        bool(d.get("retriable", False)),
        d.get("retry_after_ms"),
        d.get("engine"),
        d.get("pool_id"),
        id=id,
    )


_DECODERS: dict[str, Callable[[Mapping[str, Any], str | None], Event]] = {
    "started": _started,
    "token": _token,
    "reasoning": _reasoning,
    "metrics": _metrics,
    "tool_call": _tool_call,
    "end": _end,
    "error": _error,
}


def decode(frame: Frame) -> Event:
    """The typed event of `frame`; an `UnknownEvent` when its name is new or its data unreadable."""
    try:
        data = json.loads(frame.data)
    except ValueError:
        return UnknownEvent(frame.event, frame.data, id=frame.id)
    decoder = _DECODERS.get(frame.event)
    if decoder is None or not isinstance(data, Mapping):
        return UnknownEvent(frame.event, data, id=frame.id)
    try:
        return decoder(data, frame.id)
    except (KeyError, TypeError):  # a required field missing, or data of the wrong shape
        return UnknownEvent(frame.event, data, id=frame.id)
