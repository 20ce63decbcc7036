"""On a shared queue the 429 `max-wait` check also runs where the job is queued (create.lua), against
the queue as it is then: other replicas admit between one replica's reads of the queue, and a burst on
several replicas could otherwise pass a queue that only their sum makes too long."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from orchestratord.core.queue import Admitted, Place, Rejected
from orchestratord.state.redis import RedisStore
from tests.api.helpers import post
from tests.conftest import mock_pool
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.redis.conftest import RedisServer, prefix
from tests.redis.test_store import entry, record

pytestmark = pytest.mark.redis
MakeStore = Callable[..., RedisStore]


async def test_a_job_with_more_ahead_than_it_may_have_is_refused_and_nothing_is_kept(
    make_store: MakeStore,
) -> None:
    store = make_store()
    for job_id in ("j0", "j1", "j2"):
        assert isinstance(await store.create(record(job_id), entry(job_id), most_ahead=5), Admitted)
    refused = await store.create(record("j3"), entry("j3"), most_ahead=2)
    assert isinstance(refused, Rejected) and refused.reason == "max_wait", refused
    assert refused.place == Place(3), "three jobs for its route ahead of it"
    assert await store.get("j3") is None
    assert [e.job_id for e in await store.queued()] == ["j0", "j1", "j2"]
    admitted = await store.create(record("j4"), entry("j4"), most_ahead=3)
    assert isinstance(admitted, Admitted) and admitted.place == Place(3)
    assert isinstance(await store.create(record("j5"), entry("j5")), Admitted), "no limit: any place"


def test_a_replica_refuses_with_429_a_job_the_shared_queue_finds_too_far_back(
    make_server: Callable[..., LoopbackServer], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server(
        state_url=redis_server.url,
        redis={"key_prefix": prefix()},
        pools=[mock_pool(slots=1)],
        queue={"max_wait_s": {"interactive": 5}},
    )
    services = server.app.state.services
    round_lock = services.dispatcher._placer.exclusive()
    server.call(round_lock.acquire())  # nothing is taken: the jobs below stay queued
    body = {"model_ref": "mock", "prompt": "x", "max_tokens": 2, "cancel_on_disconnect": False}
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        queued = [client.post("/v1/tasks", json=body).json()["job_id"] for _ in range(2)]
        # The pace measured allows one job ahead; this replica's own prediction knows no service
        # time yet and admits: the queue, where the job would be third, refuses it.
        monkeypatch.setattr(services.outlook, "most_ahead", lambda limit_ms: 1)
        refused = post(client)
        assert refused.status_code == 429, refused.text
        error = refused.json()
        assert error["code"] == "ADMISSION_REJECT" and error["policy_label"] == "max-wait", error
        assert "2 jobs ahead" in error["message"] and "queue.max_wait_s: 5 s" in error["message"], error
        assert int(refused.headers["retry-after"]) >= 1
        assert sorted(e.job_id for e in server.call(services.store.queued())) == sorted(queued)
        monkeypatch.setattr(services.outlook, "most_ahead", lambda limit_ms: 2)
        third = post(client)
        assert third.status_code == 202, third.text

        async def release() -> None:
            round_lock.release()

        server.call(release())
        ended = [
            read_events(client, f"/v1/tasks/{job}/stream")[-1].event
            for job in [*queued, third.json()["job_id"]]
        ]
    assert ended == ["end"] * 3
