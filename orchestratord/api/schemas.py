"""Wire models, mirroring contracts/openapi/data.yaml (the drift test holds them together)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from orchestratord.core.tasks import Message, PlacementPrefs, TaskSpec
from orchestratord.errors import ErrorKind, InvalidParams

_STRICT = ConfigDict(extra="forbid", strict=True)  # no coercion: "3", 3.0, true are not integers


def _engine_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (U+0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be Unicode text; it holds a lone surrogate (\\ud800-\\udfff)") from None
    return value


# Text passed on to engines: C-string engines would cut a prompt at its first NUL, and a lone
# surrogate cannot be encoded as UTF-8 at all, so both are refused here.
Text = Annotated[str, AfterValidator(_engine_text)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
# vLLM's sampling extensions (llama.cpp's, Ollama's): `top_k` 0 or -1 and `min_p` 0 turn theirs off,
# `repetition_penalty` 1 is none; each of those asks for nothing
TopK = Annotated[int, Field(ge=-1, le=1_000_000)]
MinP = Annotated[float, Field(ge=0, le=1)]
RepetitionPenalty = Annotated[float, Field(gt=0, le=10)]


def extended_sampling(
    top_k: int | None, min_p: float | None, repetition_penalty: float | None
) -> dict[str, Any]:
    """A job's `top_k`, `min_p` and `repetition_penalty`: None for what asks for nothing (the value that
    turns the sampler off), so that such a request runs on any engine."""
    return {
        "top_k": top_k if top_k is not None and top_k > 0 else None,
        "min_p": min_p if min_p else None,
        "repetition_penalty": repetition_penalty if repetition_penalty not in (None, 1) else None,
    }


# How hard a thinking model thinks (OpenAI's `reasoning_effort`, the Responses API's `reasoning.effort`)
Effort = Literal["none", "minimal", "low", "medium", "high"]
# OpenAI's `logit_bias`: token id (as the engine's tokenizer numbers it) -> a bias from -100 (never)
# to 100 (only); the schema says no other key is one
LogitBias = Annotated[
    dict[Annotated[str, Field(pattern=r"^[0-9]{1,10}$")], Annotated[float, Field(ge=-100, le=100)]],
    Field(max_length=1024),
    WithJsonSchema({
        "type": "object", "maxProperties": 1024, "additionalProperties": False,
        "patternProperties": {"^[0-9]{1,10}$": {"type": "number", "minimum": -100, "maximum": 100}},
    }),
]  # fmt: skip


def json_text(name: str, value: Any) -> str:
    """`value` as JSON text for the engine; a number JSON parsers of engines cannot hold (an integer
    beyond 64 bits) is the request's fault, named."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        raise InvalidParams(
            f"{name} holds an integer beyond 64 bits, which engines cannot read; use a smaller number",
            param=name,
        ) from None


class ChatMessageIn(BaseModel):
    model_config = _STRICT
    role: Literal["system", "user", "assistant", "tool"]
    content: Text = Field(max_length=1_000_000)


class PlacementIn(BaseModel):
    model_config = _STRICT
    mode: Literal["pin", "prefer", "auto"] = "auto"
    pin_pool_id: Text | None = Field(default=None, max_length=64)
    prefer_pools: list[Text] = Field(default_factory=list, max_length=64)
    avoid_pools: list[Text] = Field(default_factory=list, max_length=64)
    allow_fallback: bool = True


# A prompt as token ids (the engine's tokenizer's)
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
TokenIds = Annotated[list[TokenId], Field(min_length=1, max_length=1_000_000)]


