"""What every scenario reports about a set of requests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bench.client import Client
from bench.load import JobResult
from bench.monitor import Monitor
from bench.procs import EngineSpec, OrchestratorSpec, running, scratch_dir
from bench.results import Context
from bench.stats import summary

Level = Callable[[Client, Client, Monitor, int], Awaitable[dict[str, Any]]]


async def by_concurrency(
    ctx: Context, name: str, engine: EngineSpec, orch: OrchestratorSpec, levels: Sequence[int], level: Level
) -> list[dict[str, Any]]:
    """Start the engine and orchestratord once, then measure `level(orchestratord client, engine client,
    monitor, concurrency)` at each concurrency in turn."""
    with running(engine, orch, scratch_dir(name), ctx.source) as (eng, orc):
        engine_client, orch_client = Client(eng.base_url), Client(orc.base_url)
        monitor = Monitor(orc.pid, eng.pid)
        try:
            return [await level(orch_client, engine_client, monitor, c) for c in levels]
        finally:
            engine_client.close()
            orch_client.close()


def rate(results: Sequence[JobResult]) -> float:
    """Completed jobs per second, from the first request sent to the last stream ended."""
    done = [r for r in results if r.ok and r.ended_at is not None]
    if not done:
        return 0.0
    span = max(r.ended_at for r in done if r.ended_at is not None) - min(r.sent_at for r in results)
    return len(done) / span if span > 0 else 0.0


def outcome(results: Sequence[JobResult]) -> dict[str, Any]:
    """How many requests, how they ended, and the first few distinct errors."""
    errors = Counter(r.error for r in results if r.error is not None)
    incomplete = sum(1 for r in results if r.error is None and r.status in (200, 202) and not r.ok)
    return {
        "requests": len(results),
        "completed": sum(1 for r in results if r.ok),
        "statuses": dict(sorted(Counter(str(r.status) for r in results).items())),
        "incomplete_streams": incomplete,
        "errors": sum(errors.values()),
        "error_examples": [f"{n}x {e}" for e, n in errors.most_common(3)],
    }


def ttft(results: Sequence[JobResult]) -> dict[str, Any]:
    return summary(r.ttft_ms for r in results if r.ok)


def tokens(results: Sequence[JobResult]) -> int:
    return sum(r.tokens for r in results if r.ok)
