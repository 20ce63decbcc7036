"""Scaling out: one process on in-memory state beside two replicas on one Redis, in one run.

The same fake engine and load generator for both. Jobs: 50-token jobs in a closed loop, posted to the
replicas in turn (CPU per job is every orchestratord process's plus redis-server's). Relay: one long
stream, posted to one replica and read through the other. Streams: slow streams (a token a second),
posted to one replica and read through the other, all open together: whether every one ends, and the
most Redis client connections seen (they should not grow with the streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench.client import Client
from bench.load import JobResult, closed_loop, open_loop, through_orchestrator
from bench.procs import Child, EngineSpec, OrchestratorSpec, _spawn, free_port, scratch_dir, wait_ready
from bench.results import Context
from bench.scenarios.common import outcome, rate

TOKENS = 50
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
HAVE_REDIS = Path(REDIS).exists()


@dataclass(frozen=True)
class Load:
    concurrency: int
    requests: int
    max_seconds: float
    long_tokens: int
    streams: int
    stream_tokens: int  # one a second


FULL = Load(
    concurrency=32, requests=3000, max_seconds=20.0, long_tokens=20_000, streams=1000, stream_tokens=10
)
QUICK = Load(concurrency=16, requests=300, max_seconds=5.0, long_tokens=2_000, streams=200, stream_tokens=4)
SMOKE = Load(concurrency=2, requests=10, max_seconds=2.0, long_tokens=100, streams=5, stream_tokens=2)


@dataclass
class Deployment:
    replicas: list[Child]
    redis: subprocess.Popen[bytes] | None
    redis_port: int | None

    def pids(self) -> list[int]:
        return [r.pid for r in self.replicas] + ([self.redis.pid] if self.redis else [])

    def connections(self) -> int | None:
        if self.redis_port is None:
            return None
        with socket.create_connection(("127.0.0.1", self.redis_port), timeout=2) as conn:
            conn.sendall(b"INFO clients\r\n")
            text = conn.recv(65536).decode(errors="replace")
        for line in text.splitlines():
            if line.startswith("connected_clients:"):
                return int(line.split(":")[1]) - 1  # not this connection
        return None


@contextlib.contextmanager
def deployment(
    ctx: Context, engine: EngineSpec, replicas: int, shared: bool, workdir: Path
) -> Iterator[Deployment]:
    stack = contextlib.ExitStack()
    with stack:
        eport = free_port()
        argv = [sys.executable, "-m", "bench.fake_engine", "--port", str(eport), *engine.args()]
        eng = Child("fake engine", f"http://127.0.0.1:{eport}", _spawn(argv, workdir / "engine.log"))
        stack.callback(eng.stop)
        wait_ready(eng, "/v1/models")
        redis, rport = None, None
        extra: dict[str, Any] = {}
        if shared:
            rport = free_port()
            redis = subprocess.Popen(
                [REDIS, "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            stack.callback(redis.wait)
            stack.callback(redis.terminate)
            time.sleep(0.3)
            extra = {"state_url": f"redis://127.0.0.1:{rport}/0", "redis": {"key_prefix": "bench:"}}
        spec = OrchestratorSpec(slots=2048, queue_capacity=4096, extra={
            **extra, "limits": {"max_tokens": 200_000, "max_connections": 8192},
        })  # fmt: skip
        children = []
        for i in range(replicas):
            port = free_port()
            config = workdir / f"orchestratord-{i}.yaml"
            config.write_text(yaml.safe_dump(spec.config(port, eng.base_url), sort_keys=False))
            argv = [sys.executable, "-m", "orchestratord", "serve", "--config", str(config)]
            child = Child(
                f"orchestratord-{i}",
                f"http://127.0.0.1:{port}",
                _spawn(argv, workdir / f"o{i}.log", ctx.source),
            )
            stack.callback(child.stop)
            children.append(child)
        for child in children:
            wait_ready(child, "/readyz")
        yield Deployment(children, redis, rport)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


async def measured(dep: Deployment, work: Any) -> tuple[Any, float, float]:
    """(what `work()` returned, the CPU seconds of the deployment's processes, wall seconds)."""
    cpu0, wall0 = cpu_seconds(dep.pids()), time.perf_counter()
    result = await work()
    return result, cpu_seconds(dep.pids()) - cpu0, time.perf_counter() - wall0


async def jobs(dep: Deployment, load: Load) -> dict[str, Any]:
    clients = [Client(r.base_url, max_connections=load.concurrency * 2) for r in dep.replicas]
    turn = 0

    def one() -> Any:
        nonlocal turn
        turn += 1
        return through_orchestrator(clients[turn % len(clients)], TOKENS)

    try:
        await closed_loop(one, load.concurrency, load.concurrency * 2, load.max_seconds)  # warm up
        results, cpu, _ = await measured(
            dep, lambda: closed_loop(one, load.concurrency, load.requests, load.max_seconds)
        )
    finally:
        for c in clients:
            c.close()
    done = max(1, outcome(results)["completed"])
    return {
        **outcome(results),
        "jobs_per_s": round(rate(results), 1),
        "cpu_ms_per_job": round(cpu * 1000 / done, 3),
        "cpu_us_per_token": round(cpu * 1e6 / (done * TOKENS), 1),
    }


async def relay(dep: Deployment, load: Load) -> dict[str, Any]:
    writer = Client(dep.replicas[0].base_url)
    reader = Client(dep.replicas[-1].base_url)
    try:
        result, cpu, _ = await measured(
            dep, lambda: through_orchestrator(writer, load.long_tokens, 300.0, reader=reader)
        )
    finally:
        writer.close()
        reader.close()
    span = (result.ended_at or 0) - (result.first_token_at or 0)
    return {
        "tokens": result.tokens,
        "ended": result.terminal,
        "tokens_per_s": round(result.tokens / span) if span > 0 else None,
        "cpu_us_per_token": round(cpu * 1e6 / max(1, result.tokens), 1),
    }


async def streams(dep: Deployment, load: Load) -> dict[str, Any]:
    writer = Client(dep.replicas[0].base_url, max_connections=load.streams + 16)
    reader = Client(dep.replicas[-1].base_url, max_connections=load.streams + 16)
    peak = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, dep.connections() or 0)
            await asyncio.sleep(0.25)

    watcher = asyncio.create_task(watch())
    job = partial(through_orchestrator, writer, load.stream_tokens, load.stream_tokens + 60.0, reader)
    try:
        results: list[JobResult] = await open_loop(job, 200.0, load.streams, 60.0)
    finally:
        stop.set()
        await watcher
        writer.close()
        reader.close()
    return {**outcome(results), "redis_connections_peak": peak if dep.redis_port else None}


async def run(ctx: Context) -> dict[str, Any]:
    load = ctx.pick(FULL, QUICK, SMOKE)
    out: dict[str, Any] = {"description": __doc__.split("\n\n")[0], "load": load.__dict__, "setups": {}}
    if not HAVE_REDIS:
        out["skipped"] = f"no redis-server at {REDIS}: `bash ci/setup.sh test` installs Debian's"
        return out
    for name, replicas, shared in (("one process, memory", 1, False), ("two replicas, Redis", 2, True)):
        fast, slow = EngineSpec(ttft_ms=0.0, interval_ms=0.0), EngineSpec(ttft_ms=0.0, interval_ms=1000.0)
        row: dict[str, Any] = {"replicas": replicas}
        with deployment(ctx, fast, replicas, shared, scratch_dir("redis")) as dep:
            row["jobs"] = await jobs(dep, load)
            row["relay"] = await relay(dep, load)
        with deployment(ctx, slow, replicas, shared, scratch_dir("redis")) as dep:
            row["streams"] = await streams(dep, load)
        out["setups"][name] = row
    return out
