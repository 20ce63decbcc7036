"""Domain values: a task as the core sees it, job states, and the events of a job's log."""

from __future__ import annotations

import functools
import os
import time
import uuid
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Literal, NamedTuple

import orjson

from orchestratord.errors import Internal

Priority = Literal["interactive", "batch"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")
PlacementMode = Literal["pin", "prefer", "auto"]
ENGINE_PARAMETERS = (
    "presence_penalty", "frequency_penalty", "tools", "tool_choice", "response_format", "logprobs",
    "ignore_eos", "reasoning_effort", "chat_template_kwargs", "logit_bias", "dimensions", "prompt_logprobs",
    "suffix", "prompt_ids", "top_k", "min_p", "repetition_penalty",
)  # fmt: skip
# Not a field: a job whose chat turns carry tool calls or tool results (`Message.carries_tools`).
TOOL_MESSAGES = "tool_messages"
# Not a field either: an embeddings job (`TaskSpec.inputs`), which only some engines serve.
EMBEDDINGS = "embeddings"


def new_job_id(now: float | None = None) -> str:
    """A new job's id: a UUID of version 7 (RFC 9562), whose first 48 bits are the time it was issued
    in Unix milliseconds (`issued_at` reads them back), the rest random."""
    ms = int((time.time() if now is None else now) * 1000) & (1 << 48) - 1
    rand = int.from_bytes(os.urandom(10))
    value = ms << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 | rand & (1 << 62) - 1
    return str(uuid.UUID(int=value))


def issued_at(job_id: str) -> float | None:
    """When a job id of `new_job_id` was issued (Unix seconds); None for any other id."""
    try:
        parsed = uuid.UUID(job_id)
    except ValueError:
        return None
    return (parsed.int >> 80) / 1000 if parsed.version == 7 else None


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED)


@dataclass(frozen=True, slots=True)
class PlacementPrefs:
    mode: PlacementMode = "auto"
    pin_pool_id: str | None = None
    prefer_pools: tuple[str, ...] = ()
    avoid_pools: tuple[str, ...] = ()
    allow_fallback: bool = True


