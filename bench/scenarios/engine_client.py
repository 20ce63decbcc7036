"""The engine client's own cost: CPU per streamed 50-token job, in the bench's process, through the
adapters' client (httpx2 over our sharded pools), one plain httpx2 pool and one plain httpx pool of the
same size (issue 18, item 3).

Each client streams ``POST /v1/completions`` from the fake engine (no TTFT, no token interval; the
engine runs in its own process) and reads every body to its end, as the adapters do, in a closed loop
at each concurrency. ``adapters`` is what ``worker_adapters._http.build_client`` builds;
``httpx2`` and ``httpx`` are one ``AsyncClient`` each, with the same timeouts and a pool of the same
size. The clients take turns at each concurrency, round after round, so that the machine's noise falls
on them alike. Connections opened are counted where httpcore and httpcore2 open them
(``anyio.connect_tcp``, wrapped by a mock), those still open at the level's end from the socket table
(psutil).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any
from unittest import mock

import anyio
import httpx
import httpx2
import psutil

from bench.load import engine_body
from bench.procs import MODEL, EngineSpec, scratch_dir, start_engine
from bench.results import Context
from worker_adapters._http import build_client
from worker_adapters.base import AdapterConfig

TOKENS = 50
MAX_CONNECTIONS = 256
KEEPALIVE_S = 15.0  # build_client's
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream", "Accept-Encoding": "identity"}
DONE = b"data: [DONE]\n\n"

AnyClient = httpx.AsyncClient | httpx2.AsyncClient


@dataclass(frozen=True)
class Load:
    concurrency: tuple[int, ...]
    jobs: int  # measured jobs per client and level (after 2 x concurrency to warm up)
    rounds: int


FULL = Load((4, 32, 64, 128, 256), 1500, 3)
QUICK = Load((4, 32, 128), 300, 2)
SMOKE = Load((4,), 20, 1)


def _config(url: str) -> AdapterConfig:
    return AdapterConfig("openai", url, MODEL, options={"max_connections": MAX_CONNECTIONS})


def _one_pool(lib: Any) -> Callable[[str], AnyClient]:
    """One plain ``AsyncClient`` of `lib` (httpx or httpx2: the same API), its pool the size of the
    adapters' and every connection kept alive."""

    def build(url: str) -> AnyClient:
        limits = lib.Limits(
            max_connections=MAX_CONNECTIONS,
            max_keepalive_connections=MAX_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_S,
        )
        client: AnyClient = lib.AsyncClient(
            timeout=lib.Timeout(60.0, connect=5.0, write=5.0, pool=5.0), limits=limits
        )
        return client

    return build


CLIENTS: dict[str, Callable[[str], AnyClient]] = {
    "adapters": lambda url: build_client(_config(url)),
    "httpx2": _one_pool(httpx2),
    "httpx": _one_pool(httpx),
}


async def _job(client: AnyClient, url: str) -> bool:
    """One streamed completion read to its end; whether it was whole."""
    last = b""
    try:
        async with client.stream("POST", url, content=engine_body(TOKENS), headers=HEADERS) as response:
            async for chunk in response.aiter_raw():
                last = chunk
    except (httpx.HTTPError, httpx2.HTTPError, OSError):
        return False
    return response.status_code == 200 and last.endswith(DONE)


async def _closed_loop(client: AnyClient, url: str, concurrency: int, jobs: int) -> int:
    """`jobs` jobs by `concurrency` workers, each starting its next when the last ends; the failures."""
    remaining = iter(range(jobs))
    failed = 0

    async def worker() -> None:
        nonlocal failed
        for _ in remaining:
            failed += not await _job(client, url)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


def _established(port: int) -> int:
    """This process's established connections to `port`."""
    conns = psutil.Process().net_connections(kind="tcp")
    return sum(1 for c in conns if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


async def _level(name: str, base_url: str, concurrency: int, jobs: int) -> dict[str, Any]:
    url = base_url + "/v1/completions"
    # httpcore and httpcore2 open every connection with anyio.connect_tcp: counted there.
    with mock.patch("anyio.connect_tcp", wraps=anyio.connect_tcp) as connects:
        async with CLIENTS[name](base_url) as client:
            failed = await _closed_loop(client, url, concurrency, 2 * concurrency)  # connections open
            gc.collect()
            cpu, wall = time.process_time(), time.perf_counter()
            failed += await _closed_loop(client, url, concurrency, jobs)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            established = _established(int(base_url.rsplit(":", 1)[1]))
    return {
        "client": name,
        "concurrency": concurrency,
        "cpu_us_per_job": round(cpu / jobs * 1e6, 1),
        "jobs_per_s": round(jobs / wall, 1),
        "connections": connects.call_count,  # opened by this client, warm-up included
        "connections_open_at_end": established,
        "failed": failed,
    }


def _medians(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each client and level's median over the rounds; its CPU per job over the adapters' client's is
    the median of the rounds' ratios (the two ran a few seconds apart: less noisy than the CPU per job
    itself)."""
    cpu = {
        (i, lv["client"], lv["concurrency"]): lv["cpu_us_per_job"] for i, r in enumerate(rounds) for lv in r
    }
    out = []
    for name in CLIENTS:
        for c in sorted({lv["concurrency"] for lv in rounds[0]}):
            runs = [lv for r in rounds for lv in r if (lv["client"], lv["concurrency"]) == (name, c)]
            ratios = [cpu[i, name, c] / cpu[i, "adapters", c] for i in range(len(rounds))]
            out.append(
                {
                    "client": name,
                    "concurrency": c,
                    "cpu_us_per_job": statistics.median(lv["cpu_us_per_job"] for lv in runs),
                    "cpu_us_per_job_rounds": [lv["cpu_us_per_job"] for lv in runs],
                    "cpu_over_adapters": round(statistics.median(ratios), 3),
                    "jobs_per_s": statistics.median(lv["jobs_per_s"] for lv in runs),
                    "connections": max(lv["connections"] for lv in runs),
                    "connections_open_at_end": min(lv["connections_open_at_end"] for lv in runs),
                    "failed": sum(lv["failed"] for lv in runs),
                }
            )
    return out


async def run(ctx: Context) -> dict[str, Any]:
    load = ctx.pick(FULL, QUICK, SMOKE)
    engine = EngineSpec(ttft_ms=0.0, interval_ms=0.0)
    workdir = scratch_dir("engine_client")
    rounds: list[list[dict[str, Any]]] = []
    loads: list[list[float]] = []
    with contextlib.ExitStack() as stack:
        eng = start_engine(engine, workdir, stack)
        for _ in range(load.rounds):
            loads.append([round(x, 2) for x in os.getloadavg()])
            rounds.append(
                [await _level(name, eng.base_url, c, load.jobs) for c in load.concurrency for name in CLIENTS]
            )
    shutil.rmtree(workdir, ignore_errors=True)
    versions = {p: metadata.version(p) for p in ("httpx", "httpcore", "httpx2", "httpcore2")}
    return {
        "description": __doc__.split("\n\n")[0],
        "engine": {"ttft_ms": 0.0, "interval_ms": 0.0, "tokens_per_response": TOKENS},
        "config": {"load": load.__dict__, "max_connections": MAX_CONNECTIONS, "versions": versions},
        "load_average_per_round": loads,
        "rounds": rounds,
        "median": _medians(rounds),
    }
