"""Jobs per second sustained (every one of the 50 tokens delivered), at the concurrency that maximizes it.

A closed loop at increasing concurrency sends 50-token jobs through orchestratord to an engine with no
time to first token and no token interval; the best level is the result. The engine alone is measured
at the same levels, to show it is not what limits the rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from bench.client import Client
from bench.load import closed_loop, direct_to_engine, through_orchestrator
from bench.monitor import Monitor
from bench.procs import EngineSpec, OrchestratorSpec
from bench.results import Context, target
from bench.scenarios.common import by_concurrency, outcome, rate, ttft

TOKENS = 50


@dataclass(frozen=True)
class Load:
    concurrency: tuple[int, ...]
    requests: int
    max_seconds: float


FULL = Load((4, 8, 16, 32, 64, 128, 256), 4000, 8.0)
QUICK = Load((4, 16), 100, 2.0)
SMOKE = Load((2,), 10, 1.0)


async def level(orch: Client, engine: Client, monitor: Monitor, c: int, load: Load) -> dict[str, Any]:
    direct_job = partial(direct_to_engine, engine, TOKENS)
    orch_job = partial(through_orchestrator, orch, TOKENS)
    await closed_loop(orch_job, c, 2 * c, load.max_seconds)
    direct = await closed_loop(direct_job, c, load.requests, load.max_seconds)
    async with monitor.phase() as phase:
        through = await closed_loop(orch_job, c, load.requests, load.max_seconds)
    assert phase.usage is not None
    jobs_per_s = rate(through)
    usage = phase.usage.as_dict()
    cpu_ms_per_job = phase.usage.cpu_s * 1000 / max(1, outcome(through)["completed"])
    return {
        "concurrency": c,
        "direct": {**outcome(direct), "jobs_per_s": round(rate(direct), 1), "ttft_ms": ttft(direct)},
        "orchestratord": {
            **outcome(through),
            "jobs_per_s": round(jobs_per_s, 1),
            "ttft_ms": ttft(through),
            "cpu_ms_per_job": round(cpu_ms_per_job, 3),
            "resources": usage,
        },
    }


async def run(ctx: Context) -> dict[str, Any]:
    load = ctx.pick(FULL, QUICK, SMOKE)
    engine = EngineSpec(ttft_ms=0.0, interval_ms=0.0)
    orch = OrchestratorSpec(slots=1024, queue_capacity=2048)
    levels = await by_concurrency(ctx, "jobs", engine, orch, load.concurrency, partial(level, load=load))
    best = max(levels, key=lambda lv: lv["orchestratord"]["jobs_per_s"])
    return {
        "description": __doc__.split("\n\n")[0],
        "engine": {"ttft_ms": 0.0, "interval_ms": 0.0, "tokens_per_response": TOKENS},
        "config": {"slots": orch.slots, "queue_capacity": orch.queue_capacity, "load": load.__dict__},
        "levels": levels,
        "best": {
            "concurrency": best["concurrency"],
            "jobs_per_s": best["orchestratord"]["jobs_per_s"],
            "engine_alone_jobs_per_s": best["direct"]["jobs_per_s"],
            "cpu_ms_per_job": best["orchestratord"]["cpu_ms_per_job"],
            "resources": best["orchestratord"]["resources"],
        },
        "targets": [
            target("50-token jobs/s", best["orchestratord"]["jobs_per_s"], 600, unit="jobs/s", at_most=False)
        ],
    }
