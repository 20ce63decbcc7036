"""Redis going away under running jobs, with a real redis-server: stopped (frozen) for 10 s, killed and
restarted with persistence on, killed and restarted empty. Each has the outcome docs/scaling.md
("Redis goes away") documents."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestratord.state.redis_tail import events_of
from tests.fakes.sse import Event, parse_frames
from tests.redis.conftest import Deployment, RedisServer, running_redis, start_deployment
from tests.redis.test_failover import submit
from tests.redis.test_replicas import wait_for

pytestmark = pytest.mark.redis
TOKENS_PER_S = 20
JOBS = 4
OVERRIDES: dict[str, Any] = {
    "pools": [
        {"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}], "slots": JOBS,
         "options": {"ttft_ms": 5, "tokens_per_s": TOKENS_PER_S}},
    ],
    # a claim outlives the outages below: the jobs' engines are fine, so nothing may end them
    "redis": {"lease_ttl_s": 30.0, "heartbeat_s": 2.0, "timeout_s": 1.0},
}  # fmt: skip


@dataclass(eq=False)
class Reader(threading.Thread):
    """Reads one stream to its end, noting when each event came."""

    base_url: str
    url: str
    events: list[tuple[float, Event]] = field(default_factory=list)
    failure: BaseException | None = None

    def __post_init__(self) -> None:
        super().__init__(daemon=True)

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.base_url, timeout=60) as c, c.stream("GET", self.url) as stream:
                for item in parse_frames(stream.iter_lines()):
                    if isinstance(item, Event):
                        self.events.append((time.monotonic(), item))
                        if item.event in ("end", "error"):
                            return
        except BaseException as exc:  # noqa: BLE001 - reported by the test, on its thread
            self.failure = exc

    def tokens(self, start: float = 0.0, stop: float = float("inf")) -> int:
        return sum(1 for at, e in self.events if e.event == "token" and start <= at <= stop)

    @property
    def last(self) -> Event:
        return self.events[-1][1]


def under_load(deployment: Deployment, on: list[int]) -> Iterator[tuple[dict[str, str], Reader]]:
    """`JOBS` long jobs, each read on the replicas `on`, once every reader has its first tokens."""
    with httpx.Client(base_url=deployment[0].base_url, timeout=30) as c:
        jobs = [submit(c, max_tokens=TOKENS_PER_S * 15) for _ in range(JOBS)]
    readers = [(job, Reader(deployment[i].base_url, job["sse_url"])) for job in jobs for i in on]
    for _, reader in readers:
        reader.start()
    wait_for(lambda: all(r.tokens() >= 5 for _, r in readers), timeout=30, what="every stream streams")
    yield from readers


def finished(readers: list[tuple[dict[str, str], Reader]]) -> None:
    for _, reader in readers:
        reader.join(timeout=90)
        assert not reader.is_alive(), "a stream never ended"
        assert reader.failure is None, reader.failure


def no_tracebacks(deployment: Deployment) -> None:
    for replica in deployment.replicas:
        log = replica.log_path.read_text()
        assert "Traceback" not in log and "unhandled_error" not in log, replica.log_path


def assert_whole(deployment: Deployment, job: dict[str, str], reader: Reader) -> None:
    """The stream ended well, every token once and in order, and Redis holds what the reader read,
    with the same ids (a reconnect anywhere resumes from them)."""
    events = [e for _, e in reader.events]
    assert events[-1].event == "end", events[-1]
    indices = [e.data["i"] for e in events if e.event == "token"]
    assert indices == list(range(len(indices))) and len(indices) == events[-1].data["tokens_out"]
    stored = events_of(deployment.redis.client().xrange(deployment.keys(f"log:{job['job_id']}")))
    assert [tuple(event) for event in stored] == [(e.id, e.event, e.raw) for e in events]


def test_redis_frozen_for_ten_seconds_ends_no_running_job(own_redis: RedisServer, tmp_path: Path) -> None:
    with start_deployment(own_redis, tmp_path, 1, **OVERRIDES) as one:
        readers = list(under_load(one, on=[0]))
        frozen = time.monotonic()
        own_redis.pause()  # SIGSTOP: every call to Redis hangs until redis.timeout_s
        time.sleep(10)
        own_redis.resume()
        thawed = time.monotonic()
        finished(readers)
        for job, reader in readers:
            # they kept streaming from the replica that runs them, at the engine's pace
            assert reader.tokens(frozen + 1, thawed - 1) >= TOKENS_PER_S * 8 * 0.5, reader.tokens(
                frozen, thawed
            )
            assert_whole(one, job, reader)
        assert one[0].logged("task_events_held")
        no_tracebacks(one)


def test_redis_killed_and_restarted_with_its_data_ends_no_running_job(tmp_path: Path) -> None:
    with running_redis() as redis:
        redis.extra = ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path)]
        redis.stop()
        redis.start()
        with start_deployment(redis, tmp_path, 2, **OVERRIDES) as pair:
            readers = list(under_load(pair, on=[0, 1]))
            redis.stop()  # SIGKILL: connections refused until it is back, with what it had persisted
            time.sleep(3)
            redis.start()
            finished(readers)
            for job, reader in readers:
                assert_whole(pair, job, reader)
            no_tracebacks(pair)


def test_redis_restarted_empty_ends_every_stream_with_state_lost(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    with start_deployment(own_redis, tmp_path, 2, **OVERRIDES) as pair:
        readers = list(under_load(pair, on=[0, 1]))
        own_redis.stop()
        own_redis.start()  # same port, nothing persisted
        began = time.monotonic()
        finished(readers)
        for _, reader in readers:  # on both replicas, the one running the job and the other
            lost = reader.last
            assert (lost.event, lost.data["code"], lost.data["retriable"]) == ("error", "STATE_LOST", True)
            assert [e.event for _, e in reader.events].count("error") == 1
        assert time.monotonic() - began < 30
        for job, _ in readers[::2]:  # its run learned it, stopped, and gave its slot back
            assert any(r.logged("task_state_lost", job_id=job["job_id"]) for r in pair.replicas), job
        with httpx.Client(base_url=pair[1].base_url, timeout=30) as c:
            status = c.get(readers[0][0]["status_url"])
            assert status.status_code == 404 and status.json()["code"] == "STATE_LOST", status.text
            assert "lost its data" in status.json()["message"]
            made_up = c.get("/v1/tasks/7d3c1e52-0a3e-4b7c-9f55-0c2f4f1f0e11")  # never issued
            assert made_up.status_code == 404 and made_up.json()["code"] == "NOT_FOUND"
            # the runs of the lost jobs stopped and gave their slots back: all of them serve new jobs
            again = [submit(c, max_tokens=3) for _ in range(JOBS)]
            for job in again:
                assert [e.event for e in _read(c, job["sse_url"])][-1] == "end"
        no_tracebacks(pair)


def _read(c: httpx.Client, url: str) -> list[Event]:
    with c.stream("GET", url) as stream:
        return [item for item in parse_frames(stream.iter_lines()) if isinstance(item, Event)]
