"""Deadlines over HTTP: refused at admission when the prediction misses them, expired in the queue
with `error` DEADLINE_UNMET and never sent to the engine, and earlier deadlines first."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.api.helpers import HANG, admit, engine_started, post, wait_for
from tests.conftest import mock_pool
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events


def test_a_deadline_the_prediction_misses_is_refused_at_admission(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(pools=[mock_pool(slots=1, options={"ttft_ms": 1000})])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        read_events(client, f"/v1/tasks/{admit(client)}/stream")  # measures a ~1 s service time
        running = admit(client)
        wait_for(lambda: client.get(f"/v1/tasks/{running}").json()["state"] == "running")
        for _ in range(3):
            admit(client)
        # Four jobs ahead on one slot of ~1 s each: a start within 500 ms cannot be met.
        refused = post(client, deadline_ms=500)
        assert refused.status_code == 400
        body = refused.json()
        assert body["code"] == "DEADLINE_UNMET" and body["retriable"] is False
        assert "predicted start" in body["message"] and "500 ms" in body["message"]
        queued_before = len(server.call(server.app.state.services.store.queued()))
        assert queued_before == 3  # nothing was stored for the refused job
        # A deadline the prediction meets is admitted, and its predicted start is within it.
        generous = post(client, deadline_ms=60_000)
        assert generous.status_code == 202
        assert 0 < generous.json()["predicted_start_ms"] <= 60_000


def test_an_interactive_deadline_is_not_refused_for_batch_jobs_it_will_pass(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(pools=[mock_pool(slots=1, options={"ttft_ms": 1000})])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        read_events(client, f"/v1/tasks/{admit(client)}/stream")
        running = admit(client)
        wait_for(lambda: client.get(f"/v1/tasks/{running}").json()["state"] == "running")
        for _ in range(8):
            admit(client, priority="batch")
        # Eight batch jobs queued, but interactive goes 8:1 ahead of them: one batch job at most is
        # expected before it, so a 3 s deadline is met (counting all nine jobs would predict ~9 s).
        admitted = post(client, deadline_ms=3000)
        assert admitted.status_code == 202
        assert admitted.json()["predicted_start_ms"] <= 3000
        assert admitted.json()["queue_position"] <= 1


def test_a_queued_job_past_its_deadline_ends_with_an_error_and_never_starts(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(pools=[mock_pool(slots=1)])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        hog = admit(client, prompt=HANG)
        wait_for(lambda: engine_started(server) == 1)
        late = admit(client, deadline_ms=400)
        events = read_events(client, f"/v1/tasks/{late}/stream")
        assert events[0].event == "started"
        assert events[-1].event == "error"
        assert events[-1].data["code"] == "DEADLINE_UNMET"
        assert events[-1].data["retriable"] is False
        assert not [e for e in events if e.event == "token"]
        status = client.get(f"/v1/tasks/{late}").json()
        assert status["state"] == "failed" and status["error"]["code"] == "DEADLINE_UNMET"
        assert status["started_at"] is None
        # The slot frees up: the expired job still never reaches the engine.
        assert client.post(f"/v1/tasks/{hog}/cancel").status_code == 204
        after = admit(client)
        assert read_events(client, f"/v1/tasks/{after}/stream")[-1].event == "end"
        assert engine_started(server) == 2  # the hog and `after`


def test_earlier_deadlines_go_first_within_a_class(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(pools=[mock_pool(slots=1)])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        hog = admit(client, prompt=HANG)
        wait_for(lambda: engine_started(server) == 1)
        no_deadline = admit(client)
        later = admit(client, deadline_ms=60_000)
        sooner = admit(client, deadline_ms=30_000)
        assert client.post(f"/v1/tasks/{hog}/cancel").status_code == 204
        for job_id in (no_deadline, later, sooner):
            assert read_events(client, f"/v1/tasks/{job_id}/stream")[-1].event == "end"
        started = {
            name: client.get(f"/v1/tasks/{job_id}").json()["started_at"]
            for name, job_id in (("none", no_deadline), ("later", later), ("sooner", sooner))
        }
        assert started["sooner"] < started["later"] < started["none"]
