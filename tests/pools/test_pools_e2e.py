"""Pools through the whole service: failover, leases on every path, engine capacity, drain, reload."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.api.helpers import state_of, submit, wait_for
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events


def pool(pid: str = "default", replicas: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    return {"id": pid, "engine": "mock", "models": ["mock"], "replicas": replicas or [{"id": "r0"}], **kw}


def stats(server: LoopbackServer, pid: str, rid: str) -> Any:
    return server.app.state.services.adapters[(pid, rid)].stats


def leases(server: LoopbackServer) -> int:
    return len(server.call(server.app.state.services.registry.leases.all()))


def test_failure_before_first_token_fails_over_to_another_replica(
    make_server: Callable[..., LoopbackServer],
) -> None:
    replicas = [{"id": "a", "options": {"refuse": True}}, {"id": "b"}]
    server = make_server(pools=[pool(replicas=replicas)])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = submit(client, max_tokens=5)
        events = read_events(client, job["sse_url"])
        status = client.get(job["status_url"]).json()
    assert events[-1].event == "end" and events[-1].data["tokens_out"] == 5
    assert [e.event for e in events].count("error") == 0
    assert stats(server, "default", "b").completed == 1
    assert (status["pool_id"], status["replica_id"]) == ("default", "b"), "the record names who served it"
    assert [e.data["replica_id"] for e in events if e.event == "metrics" and "replica_id" in e.data] == [
        "a",
        "b",
    ]
    assert leases(server) == 0


def test_failure_after_first_token_is_a_retriable_worker_reset(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(pools=[pool(replicas=[{"id": "a"}, {"id": "b"}])])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = submit(client, prompt="[[mock fail_after=3]]", max_tokens=10)
        events = read_events(client, job["sse_url"])
        status = client.get(job["status_url"]).json()
    assert [e.event for e in events if e.event == "token"] == ["token"] * 3
    assert events[-1].event == "error"
    assert events[-1].data["code"] == "WORKER_RESET" and events[-1].data["retriable"] is True
    assert events[-1].data["engine"] == "mock"
    assert status["state"] == "failed" and status["error"]["code"] == "WORKER_RESET"
    assert leases(server) == 0


def test_every_replica_failing_before_the_first_token_ends_in_an_error(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(pools=[pool(options={"refuse": True}, replicas=[{"id": "a"}, {"id": "b"}])])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        events = read_events(client, submit(client)["sse_url"])
    assert events[-1].event == "error" and events[-1].data["code"] == "POOL_UNAVAILABLE"
    assert events[-1].data["retriable"] is True
    assert leases(server) == 0


def test_leases_return_to_zero_on_every_path(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(
        pools=[pool(options={"tokens_per_s": 100}, slots=8)], stream={"reconnect_grace_s": 0.2}
    )
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        ended = submit(client, max_tokens=3)
        read_events(client, ended["sse_url"])
        failed = submit(client, prompt="[[mock fail_after=1]]")
        read_events(client, failed["sse_url"])
        canceled = submit(client, max_tokens=2000)
        read_events(client, canceled["sse_url"], stop_after=3)
        client.post(f"/v1/tasks/{canceled['job_id']}/cancel")
        disconnected = submit(client, max_tokens=2000)
        read_events(client, disconnected["sse_url"], stop_after=3)
        wait_for(lambda: state_of(client, disconnected["job_id"]) == "canceled")
        hung = submit(client, prompt="[[mock hang]]")
        wait_for(lambda: state_of(client, hung["job_id"]) == "running")
        client.post(f"/v1/tasks/{hung['job_id']}/cancel")
    wait_for(lambda: leases(server) == 0)
    assert stats(server, "default", "r0").active == 0


def test_capacity_comes_from_the_engine_when_it_reports_it(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(pools=[pool(slots=8, options={"slots": 2, "tokens_per_s": 50})])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        jobs = [submit(client, max_tokens=10, cancel_on_disconnect=False) for _ in range(6)]
        health = client.get("/v1/pools/default/health").json()
        for job in jobs:
            wait_for(lambda job=job: state_of(client, job["job_id"]) == "succeeded")
    assert health["slots_total"] == 2
    assert stats(server, "default", "r0").max_active == 2


def test_drain_refuses_new_work_and_ends_stragglers_at_the_deadline(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(pools=[pool(options={"tokens_per_s": 20})])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        long_job = submit(client, max_tokens=2000, cancel_on_disconnect=False)
        wait_for(lambda: state_of(client, long_job["job_id"]) == "running")
        drained = client.post("/v1/pools/default/drain", json={"deadline_ms": 300})
        assert drained.status_code == 202 and drained.json()["running"] == 1
        health = client.get("/v1/pools/default/health").json()
        assert health["draining"] is True and health["ready"] is False
        late = client.post("/v1/tasks", json={"model_ref": "mock", "prompt": "x", "max_tokens": 1})
        events = read_events(client, long_job["sse_url"])
    assert events[-1].event == "error" and events[-1].data["retriable"] is True
    assert "drained" in events[-1].data["message"]
    assert late.status_code == 503 and late.json()["code"] == "POOL_UNAVAILABLE"
    wait_for(lambda: leases(server) == 0)


def test_reload_is_atomic(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(pools=[pool(options={"loadable": "mock,mock-v2"})])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        refused = client.post("/v1/pools/default/reload", json={"new_model_ref": "llama-70b"})
        assert refused.status_code == 409 and refused.json()["code"] == "CONFLICT"
        assert "old model stays" in refused.json()["message"]
        assert read_events(client, submit(client)["sse_url"])[-1].event == "end"
        done = client.post("/v1/pools/default/reload", json={"new_model_ref": "mock-v2"})
        assert done.status_code == 200 and done.json()["models"] == ["mock-v2"]
        assert (
            client.post("/v1/tasks", json={"model_ref": "mock", "prompt": "x", "max_tokens": 1}).status_code
            == 400
        )
        events = read_events(client, submit(client, model_ref="mock-v2")["sse_url"])
    assert events[-1].event == "end"


def test_pool_endpoints_answer_404_for_unknown_pools(client: httpx.Client) -> None:
    assert client.get("/v1/pools/nope/health").status_code == 404
    assert client.post("/v1/pools/nope/drain", json={"deadline_ms": 1}).json()["code"] == "NOT_FOUND"
    listing = client.get("/v1/pools").json()["pools"]
    assert [p["id"] for p in listing] == ["default"] and listing[0]["health"]["ready"] is True
