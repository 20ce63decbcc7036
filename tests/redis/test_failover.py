"""Failures of a shared deployment: a replica killed mid-stream, and Redis going away and coming back."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.sse import Event, parse_frames, read_events
from tests.redis.conftest import Deployment, RedisServer, start_deployment
from tests.redis.test_replicas import instant, wait_for

pytestmark = pytest.mark.redis
LEASE_TTL_S = 2.0


def submit(c: httpx.Client, **body: object) -> dict[str, str]:
    payload = {"model_ref": "mock", "prompt": "hello", "max_tokens": 3, **body}
    response = c.post("/v1/tasks", json=payload)
    assert response.status_code == 202, response.text
    job: dict[str, str] = response.json()
    return job


def read_until_cut(c: httpx.Client, url: str, kill: Callable[[], None], after_tokens: int) -> list[Event]:
    """Read a stream; once `after_tokens` tokens arrived call `kill`, then read until the connection dies."""
    events: list[Event] = []
    try:
        with c.stream("GET", url) as stream:
            for item in parse_frames(stream.iter_lines()):
                if isinstance(item, str):
                    continue
                events.append(item)
                if sum(e.event == "token" for e in events) == after_tokens:
                    kill()
                assert item.event not in ("end", "error"), "the job was not supposed to end here"
    except httpx.HTTPError:
        pass  # the replica died under the stream
    return events


@pytest.fixture
def pair(redis_server: RedisServer, tmp_path: Path) -> Iterator[Deployment]:
    overrides = {
        "pools": [
            {"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}], "slots": 1,
             "options": {"ttft_ms": 5, "tokens_per_s": 10}},
        ],
        "redis": {"lease_ttl_s": LEASE_TTL_S},
    }  # fmt: skip
    with start_deployment(redis_server, tmp_path, 2, **overrides) as deployment:
        yield deployment


def test_a_killed_replicas_jobs_are_finished_or_run_elsewhere_and_nothing_is_lost(pair: Deployment) -> None:
    clients = [httpx.Client(base_url=r.base_url, timeout=30) for r in pair.replicas]
    try:
        long = submit(clients[0], max_tokens=400)
        wait_for(
            lambda: any(r.logged("task_started", job_id=long["job_id"]) for r in pair.replicas),
            what="the long job starts",
        )
        owner = 0 if pair[0].logged("task_started", job_id=long["job_id"]) else 1
        survivor = 1 - owner
        queued = [submit(clients[owner]) for _ in range(2)]  # the only slot is busy: they wait
        killed_at: list[float] = []

        def kill() -> None:
            pair[owner].proc.send_signal(signal.SIGKILL)
            killed_at.append(time.monotonic())

        before = read_until_cut(clients[owner], long["sse_url"], kill, after_tokens=3)
        assert killed_at and [e.event for e in before][:1] == ["started"]
        last_id = before[-1].id or ""
        after = read_events(clients[survivor], long["sse_url"], headers={"Last-Event-ID": last_id})
        ended_within = time.monotonic() - killed_at[0]

        assert after[-1].event == "error", [e.event for e in after]
        assert after[-1].data["code"] == "WORKER_RESET" and after[-1].data["retriable"] is True
        assert ended_within < LEASE_TTL_S + 8, f"reaped {ended_within:.1f} s after the kill"
        whole = read_events(clients[survivor], long["sse_url"])
        assert [e.id for e in before + after] == [e.id for e in whole], "nothing lost, nothing repeated"
        tokens = [e for e in whole if e.event == "token"]
        assert [e.data["i"] for e in tokens] == list(range(len(tokens))) and len(tokens) >= 3

        wait_for(
            lambda: all(
                clients[survivor].get(j["status_url"]).json()["state"] == "succeeded" for j in queued
            ),
            timeout=30,
            what="the dead replica's queued jobs run on the survivor",
        )
        finished = [clients[survivor].get(j["status_url"]).json() for j in queued]
        assert all(instant(s["started_at"]) > instant(s["created_at"]) for s in finished)
        wait_for(lambda: pair.redis.client().hlen(pair.keys("leases")) == 0, what="no slot stays leased")
        assert pair[survivor].logged("task_reaped", job_id=long["job_id"], action="reset")
    finally:
        for c in clients:
            c.close()


def test_redis_going_away_gives_503_and_the_service_recovers_by_itself(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    overrides = {"redis": {"timeout_s": 1.0}}
    with start_deployment(own_redis, tmp_path, 2, **overrides) as pair:
        a, b = (httpx.Client(base_url=r.base_url, timeout=30) for r in pair.replicas)
        with a, b:
            job = submit(a)
            assert read_events(b, job["sse_url"])[-1].event == "end"

            own_redis.stop()
            assert_unavailable(a, b, job)
            own_redis.start()  # same port, empty: nothing was persisted
            wait_for(lambda: ready(a) and ready(b), timeout=30, what="both replicas are ready again")
            again = submit(b)
            assert read_events(a, again["sse_url"])[-1].event == "end"

            own_redis.pause()  # unreachable without a closed connection: answers still come in time
            began = time.monotonic()
            paused = a.post("/v1/tasks", json={"model_ref": "mock", "prompt": "x", "max_tokens": 1})
            waited = time.monotonic() - began
            began = time.monotonic()
            readiness = b.get("/readyz")
            readiness_took = time.monotonic() - began
            own_redis.resume()
            assert paused.status_code == 503 and paused.headers["Retry-After"], paused.text
            # within redis.timeout_s (1 s here), as documented, and a little for the request itself
            assert waited < 1.5, f"the request waited {waited:.1f} s"
            assert readiness.status_code == 503 and readiness_took < 1.5, readiness_took
            wait_for(lambda: ready(a) and ready(b), timeout=30, what="ready after the pause")
            assert read_events(b, submit(a)["sse_url"])[-1].event == "end"
        for replica in pair.replicas:
            log = replica.log_path.read_text()
            assert "Traceback" not in log and "unhandled_error" not in log, replica.log_path


def assert_unavailable(a: httpx.Client, b: httpx.Client, job: dict[str, str]) -> None:
    began = time.monotonic()
    answers = [
        a.post("/v1/tasks", json={"model_ref": "mock", "prompt": "x", "max_tokens": 1}),
        b.get(job["status_url"]),
        a.get(job["sse_url"]),
        b.post(f"/v1/tasks/{job['job_id']}/cancel"),
    ]
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "STATE_UNAVAILABLE" and answer.json()["retriable"] is True
        assert int(answer.headers["Retry-After"]) >= 1
    assert time.monotonic() - began < 10, "503s come at once, not after a hang"
    for c in (a, b):
        readiness = c.get("/readyz")
        assert readiness.status_code == 503 and readiness.json()["checks"]["state_backend"] is False
        assert c.get("/healthz").status_code == 200


def ready(c: httpx.Client) -> bool:
    return c.get("/readyz").status_code == 200
