"""Interactive work behind batch: batch jobs keep every slot busy while interactive jobs arrive, with
`queue.holdback` off and on; the interactive jobs' time to first token against the batch throughput
the held slots cost.

Batch: a closed loop of `2 x slots` clients posting 150-token batch jobs (so batch work always waits
for every slot). Interactive: 10-token jobs arriving at a steady rate (Poisson-free, evenly spaced).
Both run for the same time at each setting, on a fresh orchestratord.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from bench.client import Client
from bench.load import JobResult, closed_loop, open_loop, through_orchestrator
from bench.procs import EngineSpec, OrchestratorSpec, running, scratch_dir
from bench.results import Context
from bench.scenarios.common import outcome
from bench.stats import summary

BATCH_TOKENS, INTERACTIVE_TOKENS = 150, 10


@dataclass(frozen=True)
class Load:
    slots: int
    seconds: float
    interactive_per_s: float
    settings: tuple[float, ...] = (0.0, 0.25)


FULL = Load(slots=8, seconds=30.0, interactive_per_s=4.0)
QUICK = Load(slots=4, seconds=8.0, interactive_per_s=3.0)
SMOKE = Load(slots=2, seconds=1.5, interactive_per_s=4.0, settings=(0.0, 0.5))


async def one_setting(ctx: Context, load: Load, engine: EngineSpec, holdback: float) -> dict[str, Any]:
    extra = {"queue": {"capacity": 4096, "holdback": holdback}}
    orch = OrchestratorSpec(slots=load.slots, queue_capacity=4096, extra=extra)
    with running(engine, orch, scratch_dir("holdback"), ctx.source) as (_, orc):
        client = Client(orc.base_url)
        await client.prewarm(load.slots * 4)

        def batch() -> Any:
            return through_orchestrator(client, BATCH_TOKENS, priority="batch")

        def interactive() -> Any:
            return through_orchestrator(client, INTERACTIVE_TOKENS, priority="interactive")

        fill = asyncio.create_task(closed_loop(batch, 2 * load.slots, 1_000_000, load.seconds))
        await asyncio.sleep(min(1.0, load.seconds / 4))  # the batch clients hold every slot first
        count = max(1, int(load.interactive_per_s * load.seconds * 0.75))
        urgent: list[JobResult] = await open_loop(interactive, load.interactive_per_s, count, load.seconds)
        batched = await fill
        client.close()
    done = [r for r in batched if r.ok]
    return {
        "holdback": holdback,
        "interactive": {**outcome(urgent), "ttft_ms": summary(r.ttft_ms for r in urgent if r.ok)},
        "batch": {
            **outcome(batched),
            "tokens_per_s": round(sum(r.tokens for r in done) / load.seconds, 1),
        },
    }


async def run(ctx: Context) -> dict[str, Any]:
    load = ctx.pick(FULL, QUICK, SMOKE)
    engine = EngineSpec(ttft_ms=10.0, interval_ms=4.0)
    rows = [await one_setting(ctx, load, engine, holdback) for holdback in load.settings]
    return {
        "description": __doc__.split("\n\n")[0],
        "engine": {"ttft_ms": 10.0, "interval_ms": 4.0},
        "config": {
            "load": load.__dict__,
            "batch_tokens": BATCH_TOKENS,
            "interactive_tokens": INTERACTIVE_TOKENS,
        },
        "rows": rows,
        "targets": [],
    }