@dataclass(frozen=True, slots=True)
class Message:
    """One chat turn. An assistant turn may carry the tool calls the model made (OpenAI's
    `tool_calls`, as JSON text); a `tool` turn answers one of them (`tool_call_id`). `name`: the
    participant's, as an OpenAI client gives it (for the engines of that dialect)."""

    role: str
    content: str
    tool_calls: str | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def carries_tools(self) -> bool:
        return self.tool_calls is not None or self.tool_call_id is not None


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A validated client request, with the server-side facts (id, tenant) attached."""

    job_id: str
    tenant: str
    model_ref: str
    max_tokens: int
    priority: Priority = "interactive"
    prompt: str | None = None
    # A prompt given as token ids (the engine's tokenizer's: OpenAI completions' `prompt: [ids]`, what
    # evaluation harnesses send), instead of `prompt`, for the engines that take one
    prompt_ids: tuple[int, ...] | None = None
    # The text after the gap a prompt job fills (OpenAI completions' `suffix`: fill-in-the-middle, the
    # prompt being the text before it), for the engines that take one
    suffix: str | None = None
    messages: tuple[Message, ...] | None = None
    # An embeddings job's texts (OpenAI's `/v1/embeddings`): the engine answers a vector for each, no
    # tokens; one of `prompt`, `messages` and `inputs` is set
    inputs: tuple[str, ...] | None = None
    dimensions: int | None = None  # an embeddings job's: the vectors' first this many numbers (Matryoshka)
    session_id: str | None = None
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    deadline_ms: int | None = None
    expected_tokens: int | None = None
    cancel_on_disconnect: bool = True
    placement: PlacementPrefs = field(default_factory=PlacementPrefs)
    correlation_id: str | None = None
    override: bool = False  # start a new session on a Deprecated model anyway
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # vLLM's sampling extensions, which llama.cpp, Ollama and TGI share: sample among the `top_k` likeliest
    # tokens, among those at least `min_p` times the likeliest's probability; penalize repeated tokens
    # (`repetition_penalty`, multiplicative: 1 is none). None: the engine's default
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    tools: str | None = None  # OpenAI's tools, tool_choice and response_format, as JSON text
    tool_choice: str | None = None
    response_format: str | None = None
    logprobs: int | None = None  # each token's log probability and this many alternatives
    # The prompt's own tokens' log probabilities, with this many alternatives (OpenAI completions'
    # `echo` with `logprobs`, which evaluation harnesses score prompts by)
    prompt_logprobs: int | None = None
    ignore_eos: bool | None = None  # True: to max_tokens past the end-of-sequence token (vLLM's)
    traceparent: str | None = None  # the client's W3C trace context (orchestratord.tracing)
    # True: the first message is the request's instructions (the Responses API's), which a response
    # that carries this one on (`previous_response_id`) leaves out
    instructed: bool | None = None
    # The Responses API's: how many turns after the instructions came from the response this one carries
    # on (`previous_response_id`); the turns after them are the request's own input
    carried: int | None = None
    # The client's prompt cache key (OpenAI's `prompt_cache_key`): a job outside a session is placed,
    # when it can be, where the key's last job was (orchestratord.cache_keys)
    cache_key: str | None = None
    # True: a Responses API job created with `store: false`, which that API does not give back
    unstored: bool | None = None
    # True: at most one tool call comes back (OpenAI's `parallel_tool_calls: false`); the relay drops
    # the engine's calls after the first, as vLLM does
    single_tool_call: bool | None = None
    # How hard a thinking model thinks (OpenAI's `reasoning_effort`: none, minimal, low, medium, high),
    # for the engines that take it
    reasoning_effort: str | None = None
    # Extra variables for the engine's chat template (vLLM's and llama.cpp's `chat_template_kwargs`,
    # such as Qwen3's `enable_thinking`), as JSON text
    chat_template_kwargs: str | None = None
    # Token id -> bias (OpenAI's `logit_bias`, the engine's tokenizer's ids), as JSON text
    logit_bias: str | None = None

    @property
    def engine_parameters(self) -> tuple[str, ...]:
        """The optional parameters the job sets that not every engine honours (TOOL_MESSAGES: its
        messages carry tool calls or tool results, which only the engines that take tools read)."""
        asked = tuple(p for p in ENGINE_PARAMETERS if getattr(self, p) is not None)
        if self._open_choice:  # asks for nothing an engine that takes tools lacks
            asked = tuple(p for p in asked if p != "tool_choice")
        if self.messages is not None and any(m.carries_tools for m in self.messages):
            return (*asked, TOOL_MESSAGES)
        if self.inputs is not None:
            return (*asked, EMBEDDINGS)
        return asked

    @property
    def _open_choice(self) -> bool:
        """A `tool_choice` that leaves the choice to the model (`auto`, the default with tools) or calls
        nothing (`none`): an engine that takes tools honours it without a choice of its own (Ollama)."""
        return self.tool_choice in ('"auto"', '"none"')

    @property
    def prompt_text(self) -> str:
        if self.inputs is not None:
            return "\n".join(self.inputs)
        if self.messages is not None:
            return "\n".join(
                m.content if m.tool_calls is None else m.content + m.tool_calls for m in self.messages
            )
        if self.suffix is not None:
            return f"{self.prompt or ''}\n{self.suffix}"
        return self.prompt or ""

    @property
    def tokens_in_estimate(self) -> int:
        """A cheap, engine-independent estimate of prompt tokens (about four bytes a token). Asked
        several times per admission: ASCII text (most prompts; `isascii` is O(1)) is not encoded to
        count its bytes."""
        if self.prompt_ids is not None:
            return max(1, len(self.prompt_ids))
        return _estimate(self.prompt_text)

    @property
    def tokens_needed(self) -> int:
        """The context one engine request of the job needs, by admission's estimate: the prompt and
        `max_tokens`; for an embeddings job, its longest input (each is embedded on its own)."""
        if self.inputs is not None:
            return max(map(_estimate, self.inputs), default=1)
        return self.tokens_in_estimate + self.max_tokens

    @property
    def tokens_out_estimate(self) -> int:
        """The tokens the job will likely generate: the client's `expected_tokens`, at most `max_tokens`.
        An estimate only (fairness by tokens charges it up front); limits and budgets use `max_tokens`."""
        return min(self.expected_tokens or self.max_tokens, self.max_tokens)


def _estimate(text: str) -> int:
    size = len(text) if text.isascii() else len(text.encode())
    return max(1, size // 4)


EventName = Literal[
    "started", "prompt", "token", "reasoning", "tool_call", "embedding", "metrics", "end", "error"
]
TERMINAL_EVENTS: frozenset[str] = frozenset({"end", "error"})


class LogEvent(NamedTuple):
    """One entry of a job's event log. `data` is the JSON text sent as the SSE `data:` line.

    A named tuple, not a frozen dataclass: one is made per token, and a tuple is built in C (a frozen
    dataclass's `__init__` sets each field through `object.__setattr__`)."""

    id: str
    name: str
    data: str

    @property
    def terminal(self) -> bool:
        return self.name in TERMINAL_EVENTS


# How a log that keeps a run's events together (the Redis log, state/redis_tail.py) stores them: each
# event's id, name and data joined by US, the events joined by RS. Neither separator occurs in an id, an
# event name or JSON text (whose strings escape every control character).
RS, US = "\x1e", "\x1f"


class EventRun(NamedTuple):
    """Consecutive events of one run, none of them terminal, as such a log stores them: `records` (see
    RS and US), under `id`, the newest event's id. A reader that relays the log as it is stored gets
    these whole (`EventLog.read_batches`); `events()` splits one into its events."""

    id: str
    records: str

    @property
    def terminal(self) -> bool:
        return False  # a run's batch never holds its end: that is written as an event of its own

    def events(self) -> list[LogEvent]:
        return [LogEvent._make(record.split(US, 2)) for record in self.records.split(RS)]


def spec_json(spec: TaskSpec) -> str:
    """The spec as a job's record stores it (`spec_from_dict` reads it back): the fields that hold a
    value. A field left unset is left out, so that a replica of an older version, which does not know
    a field added since, reads every job that does not use it (a rolling upgrade)."""
    data = {name: value for name in _order(TaskSpec) if (value := getattr(spec, name)) is not None}
    if spec.messages is not None:
        data["messages"] = [
            {name: value for name in _order(Message) if (value := getattr(m, name)) is not None}
            for m in spec.messages
        ]
    return orjson.dumps(data).decode()


def spec_from_dict(data: dict[str, Any]) -> TaskSpec:
    """Rebuild a TaskSpec stored as JSON (by this or another orchestrator replica).

    During a rolling upgrade a newer replica's spec may hold fields this one does not know. One that
    holds nothing (null, false, empty: what a new optional field holds in a job that does not use it)
    is dropped, so that the job runs here as it would there. One that holds a value would change
    what the job asks for, and this replica cannot honour it: the job fails with a retriable error
    that names the field, rather than running as something else."""
    values = _known(TaskSpec, data, "the job")
    messages = values.get("messages")
    if messages is not None:
        values["messages"] = tuple(
            Message(**_known(Message, m, f"its message {i}")) for i, m in enumerate(messages)
        )
    placement = _known(PlacementPrefs, values.get("placement") or {}, "its placement")
    for key in ("prefer_pools", "avoid_pools"):
        placement[key] = tuple(placement.get(key) or ())
    values["placement"] = PlacementPrefs(**placement)
    values["stop"] = tuple(values.get("stop") or ())
    for key in ("inputs", "prompt_ids"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return TaskSpec(**values)


def _known(kind: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    """`data` without the keys that `kind` has no field for and that hold nothing (see
    `spec_from_dict`); Internal (retriable) if one of them holds a value."""
    names = _names(kind)
    if names.issuperset(data):  # the one check a job of this replica's version costs
        return dict(data)
    unknown = {key: value for key, value in data.items() if key not in names}
    if holding := sorted(key for key, value in unknown.items() if not _holds_nothing(value)):
        raise Internal(
            f"{what} sets {', '.join(map(repr, holding))}, which this orchestratord replica does not know: "
            "a newer replica admitted it; retry, and a replica of its version will run it",
            retriable=True,
        )
    return {key: value for key, value in data.items() if key in names}


@functools.cache
def _names(kind: type) -> frozenset[str]:
    return frozenset(_order(kind))


@functools.cache
def _order(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(kind))


def _holds_nothing(value: object) -> bool:
    return value is None or value is False or value in ("", [], {})  # 0 holds a number
