"""A replica stopped (SIGTERM, as in a rolling upgrade) closes the streams it serves of jobs that go
on without it, so that it exits on time; their readers resume through another replica from their last
event id and lose nothing."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.fakes.sse import Event, parse_frames, read_events
from tests.redis.conftest import RedisServer, start_deployment
from tests.redis.test_replicas import HANG, submit

pytestmark = pytest.mark.redis
GRACE_S = 1.0


def test_a_stopping_replica_closes_its_streams_of_jobs_that_go_on_and_they_resume_elsewhere(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    pools = [
        {"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}], "slots": 1,
         "options": {"ttft_ms": 5, "tokens_per_s": 40}},
    ]  # fmt: skip
    with (
        start_deployment(redis_server, tmp_path, 2, pools=pools, shutdown_grace_s=GRACE_S) as deployment,
        httpx.Client(base_url=deployment[0].base_url, timeout=30) as a,
        httpx.Client(base_url=deployment[1].base_url, timeout=30) as b,
    ):
        holder = submit(a, prompt=HANG, max_tokens=100)  # the only slot, for as long as it is held
        job = submit(a, max_tokens=200)  # queued behind it; five seconds once it runs
        seen: list[Event] = []
        with a.stream("GET", job["sse_url"]) as response:
            assert response.status_code == 200
            deployment[0].proc.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            for item in parse_frames(response.iter_lines()):  # until the body ends
                if isinstance(item, Event):
                    seen.append(item)
        closed_after = time.monotonic() - stopped
        assert not [e for e in seen if e.event in ("end", "error")], "the job goes on: no terminal event"
        # The drain (the held job, if replica A runs it, ends after the grace), then half a second.
        assert closed_after < GRACE_S + 3.0, closed_after
        assert deployment[0].proc.wait(timeout=10) == 0

        assert b.post(f"/v1/tasks/{holder['job_id']}/cancel").status_code in (204, 409)
        resume = {"Last-Event-ID": seen[-1].id} if seen and seen[-1].id else {}
        rest = read_events(b, job["sse_url"], headers=resume)
        assert rest[-1].event == "end", rest[-1]
        ids = [e.id for e in seen + rest]
        assert len(ids) == len(set(ids)), "resumed without repeating an event"
        tokens = [e.data["i"] for e in seen + rest if e.event == "token"]
        assert tokens == list(range(200))
