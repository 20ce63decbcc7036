"""Open streams: 2,000 concurrent slow streams (1 token per second), peak RSS and RSS per stream.

Streams are opened at a steady rate, so that all of them are open together for a while; the engine
sends one token per second on each. RSS per stream is the orchestrator's peak RSS above its idle RSS
(measured after a warm-up, before the first stream), divided by the most streams open at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from bench.client import Client
from bench.load import JobResult, closed_loop, open_loop, through_orchestrator
from bench.monitor import Monitor
from bench.procs import EngineSpec, OrchestratorSpec, running, scratch_dir
from bench.results import Context, target
from bench.scenarios.common import outcome


@dataclass(frozen=True)
class Load:
    streams: int
    tokens: int  # per stream, one per second
    open_rate: float  # streams opened per second


FULL = Load(streams=2000, tokens=90, open_rate=200.0)  # streams outlast a slowed-down opening
QUICK = Load(streams=100, tokens=4, open_rate=100.0)
SMOKE = Load(streams=10, tokens=2, open_rate=50.0)


def most_open(results: list[JobResult]) -> int:
    """The largest number of streams that were open (first token seen, end not yet) at one time."""
    edges = []
    for r in results:
        if r.first_token_at is not None and r.ended_at is not None:
            edges += [(r.first_token_at, 1), (r.ended_at, -1)]
    level = peak = 0
    for _, step in sorted(edges):
        level += step
        peak = max(peak, level)
    return peak


async def run(ctx: Context) -> dict[str, Any]:
    load = ctx.pick(FULL, QUICK, SMOKE)
    engine = EngineSpec(ttft_ms=0.0, interval_ms=1000.0)
    orch = OrchestratorSpec(slots=load.streams + 48, queue_capacity=max(1024, load.streams))
    with running(engine, orch, scratch_dir("open-streams"), ctx.source) as (eng, orc):
        client = Client(orc.base_url, max_connections=load.streams + 64)
        monitor = Monitor(orc.pid, eng.pid, interval_s=0.25)
        warm = min(64, 2 * load.streams)
        await closed_loop(partial(through_orchestrator, client, 1), min(16, warm), warm, 10.0)  # warm up
        async with monitor.phase() as idle_phase:
            await closed_loop(partial(through_orchestrator, client, 1), 1, 5, 5.0)
        assert idle_phase.usage is not None
        idle = idle_phase.usage.rss_end_mb
        job = partial(through_orchestrator, client, load.tokens, load.tokens + 60.0)
        budget = load.streams / load.open_rate + 5.0
        async with monitor.phase() as phase:
            results = await open_loop(job, load.open_rate, load.streams, budget)
        assert phase.usage is not None
        client.close()
    usage = phase.usage
    concurrent = most_open(results)
    per_stream_kb = (usage.peak_rss_mb - idle) * 1024 / concurrent if concurrent else None
    return {
        "description": __doc__.split("\n\n")[0],
        "engine": {"ttft_ms": 0.0, "interval_ms": 1000.0, "tokens_per_response": load.tokens},
        "config": {"slots": orch.slots, "load": load.__dict__},
        **outcome(results),
        "most_open_at_once": concurrent,
        "all_open_at_once": concurrent == load.streams,
        "idle_rss_mb": round(idle, 2),
        "peak_rss_mb": round(usage.peak_rss_mb, 2),
        "rss_per_stream_kb": None if per_stream_kb is None else round(per_stream_kb, 1),
        "resources": usage.as_dict(with_samples=True),
        "targets": [
            target(
                f"peak RSS with {concurrent} open streams", usage.peak_rss_mb, 150, unit="MB", at_most=True
            )
        ],
    }
