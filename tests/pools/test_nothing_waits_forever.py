"""Nothing waits for ever: a job whose model no replica can serve ends (retriable, naming why) once
`queue.unready_limit_s` has passed, and admission then answers 503 at once; a job that waited longer
than its class may (`queue.max_wait_s`) ends the same way."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import httpx

from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events

JOB = {"model_ref": "m", "prompt": "hi", "max_tokens": 2}


def test_a_model_no_replica_can_serve_ends_its_jobs_then_is_refused_at_once(
    make_server: Callable[..., LoopbackServer],
) -> None:
    pool = {
        "id": "p",
        "engine": "mock",
        "models": ["m"],
        "replicas": [{"id": "r0"}],
        "options": {"ready": False},
    }
    server = make_server(pools=[pool], health_interval_s=0.1, queue={"unready_limit_s": 2})
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        posted = client.post("/v1/tasks", json=JOB)
        assert posted.status_code == 202, posted.text  # not yet down for 2 s: it may wait
        began = time.monotonic()
        error = read_events(client, posted.json()["sse_url"])[-1]
        assert time.monotonic() - began < 5  # ended, not waiting for ever
        assert error.event == "error" and error.data["code"] == "POOL_UNAVAILABLE", error.data
        assert error.data["retriable"] is True
        assert "queue.unready_limit_s" in error.data["message"] and "mock not ready" in error.data["message"]
        refused = client.post("/v1/tasks", json=JOB)
        assert refused.status_code == 503 and refused.json()["code"] == "POOL_UNAVAILABLE"
        assert int(refused.headers["retry-after"]) >= 1
        assert "GET /v1/pools says why" in refused.json()["message"]


def test_a_job_past_its_classs_longest_wait_ends(make_server: Callable[..., LoopbackServer]) -> None:
    pool = {"id": "p", "engine": "mock", "models": ["m"], "replicas": [{"id": "r0"}], "slots": 1}
    server = make_server(pools=[pool], queue={"max_wait_s": {"batch": 0.5}})
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        holder = client.post("/v1/tasks", json={**JOB, "prompt": "[[mock hang]] hold the slot"}).json()
        read_events(client, holder["sse_url"], stop_after=1)  # it started: the only slot is taken
        interactive = client.post("/v1/tasks", json=JOB).json()
        batch = client.post("/v1/tasks", json={**JOB, "priority": "batch"}).json()
        error = read_events(client, batch["sse_url"])[-1]
        assert error.event == "error" and error.data["code"] == "POOL_UNAVAILABLE", error.data
        assert "waited 0.5 s" in error.data["message"] and "queue.max_wait_s" in error.data["message"]
        assert "without a slot serving 'm' coming free" in error.data["message"], error.data
        # the interactive class has no limit: still waiting, and it runs once the slot frees
        assert client.get(f"/v1/tasks/{interactive['job_id']}").json()["state"] == "queued"
        assert client.post(f"/v1/tasks/{holder['job_id']}/cancel").status_code == 204
        assert read_events(client, interactive["sse_url"])[-1].event == "end"


def test_a_job_past_its_limit_with_slots_free_is_told_the_dispatchers_had_not_reached_it(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """More jobs admitted than the dispatchers could start in time (a surge that loads the replicas):
    the error says so, not that no slot came free."""
    pool = {"id": "p", "engine": "mock", "models": ["m"], "replicas": [{"id": "r0"}], "slots": 2}
    server = make_server(pools=[pool], queue={"max_wait_s": {"batch": 0.5}})
    services = server.app.state.services
    rounds = services.dispatcher._placer.exclusive()
    server.call(rounds.acquire())  # the dispatch rounds wait here: the job stays queued, its slots free
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = client.post("/v1/tasks", json={**JOB, "priority": "batch"}).json()
        time.sleep(0.7)
        assert server.call(services.dispatcher._housekeeper.end_stuck()) == {job["job_id"]}

        async def release() -> None:
            rounds.release()

        server.call(release())
        error = read_events(client, job["sse_url"])[-1]
    assert error.event == "error" and error.data["code"] == "POOL_UNAVAILABLE", error.data
    message = error.data["message"]
    assert "waited 0.5 s" in message and "slots serving 'm' free" in message, message
    assert "the dispatchers" in message and "had not reached it" in message, message


def test_a_batch_job_kept_off_the_slots_held_back_is_told_no_slot_came_free(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """`queue.holdback`: the one free slot is kept for interactive work, so none came free for it."""
    pool = {"id": "p", "engine": "mock", "models": ["m"], "replicas": [{"id": "r0"}], "slots": 2}
    server = make_server(pools=[pool], queue={"max_wait_s": {"batch": 0.5}, "holdback": 0.5})
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        holder = client.post("/v1/tasks", json={**JOB, "prompt": "[[mock hang]] hold a slot"}).json()
        read_events(client, holder["sse_url"], stop_after=1)  # one slot taken, the other held back
        batch = client.post("/v1/tasks", json={**JOB, "priority": "batch"}).json()
        error = read_events(client, batch["sse_url"])[-1]
        assert client.post(f"/v1/tasks/{holder['job_id']}/cancel").status_code == 204
    assert error.event == "error" and error.data["code"] == "POOL_UNAVAILABLE", error.data
    assert "without a slot serving 'm' coming free" in error.data["message"], error.data


def test_a_ready_pool_that_names_its_model_otherwise_is_never_taken_for_down(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """Its engine lists the model as `engine_model`; clients name it as the pool's model. Idle for longer
    than `unready_limit_s`, it still takes jobs."""
    pool = {"id": "p", "engine": "mock", "models": ["public"], "engine_model": "m",
            "replicas": [{"id": "r0"}]}  # fmt: skip
    server = make_server(pools=[pool], health_interval_s=0.1, queue={"unready_limit_s": 1})
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        time.sleep(1.5)  # idle past the limit
        posted = client.post("/v1/tasks", json={**JOB, "model_ref": "public"})
        assert posted.status_code == 202, posted.text
        assert read_events(client, posted.json()["sse_url"])[-1].event == "end"


def test_a_housekeeping_pass_reads_the_queue_once_and_publishes_nothing_for_a_job_it_ended(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """With `queue.max_wait_s` set, the pass's limit check and its positions share one read of the
    queue (a read of a thousand entries is a thousand decoded, on every replica, every tick); the job
    the check ends gets one error, its last event, and the job still waiting runs."""
    pool = {"id": "p", "engine": "mock", "models": ["m"], "replicas": [{"id": "r0"}], "slots": 1}
    server = make_server(pools=[pool], queue={"max_wait_s": {"batch": 0.5}})
    services = server.app.state.services
    housekeeper = services.dispatcher._housekeeper
    rounds = services.dispatcher._placer.exclusive()
    server.call(rounds.acquire())  # the dispatch rounds wait here: the jobs stay queued
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        old = client.post("/v1/tasks", json={**JOB, "priority": "batch"}).json()
        time.sleep(0.7)  # past the batch class's limit
        young = client.post("/v1/tasks", json=JOB).json()  # interactive: no limit
        reads = []
        store = services.store
        read = store.queued

        async def counted() -> object:
            reads.append(1)
            return await read()

        store.queued = counted
        try:
            server.call(housekeeper.run_once())
        finally:
            store.queued = read

        async def release() -> None:
            rounds.release()

        server.call(release())
        ended = read_events(client, old["sse_url"])
        waited = read_events(client, young["sse_url"])
    assert len(reads) == 1
    assert [e.event for e in ended][-1] == "error" and ended[-1].data["code"] == "POOL_UNAVAILABLE"
    assert [e.event for e in ended].count("error") == 1
    assert waited[-1].event == "end"


def test_a_job_a_dispatcher_took_after_the_queue_was_read_runs_on(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """The limit check ends the jobs of the queue as its pass read it, one by one; a job a dispatcher
    took meanwhile (on another replica, or here while the check was ending others) started in time and
    runs on, not failed with its first tokens out. Only a job still in the queue is ended."""
    pool = {"id": "p", "engine": "mock", "models": ["m"], "replicas": [{"id": "r0"}], "slots": 2}
    server = make_server(pools=[pool], queue={"max_wait_s": {"batch": 5}})
    services = server.app.state.services
    rounds = services.dispatcher._placer.exclusive()
    server.call(rounds.acquire())  # the dispatch rounds wait here: the job stays queued
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = client.post(
            "/v1/tasks", json={**JOB, "prompt": "[[mock hang]] run on", "priority": "batch"}
        ).json()
        # the queue as a pass read it, the job already past its class's limit by then
        read = [replace(e, enqueued_at=e.enqueued_at - 10) for e in server.call(services.store.queued())]
        assert [e.job_id for e in read] == [job["job_id"]]

        async def release() -> None:
            rounds.release()

        server.call(release())
        started = read_events(client, job["sse_url"], stop_after=1)  # a dispatcher took and started it
        assert started[0].event == "started", started
        assert server.call(services.dispatcher._housekeeper.end_stuck(read)) == set()
        assert client.get(f"/v1/tasks/{job['job_id']}").json()["state"] == "running"
        assert client.post(f"/v1/tasks/{job['job_id']}/cancel").status_code == 204
        events = read_events(client, job["sse_url"])
    assert "error" not in [e.event for e in events]
    assert events[-1].event == "end" and events[-1].data["stop_reason"] == "canceled", events[-1]
