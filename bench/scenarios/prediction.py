"""Prediction honesty: ``predicted_start_ms`` (in the answer to ``POST /v1/tasks``) against the start
the client then measures (from the POST to the event that says the job was dispatched).

Jobs of varied length (10 to 90 tokens, seeded) arrive at 1.3x the pool's measured capacity, so a
queue builds up and the predictions have something to predict. The error is reported for every job
and for those that had to wait (predicted or measured start above 0), as mean absolute error in ms and
as a percentage of the mean measured start, with the mean signed error (bias: > 0 means late
predictions, i.e. jobs started sooner than announced).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.client import Client
from bench.load import JobResult, closed_loop, open_loop, through_orchestrator
from bench.monitor import Monitor
from bench.procs import EngineSpec, OrchestratorSpec, running, scratch_dir
from bench.results import Context
from bench.scenarios.common import outcome, rate


@dataclass(frozen=True)
class Load:
    slots: int
    jobs: int
    warm_up: int  # jobs that teach orchestratord the service time first
    factor: float = 1.3
    seed: int = 9


FULL = Load(slots=4, jobs=240, warm_up=32)
QUICK = Load(slots=2, jobs=30, warm_up=8)
SMOKE = Load(slots=1, jobs=6, warm_up=2)


def errors(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """(predicted, measured) ms pairs → MAE ms, MAE % of the mean measured start, bias."""
    if not pairs:
        return {"jobs": 0, "mae_ms": None, "mae_pct": None, "bias_ms": None, "mean_measured_ms": None}
    mae = sum(abs(p - m) for p, m in pairs) / len(pairs)
    mean_measured = sum(m for _, m in pairs) / len(pairs)
    return {
        "jobs": len(pairs),
        "mae_ms": round(mae, 1),
        "mae_pct": round(100 * mae / mean_measured, 1) if mean_measured > 0 else None,
        "bias_ms": round(sum(p - m for p, m in pairs) / len(pairs), 1),
        "mean_measured_ms": round(mean_measured, 1),
    }


def honesty(results: list[JobResult]) -> dict[str, Any]:
    pairs = [
        (float(r.predicted_start_ms), r.start_ms)
        for r in results
        if r.ok and r.predicted_start_ms is not None and r.start_ms is not None
    ]
    waited = [(p, m) for p, m in pairs if p > 0 or m > 20.0]
    server = [
        (float(r.predicted_start_ms), float(r.queue_time_ms))
        for r in results
        if r.ok and r.predicted_start_ms is not None and r.queue_time_ms is not None
    ]
    return {
        "all_jobs": errors(pairs),
        "jobs_that_waited": errors(waited),
        "against_server_queue_time": errors(server),
        "unpredicted": sum(1 for r in results if r.ok and r.predicted_start_ms is None),
        "pairs_ms": [[round(p), round(m, 1)] for p, m in pairs],
    }


async def run(ctx: Context) -> dict[str, Any]:
    load = ctx.pick(FULL, QUICK, SMOKE)
    engine = EngineSpec(ttft_ms=10.0, interval_ms=4.0)
    orch = OrchestratorSpec(slots=load.slots, queue_capacity=1024)
    rng = random.Random(load.seed)

    async def job() -> JobResult:
        return await through_orchestrator(client, rng.randint(10, 90))

    with running(engine, orch, scratch_dir("prediction"), ctx.source) as (eng, orc):
        client = Client(orc.base_url)
        monitor = Monitor(orc.pid, eng.pid)
        warm = await closed_loop(job, load.slots, load.warm_up, 30.0)
        capacity = rate(warm)
        await client.prewarm(32)
        async with monitor.phase() as phase:
            results = await open_loop(job, capacity * load.factor, load.jobs, 120.0)
        assert phase.usage is not None
        client.close()
    return {
        "description": __doc__.split("\n\n")[0],
        "engine": {"ttft_ms": 10.0, "interval_ms": 4.0, "tokens_per_response": "uniform 10..90"},
        "config": {"slots": orch.slots, "load": load.__dict__},
        "capacity_jobs_per_s": round(capacity, 1),
        "offered_per_s": round(capacity * load.factor, 1),
        **outcome(results),
        "prediction": honesty(results),
        "resources": phase.usage.as_dict(),
        "targets": [],
    }
