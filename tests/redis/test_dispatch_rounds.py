"""On a shared backend a dispatch round takes several queued jobs on one look at the queue, in one call
(each is a round trip), as far as the free slots go."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from orchestratord.state import redis as redis_store
from orchestratord.state.redis import RedisStore
from orchestratord.state.redis_leases import RedisLeases
from tests.conftest import mock_pool
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.redis.conftest import RedisServer, prefix

pytestmark = pytest.mark.redis


def test_a_backlog_is_taken_several_jobs_to_a_look_as_far_as_the_free_slots_go(
    make_server: Callable[..., LoopbackServer], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ("look", []) and ("take", the jobs taken in one call)
    calls: list[tuple[str, list[str]]] = []
    look, take = RedisStore.pending, RedisStore.take_several

    async def counted_look(self: RedisStore, *args: Any) -> Any:
        calls.append(("look", []))
        return await look(self, *args)

    async def counted_take(self: RedisStore, *args: Any, **kwargs: Any) -> Any:
        entries = await take(self, *args, **kwargs)
        calls.append(("take", [e.job_id for e in entries]))
        return entries

    # the leases in flight at once: a round asks them together, one round trip for them all
    in_flight, most_in_flight = [0], [0]
    acquire = RedisLeases.acquire

    async def counted_acquire(self: RedisLeases, *args: Any) -> Any:
        in_flight[0] += 1
        most_in_flight[0] = max(most_in_flight[0], in_flight[0])
        try:
            return await acquire(self, *args)
        finally:
            in_flight[0] -= 1

    monkeypatch.setattr(RedisStore, "pending", counted_look)
    monkeypatch.setattr(RedisStore, "take_several", counted_take)
    monkeypatch.setattr(RedisLeases, "acquire", counted_acquire)
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
    # one look, then the four jobs the pool's four free slots take, in admission order (one tenant,
    # one class), in one call, and no fifth: the call spent a slot for each
    assert calls[:2] == [("look", []), ("take", [j["job_id"] for j in jobs[:4]])], calls
    assert most_in_flight[0] == 4, "the four leases of the first round asked at once"


def test_an_idle_replica_asks_redis_for_the_slots_once_a_tick_and_never_for_the_positions_lead(
    make_server: Callable[..., LoopbackServer], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    look, held_each, lead = RedisStore.pending, RedisLeases.held_each, RedisStore.lead

    async def counted_look(self: RedisStore, *args: Any) -> Any:
        calls.append("look")
        return await look(self, *args)

    async def counted_held(self: RedisLeases, *args: Any) -> Any:
        calls.append("slots")
        return await held_each(self, *args)

    async def counted_lead(self: RedisStore, *args: Any, **kwargs: Any) -> Any:
        calls.append("lead")
        return await lead(self, *args, **kwargs)

    monkeypatch.setattr(RedisStore, "pending", counted_look)
    monkeypatch.setattr(RedisLeases, "held_each", counted_held)
    monkeypatch.setattr(RedisStore, "lead", counted_lead)
    server = make_server(state_url=redis_server.url, redis={"key_prefix": prefix()}, pools=[mock_pool()])
    calls.clear()
    time.sleep(1.5)  # about six ticks with nothing queued
    looks = calls.count("look")
    assert looks >= 4, calls
    # housekeeping's pass reads the slots for the gauges; the tick's look at an empty queue does not
    # read them again, and with nothing queued no replica needs to lead the positions' publishing
    assert calls.count("slots") <= looks + 1, calls
    assert "lead" not in calls, calls
    body = {"model_ref": "mock", "prompt": "x", "max_tokens": 2}
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = client.post("/v1/tasks", json=body).json()
        assert read_events(client, job["sse_url"])[-1].event == "end"


def test_a_replica_that_does_not_lead_the_positions_still_forgets_the_promises_of_jobs_gone(
    make_server: Callable[..., LoopbackServer], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def never_leads(self: RedisStore, *args: Any, **kwargs: Any) -> bool:
        return False  # another replica publishes the positions

    monkeypatch.setattr(RedisStore, "lead", never_leads)
    server = make_server(state_url=redis_server.url, redis={"key_prefix": prefix()}, pools=[mock_pool()])
    outlook = server.app.state.services.outlook

    async def promise() -> None:  # a job admitted here, then started on another replica
        outlook.promised("started-elsewhere", 1000)

    server.call(promise())
    deadline = time.monotonic() + 5.0
    while "started-elsewhere" in outlook._promised and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "started-elsewhere" not in outlook._promised  # else each such job stays for good


def test_the_queue_positions_of_a_pass_go_to_redis_in_one_call(
    make_server: Callable[..., LoopbackServer], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Housekeeping's `metrics` events (each waiting job's place, once a second) go in one call a pass,
    not one a job: a call each held a loaded replica's pass, and its dispatcher, up for seconds."""
    single: list[str] = []  # the events appended one call each: a place, or another event's name
    batches: list[list[str]] = []  # the jobs of each call for several
    append, append_each = RedisStore.append, RedisStore.append_each

    async def counted_append(self: RedisStore, job_id: str, name: str, data: Any) -> Any:
        single.append("place" if name == "metrics" and "queue_position" in data else name)
        return await append(self, job_id, name, data)

    async def counted_each(self: RedisStore, events: Any) -> int:
        batches.append([job_id for job_id, _, _ in events])
        return await append_each(self, events)

    monkeypatch.setattr(RedisStore, "append", counted_append)
    monkeypatch.setattr(RedisStore, "append_each", counted_each)
    server = make_server(
        state_url=redis_server.url, redis={"key_prefix": prefix()}, pools=[mock_pool(slots=1)]
    )
    body = {"model_ref": "mock", "max_tokens": 2, "cancel_on_disconnect": False}
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        hung = client.post("/v1/tasks", json={**body, "prompt": "[[mock hang]] hold the only slot"}).json()
        waiting = [client.post("/v1/tasks", json={**body, "prompt": "x"}).json() for _ in range(8)]
        deadline = time.monotonic() + 10.0
        ids = {job["job_id"] for job in waiting}
        while not ids <= {j for b in batches for j in b} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ids <= {j for b in batches for j in b}, batches
        assert max(len(b) for b in batches) > 1, "the jobs due in one pass together"
        assert "place" not in single, "no place appended a call at a time"
        assert client.post(f"/v1/tasks/{hung['job_id']}/cancel").status_code == 204
        for job in waiting:
            events = read_events(client, job["sse_url"])
            assert events[-1].event == "end"
    places = [e.data["queue_position"] for e in events if e.event == "metrics" and "queue_position" in e.data]
    assert places and places[0] == len(waiting) - 1, "the last job's stream carries its place as published"


