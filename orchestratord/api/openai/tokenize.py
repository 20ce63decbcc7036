"""vLLM's `POST /tokenize` and `POST /detokenize`, answered by an engine serving the model, with its own
tokenizer: what a client that sends token ids (`prompt: [ids]`, `logit_bias`) needs, and what token
counters ask (a chat's turns too, as the model's chat template renders them). Not a job: the engine
tokenizes at once, outside its slots, so the request is not queued; it goes to a ready replica of a
pool (not draining) serving the model whose engine tokenizes (vLLM, llama-server). The errors are
OpenAI's error object, as vLLM gives them.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestratord.api.deps import Caller, get_json_caller
from orchestratord.api.errors import as_gateway
from orchestratord.api.openai.requests import ChatCompletionMessage, chat_messages
from orchestratord.api.openai.schemas import openai_errors
from orchestratord.api.schemas import Text, TokenIds
from orchestratord.core.attempts import engine_error
from orchestratord.errors import InvalidParams, PoolUnavailable, PoolUnready
from orchestratord.services import Services
from pool_manager.registry import PoolState
from worker_adapters.base import AdapterError, ChatMessage, EngineRejected, Tokenizer

router = APIRouter(tags=["openai"])
_STRICT = ConfigDict(extra="forbid", strict=True)
RETRY_AFTER_MS = 1000  # no replica ready yet: the next health probe may find one
T = TypeVar("T")


class TokenizeRequest(BaseModel):
    """A prompt of text, or chat turns (as the model's chat template renders them, with the generation
    prompt): exactly one."""

    model_config = _STRICT
    model: Text = Field(min_length=1, max_length=256)
    prompt: Text | None = Field(default=None, max_length=1_000_000)
    messages: list[ChatCompletionMessage] | None = Field(default=None, min_length=1, max_length=1024)
    add_special_tokens: bool | None = Field(
        default=None,
        description="Add the model's special tokens (a BOS); by default as the engine adds them when it "
        "reads the prompt (or the chat) for a generation, so that the count is the job's prompt tokens.",
    )
    add_generation_prompt: bool | None = Field(
        default=None,
        description="vLLM's: a chat's turns end with the template's generation prompt, as a generation "
        "reads them. true (vLLM's default) only; false is refused naming it.",
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' and 'messages'")
        return self

    def turns(self) -> str | list[ChatMessage]:
        if self.messages is None:
            return self.prompt or ""
        return [ChatMessage(m.role, m.content, m.tool_calls, m.tool_call_id, m.name)
                for m in chat_messages(self.messages)]  # fmt: skip


class Tokenized(BaseModel):
    count: int
    max_model_len: int = Field(
        description="The context a job may use on the pool serving the model, in tokens (its ctx_max, or "
        "the engine's own where smaller)."
    )
    tokens: list[int]


class DetokenizeRequest(BaseModel):
    model_config = _STRICT
    model: Text = Field(min_length=1, max_length=256)
    tokens: TokenIds


class Detokenized(BaseModel):
    prompt: str


@router.post(
    "/tokenize",
    response_model=Tokenized,
    responses=openai_errors(400, 413, 415, 502, 503, 504),
    operation_id="tokenize",
)
async def tokenize(body: TokenizeRequest, caller: Annotated[Caller, Depends(get_json_caller)]) -> Tokenized:
    if body.add_generation_prompt is False:
        raise InvalidParams(
            "add_generation_prompt: false is not supported by orchestratord yet; a chat is tokenized as a "
            "generation reads it, with the generation prompt",
            param="add_generation_prompt",
        )
    pool, tokenizer, name = _tokenizer(caller.services, body.model)
    field = "prompt" if body.messages is None else "messages"
    turns = body.turns()
    ids = await _asking(
        pool, field, lambda: tokenizer.tokenize(name, turns, add_special=body.add_special_tokens)
    )
    return Tokenized(count=len(ids), max_model_len=pool.ctx_max, tokens=ids)


@router.post(
    "/detokenize",
    response_model=Detokenized,
    responses=openai_errors(400, 413, 415, 502, 503, 504),
    operation_id="detokenize",
)
async def detokenize(
    body: DetokenizeRequest, caller: Annotated[Caller, Depends(get_json_caller)]
) -> Detokenized:
    pool, tokenizer, name = _tokenizer(caller.services, body.model)
    return Detokenized(prompt=await _asking(pool, "tokens", lambda: tokenizer.detokenize(name, body.tokens)))


def _tokenizer(services: Services, model: str) -> tuple[PoolState, Tokenizer, str]:
    """A ready replica's tokenizer for `model`, its pool, and the engine's name for the model;
    InvalidParams when no pool serving the model tokenizes, PoolUnavailable when every one is
    draining, PoolUnready when none of those that tokenize is ready."""
    usable = services.control.catalog.usable
    pools = [p for p in services.registry.pools.values() if model in p.spec.models and usable(model)]
    if not pools:
        served = ", ".join(m for m in services.registry.models() if usable(m))
        raise InvalidParams(f"model {model!r} is not served here; served models: {served}", param="model")
    serving = [p for p in pools if not p.draining]
    if not serving:
        raise PoolUnavailable(
            f"every pool serving {model!r} is draining; retry later", retry_after_ms=RETRY_AFTER_MS
        )
    able = [p for p in serving if any(tokenizes(a) for a in _adapters(services, p))]
    if not able:
        engines = ", ".join(sorted({p.spec.engine for p in serving}))
        raise InvalidParams(
            f"tokenizing needs an engine with a tokenizer route (vllm, llamacpp, or an openai pool with "
            f"options.tokenizer: vllm); the engines serving {model!r} ({engines}) have none",
            param="model",
        )
    ready = [(p, key) for p, key in tokenizing_replicas(able, model) if tokenizes(services.adapters[key])]
    if not ready:
        raise PoolUnready(
            f"no replica serving {model!r} with a tokenizer is ready; retry shortly",
            retry_after_ms=RETRY_AFTER_MS,
        )
    pool, key = random.choice(ready)  # any of them: the model's tokenizer is the same on each
    adapter = services.adapters[key]
    assert isinstance(adapter, Tokenizer) and adapter.tokenizes
    return pool, adapter, pool.spec.engine_name(model)


def tokenizing_replicas(pools: Iterable[PoolState], model: str) -> list[tuple[PoolState, tuple[str, str]]]:
    """The replicas of `pools` that may be asked now: ready, their breaker letting a request through,
    and serving the model as their engine last listed it."""
    return [
        (p, (p.spec.id, r.replica_id))
        for p in pools
        for r in p.replicas.values()
        if r.admits() and (r.serves is None or p.spec.engine_name(model) in r.serves)
    ]


def tokenizes(adapter: object) -> bool:
    """Whether a replica's adapter asks its engine's tokenizer (`Tokenizer`, and its engine has one)."""
    return isinstance(adapter, Tokenizer) and adapter.tokenizes


def _adapters(services: Services, pool: PoolState) -> list[object]:
    return [services.adapters[(pool.spec.id, r)] for r in pool.replicas]


async def _asking(pool: PoolState, field: str, call: Callable[[], Awaitable[T]]) -> T:
    """The engine's answer; its refusal a 400 naming `field`, its failure the gateway's error."""
    try:
        return await call()
    except EngineRejected as exc:
        raise InvalidParams(exc.message, param=field, engine=pool.spec.engine, pool_id=pool.spec.id) from None
    except AdapterError as exc:
        raise as_gateway(engine_error(exc, after_first_token=False, pool_id=pool.spec.id)) from None
