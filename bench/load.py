"""The load generator: one job through orchestratord's dual-call API, one request straight to the
engine, and the two drivers (closed loop at a fixed concurrency, open loop at a fixed arrival rate).

Every driver is bounded twice: by a number of requests and by a wall-clock deadline after which no new
request starts (each request in flight is itself bounded by the client's timeout).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bench.client import BufferSink, Client, HTTPError
from bench.procs import MODEL
from bench.sse import EngineStream, TaskStream

PROMPT = "Benchmark prompt: tell me a short story about a fox."


@dataclass(slots=True)
class JobResult:
    """One request as the client saw it; times are `time.perf_counter()` seconds, from the moment the
    (first) request's bytes were written on a connection that was already open."""

    sent_at: float
    status: int = 0
    answered_at: float | None = None  # the POST's answer was complete (orchestratord only)
    first_token_at: float | None = None
    dispatched_at: float | None = None
    ended_at: float | None = None
    tokens: int = 0
    expected: int = 0
    terminal: str | None = None
    predicted_start_ms: int | None = None
    queue_time_ms: int | None = None
    tokens_out: int | None = None
    retry_after_ms: int | None = None  # a refusal's hint (its body's retry_after_ms)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.terminal == "end" and self.tokens == self.expected

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token_at is None else (self.first_token_at - self.sent_at) * 1000

    @property
    def answer_ms(self) -> float | None:
        return None if self.answered_at is None else (self.answered_at - self.sent_at) * 1000

    @property
    def start_ms(self) -> float | None:
        """Measured start: from the POST to the event that says the job was dispatched to the engine."""
        return None if self.dispatched_at is None else (self.dispatched_at - self.sent_at) * 1000


def task_body(max_tokens: int, **extra: Any) -> bytes:
    return orjson.dumps({"model_ref": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, **extra})


def engine_body(max_tokens: int) -> bytes:
    return orjson.dumps(
        {
            "model": MODEL,
            "prompt": PROMPT,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )


async def through_orchestrator(
    client: Client,
    max_tokens: int,
    limit_s: float = 120.0,
    reader: Client | None = None,
    *,
    headers: dict[str, str] | None = None,
    stream: TaskStream | None = None,
    **body: Any,
) -> JobResult:
    """POST /v1/tasks (with `body`'s fields besides max_tokens), then GET its stream until the
    terminal event (through `reader`, another replica of the deployment, when given), read into
    `stream` when given (a subclass that records more)."""
    result = JobResult(time.perf_counter(), expected=max_tokens)
    try:
        posted = task_body(max_tokens, **body)
        answer = await client.request("POST", "/v1/tasks", posted, headers=headers, limit_s=limit_s)
        result.sent_at, result.status, result.answered_at = answer.sent_at, answer.status, answer.done_at
        assert isinstance(answer.sink, BufferSink)
        if answer.status != 202:
            if answer.status == 429:
                result.retry_after_ms = orjson.loads(answer.sink.body).get("retry_after_ms")
            return result
        admission = orjson.loads(answer.sink.body)
        result.predicted_start_ms = admission["predicted_start_ms"]
        stream = stream or TaskStream()
        await (reader or client).request(
            "GET", admission["sse_url"], sink=stream, headers=headers, limit_s=limit_s
        )
    except (HTTPError, OSError, TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.first_token_at, result.dispatched_at, result.ended_at = (
        stream.first_token_at, stream.dispatched_at, stream.ended_at
    )  # fmt: skip
    result.tokens, result.terminal = stream.tokens, stream.terminal
    result.queue_time_ms = stream.dispatch.get("queue_time_ms")
    result.tokens_out = stream.final.get("tokens_out")
    if stream.terminal == "error":
        result.error = f"{stream.final.get('code')}: {stream.final.get('message')}"
    return result


async def direct_to_engine(client: Client, max_tokens: int, limit_s: float = 120.0) -> JobResult:
    """The baseline: the engine's own streaming API, no orchestrator."""
    result = JobResult(time.perf_counter(), expected=max_tokens)
    stream = EngineStream()
    try:
        answer = await client.request(
            "POST", "/v1/completions", engine_body(max_tokens), sink=stream, limit_s=limit_s
        )
    except (HTTPError, OSError, TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.sent_at, result.status = answer.sent_at, answer.status
    result.first_token_at, result.ended_at, result.tokens = (
        stream.first_token_at,
        stream.ended_at,
        stream.tokens,
    )
    result.terminal = "end" if stream.done else None
    return result


Job = Callable[[], Coroutine[Any, Any, JobResult]]


async def closed_loop(job: Job, concurrency: int, max_requests: int, max_seconds: float) -> list[JobResult]:
    """`concurrency` users, each sending its next request when the last one ends."""
    results: list[JobResult] = []
    issued = 0
    deadline = time.perf_counter() + max_seconds

    async def user() -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            results.append(await job())

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return results


async def open_loop(job: Job, rate: float, max_requests: int, max_seconds: float) -> list[JobResult]:
    """Requests arrive at `rate` per second whatever happens to the earlier ones."""
    if rate <= 0:
        raise ValueError("open loop at a rate of 0: no job completed while the capacity was measured")
    start = time.perf_counter()
    tasks: list[asyncio.Task[JobResult]] = []
    for i in range(max_requests):
        due = start + i / rate
        if due - start > max_seconds:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(job()))
    return list(await asyncio.gather(*tasks))


def poisson_arrivals(rate: float, seconds: float, seed: int) -> list[float]:
    """When jobs arrive (seconds from the start) in a Poisson process at `rate` over `seconds`, given
    its count: exactly ``round(rate * seconds) + 1`` arrivals, the first at 0 and the last at `seconds`,
    exponential gaps between them (seeded: the same arrivals for every system measured at a rate)."""
    count = max(1, round(rate * seconds))
    rng = random.Random(seed)
    gaps = [rng.expovariate(1.0) for _ in range(count)]
    scale, at, times = seconds / sum(gaps), 0.0, [0.0]
    for gap in gaps[:-1]:
        at += gap * scale
        times.append(at)
    return [*times, seconds]


async def open_loop_at(job: Job, arrivals: Sequence[float]) -> tuple[list[JobResult], list[float]]:
    """One request at each arrival time (seconds from now) whatever happens to the earlier ones; the
    results, and how late (ms) each request was started against its arrival time, which says whether
    the load generator kept up."""
    start = time.perf_counter()
    tasks: list[asyncio.Task[JobResult]] = []
    late: list[float] = []
    for at in arrivals:
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        late.append(max(0.0, (time.perf_counter() - start - at) * 1000))
        tasks.append(asyncio.create_task(job()))
    return list(await asyncio.gather(*tasks)), late
