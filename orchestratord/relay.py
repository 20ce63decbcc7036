"""One attempt of a job on one replica: relay the engine's tokens into the job's event log as they
come, and end the job when the engine finishes it.

The relay never raises an engine failure: it returns it in the attempt's stats, and `execution`
decides what follows (`core.attempts`). A stream the job's end cut short (a cancel, a drain) is the
end taking effect, not a failure.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from orchestratord.core.placement import Assigned
from orchestratord.core.tasks import JobState, TaskSpec
from orchestratord.logs import get_logger
from orchestratord.metrics import Metrics
from orchestratord.runs import Running
from orchestratord.state.base import EventLog, JobRegistry
from worker_adapters.base import (
    AdapterError,
    ChatMessage,
    Embedding,
    EngineReset,
    Finished,
    PromptLogprobs,
    Reasoning,
    SubmitRequest,
    Token,
    TokenEvent,
    TokenLogprob,
    ToolCallDelta,
    WorkerAdapter,
)

log = get_logger(__name__)


class _Store(JobRegistry, EventLog, Protocol):
    """The roles an attempt writes to."""


@dataclass(slots=True)
class RunStats:
    """What one attempt measured, for metrics, logs, predictions and fairness settlement."""

    tokens: int = 0  # token events relayed
    first_token_at: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # the engine's own count, when it reported one
    outcome: str = "running"
    error: AdapterError | None = None
    stop_reason: str | None = None  # as the `end` event says it

    @property
    def tokens_out(self) -> int:
        """Tokens generated: the engine's count where it gave one, else the token events relayed."""
        return self.tokens if self.completion_tokens is None else self.completion_tokens


@dataclass(slots=True)
class RunContext:
    spec: TaskSpec
    assigned: Assigned
    admitted_at: float
    queue_depth: Callable[[], int]
    metrics_interval_s: float
    labels: dict[str, str] = field(default_factory=dict)
    traceparent: str | None = None  # the job span's, when tracing is on
    run: Running | None = None  # its progress, for the predictions of the jobs queued behind it


def submit_request(spec: TaskSpec, engine_model: str, traceparent: str | None = None) -> SubmitRequest:
    messages = None
    if spec.messages is not None:
        messages = tuple(
            ChatMessage(m.role, m.content, m.tool_calls, m.tool_call_id, m.name) for m in spec.messages
        )
    return SubmitRequest(
        task_id=spec.job_id,
        model=engine_model,
        max_tokens=spec.max_tokens,
        prompt=spec.prompt,
        suffix=spec.suffix,
        prompt_ids=spec.prompt_ids,
        messages=messages,
        inputs=spec.inputs,
        dimensions=spec.dimensions,
        seed=spec.seed,
        temperature=spec.temperature,
        top_p=spec.top_p,
        stop=spec.stop,
        correlation_id=spec.correlation_id,
        presence_penalty=spec.presence_penalty,
        frequency_penalty=spec.frequency_penalty,
        top_k=spec.top_k,
        min_p=spec.min_p,
        repetition_penalty=spec.repetition_penalty,
        tools=spec.tools,
        tool_choice=spec.tool_choice,
        response_format=spec.response_format,
        single_tool_call=spec.single_tool_call,
        logprobs=spec.logprobs,
        prompt_logprobs=spec.prompt_logprobs,
        ignore_eos=spec.ignore_eos,
        reasoning_effort=spec.reasoning_effort,
        chat_template_kwargs=spec.chat_template_kwargs,
        logit_bias=spec.logit_bias,
        priority=spec.priority,
        traceparent=traceparent or spec.traceparent,
    )


