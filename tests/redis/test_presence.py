"""Cancel-on-disconnect is the deployment's, not the admitting replica's: a job nobody reads is canceled
on time by a surviving replica after the one that admitted it died (SIGKILL, so no shutdown hook runs),
and the readers of a replica that died are counted out once its heartbeat expires."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.sse import read_events
from tests.redis.conftest import Deployment, RedisServer, start_deployment

pytestmark = pytest.mark.redis
ATTACH_TIMEOUT_S, GRACE_S, LEASE_TTL_S = 3.0, 1.0, 2.0
POOL = {"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}], "slots": 1,
        "options": {"ttft_ms": 1, "tokens_per_s": 20}}  # fmt: skip


@pytest.fixture
def pair(redis_server: RedisServer, tmp_path: Path) -> Iterator[Deployment]:
    stream = {"attach_timeout_s": ATTACH_TIMEOUT_S, "reconnect_grace_s": GRACE_S}
    with start_deployment(redis_server, tmp_path, 2, pools=[POOL], stream=stream) as deployment:
        yield deployment


def submit(client: httpx.Client, **body: Any) -> dict[str, Any]:
    payload = {"model_ref": "mock", "prompt": "x", "max_tokens": 2000, **body}
    answer = client.post("/v1/tasks", json=payload)
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()
    return job


def state(client: httpx.Client, job: dict[str, Any]) -> str:
    return str(client.get(job["status_url"]).json()["state"])


def until(seconds: float, check: Callable[[], bool], what: str) -> float:
    """Seconds until `check` held (it must within `seconds`)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.05)
    return time.monotonic() - start


def occupy_the_slot(client: httpx.Client) -> dict[str, Any]:
    """A long job that nobody needs to read holds the only slot, so the jobs after it stay queued (if
    it runs on the replica that is killed, it is reaped and one of them runs on the survivor)."""
    blocker = submit(client, cancel_on_disconnect=False)
    until(5, lambda: state(client, blocker) == "running", "the blocker runs")
    return blocker


def readers(deployment: Deployment, job: dict[str, Any]) -> int:
    return int(deployment.redis.client().hget(deployment.keys(f"job:{job['job_id']}"), "readers") or 0)


def assert_canceled(client: httpx.Client, job: dict[str, Any]) -> None:
    assert state(client, job) == "canceled"
    last = read_events(client, job["sse_url"])[-1]
    assert last.event == "end" and last.data["stop_reason"] == "canceled", last


def test_a_job_nobody_reads_is_canceled_on_time_after_the_replica_that_admitted_it_died(
    pair: Deployment,
) -> None:
    a_replica = pair[0]
    with (
        httpx.Client(base_url=a_replica.base_url, timeout=10) as a,
        httpx.Client(base_url=pair[1].base_url, timeout=10) as b,
    ):
        occupy_the_slot(b)
        job = submit(a, cancel_on_disconnect=True)
        a_replica.proc.kill()  # SIGKILL: no shutdown hook, no timer survives in A
        a_replica.proc.wait()
        took = until(ATTACH_TIMEOUT_S + 1.5, lambda: state(b, job) == "canceled", "B cancels the unread job")
        assert took > ATTACH_TIMEOUT_S - 0.5, f"canceled after {took:.2f} s, before its attach timeout"
        assert_canceled(b, job)
        assert pair[1].logged("task_abandoned", job_id=job["job_id"], reason="no_reader")
    print(f"canceled by the survivor {took:.2f} s after admission (attach timeout {ATTACH_TIMEOUT_S} s)")


def test_the_readers_of_a_dead_replica_are_counted_out_and_its_unread_job_canceled(
    pair: Deployment,
) -> None:
    a_replica = pair[0]
    with (
        httpx.Client(base_url=a_replica.base_url, timeout=10) as a,
        httpx.Client(base_url=pair[1].base_url, timeout=10) as b,
    ):
        occupy_the_slot(b)
        watched = submit(b, cancel_on_disconnect=True)
        kept = submit(b, cancel_on_disconnect=False)
        for job in (watched, kept):  # read only through A, until A dies
            threading.Thread(target=read_until_cut, args=(a, job["sse_url"]), daemon=True).start()
        until(5, lambda: readers(pair, watched) == 1 and readers(pair, kept) == 1, "A's readers attached")
        time.sleep(ATTACH_TIMEOUT_S + 0.5)  # past the attach timeout: the readers keep them alive
        assert state(b, watched) != "canceled"
        a_replica.proc.kill()
        a_replica.proc.wait()
        took = until(
            LEASE_TTL_S + GRACE_S + 1.5, lambda: state(b, watched) == "canceled", "B cancels the unread job"
        )
        assert took > GRACE_S, f"canceled {took:.2f} s after A died: the reconnect grace was not given"
        assert_canceled(b, watched)
        assert pair[1].logged("task_abandoned", job_id=watched["job_id"], reason="client_disconnect")
        assert readers(pair, kept) == 0, "the dead replica's reader is counted out"
        assert state(b, kept) in ("queued", "running"), "a job without cancel_on_disconnect runs on"
    print(f"canceled by the survivor {took:.2f} s after the death of its readers' replica")


def read_until_cut(client: httpx.Client, url: str) -> None:
    try:
        with client.stream("GET", url, timeout=httpx.Timeout(10, read=None)) as response:
            for _ in response.iter_lines():
                pass
    except httpx.HTTPError:
        pass  # the replica died under the reader
