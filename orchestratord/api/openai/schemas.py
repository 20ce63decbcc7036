"""Response models of the OpenAI surface, for the contract (contracts/openapi/openai.yaml)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from orchestratord.services import Services

_RETRY_HEADERS = {
    "Retry-After": {"schema": {"type": "integer"}, "description": "Whole seconds to wait before retrying."},
    "retry-after-ms": {"schema": {"type": "integer"}, "description": "Milliseconds to wait before retrying."},
    "X-Backoff-Ms": {"schema": {"type": "integer"}, "description": "Milliseconds to wait before retrying."},
}
_SHOULD_RETRY = {
    "x-should-retry": {
        "schema": {"type": "string", "enum": ["true", "false"]},
        "description": "Whether a retry may succeed (the OpenAI SDKs follow it).",
    }
}


class OpenAIErrorObject(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorObject


def openai_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for an OpenAI route: these statuses (and 401/403 from the guard) as OpenAI's error
    object; 429 and 503 with the retry headers."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in (401, 403, *codes):
        headers = {**_SHOULD_RETRY, **(_RETRY_HEADERS if code in (429, 503) else {})}
        out[code] = {"model": OpenAIError, "description": "OpenAI error object.", "headers": headers}
    return out


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_estimated: bool | None = None  # ours: the engine reported no prompt count


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None  # the call, in the deprecated form (the request's `functions`)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """`logprobs: true`: each token's log probability, with `top_logprobs` alternatives."""

    content: list[TokenLogprob]
    refusal: None


class CompletionLogprobs(BaseModel):
    """`logprobs: n`: each token's log probability, with the n likeliest alternatives."""

    tokens: list[str]
    text_offset: list[int]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length", "tool_calls", "function_call"]


class ChatCompletion(BaseModel):
    """A whole chat completion (`stream: false`); streamed, the chunks of OpenAI's chat stream."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: None
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length", "tool_calls"]


class Completion(BaseModel):
    """A whole text completion (`stream: false`); streamed, the chunks of OpenAI's completion stream."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: None
    choices: list[CompletionChoice]
    usage: Usage


class DeploymentLimits(BaseModel):
    """orchestratord's extension of a model object: where the model runs and what it may be asked."""

    pools: list[str]
    ready: bool
    ctx_max: int
    max_tokens_out: int


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # vLLM's name for the context, which clients and gateways of vLLM read (orchestratord's own `openai`
    # pools among them): the largest context a job of this model may use here (`orchestratord.ctx_max`)
    max_model_len: int
    orchestratord: DeploymentLimits


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]

    @classmethod
    def of(cls, services: Services) -> ModelList:
        """Every model some pool that is not draining serves and the catalog lets a job use (not
        untrusted, retired or deprecated): a listed model is one that routes."""
        registry = services.registry
        started = int(services.started_at)
        models: list[Model] = []
        for model in registry.models():
            if not services.control.catalog.usable(model):
                continue
            pools = [p for p in registry.pools.values() if model in p.spec.models and not p.draining]
            if not pools:
                continue
            limits = DeploymentLimits(
                pools=sorted(p.spec.id for p in pools),
                ready=any(r.admits() for p in pools for r in p.replicas.values()),
                ctx_max=max(p.ctx_max for p in pools),
                max_tokens_out=max(p.max_tokens_out for p in pools),
            )
            models.append(
                Model(id=model, created=started, owned_by="orchestratord", max_model_len=limits.ctx_max,
                      orchestratord=limits)
            )  # fmt: skip
        return cls(data=models)