class TaskRequest(BaseModel):
    model_config = _STRICT
    model_ref: Text = Field(min_length=1, max_length=256)
    prompt: Text | None = Field(default=None, max_length=1_000_000)
    suffix: Text | None = Field(default=None, max_length=1_000_000)  # a prompt's: the text after the gap
    prompt_ids: TokenIds | None = None  # the prompt as token ids, for the engines that take them
    messages: list[ChatMessageIn] | None = Field(default=None, min_length=1, max_length=1024)
    max_tokens: int = Field(ge=1, le=1_000_000)
    priority: Literal["interactive", "batch"] = "interactive"
    session_id: Text | None = Field(default=None, min_length=1, max_length=128)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: list[Text] | None = Field(default=None, max_length=16)
    deadline_ms: int | None = Field(default=None, ge=1, le=86_400_000)
    expected_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    cancel_on_disconnect: bool = True
    placement: PlacementIn | None = None
    override: bool = False
    # Engine parameters: a job that sets one goes only to pools whose engine takes it (400 otherwise)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    ignore_eos: bool = False
    reasoning_effort: Effort | None = None  # messages jobs: what a chat template reads
    chat_template_kwargs: dict[str, Any] | None = Field(default=None, max_length=64)
    logit_bias: LogitBias | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TaskRequest:
        if [self.prompt, self.prompt_ids, self.messages].count(None) != 2:
            raise ValueError("give exactly one of 'prompt', 'prompt_ids' and 'messages'")
        for name in ("reasoning_effort", "chat_template_kwargs"):
            if self.messages is None and getattr(self, name) is not None:
                raise ValueError(f"{name} is read by the model's chat template: give messages, not a prompt")
        if self.prompt is None and self.suffix is not None:
            raise ValueError("suffix is the text after a prompt's gap: give a prompt (as text) with it")
        return self

    def to_spec(self, *, job_id: str, tenant: str, correlation_id: str | None) -> TaskSpec:
        placement = self.placement or PlacementIn()
        return TaskSpec(
            job_id=job_id,
            tenant=tenant,
            model_ref=self.model_ref,
            max_tokens=self.max_tokens,
            priority=self.priority,
            prompt=self.prompt,
            suffix=self.suffix,
            prompt_ids=None if self.prompt_ids is None else tuple(self.prompt_ids),
            messages=None
            if self.messages is None
            else tuple(Message(m.role, m.content) for m in self.messages),
            session_id=self.session_id,
            seed=self.seed,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(self.stop or ()),
            deadline_ms=self.deadline_ms,
            expected_tokens=self.expected_tokens,
            cancel_on_disconnect=self.cancel_on_disconnect,
            placement=PlacementPrefs(
                mode=placement.mode,
                pin_pool_id=placement.pin_pool_id,
                prefer_pools=tuple(placement.prefer_pools),
                avoid_pools=tuple(placement.avoid_pools),
                allow_fallback=placement.allow_fallback,
            ),
            correlation_id=correlation_id,
            override=self.override,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            **extended_sampling(self.top_k, self.min_p, self.repetition_penalty),
            ignore_eos=True if self.ignore_eos else None,
            reasoning_effort=self.reasoning_effort,
            chat_template_kwargs=json_text("chat_template_kwargs", self.chat_template_kwargs)
            if self.chat_template_kwargs
            else None,
            logit_bias=json_text("logit_bias", self.logit_bias) if self.logit_bias else None,
        )


class AdmissionResponse(BaseModel):
    job_id: str
    sse_url: str
    status_url: str
    queue_position: int
    predicted_start_ms: int | None
    backoff_ms: int


class TaskError(BaseModel):
    code: str
    message: str


class TaskFields(BaseModel):
    """What a job's status and the operators' list (`api/task_list.py`) both say of a job."""

    job_id: str
    state: Literal["queued", "running", "succeeded", "failed", "canceled"]
    model_ref: str
    priority: Literal["interactive", "batch"]
    created_at: str
    started_at: str | None
    finished_at: str | None
    tokens_out: int
    stop_reason: str | None
    error: TaskError | None
    pool_id: str | None
    replica_id: str | None


class TaskStatus(TaskFields):
    text: str | None


class ErrorEnvelope(BaseModel):
    code: ErrorKind
    message: str
    retriable: bool
    retry_after_ms: int | None = None
    policy_label: str | None = None
    engine: str | None = None
    pool_id: str | None = None


class Health(BaseModel):
    status: Literal["ok", "unready"]
    checks: dict[str, bool]
