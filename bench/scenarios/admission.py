"""Admission against a deep queue: the cost of an accepted POST, and of a 429, as the queue grows.

The pool has one slot and its engine never answers in time, so every job after the first stays
queued. The queue is filled to each depth (concurrent POSTs, not measured), then POSTs are sent one
at a time and measured: the client's answer time and orchestratord's CPU per request. Once the
deepest level is measured the queue is filled to its capacity and the 429s are measured the same
way. Admission work that grows with the queue (a place computed from the whole queue, a hint that
reads it all) shows as a cost that grows with the depth; the target is a flat one. Before each level
the process is watched for a few seconds with no request: what a deep queue costs in the background
(housekeeping) is reported apart, and the POSTs' own CPU is the rest.

Then the same 429s against a queue of one place with many jobs running (a token a second each, no
reader), and with one: the predictions a 429's hint is made from know when each running job frees its
slot, and a cost that grows with the running jobs shows there. Last, accepted POSTs with as many jobs
running and free slots for each, as while many streams open: each measured job starts at once, so
that starts and admissions alternate. The pool has measured a few short jobs first, as a
serving deployment has.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from bench.client import Client
from bench.load import closed_loop, task_body, through_orchestrator
from bench.monitor import Monitor
from bench.procs import EngineSpec, OrchestratorSpec, running, scratch_dir
from bench.results import Context, target
from bench.stats import summary

FILL_CONCURRENCY = 32
TOKENS = 10
IDLE_S = 3.0


@dataclass(frozen=True)
class Load:
    depths: tuple[int, ...]  # queued jobs before each measured level
    measured: int  # POSTs measured at each level (they stay queued: the next level counts them)
    running: int  # jobs running while the 429s of a one-place queue are measured (and then one)


# 1,000 at each level: the process's CPU counts in 10 ms ticks and housekeeping's pass over a deep queue
# comes every 0.25 s, so that 300 POSTs (about 0.15 s) measured the target's ratio at 0.85-2.2x on one VM
FULL = Load((0, 2_500, 5_000, 10_000), 1_000, running=2_000)
QUICK = Load((0, 500, 2_000), 100, running=300)
SMOKE = Load((0, 50), 10, running=20)


async def _post(client: Client, expect: int) -> float:
    """One POST; its answer time in ms (it must be answered with `expect`)."""
    body = task_body(TOKENS, cancel_on_disconnect=False)
    answer = await client.request("POST", "/v1/tasks", body)
    assert answer.status == expect, f"POST /v1/tasks answered {answer.status}, not {expect}"
    return (answer.done_at - answer.sent_at) * 1000


async def _admitted(client: Client, tokens: int) -> None:
    """One job admitted: a POST sent again while the one-place queue is full (its jobs start meanwhile)."""
    body = task_body(tokens, cancel_on_disconnect=False)
    for _ in range(1200):  # a minute
        answer = await client.request("POST", "/v1/tasks", body)
        if answer.status == 202:
            return
        assert answer.status == 429, f"POST /v1/tasks answered {answer.status}, not 202 or 429"
        await asyncio.sleep(0.05)
    raise AssertionError("the queue's one place stayed taken for a minute")


async def _fill(count: int, admit: Callable[[], Awaitable[object]]) -> None:
    """`count` jobs admitted by `admit`, FILL_CONCURRENCY at a time."""
    remaining = iter(range(count))

    async def user() -> None:
        for _ in remaining:
            await admit()

    await asyncio.gather(*(user() for _ in range(FILL_CONCURRENCY)))


async def _measure(client: Client, monitor: Monitor, n: int, expect: int) -> dict[str, Any]:
    """`n` POSTs one at a time, after a quiet spell that measures what the process spends with this
    queue and no requests (housekeeping: the gauges, the positions published to the waiting jobs);
    the POSTs' own CPU is the phase's less that background over the phase's time."""
    await _post(client, expect)  # the connection warm
    async with monitor.phase() as quiet:
        await asyncio.sleep(IDLE_S)
    async with monitor.phase() as phase:
        times = [await _post(client, expect) for _ in range(n)]
    assert quiet.usage is not None and phase.usage is not None
    background = quiet.usage.cpu_s / quiet.usage.wall_s
    own = max(0.0, phase.usage.cpu_s - background * phase.usage.wall_s)
    return {
        "answer_ms": summary(times),
        "cpu_ms_per_request": round(phase.usage.cpu_s * 1000 / n, 3),
        "background_cores": round(background, 3),
        "own_cpu_ms_per_request": round(own * 1000 / n, 3),
        "peak_rss_mb": round(phase.usage.peak_rss_mb, 1),
    }


