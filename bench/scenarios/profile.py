"""Profiles of the hot path: where orchestratord's CPU goes while it serves 50-token jobs at full
rate, while it relays long streams, and while it answers 429. Sampled with py-spy from outside the
process.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from functools import partial
from typing import Any

from bench import profiling
from bench.client import Client
from bench.load import JobResult, closed_loop, task_body, through_orchestrator
from bench.monitor import Monitor
from bench.procs import EngineSpec, OrchestratorSpec, running, scratch_dir
from bench.results import Context
from bench.scenarios.common import outcome, rate
from bench.scenarios.relay import streams, tokens_per_s
from bench.stats import summary


@dataclass(frozen=True)
class Load:
    seconds: float
    concurrency: int
    relay_streams: int
    relay_tokens: int


FULL = Load(seconds=10.0, concurrency=32, relay_streams=100, relay_tokens=3_000)
QUICK = Load(seconds=2.0, concurrency=8, relay_streams=10, relay_tokens=300)
SMOKE = Load(seconds=1.0, concurrency=2, relay_streams=2, relay_tokens=50)


async def profiled(ctx: Context, name: str, pid: int, seconds: float, load: Any) -> dict[str, Any]:
    """Run `load()` (a coroutine function) while py-spy samples `pid` for `seconds`."""
    scratch = scratch_dir(f"profile-{name}")
    raw = scratch / "stacks.txt"
    try:
        spy = asyncio.create_task(profiling.record(pid, seconds, raw))
        await asyncio.sleep(0.3)  # py-spy attaches
        measured = await load()
        error = await spy
        if error is not None:
            return {"error": error, **measured}
        kept = profiling.keep(raw, ctx.results / "profiles" / f"{ctx.date}-{name}.stacks.txt.gz")
        summary = profiling.summarize(raw.read_text())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {**measured, "stacks_file": str(kept.relative_to(ctx.results)), **summary}


async def rejections_profile(ctx: Context, load: Load) -> dict[str, Any]:
    """The 429 path: one slot held by a slow job, the queue (one place) full, every POST refused."""
    engine = EngineSpec(ttft_ms=0.0, interval_ms=1000.0)
    orch = OrchestratorSpec(slots=1, queue_capacity=1)
    with running(engine, orch, scratch_dir("profile-429"), ctx.source) as (eng, orc):
        client = Client(orc.base_url)
        monitor = Monitor(orc.pid, eng.pid)
        holders = [
            asyncio.create_task(through_orchestrator(client, int(load.seconds) + 30)) for _ in range(2)
        ]
        await asyncio.sleep(0.5)
        post = partial(client.request, "POST", "/v1/tasks", task_body(50))

        async def refused() -> JobResult:
            answer = await post()
            return JobResult(answer.sent_at, answer.status, answer.done_at)

        async def rejection_load() -> dict[str, Any]:
            async with monitor.phase() as phase:
                results = await closed_loop(refused, load.concurrency, 1_000_000, load.seconds)
            assert phase.usage is not None
            return {
                "statuses": outcome(results)["statuses"],
                "answer_ms": summary(r.answer_ms for r in results),
                "cpu_ms_per_request": round(phase.usage.cpu_s * 1000 / max(1, len(results)), 3),
                "resources": phase.usage.as_dict(),
            }

        measured = await profiled(ctx, "rejections", orc.pid, load.seconds, rejection_load)
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
        client.close()
    return measured


async def run(ctx: Context) -> dict[str, Any]:
    load = ctx.pick(FULL, QUICK, SMOKE)
    engine = EngineSpec(ttft_ms=0.0, interval_ms=0.0)
    orch = OrchestratorSpec(slots=1024, queue_capacity=2048)
    with running(engine, orch, scratch_dir("profile"), ctx.source) as (eng, orc):
        client = Client(orc.base_url)
        monitor = Monitor(orc.pid, eng.pid)
        job = partial(through_orchestrator, client, 50)
        await closed_loop(job, load.concurrency, 2 * load.concurrency, 10.0)

        async def jobs_load() -> dict[str, Any]:
            async with monitor.phase() as phase:
                results = await closed_loop(job, load.concurrency, 1_000_000, load.seconds)
            assert phase.usage is not None
            return {
                **outcome(results),
                "jobs_per_s": round(rate(results), 1),
                "resources": phase.usage.as_dict(),
            }

        async def relay_load() -> dict[str, Any]:
            results = []
            async with monitor.phase() as phase:
                while phase.samples == [] or phase.samples[-1][0] < load.seconds:
                    results += await streams(
                        through_orchestrator, client, load.relay_streams, load.relay_tokens
                    )
            assert phase.usage is not None
            return {
                **outcome(results),
                "tokens_per_s": round(tokens_per_s(results)),
                "resources": phase.usage.as_dict(),
            }

        jobs = await profiled(ctx, "jobs", orc.pid, load.seconds, jobs_load)
        relay = await profiled(ctx, "relay", orc.pid, load.seconds, relay_load)
        client.close()
    rejections = await rejections_profile(ctx, load)
    return {
        "description": __doc__.split("\n\n")[0],
        "tool": "py-spy record --format raw --function --nonblocking --rate 200",
        "config": {"load": load.__dict__},
        "jobs_50_tokens": jobs,
        "relay": relay,
        "rejections": rejections,
        "targets": [],
    }
