"""Overload: offered load at 10x capacity. How fast the 429 comes back, whether admitted jobs keep
their time to first token, and whether memory stays flat.

Capacity is measured first: a closed loop with as many users as the pool has slots gives the jobs/s
the engine can serve, and the nominal TTFT. Then requests arrive at ten times that rate for a while
(open loop: arrivals do not wait for answers). The queue is as deep as the pool has slots, so an
admitted job waits at most about one service time before its slot frees. The admitted jobs' TTFT is
reported whole and split into the queue wait (until the dispatch event) and the rest.
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
from bench.scenarios.common import outcome, rate, ttft
from bench.stats import slope_per_minute, summary

TOKENS = 50


@dataclass(frozen=True)
class Load:
    slots: int
    calibrate_s: float
    overload_s: float
    factor: float = 10.0


FULL = Load(slots=8, calibrate_s=5.0, overload_s=20.0)
QUICK = Load(slots=4, calibrate_s=1.5, overload_s=2.0)
SMOKE = Load(slots=2, calibrate_s=0.5, overload_s=0.5)


def after_dispatch(results: list[JobResult]) -> dict[str, Any]:
    """TTFT minus the queue wait: from the dispatch event to the first token."""
    values = [
        (r.first_token_at - r.dispatched_at) * 1000
        for r in results
        if r.ok and r.first_token_at is not None and r.dispatched_at is not None
    ]
    return summary(values)


def thirds(results: list[JobResult]) -> dict[str, Any]:
    """Admitted TTFT p50 in the first and last third of the phase: does it grow while overload lasts?"""
    admitted = sorted((r for r in results if r.ok), key=lambda r: r.sent_at)
    if len(admitted) < 3:
        return {"first_third_p50_ms": None, "last_third_p50_ms": None}
    n = len(admitted) // 3
    return {
        "first_third_p50_ms": summary(r.ttft_ms for r in admitted[:n])["p50"],
        "last_third_p50_ms": summary(r.ttft_ms for r in admitted[-n:])["p50"],
    }


def memory(samples: list[tuple[float, float]]) -> dict[str, Any]:
    half = samples[len(samples) // 2 :]
    slope = slope_per_minute(half)
    return {
        "rss_first_mb": round(samples[0][1], 2) if samples else None,
        "rss_last_mb": round(samples[-1][1], 2) if samples else None,
        "second_half_slope_mb_per_min": None if slope is None else round(slope, 3),
    }


async def run(ctx: Context) -> dict[str, Any]:
    load = ctx.pick(FULL, QUICK, SMOKE)
    engine = EngineSpec(ttft_ms=20.0, interval_ms=4.0)
    orch = OrchestratorSpec(slots=load.slots, queue_capacity=load.slots)
    with running(engine, orch, scratch_dir("overload"), ctx.source) as (eng, orc):
        client = Client(orc.base_url)
        monitor = Monitor(orc.pid, eng.pid, interval_s=0.25)
        job = partial(through_orchestrator, client, TOKENS)
        await closed_loop(job, load.slots, 2 * load.slots, 10.0)  # warm up
        nominal = await closed_loop(job, load.slots, 100_000, load.calibrate_s)
        capacity = rate(nominal)
        offered = capacity * load.factor
        await client.prewarm(4 * load.slots + 32)  # no measured request waits for a connect
        async with monitor.phase() as phase:
            results = await open_loop(job, offered, int(offered * load.overload_s) + 1, load.overload_s)
        assert phase.usage is not None
        client.close()
    rejected = summary(r.answer_ms for r in results if r.status == 429)
    admitted = ttft(results)
    return {
        "description": __doc__.split("\n\n")[0],
        "engine": {"ttft_ms": 20.0, "interval_ms": 4.0, "tokens_per_response": TOKENS},
        "config": {"slots": orch.slots, "queue_capacity": orch.queue_capacity, "load": load.__dict__},
        "capacity_jobs_per_s": round(capacity, 1),
        "offered_per_s": round(offered, 1),
        "nominal": {
            **outcome(nominal),
            "ttft_ms": ttft(nominal),
            "after_dispatch_ms": after_dispatch(nominal),
        },
        "overload": {
            **outcome(results),
            "served_jobs_per_s": round(rate(results), 1),
            "rejection_latency_ms": rejected,
            "admitted_ttft_ms": admitted,
            "admitted_after_dispatch_ms": after_dispatch(results),
            "admitted_ttft_over_time": thirds(results),
            "memory": memory(phase.usage.samples),
            "resources": phase.usage.as_dict(with_samples=True),
        },
        "targets": [target("429 latency p99 under overload", rejected["p99"], 5.0, unit="ms", at_most=True)],
    }
