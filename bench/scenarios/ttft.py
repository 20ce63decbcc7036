"""Time to first token added by orchestratord over the engine, at concurrency 1, 10, 100 and 500.

At each concurrency a closed loop of users sends 50-token requests (no token interval) first straight
to the engine, then through orchestratord to the same engine. The client's TTFT is, for the engine,
from sending the completion request to its first token; through orchestratord, from sending
``POST /v1/tasks`` to the first ``token`` event of ``GET …/stream`` (both calls included, as a client
lives them). The added TTFT is the difference of the percentiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from bench.client import Client
from bench.load import JobResult, closed_loop, direct_to_engine, through_orchestrator
from bench.monitor import Monitor
from bench.procs import EngineSpec, OrchestratorSpec
from bench.results import Context, target
from bench.scenarios.common import by_concurrency, outcome, rate, ttft
from bench.stats import difference, summary

TOKENS = 50


@dataclass(frozen=True)
class Load:
    concurrency: tuple[int, ...]
    requests: dict[int, int]
    max_seconds: float
    engine_ttft_ms: float = 10.0


FULL = Load((1, 10, 100, 500), {1: 300, 10: 2000, 100: 3000, 500: 5000}, 20.0)
QUICK = Load((1, 10, 100), {1: 20, 10: 60, 100: 200}, 3.0)
SMOKE = Load((1, 2), {1: 5, 2: 6}, 1.0)


async def level(orch: Client, engine: Client, monitor: Monitor, c: int, load: Load) -> dict[str, Any]:
    n = load.requests[c]
    direct_job = partial(direct_to_engine, engine, TOKENS)
    orch_job = partial(through_orchestrator, orch, TOKENS)
    await closed_loop(direct_job, c, 2 * c, load.max_seconds)  # warm up connections on both paths
    await closed_loop(orch_job, c, 2 * c, load.max_seconds)
    direct = await closed_loop(direct_job, c, n, load.max_seconds)
    async with monitor.phase() as phase:
        through = await closed_loop(orch_job, c, n, load.max_seconds)
    assert phase.usage is not None
    direct_ttft, orch_ttft = ttft(direct), ttft(through)
    return {
        "concurrency": c,
        "direct": {**outcome(direct), "ttft_ms": direct_ttft, "jobs_per_s": round(rate(direct), 1)},
        "orchestratord": {
            **outcome(through),
            "ttft_ms": orch_ttft,
            "post_answer_ms": _answer(through),
            "jobs_per_s": round(rate(through), 1),
            "resources": phase.usage.as_dict(),
        },
        "added_ttft_ms": difference(orch_ttft, direct_ttft),
    }


def _answer(results: list[JobResult]) -> dict[str, Any]:
    return summary(r.answer_ms for r in results if r.ok)


async def run(ctx: Context) -> dict[str, Any]:
    load = ctx.pick(FULL, QUICK, SMOKE)
    engine = EngineSpec(ttft_ms=load.engine_ttft_ms, interval_ms=0.0)
    orch = OrchestratorSpec(slots=1024, queue_capacity=2048)
    levels = await by_concurrency(ctx, "ttft", engine, orch, load.concurrency, partial(level, load=load))
    ref = min(levels, key=lambda lv: abs(lv["concurrency"] - 10))  # 10 unless the scale has no such level
    at10, c = ref["added_ttft_ms"], ref["concurrency"]
    return {
        "description": __doc__.split("\n\n")[0],
        "engine": {"ttft_ms": engine.ttft_ms, "interval_ms": 0.0, "tokens_per_response": TOKENS},
        "config": {"slots": orch.slots, "queue_capacity": orch.queue_capacity, "load": load.__dict__},
        "levels": levels,
        "targets": [
            target(f"added TTFT p50 at concurrency {c}", at10["p50"], 1.0, unit="ms", at_most=True),
            target(f"added TTFT p99 at concurrency {c}", at10["p99"], 5.0, unit="ms", at_most=True),
        ],
    }