class Relay:
    """Relays one attempt. Returns its stats; never raises an AdapterError."""

    def __init__(self, store: _Store, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._metrics = metrics
        self._clock = clock

    async def attempt(self, ctx: RunContext, adapter: WorkerAdapter, engine_model: str) -> RunStats:
        stats = RunStats()
        started = self._clock()
        last_metrics = started
        first_call: int | None = None  # the index of the engine's first tool call
        try:
            request = submit_request(ctx.spec, engine_model, ctx.traceparent)
            async with closing_stream(adapter.submit(request)) as events:
                async for event in events:
                    if type(event) is Token:  # the common case, tested first
                        appended = await self._store.append_token(
                            ctx.spec.job_id, event.text, logprobs_data(event.logprobs)
                        )
                    elif isinstance(event, Finished):
                        await self._finish(ctx, stats, event, started)
                        return stats
                    elif isinstance(event, Reasoning | Embedding | PromptLogprobs):
                        name, data = _named(event)
                        appended = await self._store.append(ctx.spec.job_id, name, data) is not None
                    else:  # a tool call's fragment
                        if first_call is None:
                            first_call = event.index
                        elif event.index != first_call and ctx.spec.single_tool_call:
                            continue  # `parallel_tool_calls: false`: the calls after the first are dropped
                        fragment = _fragment(event)
                        appended = (
                            await self._store.append(ctx.spec.job_id, "tool_call", fragment) is not None
                        )
                    if not appended:  # the job has ended (canceled, or failed elsewhere)
                        stats.outcome = "canceled"
                        return stats
                    stats.tokens += 1
                    if ctx.run is not None:
                        ctx.run.tokens = stats.tokens
                    now = self._clock()
                    if stats.first_token_at is None:
                        stats.first_token_at = now
                        self._metrics.ttft.labels(**ctx.labels).observe((now - ctx.admitted_at) * 1000)
                        log.info("task_first_token", ttft_ms=round((now - ctx.admitted_at) * 1000))
                    if now - last_metrics >= ctx.metrics_interval_s:
                        last_metrics = now
                        await self._progress(ctx, stats, now, started)
        except AdapterError as exc:
            return await self._failed(ctx, stats, exc)
        return await self._failed(ctx, stats, _truncated(adapter.engine))

    async def _failed(self, ctx: RunContext, stats: RunStats, error: AdapterError) -> RunStats:
        """An engine stream that broke off. If the job had already ended (a cancel closes the engine
        request), that is the cancel taking effect, not an engine failure to count or fail over from."""
        record = await self._store.get(ctx.spec.job_id)
        if record is not None and record.state.terminal:
            stats.outcome = "canceled"
        else:
            stats.outcome, stats.error = "error", error
        return stats

    async def _progress(self, ctx: RunContext, stats: RunStats, now: float, started: float) -> None:
        elapsed = max(now - started, 1e-6)
        await self._store.append(
            ctx.spec.job_id,
            "metrics",
            {
                "queue_depth": ctx.queue_depth(),
                "tokens_out": stats.tokens,
                "tokens_per_s": round(stats.tokens / elapsed, 2),
            },
        )

    async def _finish(self, ctx: RunContext, stats: RunStats, event: Finished, started: float) -> None:
        now = self._clock()
        stats.prompt_tokens = event.prompt_tokens
        stats.completion_tokens = event.completion_tokens
        await self._progress(ctx, stats, now, started)
        tokens_in = ctx.spec.tokens_in_estimate if event.prompt_tokens is None else event.prompt_tokens
        stop: str = event.stop_reason
        generated = stats.tokens if event.completion_tokens is None else event.completion_tokens
        if stop == "max_tokens" and generated < ctx.spec.max_tokens:
            # The engine stopped at its length limit short of the job's: its context ran out (engines
            # that cut the output to what the context leaves: llama.cpp, llama-cpp-python). Where the
            # engine reports no count, its token events are the count (one per token for those two).
            stop = "context_length"
        stats.stop_reason = stop
        end: dict[str, object] = {"stop_reason": stop, "tokens_in": tokens_in}
        if event.prompt_tokens is None:  # the engine did not say: an estimate, named as one
            end["tokens_in_estimated"] = True
        # The engine's count; else one token an engine step (its text, reasoning and tool-call events),
        # an estimate named as one
        end["tokens_out"] = generated
        if event.completion_tokens is None:
            end["tokens_out_estimated"] = True
        done = await self._store.finish(ctx.spec.job_id, JobState.SUCCEEDED, "end", end)
        stats.outcome = "succeeded" if done is not None else "canceled"
        decode_ms = None if stats.first_token_at is None else (now - stats.first_token_at) * 1000
        if decode_ms is not None:
            self._metrics.decode.labels(**ctx.labels).observe(decode_ms)
        if done is not None:  # decode_time_ms as the client's `end` event says it
            log.info(
                "task_completed", stop_reason=stop, tokens_out=stats.tokens_out,
                tokens_in=tokens_in,
                decode_time_ms=orjson.loads(done.data).get("decode_time_ms"),
            )  # fmt: skip


def _named(event: Reasoning | Embedding | PromptLogprobs) -> tuple[str, dict[str, object]]:
    """The log event of a thinking model's reasoning (before its answer), of an embeddings job's
    vector (one per input), or of a scored prompt (before the tokens; one engine step, its prefill, so
    counted as one as the others are)."""
    if isinstance(event, Reasoning):
        return "reasoning", {"t": event.text}
    if isinstance(event, PromptLogprobs):
        return "prompt", prompt_data(event)
    return "embedding", embedding_data(event)


def embedding_data(event: Embedding) -> dict[str, object]:
    """An `embedding` event's data: the input's index, and its vector as the engine computes it, in
    32-bit floats, little-endian, base64 (`b64`): a fifth of the bytes of the numbers in JSON, and what
    OpenAI's `encoding_format: base64` sends as it is."""
    vector = struct.pack(f"<{len(event.vector)}f", *event.vector)
    return {"index": event.index, "b64": base64.b64encode(vector).decode("ascii")}


def prompt_data(event: PromptLogprobs) -> dict[str, object]:
    """A `prompt` event's data: an entry for each of the prompt's tokens as the engine read them, as a
    `token` event's are, the first with no log probability (`null`: nothing precedes it); and for a
    prompt given as token ids, its text as the engine decoded it (`text`)."""
    first: dict[str, object] = {"token": event.first, "logprob": None, "top_logprobs": []}
    data: dict[str, object] = {"logprobs": [first, *(logprobs_data(event.entries) or ())]}
    if event.text is not None:
        data["text"] = event.text
    return data


def logprobs_data(logprobs: tuple[TokenLogprob, ...]) -> list[dict[str, object]] | None:
    """A `token` event's `logprobs`: the engine's entries in the shape of OpenAI's chat logprobs."""
    if not logprobs:
        return None
    return [
        {
            "token": entry.token,
            "logprob": entry.logprob,
            "top_logprobs": [{"token": token, "logprob": logprob} for token, logprob in entry.top],
        }
        for entry in logprobs
    ]


def _fragment(delta: ToolCallDelta) -> dict[str, object]:
    """A `tool_call` event's data: the fields the fragment carries."""
    data: dict[str, object] = {"index": delta.index, "arguments": delta.arguments}
    if delta.id is not None:
        data["id"] = delta.id
    if delta.name is not None:
        data["name"] = delta.name
    return data


@asynccontextmanager
async def closing_stream(events: AsyncIterator[TokenEvent]) -> AsyncIterator[AsyncIterator[TokenEvent]]:
    """Close the adapter's stream on every exit, which closes the engine request."""
    try:
        yield events
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def _truncated(engine: str) -> AdapterError:
    return EngineReset("the engine stream ended without a terminal event", engine=engine)