async def run(ctx: Context) -> dict[str, Any]:
    load = ctx.pick(FULL, QUICK, SMOKE)
    # each level's measured POSTs stay queued: the next depth must lie beyond them
    assert all(b - a > load.measured for a, b in itertools.pairwise(load.depths)), load
    deepest = load.depths[-1] + 2 * (load.measured + 1) * len(load.depths)
    capacity = deepest + load.measured  # room for every measured POST, and then a full queue
    engine = EngineSpec(ttft_ms=3_600_000.0)  # the one running job holds the only slot for an hour
    orch = OrchestratorSpec(slots=1, queue_capacity=capacity)
    levels: list[dict[str, Any]] = []
    with running(engine, orch, scratch_dir("admission"), ctx.source) as (eng, orc):
        client = Client(orc.base_url)
        monitor = Monitor(orc.pid, eng.pid)
        try:
            await _post(client, 202)  # the job that takes the slot; the rest queue
            queued = 0
            for depth in load.depths:
                await _fill(depth - queued, partial(_post, client, 202))
                queued = depth
                level = await _measure(client, monitor, load.measured, 202)
                queued += load.measured + 1
                levels.append({"queued": depth, **level})
            await _fill(capacity - queued, partial(_post, client, 202))
            full = {"queued": capacity, **await _measure(client, monitor, load.measured, 429)}
        finally:
            client.close()
    while_running = [await _while_running(ctx, load, n, 429) for n in (1, load.running)]
    admitted_running = [await _while_running(ctx, load, n, 202) for n in (1, load.running)]
    first, last = levels[0], levels[-1]
    base = first["own_cpu_ms_per_request"]
    growth = last["own_cpu_ms_per_request"] / base if base else None
    return {
        "description": __doc__.split("\n\n")[0],
        "config": {"slots": 1, "queue_capacity": capacity, "load": load.__dict__},
        "accepted": levels,
        "refused_full_queue": full,
        "refused_while_running": while_running,
        "admitted_while_running": admitted_running,
        "targets": [
            target(
                f"accepted POST's own CPU at {last['queued']:,} queued over at {first['queued']}",
                round(growth, 3) if growth is not None else None,
                1.25,
                unit="x",
                at_most=True,
            ),
        ],
    }


async def _while_running(ctx: Context, load: Load, jobs: int, expect: int) -> dict[str, Any]:
    """POSTs answered `expect` while `jobs` jobs run: 429s against a full queue of one place, the slots
    all held; or 202s with a free slot for each measured job, which starts at once."""
    engine = EngineSpec(ttft_ms=0.0, interval_ms=1000.0)
    refused = expect == 429
    slots = jobs if refused else jobs + load.measured + 1  # the measured ones, and `_measure`'s first
    orch = OrchestratorSpec(slots=slots, queue_capacity=1) if refused else OrchestratorSpec(slots=slots)
    with running(engine, orch, scratch_dir("admission"), ctx.source) as (eng, orc):
        client = Client(orc.base_url, max_connections=FILL_CONCURRENCY + 8)
        monitor = Monitor(orc.pid, eng.pid)
        try:
            await closed_loop(partial(through_orchestrator, client, 1), 4, 16, 30.0)  # measured jobs
            await _fill(jobs, partial(_admitted, client, 3_600))
            if refused:
                await _admitted(client, TOKENS)  # the queue's one place: taken once every job has started
            return {"running": jobs, **await _measure(client, monitor, load.measured, expect)}
        finally:
            client.close()
