"""Full-queue policies over HTTP: an evicted job is never lost in silence.

Its stream ends with `error` QUEUE_FULL_DROP_LRU (retriable, with a retry hint) and its status says
`failed` with that code; it never reaches the engine."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.api.helpers import HANG, admit, engine_started, post, wait_for
from tests.conftest import mock_pool
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events


def occupy_the_slot(server: LoopbackServer, client: httpx.Client) -> str:
    job_id = admit(client, prompt=HANG)
    wait_for(lambda: client.get(f"/v1/tasks/{job_id}").json()["state"] == "running")
    return job_id


def assert_evicted(client: httpx.Client, job_id: str, policy: str) -> None:
    events = read_events(client, f"/v1/tasks/{job_id}/stream")
    assert events[0].event == "started"
    assert all(e.event != "token" for e in events)
    last = events[-1]
    assert last.event == "error"
    assert last.data["code"] == "QUEUE_FULL_DROP_LRU"
    assert last.data["retriable"] is True
    assert last.data["retry_after_ms"] >= 1
    assert policy in last.data["message"]
    status = client.get(f"/v1/tasks/{job_id}").json()
    assert status["state"] == "failed"
    assert status["error"]["code"] == "QUEUE_FULL_DROP_LRU"


def test_drop_lru_evicts_the_oldest_batch_job_else_the_oldest(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(queue={"capacity": 2, "full_policy": "drop-lru"}, pools=[mock_pool(slots=1)])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        hog = occupy_the_slot(server, client)
        interactive = admit(client)
        batch = admit(client, priority="batch")
        newcomer = admit(client)  # the queue is full: the batch job goes, though it is the newest
        assert_evicted(client, batch, "drop-lru")
        assert client.get(f"/v1/tasks/{interactive}").json()["state"] == "queued"
        last = admit(client)  # no batch job left: the oldest job goes
        assert_evicted(client, interactive, "drop-lru")
        assert client.post(f"/v1/tasks/{hog}/cancel").status_code == 204
        for job_id in (newcomer, last):
            assert read_events(client, f"/v1/tasks/{job_id}/stream")[-1].event == "end"
        assert engine_started(server) == 3  # the hog and the two survivors; never the evicted


def test_shed_low_priority_evicts_the_newest_batch_job_or_rejects(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(
        queue={"capacity": 2, "full_policy": "shed-low-priority"}, pools=[mock_pool(slots=1)]
    )
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        hog = occupy_the_slot(server, client)
        older = admit(client, priority="batch")
        newer = admit(client, priority="batch")
        refused = post(client, priority="batch")  # no lower class to shed for a batch job
        assert refused.status_code == 429
        assert refused.json()["policy_label"] == "shed-low-priority"
        assert refused.json()["code"] == "ADMISSION_REJECT"
        assert int(refused.headers["Retry-After"]) >= 1
        first = admit(client)
        assert_evicted(client, newer, "shed-low-priority")
        second = admit(client)
        assert_evicted(client, older, "shed-low-priority")
        assert post(client).status_code == 429  # only interactive jobs left: nothing to shed
        assert client.post(f"/v1/tasks/{hog}/cancel").status_code == 204
        for job_id in (first, second):
            assert read_events(client, f"/v1/tasks/{job_id}/stream")[-1].event == "end"
        wait_for(lambda: engine_started(server) == 3)
