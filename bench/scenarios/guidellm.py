"""guidellm (an outside load generator) beside our own, at the same constant rates, through orchestratord
and straight to the engine.

At each rate, 50-token answers are streamed for a fixed time. guidellm, as shipped (its own CLI),
drives orchestratord's OpenAI surface, ``POST /v1/completions`` and ``POST /v1/chat/completions``, with
synthetic prompts of about 64 tokens, then the fake engine's same two routes as the baseline. Our load
generator drives ``/v1/completions``, orchestratord's own API (``POST /v1/tasks`` plus its stream) and
the engine directly. Each tool's added TTFT is its TTFT through orchestratord less its own TTFT straight
to the engine on the same route. orchestratord's pool is of the ``vllm`` engine here (the fake speaks
vLLM's dialect), so the vLLM extensions guidellm sends (``ignore_eos``,
``stream_options.continuous_usage_stats``) are taken, not refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from bench.client import Client
from bench.cpu_timeline import Timeline
from bench.guidellm_env import GuideLLM, ensure
from bench.guidellm_tool import Plan, Target, Workdir, benchmark, busy_window, fields_sent, figures
from bench.load import Job, JobResult, closed_loop, open_loop, through_orchestrator
from bench.openai_surface import PATH, completion
from bench.procs import Child, EngineSpec, OrchestratorSpec, running, scratch_dir
from bench.results import Context
from bench.scenarios.common import outcome, rate, tokens
from bench.stats import difference, summary

TOKENS = 50
PROMPT_TOKENS = 64
OPENAI = PATH  # /v1/completions
CHAT = "/v1/chat/completions"
TASKS = "/v1/tasks + stream"
# The fake engine speaks vLLM's dialect and answers vLLM's /health and /version; "auto" sends chat
# requests to its chat route. Other scenarios keep the "openai" pool, so their figures stay comparable.
POOL = {"engine": "vllm", "api": "auto"}
HEALTH = {"orchestratord": "healthz", "engine": "health"}  # the route guidellm checks before it starts


@dataclass(frozen=True)
class Load:
    rates: tuple[float, ...]  # requests/s
    seconds: float  # per rate, tool and surface
    guidellm_workers: int = 1  # one load-generating process, as ours
    guidellm_max_concurrency: int = 256  # 20 times what the highest rate keeps in flight


FULL = Load((10.0, 20.0, 40.0), 12.0)
QUICK = Load((10.0, 40.0), 4.0)
SMOKE = Load((5.0,), 2.0)
ENGINE = EngineSpec(ttft_ms=10.0, interval_ms=5.0)


def plan(load: Load) -> Plan:
    return Plan(
        load.rates, load.seconds, PROMPT_TOKENS, TOKENS, load.guidellm_workers, load.guidellm_max_concurrency
    )


async def by_guidellm(
    tool: GuideLLM, server: Child, name: str, surface: str, load: Load, work: Workdir, timeline: Timeline
) -> tuple[list[dict[str, Any]], list[str]]:
    """guidellm at every rate against one target and route: a row per rate, and the fields of the
    request bodies it sent."""
    target = Target(server.base_url, surface, HEALTH[name])
    run_name = f"{name}-{surface.rsplit('/', 1)[-1]}"
    report = await benchmark(tool, target, plan(load), work, run_name, started=timeline.watch)
    tool_name = f"guidellm {report['metadata']['guidellm_version']}"
    rows = []
    for bench in report["benchmarks"]:
        measured = figures(bench)
        cpu = timeline.window(*busy_window(bench), measured["completed"])
        rows.append({"tool": tool_name, "target": name, "surface": surface, **measured, "cpu": cpu})
    return rows, fields_sent(report)


async def by_ours(job: Job, name: str, surface: str, load: Load, timeline: Timeline) -> list[dict[str, Any]]:
    """Our open loop at every rate against one target; a row per rate."""
    timeline.watch(os.getpid())
    rows = []
    for r in load.rates:
        start = time.time()
        results = await open_loop(job, r, round(r * load.seconds), load.seconds)
        cpu = timeline.window(start, time.time(), outcome(results)["completed"])
        rows.append(
            {"tool": "bench.load", "target": name, "surface": surface, **ours(results, r), "cpu": cpu}
        )
    return rows


def ours(results: list[JobResult], offered: float) -> dict[str, Any]:
    """Our measures, in the terms of guidellm's: ITL per request is (end - first token) / (tokens - 1)."""
    done = [r for r in results if r.ok and r.ended_at is not None and r.first_token_at is not None]
    span = max((r.ended_at or 0.0) for r in done) - min(r.sent_at for r in results) if done else 0.0
    return {
        "rate_offered": offered,
        **outcome(results),
        "requests_per_s": round(rate(results), 2),
        "ttft_ms": summary(r.ttft_ms for r in done),
        "itl_ms": summary(_itl_ms(r) for r in done if r.tokens > 1),
        "request_latency_ms": summary(((r.ended_at or 0.0) - r.sent_at) * 1000 for r in done),
        "output_tokens_per_s": round(tokens(results) / span, 1) if span > 0 else 0.0,
    }


