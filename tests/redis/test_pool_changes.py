"""Drain, undrain and reload are deployment-wide: an operator's request to one replica takes effect on
every replica within a second, including the jobs the others run and the jobs posted through them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.sse import read_events
from tests.redis.conftest import Deployment, RedisServer, start_deployment

pytestmark = pytest.mark.redis
POOL = {"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}, {"id": "r1"}],
        "slots": 2, "options": {"ttft_ms": 1, "tokens_per_s": 20, "loadable": "mock,mock-v2"}}  # fmt: skip


@pytest.fixture
def pair(redis_server: RedisServer, tmp_path: Path) -> Iterator[Deployment]:
    with start_deployment(redis_server, tmp_path, 2, pools=[POOL]) as deployment:
        yield deployment


def within(seconds: float, check: Callable[[], bool], what: str) -> float:
    """How long `check` took to hold (it must within `seconds`)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"{what} not within {seconds} s")
        time.sleep(0.02)
    return time.monotonic() - start


def pool_view(client: httpx.Client) -> dict[str, Any]:
    pool: dict[str, Any] = client.get("/v1/pools").json()["pools"][0]
    return pool


def test_a_drain_through_one_replica_drains_every_replica(pair: Deployment) -> None:
    with (
        httpx.Client(base_url=pair[0].base_url, timeout=30) as a,
        httpx.Client(base_url=pair[1].base_url, timeout=30) as b,
    ):
        body = {"model_ref": "mock", "prompt": "x", "max_tokens": 2000, "cancel_on_disconnect": False}
        long_jobs = [b.post("/v1/tasks", json=body).json() for _ in range(3)]
        within(
            5, lambda: all(b.get(j["status_url"]).json()["state"] == "running" for j in long_jobs), "running"
        )
        assert a.post("/v1/pools/default/drain", json={"deadline_ms": 300}).status_code == 202
        took = within(1.0, lambda: pool_view(b)["health"]["draining"], "replica B sees the drain")
        late = b.post("/v1/tasks", json={**body, "max_tokens": 1})
        assert late.status_code == 503 and late.json()["code"] == "POOL_UNAVAILABLE", late.text
        for job in long_jobs:  # whichever replica runs it ends it at the deadline
            events = read_events(a, job["sse_url"])
            assert events[-1].event == "error" and "drained" in events[-1].data["message"]

        assert b.post("/v1/pools/default/undrain").status_code == 200
        within(1.0, lambda: not pool_view(a)["health"]["draining"], "replica A sees the undrain")
        assert (
            read_events(a, a.post("/v1/tasks", json={**body, "max_tokens": 2}).json()["sse_url"])[-1].event
            == "end"
        )
    print(f"drain seen by the other replica after {took * 1000:.0f} ms")


def test_a_reload_through_one_replica_reloads_every_replica(pair: Deployment) -> None:
    with (
        httpx.Client(base_url=pair[0].base_url, timeout=30) as a,
        httpx.Client(base_url=pair[1].base_url, timeout=30) as b,
    ):
        done = a.post("/v1/pools/default/reload", json={"new_model_ref": "mock-v2"})
        assert done.status_code == 200, done.text
        within(1.0, lambda: pool_view(b)["models"] == ["mock-v2"], "replica B serves the new model")
        old = b.post("/v1/tasks", json={"model_ref": "mock", "prompt": "x", "max_tokens": 1})
        assert old.status_code == 400, old.text
        job = b.post("/v1/tasks", json={"model_ref": "mock-v2", "prompt": "x", "max_tokens": 2}).json()
        assert read_events(b, job["sse_url"])[-1].event == "end"
