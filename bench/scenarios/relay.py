"""Relay throughput: tokens per second through one long stream, and across 100 concurrent streams
(read from the job's stream, then through the OpenAI surface's streamed `POST /v1/completions`).

The engine sends its tokens as fast as the socket takes them; the rate is the tokens the client
received divided by the time from its first request to its last token. The same streams read straight from
the engine give the ceiling the load generator and the engine allow on this machine.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.client import Client
from bench.load import JobResult, direct_to_engine, through_orchestrator
from bench.monitor import Monitor
from bench.openai_surface import completion
from bench.procs import EngineSpec, OrchestratorSpec, running, scratch_dir
from bench.results import Context, target
from bench.scenarios.common import outcome

Send = Callable[[Client, int], Awaitable[JobResult]]


@dataclass(frozen=True)
class Load:
    long_tokens: int
    long_repeats: int
    streams: int
    stream_tokens: int


FULL = Load(long_tokens=100_000, long_repeats=3, streams=100, stream_tokens=2_000)
QUICK = Load(long_tokens=5_000, long_repeats=1, streams=20, stream_tokens=200)
SMOKE = Load(long_tokens=500, long_repeats=1, streams=3, stream_tokens=50)


def tokens_per_s(results: list[JobResult]) -> float:
    """Tokens received over the time from the first request sent to the last token received (a log
    that buffers tokens before the reader arrives cannot make this look faster than it is)."""
    done = [r for r in results if r.ok and r.ended_at is not None]
    if not done:
        return 0.0
    first = min(r.sent_at for r in done)
    last = max(r.ended_at for r in done if r.ended_at is not None)
    return sum(r.tokens for r in done) / (last - first) if last > first else 0.0


async def streams(send: Send, client: Client, count: int, tokens: int) -> list[JobResult]:
    return list(await asyncio.gather(*(send(client, tokens) for _ in range(count))))


async def long_stream(
    send: Send, client: Client, load: Load, monitor: Monitor | None
) -> tuple[list[JobResult], dict[str, Any] | None]:
    results: list[JobResult] = []
    if monitor is None:
        for _ in range(load.long_repeats):
            results += await streams(send, client, 1, load.long_tokens)
        return results, None
    async with monitor.phase() as phase:
        for _ in range(load.long_repeats):
            results += await streams(send, client, 1, load.long_tokens)
    assert phase.usage is not None
    return results, phase.usage.as_dict()


def report(
    results: list[JobResult], resources: dict[str, Any] | None = None, *, each: bool = False
) -> dict[str, Any]:
    out = {**outcome(results), "tokens_per_s": round(tokens_per_s(results))}
    if each:  # streams one after another: the median of their rates
        rates = [tokens_per_s([r]) for r in results if r.ok]
        out["per_stream_tokens_per_s"] = [round(x) for x in rates]
        out["tokens_per_s"] = round(statistics.median(rates)) if rates else 0
    if resources is not None:
        out["resources"] = resources
    return out


async def run(ctx: Context) -> dict[str, Any]:
    load = ctx.pick(FULL, QUICK, SMOKE)
    engine = EngineSpec(ttft_ms=0.0, interval_ms=0.0)
    orch = OrchestratorSpec(slots=256, queue_capacity=1024, max_tokens=max(load.long_tokens, 200_000))
    with running(engine, orch, scratch_dir("relay"), ctx.source) as (eng, orc):
        ec, oc = Client(eng.base_url), Client(orc.base_url)
        monitor = Monitor(orc.pid, eng.pid)
        await streams(through_orchestrator, oc, 4, 100)  # warm up
        direct_long, _ = await long_stream(direct_to_engine, ec, load, None)
        orch_long, long_usage = await long_stream(through_orchestrator, oc, load, monitor)
        direct_many = await streams(direct_to_engine, ec, load.streams, load.stream_tokens)
        async with monitor.phase() as phase:
            orch_many = await streams(through_orchestrator, oc, load.streams, load.stream_tokens)
        assert phase.usage is not None
        async with monitor.phase() as openai_phase:  # the same streams through the OpenAI surface
            openai_many = await streams(completion, oc, load.streams, load.stream_tokens)
        assert openai_phase.usage is not None
        ec.close()
        oc.close()
    rates = [tokens_per_s([r]) for r in orch_long if r.ok]
    single = statistics.median(rates) if rates else 0.0  # the median of the repeats
    many = tokens_per_s(orch_many)
    return {
        "description": __doc__.split("\n\n")[0],
        "engine": {"ttft_ms": 0.0, "interval_ms": 0.0},
        "config": {"load": load.__dict__, "slots": orch.slots},
        "one_long_stream": {
            "tokens": load.long_tokens,
            "direct": report(direct_long, each=True),
            "orchestratord": report(orch_long, long_usage, each=True),
        },
        "concurrent_streams": {
            "streams": load.streams,
            "tokens_each": load.stream_tokens,
            "direct": report(direct_many),
            "orchestratord": report(orch_many, phase.usage.as_dict()),
        },
        "openai_streams": {
            "streams": load.streams,
            "tokens_each": load.stream_tokens,
            "direct": report(direct_many),
            "orchestratord": report(openai_many, openai_phase.usage.as_dict()),
        },
        "targets": [
            target("relayed tokens/s, one long stream", single, 50_000, unit="tokens/s", at_most=False),
            target("relayed tokens/s, 100 streams", many, 50_000, unit="tokens/s", at_most=False),
        ],
    }
