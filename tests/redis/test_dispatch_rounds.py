"""On a shared backend a dispatch round takes several queued jobs on one look at the queue (each look is
a round trip), counting the slots it leased meanwhile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from orchestratord.state.redis import RedisStore
from tests.conftest import mock_pool
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.redis.conftest import RedisServer, prefix

pytestmark = pytest.mark.redis


def test_a_backlog_is_taken_several_jobs_to_a_look_as_far_as_the_free_slots_go(
    make_server: Callable[..., LoopbackServer], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str | None]] = []  # ("look", None) and ("take", the job taken or None)
    look, take = RedisStore.pending, RedisStore.take

    async def counted_look(self: RedisStore, *args: Any) -> Any:
        calls.append(("look", None))
        return await look(self, *args)

    async def counted_take(self: RedisStore, *args: Any) -> Any:
        entry = await take(self, *args)
        calls.append(("take", None if entry is None else entry.job_id))
        return entry

    monkeypatch.setattr(RedisStore, "pending", counted_look)
    monkeypatch.setattr(RedisStore, "take", counted_take)
    server = make_server(
        state_url=redis_server.url, redis={"key_prefix": prefix()}, pools=[mock_pool(slots=4)]
    )
    round_lock = server.app.state.services.dispatcher._placer.exclusive()
    server.call(round_lock.acquire())  # the dispatch rounds wait here: the jobs below stay queued
    body = {"model_ref": "mock", "prompt": "x", "max_tokens": 2, "cancel_on_disconnect": False}
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        jobs = [client.post("/v1/tasks", json=body).json() for _ in range(6)]
        assert all(j["job_id"] for j in jobs)
        calls.clear()

        async def release() -> None:
            round_lock.release()

        server.call(release())
        ended = [read_events(client, job["sse_url"])[-1].event for job in jobs]
    assert ended == ["end"] * 6
    assert calls[0] == ("look", None), calls
    first_round = calls[1 : calls.index(("look", None), 1)]
    taken = [job_id for _, job_id in first_round]
    # one look, then the four jobs the pool's four free slots take, in admission order (one tenant,
    # one class), and no fifth: the round counted the slots it leased
    assert taken == [j["job_id"] for j in jobs[:4]] + [None], calls
