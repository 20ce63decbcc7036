"""Prediction honesty: ``predicted_start_ms`` (in the answer to ``POST /v1/tasks``) against the start
the client then measures (from the POST to the event that says the job was dispatched), on a mixed
workload at several loads; and the 429 hint: does a client that waits it get in on its first retry?

The workload (seeded): short jobs (10 tokens) and long ones (150 tokens, 30 %), two tenants (each with
its API key), both classes (30 % interactive). The pool's capacity for it is measured first (which
also teaches orchestratord its rates); then jobs arrive at each factor of it, so that below 1 the
queue stays short and above it a queue builds up. The error is reported for every job and for those
that had to wait (predicted or measured start above 0): mean absolute error in ms and as a percentage
of the mean measured start, its 90th percentile, and the mean signed error (bias: > 0 means late
predictions, i.e. jobs started sooner than announced); and orchestratord's own Jain's fairness index
over the two tenants' weighted shares (`fairness_jain_index`, by requests and by tokens, over its
window), scraped after each level.

The hint: a second run with a short queue (`2 x slots`) at twice the capacity; every client refused
with 429 waits its `retry_after_ms` and sends the same request once more, with the same
Idempotency-Key (as the OpenAI SDKs do), which names the place orchestratord holds for it. Reported:
how many of those retries were admitted (issue 16's target: at least 90 %).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.client import BufferSink, Client
from bench.load import JobResult, closed_loop, open_loop, through_orchestrator
from bench.procs import EngineSpec, OrchestratorSpec, running, scratch_dir
from bench.results import Context
from bench.scenarios.common import outcome, rate

SHORT, LONG, LONG_SHARE, INTERACTIVE_SHARE = 10, 150, 0.3, 0.3
KEYS = {"tenant-a": "bench-prediction-key-a-0001", "tenant-b": "bench-prediction-key-b-0002"}
AUTH = {"auth": {"keys": [{"key": key, "tenant": tenant} for tenant, key in KEYS.items()]}}


@dataclass(frozen=True)
class Load:
    slots: int
    jobs: int  # at each factor
    warm_up: int  # jobs that measure the capacity and teach orchestratord its rates first
    overload_jobs: int
    factors: tuple[float, ...] = (0.7, 1.0, 1.3)
    overload: float = 2.0
    seed: int = 9


FULL = Load(slots=4, jobs=200, warm_up=40, overload_jobs=240)
QUICK = Load(slots=2, jobs=40, warm_up=16, overload_jobs=60)
SMOKE = Load(slots=1, jobs=6, warm_up=4, overload_jobs=8, factors=(1.0,))


class Mix:
    """The seeded workload: each call is one job's tokens, tenant and class."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def __call__(self) -> tuple[int, str, str]:
        rng = self._rng
        tokens = LONG if rng.random() < LONG_SHARE else SHORT
        tenant = rng.choice(sorted(KEYS))
        priority = "interactive" if rng.random() < INTERACTIVE_SHARE else "batch"
        return tokens, tenant, priority


async def submit(client: Client, mix: Mix) -> JobResult:
    tokens, tenant, priority = mix()
    headers = {"Authorization": f"Bearer {KEYS[tenant]}"}
    return await through_orchestrator(client, tokens, headers=headers, priority=priority)


