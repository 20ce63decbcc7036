"""The admission steps every surface shares (`POST /v1/tasks`, the OpenAI endpoints): the job's id,
the prompt's size limit, idempotency and admission, and the admission latency metric."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from fastapi import Request
from pydantic import BaseModel

from orchestratord.admission import AdmissionResult
from orchestratord.api.deps import Caller
from orchestratord.core.tasks import TaskSpec
from orchestratord.errors import InvalidParams
from orchestratord.idempotency import fingerprint
from orchestratord.services import Services


async def submit(
    caller: Caller, spec: TaskSpec, *, idempotency_key: str | None, body: Callable[[], str]
) -> AdmissionResult:
    """Admit `spec` for the caller (or replay the job an Idempotency-Key already created). `body()`
    is the request's fingerprint, computed only when there is a key to compare it with."""
    services = caller.services
    check_prompt_size(spec, services.settings.limits.max_prompt_chars)
    if caller.traceparent is not None:
        spec = replace(spec, traceparent=caller.traceparent)
    began = time.perf_counter()
    try:  # every request that reached admission counts, refused ones too
        return await services.idempotency.admit(spec, idempotency_key, body)
    finally:
        services.metrics.admission_latency.observe((time.perf_counter() - began) * 1000)


async def submit_body(caller: Caller, spec: TaskSpec, request: Request, body: BaseModel) -> AdmissionResult:
    """`submit` for a request whose JSON body is `body`: the request's Idempotency-Key, the body's
    fingerprint (the OpenAI endpoints)."""
    return await submit(
        caller, spec, idempotency_key=request.headers.get("idempotency-key"), body=lazy_fingerprint(body)
    )


def lazy_fingerprint(body: BaseModel) -> Callable[[], str]:
    """The fingerprint of a request whose JSON body is `body`, computed once, when first asked for."""
    memo: list[str] = []

    def digest() -> str:
        if not memo:
            memo.append(fingerprint(body.model_dump(mode="json")))
        return memo[0]

    return digest


def with_default_max_tokens(services: Services, spec: TaskSpec) -> TaskSpec:
    """For a request that names no output limit (the OpenAI surfaces may not): `spec` with as much as
    the largest pool serving the model leaves after the prompt, as admission estimates the prompt
    (`TaskSpec.tokens_in_estimate`, so that the two never disagree), the server's own limit at most."""
    room = [
        min(p.max_tokens_out, p.ctx_max - spec.tokens_in_estimate)
        for p in services.registry.pools.values()
        if spec.model_ref in p.spec.models
    ]
    limit = max(1, min(services.settings.limits.max_tokens, max(room, default=1)))
    return replace(spec, max_tokens=limit)


def largest_context(services: Services, model: str) -> int:
    """The largest context (`ctx_max`, as the engines report it) of the pools serving `model`; 0 when
    none does (admission then refuses the job, saying so)."""
    return max((p.ctx_max for p in services.registry.pools.values() if model in p.spec.models), default=0)


def check_prompt_size(spec: TaskSpec, limit: int) -> None:
    """InvalidParams when the prompt (with its suffix), or the messages' contents together, exceed `limit`
    characters."""
    if spec.inputs is not None:
        what, size = "input", sum(map(len, spec.inputs))
    elif spec.prompt_ids is not None:
        what, size = "prompt", len(spec.prompt_ids)  # (a token is at least a character)
    elif spec.messages is None:
        what, size = "prompt", len(spec.prompt or "") + len(spec.suffix or "")
    else:
        what, size = "messages' content", sum(len(m.content) for m in spec.messages)
    if size > limit:
        raise InvalidParams(
            f"the {what} has {size} characters, more than this server's limit "
            f"(limits.max_prompt_chars) of {limit}"
        )
