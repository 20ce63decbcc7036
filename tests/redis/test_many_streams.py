"""Hundreds of open streams on a Redis deployment: every one ends with its terminal event, and the
Redis connections stay a small constant per replica (readers wait in one shared read per replica,
not on a connection each; redis-py's default pool of 100 used to run out at about 200 streams)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.fakes.sse import parse_frames
from tests.redis.conftest import RedisServer, start_deployment

pytestmark = pytest.mark.redis
STREAMS = 400
MAX_TOKENS = 8
REQUEST_POOL = 16  # redis.max_connections per replica, small on purpose


def connected(redis: RedisServer) -> int:
    return int(redis.client().info("clients")["connected_clients"])


async def read_to_the_end(client: httpx.AsyncClient, sse_url: str) -> list[str]:
    names: list[str] = []
    async with client.stream("GET", sse_url) as stream:
        assert stream.status_code == 200, await stream.aread()
        lines: list[str] = []
        async for line in stream.aiter_lines():
            lines.append(line)
        for item in parse_frames(iter(lines)):
            if not isinstance(item, str):
                names.append(item.event)
    return names


def test_hundreds_of_streams_all_end_on_few_connections(own_redis: RedisServer, tmp_path: Path) -> None:
    pool = {"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}],
            "slots": STREAMS, "options": {"ttft_ms": 5, "tokens_per_s": 4}}  # fmt: skip
    overrides: dict[str, Any] = {
        "pools": [pool],
        "queue": {"capacity": STREAMS * 2},
        "limits": {"max_connections": STREAMS * 3},
        "redis": {"key_prefix": "many:", "lease_ttl_s": 6.0, "heartbeat_s": 1.0, "timeout_s": 3.0,
                  "max_connections": REQUEST_POOL},
    }  # fmt: skip
    peak = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not sampling.is_set():
            try:
                peak = max(peak, connected(own_redis))
            except redis.RedisError:  # Redis is being stopped: the test is over
                return
            time.sleep(0.05)

    with start_deployment(own_redis, tmp_path, 2, **overrides) as deployment:
        before = connected(own_redis)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        async def run() -> list[list[str]]:
            limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=STREAMS + 10)
            posting = asyncio.Semaphore(32)  # the streams are what is many here, not the POSTs at once
            async with (
                httpx.AsyncClient(base_url=deployment[0].base_url, timeout=60, limits=limits) as a,
                httpx.AsyncClient(base_url=deployment[1].base_url, timeout=60, limits=limits) as b,
            ):
                body = {"model_ref": "mock", "prompt": "hi", "max_tokens": MAX_TOKENS,
                        "cancel_on_disconnect": False}  # fmt: skip

                async def post() -> httpx.Response:
                    async with posting:
                        return await a.post("/v1/tasks", json=body)

                posted = await asyncio.gather(*(post() for _ in range(STREAMS)))
                assert all(p.status_code == 202 for p in posted), {p.status_code for p in posted}
                return await asyncio.gather(*(read_to_the_end(b, p.json()["sse_url"]) for p in posted))

        try:
            streams = asyncio.run(run())
        finally:
            sampling.set()
            sampler.join()
        logs = "".join(replica.log_path.read_text(errors="replace") for replica in deployment.replicas)
    ends = [s[-1] if s else "nothing" for s in streams]
    assert ends.count("end") == STREAMS, {e: ends.count(e) for e in set(ends)}
    assert all(s.count("token") == MAX_TOKENS for s in streams)
    # Two replicas: at most the request pool, the shared read and the subscription each (and the
    # sampler's own connection), however many streams are open.
    assert peak - before <= 2 * (REQUEST_POOL + 2) + 1, (before, peak)
    assert "MaxConnectionsError" not in logs and "Traceback" not in logs