def errors(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """(predicted, measured) ms pairs → MAE ms, MAE % of the mean measured start, bias."""
    if not pairs:
        return {"jobs": 0, "mae_ms": None, "mae_pct": None, "p90_abs_ms": None, "bias_ms": None,
                "mean_measured_ms": None}  # fmt: skip
    mae = sum(abs(p - m) for p, m in pairs) / len(pairs)
    off = sorted(abs(p - m) for p, m in pairs)
    mean_measured = sum(m for _, m in pairs) / len(pairs)
    return {
        "jobs": len(pairs),
        "mae_ms": round(mae, 1),
        "mae_pct": round(100 * mae / mean_measured, 1) if mean_measured > 0 else None,
        "p90_abs_ms": round(off[min(len(off) - 1, int(0.9 * len(off)))], 1),
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
    mix = Mix(load.seed)
    levels: dict[str, Any] = {}
    orch = OrchestratorSpec(slots=load.slots, queue_capacity=1024, extra=AUTH)
    with running(engine, orch, scratch_dir("prediction"), ctx.source) as (_, orc):
        client = Client(orc.base_url)
        warm = await closed_loop(lambda: submit(client, mix), load.slots, load.warm_up, 60.0)
        capacity = rate(warm)
        await client.prewarm(32)
        for factor in load.factors:
            results = await open_loop(lambda: submit(client, mix), capacity * factor, load.jobs, 120.0)
            levels[f"{factor:g}x"] = {
                "offered_per_s": round(capacity * factor, 1),
                **outcome(results),
                "prediction": honesty(results),
                "fairness_jain_index": await jain(client),
            }
            await asyncio.sleep(1.0)  # the queue drains between levels
        client.close()
    return {
        "description": __doc__.split("\n\n")[0],
        "engine": {"ttft_ms": 10.0, "interval_ms": 4.0, "tokens_per_response": f"{SHORT} or {LONG}"},
        "config": {"slots": orch.slots, "load": load.__dict__},
        "capacity_jobs_per_s": round(capacity, 1),
        "levels": levels,
        "retry_hint": await hint(ctx, load, engine, capacity),
        "targets": [],
    }


async def jain(client: Client) -> dict[str, float]:
    """orchestratord's `fairness_jain_index` gauge (over its window) for the two tenants, per unit."""
    answer = await client.request("GET", "/metrics")
    assert isinstance(answer.sink, BufferSink)
    found: dict[str, float] = {}
    for line in answer.sink.body.decode().splitlines():
        if line.startswith("fairness_jain_index{"):
            labels, _, value = line.rpartition(" ")
            found[labels.split('unit="')[1].split('"')[0]] = round(float(value), 4)
    return found


async def hint(ctx: Context, load: Load, engine: EngineSpec, capacity: float) -> dict[str, Any]:
    """Overload against a short queue: the clients refused wait the hint and retry once."""
    mix = Mix(load.seed + 1)
    orch = OrchestratorSpec(slots=load.slots, queue_capacity=2 * load.slots, extra=AUTH)
    retried: list[tuple[int, bool]] = []  # (the hint in ms, admitted on the retry)
    keys = itertools.count()

    async def obeying() -> JobResult:
        tokens, tenant, priority = mix()
        headers = {"Authorization": f"Bearer {KEYS[tenant]}", "Idempotency-Key": f"bench-{next(keys)}"}
        first = await through_orchestrator(client, tokens, headers=headers, priority=priority)
        if first.status != 429 or first.retry_after_ms is None:
            return first
        await asyncio.sleep(first.retry_after_ms / 1000)
        again = await through_orchestrator(client, tokens, headers=headers, priority=priority)
        retried.append((first.retry_after_ms, again.status == 202))
        return again

    with running(engine, orch, scratch_dir("prediction-hint"), ctx.source) as (_, orc):
        client = Client(orc.base_url)
        await closed_loop(lambda: submit(client, mix), load.slots, load.warm_up, 60.0)
        results = await open_loop(obeying, capacity * load.overload, load.overload_jobs, 120.0)
        client.close()
    admitted = sum(1 for _, ok in retried if ok)
    hints = sorted(ms for ms, _ in retried)
    return {
        "offered_per_s": round(capacity * load.overload, 1),
        "queue_capacity": orch.queue_capacity,
        **outcome(results),
        "refused_with_hint": len(retried),
        "admitted_on_first_retry": admitted,
        "admitted_share": round(admitted / len(retried), 3) if retried else None,
        "hint_ms_p50": hints[len(hints) // 2] if hints else None,
        "hint_ms_max": hints[-1] if hints else None,
    }