def test_a_slot_freed_elsewhere_wakes_a_replica_only_if_a_slot_held_its_last_look_back(
    make_server: Callable[..., LoopbackServer],
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    # A finish anywhere, with jobs queued, tells every replica that a slot came free. A replica whose
    # last look found only jobs reserved for the replicas that admitted them, with slots to spare,
    # passes it by (before, each such wake-up cost each idle replica a look and a take); one that a
    # pool without a slot to spare held back looks again.
    monkeypatch.setattr(redis_store, "RESERVED_MS", 60_000)  # the job A admits stays A's meanwhile
    looks: list[str] = []  # the instance of each look at the queue
    look = RedisStore.pending

    async def counted_look(self: RedisStore, *args: Any) -> Any:
        looks.append(self.owner)
        return await look(self, *args)

    monkeypatch.setattr(RedisStore, "pending", counted_look)
    settings = {
        "state_url": redis_server.url,
        "redis": {"key_prefix": prefix()},
        "pools": [mock_pool(slots=3, options={"ttft_ms": 1, "tokens_per_s": 20})],
    }
    a, b = make_server(**settings), make_server(**settings)
    a.call(a.app.state.services.dispatcher._placer.exclusive().acquire())  # A takes nothing
    dispatcher, store = b.app.state.services.dispatcher, b.app.state.services.store
    dispatcher._config = dataclasses.replace(dispatcher._config, tick_s=30.0)  # B looks when woken
    publisher = redis.Redis.from_url(redis_server.url)
    request.addfinalizer(publisher.close)

    def looks_after(message: str) -> int:
        """B's looks at the queue within 0.6 s of `message` on the wake channel."""
        before = looks.count(store.owner)
        publisher.publish(store._signals.wake_channel, message)
        time.sleep(0.6)
        return looks.count(store.owner) - before

    body = {"model_ref": "mock", "prompt": "x", "max_tokens": 2000, "cancel_on_disconnect": False}
    with (
        httpx.Client(base_url=a.base_url, timeout=30) as via_a,
        httpx.Client(base_url=b.base_url, timeout=30) as via_b,
    ):
        assert via_a.post("/v1/tasks", json=body).status_code == 202  # queued, reserved for A
        time.sleep(0.5)  # B's last short tick has passed
        assert looks_after("queued-job") >= 1, "a job queued: B looks, and finds it reserved for A"
        assert looks_after("freed:ended-job") == 0, "three slots free: a fourth changes nothing for B"
        running = [via_b.post("/v1/tasks", json=body).json() for _ in range(2)]  # B's own
        deadline = time.monotonic() + 10
        while any(via_b.get(j["status_url"]).json()["state"] != "running" for j in running):
            assert time.monotonic() < deadline, "B's jobs did not start"
            time.sleep(0.05)
        time.sleep(0.3)  # B's round after starting them looked once more: one slot left, kept for A's
        # job, the fair next one: a slot freed would let B take a job behind it
        assert looks_after("freed:ended-job") >= 1, "no slot to spare: a slot freed may serve B"