def _itl_ms(r: JobResult) -> float:
    return ((r.ended_at or 0.0) - (r.first_token_at or 0.0)) * 1000 / (r.tokens - 1)


def add_overhead(rows: Sequence[dict[str, Any]]) -> None:
    """On each orchestratord row, the TTFT it added over the same tool's engine row at the same rate and
    on the same route (``/v1/completions`` for ``/v1/tasks``)."""
    engine = {(r["tool"], r["rate_offered"], r["surface"]): r for r in rows if r["target"] == "engine"}
    for row in rows:
        route = OPENAI if row["surface"] == TASKS else row["surface"]
        base = engine.get((row["tool"], row["rate_offered"], route))
        if row["target"] == "orchestratord" and base is not None:
            row["added_ttft_ms"] = difference(row["ttft_ms"], base["ttft_ms"])


async def measure(
    tool: GuideLLM, eng: Child, orc: Child, load: Load, work: Workdir, timeline: Timeline
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What stock guidellm sent, and seven rows per rate: guidellm on each OpenAI route through
    orchestratord and to the engine; ours through both of orchestratord's surfaces and to the engine."""
    engine_client, orch_client = Client(eng.base_url), Client(orc.base_url)
    ours_by_surface: list[tuple[Job, str, str]] = [
        (partial(completion, orch_client, TOKENS), "orchestratord", OPENAI),
        (partial(through_orchestrator, orch_client, TOKENS), "orchestratord", TASKS),
        (partial(completion, engine_client, TOKENS), "engine", OPENAI),
    ]
    try:
        for job, _, _ in ours_by_surface:  # warm up each path (and orchestratord) before measuring
            await closed_loop(job, 4, 16, load.seconds)
        rows, sent = [], {}
        for surface in (OPENAI, CHAT):
            for server, name in ((orc, "orchestratord"), (eng, "engine")):
                measured, fields = await by_guidellm(tool, server, name, surface, load, work, timeline)
                rows += measured
                if name == "orchestratord":
                    sent[surface] = fields
        for job, name, surface in ours_by_surface:
            rows += await by_ours(job, name, surface, load, timeline)
    finally:
        engine_client.close()
        orch_client.close()
    add_overhead(rows)
    stock = {"command": "guidellm run", "patched": False, "fields_sent": sent}
    return stock, sorted(rows, key=lambda r: (r["rate_offered"], r["tool"], r["target"], r["surface"]))


async def run(ctx: Context) -> dict[str, Any]:
    load = ctx.pick(FULL, QUICK, SMOKE)
    tool = ensure()
    orch = OrchestratorSpec(slots=1024, queue_capacity=2048, pool=POOL)
    workdir = scratch_dir("guidellm")
    with running(ENGINE, orch, workdir, ctx.source) as (eng, orc):
        work = Workdir(workdir, tool.build_processor(workdir / "processor"))
        timeline = Timeline(orc.pid, eng.pid)
        async with timeline.recording():
            stock, rows = await measure(tool, eng, orc, load, work, timeline)
    return {
        "description": " ".join(__doc__.split("\n\n")[0].split()),
        "engine": {
            "ttft_ms": ENGINE.ttft_ms,
            "interval_ms": ENGINE.interval_ms,
            "tokens_per_response": TOKENS,
        },
        "config": {
            "slots": orch.slots,
            "queue_capacity": orch.queue_capacity,
            "pool": POOL,
            "load": load.__dict__,
            "prompt_tokens": PROMPT_TOKENS,
            "guidellm": {"venv": str(tool.venv), "profile": "constant", "http2": False},
        },
        "stock_guidellm": stock,
        "rows": rows,
    }
