"""The seam between orchestratord and inference engines: one Protocol, its value types, one error tree.

This module imports nothing third-party, so that `pool_manager` and `orchestratord` can depend on it
without pulling in an HTTP client.

AdapterError
  ├─ EngineUnavailable  (POOL_UNAVAILABLE: connect refused, 503, loading; nothing was generated)
  ├─ EngineRejected     (INVALID_PARAMS: the engine refused the request as malformed or too long)
  ├─ EngineTimeout      (DECODE_TIMEOUT: no first event within the first-token timeout, or no byte
  │                      within the read timeout mid-stream)
  ├─ EngineReset        (WORKER_RESET: the connection broke or the stream ended without its terminal mark)
  └─ EngineInternal     (INTERNAL: the engine reported an error of its own)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, final, runtime_checkable

StopReason = Literal["max_tokens", "eos", "stop_sequence", "tool_calls"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str
    tool_calls: str | None = None  # an assistant turn's tool calls, as OpenAI's JSON text
    tool_call_id: str | None = None  # a `tool` turn: the call it answers
    name: str | None = None  # the participant's (OpenAI's `name`): sent in that dialect only


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    """One request, engine-neutral. Exactly one of `prompt`, `messages` and `inputs` is set: `inputs`
    asks for an embedding of each text (the engine answers `Embedding`s, then `Finished`), the others
    for a generation."""

    task_id: str
    model: str
    max_tokens: int
    prompt: str | None = None
    suffix: str | None = None  # a prompt job's text after the gap to fill (fill-in-the-middle)
    prompt_ids: tuple[int, ...] | None = None  # the prompt as the engine's token ids, instead of `prompt`
    messages: tuple[ChatMessage, ...] | None = None
    inputs: tuple[str, ...] | None = None
    dimensions: int | None = None  # embeddings: the vectors' first this many numbers (OpenAI-dialect engines)
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    correlation_id: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None  # vLLM's sampling extensions (`_wire.sampling` names them per dialect)
    min_p: float | None = None
    repetition_penalty: float | None = None
    # OpenAI's `tools`, `tool_choice` and `response_format`, as JSON text, for the engines that take
    # them (`registry.UNSUPPORTED` lists the others).
    tools: str | None = None
    tool_choice: str | None = None
    response_format: str | None = None
    # True: at most one tool call (OpenAI's `parallel_tool_calls: false`), sent to OpenAI-dialect chat so
    # that the engine stops after one (llama-server's grammar allows one); the relay drops any more
    single_tool_call: bool | None = None
    # Log probabilities: None asks for none; n >= 0 asks for each token's own and the n likeliest
    # alternatives (for the engines that report them; `registry.UNSUPPORTED` lists the others).
    logprobs: int | None = None
    # The prompt's own log probabilities, with this many alternatives (completions' `echo` with
    # `logprobs`): the engine then answers a `PromptLogprobs` before the tokens
    prompt_logprobs: int | None = None
    ignore_eos: bool | None = None  # True: generate to max_tokens past the end-of-sequence token
    reasoning_effort: str | None = None  # a thinking model's effort (OpenAI-dialect chat engines)
    chat_template_kwargs: str | None = None  # JSON text: variables for the chat template (vLLM, llama.cpp)
    logit_bias: str | None = None  # JSON text: token id -> bias, -100 to 100 (OpenAI-dialect engines)
    traceparent: str | None = None  # W3C trace context for the engine's own spans (vLLM)
    priority: Literal["interactive", "batch"] = "interactive"  # the job's class (vLLM schedules by it)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One sampled token's log probability, and the likeliest alternatives at its position (most
    likely first), as the engine reported them."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@final  # the relay tells a token by its exact type (`type(event) is Token`), its hot path
@dataclass(frozen=True, slots=True)
class Token:
    """One engine token. `text` may be empty (an incomplete UTF-8 character, a special token).
    `logprobs`, when the request asked for them: one entry per token the engine sampled for `text`."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class PromptLogprobs:
    """The prompt's tokens as the engine read them, with their log probabilities: `first`, the first
    token (nothing precedes it, so it has none), then an entry for each later one. `text`: the prompt's
    text as the engine decoded it, for a prompt given as token ids (whose text only the engine knows)."""

    first: str
    entries: tuple[TokenLogprob, ...]
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Reasoning:
    """A piece of the model's reasoning, which a thinking model writes before its answer and the
    engine's reasoning parser keeps apart from it: `reasoning_content` or `reasoning` in OpenAI's
    dialect (llama.cpp, vLLM), `thinking` in Ollama's. Never part of the answer's text."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a tool call the model makes: `index` says which call; `id` and `name` come with
    its first fragment, `arguments` (JSON text) in pieces to be joined."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Embedding:
    """The engine's embedding of the request's input number `index`."""

    index: int
    vector: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Finished:
    """The engine's terminal mark. Counts are what the engine reported, when it did."""

    stop_reason: StopReason
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


