"""Memory is given back: thousands of jobs, once their retention has passed, leave no Python objects
behind in the server (tracemalloc over the server running in this process)."""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events

RETENTION_S = 0.5
JOBS = 1000
PACKAGES = ("orchestratord", "worker_adapters", "pool_manager")


def run_jobs(base_url: str, n: int) -> None:
    def one(client: httpx.Client) -> str:
        job = client.post("/v1/tasks", json={"model_ref": "m", "prompt": "hi", "max_tokens": 8}).json()
        return read_events(client, job["sse_url"])[-1].event

    with httpx.Client(base_url=base_url, timeout=30) as client, ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda _: one(client), range(n))) == {"end"}


def ours(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    return snapshot.filter_traces([tracemalloc.Filter(True, f"*/{p}/*") for p in PACKAGES])


def test_thousands_of_jobs_leave_nothing_behind_once_retention_passed(
    make_server: Callable[..., LoopbackServer],
) -> None:
    pool = {"id": "p", "engine": "mock", "models": ["m"], "replicas": [{"id": "r0"}], "slots": 8,
            "options": {"ttft_ms": 0, "tokens_per_s": 100000}}  # fmt: skip
    # what retention holds: finished jobs' logs, and presence checks pending past a job's end
    stream = {"retention_s": RETENTION_S, "attach_timeout_s": RETENTION_S, "reconnect_grace_s": RETENTION_S}
    server = make_server(pools=[pool], stream=stream)
    run_jobs(server.base_url, 200)  # warm up: first-time allocations, connection pools, caches
    tracemalloc.start()
    try:
        time.sleep(RETENTION_S + 1.0)  # the warm-up's jobs are purged
        gc.collect()
        before = ours(tracemalloc.take_snapshot())
        run_jobs(server.base_url, JOBS)
        time.sleep(RETENTION_S + 1.0)
        gc.collect()
        after = ours(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    growth = after.compare_to(before, "filename")
    grown = sum(stat.size_diff for stat in growth)
    worst = "\n".join(str(stat) for stat in growth[:8])
    # A retained 8-token job holds about 3 KB: 1,000 kept would be 3 MB and more.
    assert grown < 256 * 1024, f"{grown} bytes more after {JOBS} jobs past their retention:\n{worst}"
