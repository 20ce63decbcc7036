"""Every replica predicts from the same measurements and sees the jobs the others run (issue 16):
asked about the same queue, two replicas give the same predicted start."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.sse import read_events
from tests.redis.conftest import RedisServer, start_deployment
from tests.redis.test_failover import submit
from tests.redis.test_replicas import wait_for

pytestmark = pytest.mark.redis
TOKENS_PER_S = 50


def queued(c: httpx.Client) -> list[dict[str, Any]]:
    answer = c.get("/v1/tasks", params={"state": "queued"})
    assert answer.status_code == 200, answer.text
    jobs: list[dict[str, Any]] = answer.json()["tasks"]
    return jobs


def test_two_replicas_predict_the_same_start_for_the_same_queue(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    overrides = {
        "pools": [
            {"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}], "slots": 1,
             "options": {"ttft_ms": 5, "tokens_per_s": TOKENS_PER_S}},
        ],
    }  # fmt: skip
    with start_deployment(redis_server, tmp_path, 2, **overrides) as pair:
        a, b = (httpx.Client(base_url=r.base_url, timeout=30) for r in pair.replicas)
        with a, b:
            for c in (a, b, a, b):  # each replica measures a few runs of its own
                assert read_events(c, submit(c, max_tokens=10)["sse_url"])[-1].event == "end"
            long = submit(a, max_tokens=TOKENS_PER_S * 6)  # holds the one slot for about 6 s
            wait_for(lambda: a.get(long["status_url"]).json()["state"] == "running", what="the long job runs")
            waiting = submit(b, max_tokens=10)
            time.sleep(2.5)  # both replicas have exchanged what they measured and run
            seen = {}
            for name, c in (("a", a), ("b", b)):
                (job,) = [j for j in queued(c) if j["job_id"] == waiting["job_id"]]
                seen[name] = job["predicted_start_ms"]
            # the long job has ~3.5 s of its 300 tokens left, at the rate both replicas measured
            assert all(isinstance(ms, int) and 1500 < ms < 6000 for ms in seen.values()), seen
            assert abs(seen["a"] - seen["b"]) < 600, seen  # the same queue, the same answer (±exchange lag)
            a.post(f"/v1/tasks/{long['job_id']}/cancel")