TokenEvent = Token | Reasoning | ToolCallDelta | Embedding | PromptLogprobs | Finished


@dataclass(frozen=True, slots=True)
class WorkerHealth:
    live: bool
    ready: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class WorkerProps:
    """What an engine reports about itself; None where it does not say."""

    slots: int | None = None
    ctx_max: int | None = None
    engine_version: str | None = None
    # The names the engine answers to in a request's `model` (its own listing, LoRA adapters included);
    # empty when it serves its one model whatever a request names (llama.cpp, TGI).
    models: tuple[str, ...] = ()
    kv_cache_usage_ratio: float | None = None
    max_tokens_out: int | None = None  # the most tokens the engine generates for one request


@dataclass(frozen=True, slots=True)
class AdapterConfig:
    """How to reach one engine replica. `options` holds engine-specific settings."""

    engine: str
    base_url: str
    model: str  # the engine's name for the pool's first model
    replica_id: str = "r0"
    api: Literal["completion", "chat", "auto"] = "auto"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0  # the longest silence between reads once the stream has begun
    first_token_timeout_s: float = 600.0  # the longest wait for a stream's first event (prefill, queue)
    options: Mapping[str, object] = field(default_factory=dict)
    models: tuple[str, ...] = ()  # the engine's names for every model the pool serves (`model` first)
    ctx_max: int | None = None  # the pool's configured context, for engines told it per request (Ollama)

    @property
    def served(self) -> tuple[str, ...]:
        return self.models or (self.model,)


class AdapterError(Exception):
    """An engine failure, already classified. `code` is the ErrorKind name orchestratord reports."""

    code = "INTERNAL"
    retriable = False

    def __init__(self, message: str, *, engine: str) -> None:
        super().__init__(message)
        self.message = message
        self.engine = engine


class EngineUnavailable(AdapterError):
    code = "POOL_UNAVAILABLE"
    retriable = True


class EngineRejected(AdapterError):
    code = "INVALID_PARAMS"


class EngineTimeout(AdapterError):
    code = "DECODE_TIMEOUT"
    retriable = True


class EngineReset(AdapterError):
    code = "WORKER_RESET"
    retriable = True


class EngineInternal(AdapterError):
    code = "INTERNAL"


@runtime_checkable
class WorkerAdapter(Protocol):
    """One engine replica.

    `submit` returns an async iterator of `Token`s ending in exactly one `Finished`, or raising an
    `AdapterError`. Closing the iterator early (``aclose()``) or calling `cancel` closes the upstream
    request; the engine sees its connection close. Tokens are relayed as bytes arrive.
    """

    engine: str

    def submit(self, req: SubmitRequest) -> AsyncIterator[TokenEvent]: ...

    async def cancel(self, task_id: str) -> None: ...

    def streaming(self, within_s: float) -> bool:
        """Whether a request to this replica received engine data within the last `within_s` seconds.
        The health prober leaves a replica that is visibly generating alone: its stream is the proof
        of health, and some engines (llama-cpp-python) end a running stream when any other request
        waits for their model, a probe of `/v1/models` included."""
        ...

    async def health(self) -> WorkerHealth: ...

    async def props(self) -> WorkerProps: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Tokenizer(Protocol):
    """An engine replica that tokenizes with its model's own tokenizer, outside any generation (vLLM's
    and llama-server's `/tokenize` and `/detokenize`): what a client that sends token ids needs. An
    adapter that has no such route does not implement it; one whose engine may or may not have them
    (a generic OpenAI-compatible server) says which in `tokenizes`, from its pool's options."""

    @property
    def tokenizes(self) -> bool:
        """Whether the engine behind this replica has the routes (asked before any other method)."""
        ...

    async def tokenize(
        self, model: str, prompt: str | Sequence[ChatMessage], *, add_special: bool | None = None
    ) -> list[int]:
        """The ids of a prompt: a text, or chat turns as the model's chat template renders them (with
        the generation prompt). With the model's special tokens (a BOS) when `add_special`; by default
        as the engine adds them when it reads that form for a generation, so that the count is the
        prompt's in a job."""
        ...

    async def detokenize(self, model: str, ids: Sequence[int]) -> str: ...
