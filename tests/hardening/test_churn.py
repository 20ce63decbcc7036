"""No leaks under churn: thousands of jobs with random cancels, disconnects mid-stream and engine faults.

Afterwards every job has ended, every slot lease is back, no task is left running on the server's
loop, nothing is left in the queue, the dispatcher or the engine, and memory is back near its start.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import psutil
import pytest

from tests.fakes.servers import LoopbackServer
from worker_adapters.mock import MockAdapter

JOBS = 2000
WARM_UP = 150
CONCURRENCY = 24
SEED = 7
STALL_S = 100  # a run takes well under a minute; a stall (slots never freed, say) fails with a message
# How a client behaves, and how often; each kind knows how its job may end.
KINDS: dict[str, float] = {
    "read": 0.36,
    "cancel_mid_stream": 0.14,
    "disconnect_mid_stream": 0.14,
    "fail_after": 0.10,
    "hang_then_cancel": 0.05,
    "hang_then_disconnect": 0.04,
    "refuse": 0.05,
    "never_read": 0.04,
    "cancel_before_reading": 0.04,
    "idempotent_retry": 0.04,
}
SETTINGS: dict[str, Any] = {
    "pools": [
        {
            "id": "default",
            "engine": "mock",
            "models": ["mock"],
            "replicas": [{"id": "r0"}, {"id": "r1"}],
            "slots": 8,
            "options": {"ttft_ms": 1, "tokens_per_s": 4000},
        }
    ],
    "stream": {"attach_timeout_s": 0.5, "reconnect_grace_s": 0.1, "keepalive_s": 1},
    "queue": {"capacity": 4096},
}


class Client:
    """One simulated client: picks a behaviour, runs one job that way, notes what it saw."""

    def __init__(self, http: httpx.AsyncClient, rng: random.Random, log: Counter[str]) -> None:
        self.http, self.rng, self.log = http, rng, log
        self.job_ids: list[str] = []
        self.last_data = ""

    async def run_one(self) -> None:
        kind = self.rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        await getattr(self, kind)()
        self.log[kind] += 1

    async def submit(self, prompt: str = "churn", *, key: str | None = None, **body: Any) -> dict[str, Any]:
        payload = {"model_ref": "mock", "prompt": prompt, "max_tokens": self.rng.randint(1, 40), **body}
        headers = {"Idempotency-Key": key} if key else {}
        response = await self.http.post("/v1/tasks", json=payload, headers=headers)
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        self.job_ids.append(job["job_id"])
        return job

    async def events(self, job: dict[str, Any], stop_after: int | None = None) -> list[str]:
        """Read the stream; with `stop_after`, hang up after that many events (a disconnect)."""
        names: list[str] = []
        async with self.http.stream("GET", job["sse_url"]) as stream:
            assert stream.status_code == 200
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    self.last_data = line[5:].strip()
                if line.startswith("event:"):
                    names.append(line[6:].strip())
                    if names[-1] in ("end", "error") or len(names) == stop_after:
                        break
        return names

    async def cancel(self, job: dict[str, Any]) -> None:
        assert (await self.http.post(f"/v1/tasks/{job['job_id']}/cancel")).status_code == 204

    # -- behaviours ------------------------------------------------------------------------------
    async def read(self) -> None:
        assert (await self.events(await self.submit()))[-1] == "end"

    async def cancel_mid_stream(self) -> None:
        job = await self.submit(max_tokens=self.rng.randint(20, 200))
        await self.events(job, stop_after=self.rng.randint(1, 6))
        await self.cancel(job)
        assert (await self.events(job))[-1] == "end"

    async def disconnect_mid_stream(self) -> None:
        job = await self.submit(max_tokens=self.rng.randint(20, 200))
        await self.events(job, stop_after=self.rng.randint(1, 6))

    # The two faults below assert their outcome, so they opt out of presence: on a loaded machine a
    # reader may attach later than the short `attach_timeout_s`, and the job is then (rightly) canceled.
    async def fail_after(self) -> None:
        n = self.rng.randint(0, 5)
        job = await self.submit(
            f"[[mock fail_after={n}]]", max_tokens=n + self.rng.randint(1, 10), cancel_on_disconnect=False
        )
        assert (await self.events(job))[-1] == "error", self.last_data

    async def hang_then_cancel(self) -> None:
        job = await self.submit("[[mock hang]]")
        await self.events(job, stop_after=1)
        await self.cancel(job)
        assert (await self.events(job))[-1] == "end"

    async def hang_then_disconnect(self) -> None:
        await self.events(await self.submit("[[mock hang]]"), stop_after=1)

    async def refuse(self) -> None:
        job = await self.submit("[[mock refuse]]", cancel_on_disconnect=False)
        assert (await self.events(job))[-1] == "error", self.last_data

    async def never_read(self) -> None:
        await self.submit(max_tokens=self.rng.randint(100, 400))

    async def cancel_before_reading(self) -> None:
        job = await self.submit()
        await self.cancel(job)
        assert (await self.events(job))[-1] in ("end", "error")

    async def idempotent_retry(self) -> None:
        key = str(uuid.uuid4())
        body = {"max_tokens": 5, "seed": self.rng.randint(0, 1000)}
        first = await self.submit(key=key, **body)
        again = await self.submit(key=key, **body)
        assert again["job_id"] == first["job_id"]
        assert (await self.events(first))[-1] == "end"


async def churn(base_url: str, jobs: int, seed: int) -> tuple[list[str], Counter[str]]:
    log: Counter[str] = Counter()
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=CONCURRENCY * 2, max_keepalive_connections=CONCURRENCY * 2)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as http:
        clients = [Client(http, random.Random(rng.random()), log) for _ in range(CONCURRENCY)]
        remaining = iter(range(jobs))

        async def worker(client: Client) -> None:
            for _ in remaining:
                await client.run_one()

        try:
            async with asyncio.timeout(STALL_S):
                await asyncio.gather(*(worker(c) for c in clients))
        except TimeoutError:
            raise AssertionError(
                f"churn stalled: {sum(log.values())} of {jobs} jobs done in {STALL_S} s"
            ) from None
    return [job_id for c in clients for job_id in c.job_ids], log


def rss_mb() -> float:
    gc.collect()
    return float(psutil.Process().memory_info().rss) / 2**20


async def _snapshot(server: LoopbackServer, job_ids: list[str]) -> dict[str, Any]:
    services = server.app.state.services
    states = Counter()
    for job_id in job_ids:
        record = await services.store.get(job_id)
        states[record.state.value if record is not None else "gone"] += 1
    engines = [a for a in services.adapters.values() if isinstance(a, MockAdapter)]
    return {
        "states": states,
        "leases": await services.registry.leases.all(),
        "queued": await services.store.queued(),
        "running": services.runs.job_ids(),
        "engine_active": sum(e.stats.active for e in engines),
        "engine_started": sum(e.stats.started for e in engines),
    }


async def _tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def _purge(server: LoopbackServer) -> int:
    """Forget every finished job now, as retention would later (the log of a finished job is kept
    for `stream.retention_s` on purpose; that is not a leak)."""
    services = server.app.state.services
    forgotten: int = await services.store.purge(time.time() + services.settings.stream.retention_s + 1)
    return forgotten


def _settle(
    server: LoopbackServer, job_ids: list[str], baseline: set[asyncio.Task[Any]] | None = None
) -> dict[str, Any]:
    """Wait until the abandoned jobs (no reader, or their reader gone) are canceled by presence and,
    given a baseline, until no task beyond it is left."""
    deadline = time.monotonic() + 30
    while True:
        snapshot: dict[str, Any] = server.call(_snapshot(server, job_ids))
        extra = set() if baseline is None else server.call(_tasks()) - baseline
        done = set(snapshot["states"]) <= {"succeeded", "failed", "canceled"} and not extra
        if done or time.monotonic() > deadline:
            snapshot["extra_tasks"] = extra
            return snapshot
        time.sleep(0.2)


@pytest.mark.timeout(180)
def test_issue_7_no_leaks_under_churn(make_server: Any) -> None:
    server: LoopbackServer = make_server(**SETTINGS)
    # A warm-up first: what is created once (connection pools, metric children, caches) belongs to
    # the baseline, not to the churn.
    warm_ids, _ = asyncio.run(churn(server.base_url, WARM_UP, SEED))
    _settle(server, warm_ids)
    server.call(_purge(server))
    baseline_tasks: set[asyncio.Task[Any]] = server.call(_tasks())
    rss_start = rss_mb()

    began = time.monotonic()
    job_ids, behaviours = asyncio.run(churn(server.base_url, JOBS, SEED + 1))
    churn_s = time.monotonic() - began
    after = _settle(server, job_ids, baseline_tasks)
    print(f"churn: {JOBS} jobs in {churn_s:.1f}s, settled in {time.monotonic() - began - churn_s:.1f}s")

    assert len(set(job_ids)) == len(job_ids) - behaviours["idempotent_retry"]
    assert set(behaviours) == set(KINDS)  # every behaviour happened
    assert set(after["states"]) <= {"succeeded", "failed", "canceled"}, after["states"]
    assert {"succeeded", "failed", "canceled"} <= set(after["states"])
    assert after["leases"] == []
    assert after["queued"] == [] and after["running"] == []
    assert after["engine_active"] == 0
    assert after["engine_started"] >= JOBS // 2
    assert not after["extra_tasks"], sorted(repr(t.get_coro()) for t in after["extra_tasks"])[:10]

    assert server.call(_purge(server)) >= len(set(job_ids))
    assert server.app.state.services.store.job_count() == 0
    assert server.app.state.services.store.idempotency_count() == 0
    growth = rss_mb() - rss_start
    print(f"churn: {JOBS} jobs in {churn_s:.1f}s, {dict(after['states'])}, rss growth {growth:.1f} MiB")
    assert growth < 64, f"RSS grew by {growth:.1f} MiB over {JOBS} jobs"
