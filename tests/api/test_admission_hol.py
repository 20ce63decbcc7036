"""No head-of-line blocking across models, and cancel of a queued job removing it at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.api.helpers import wait_for
from tests.conftest import mock_pool
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events

HANG = "[[mock hang]] hold the slot until canceled"


def post(client: httpx.Client, **body: Any) -> dict[str, Any]:
    payload = {"model_ref": "mock", "prompt": "hello", "max_tokens": 2, "cancel_on_disconnect": False}
    response = client.post("/v1/tasks", json={**payload, **body})
    assert response.status_code == 202, response.text
    data: dict[str, Any] = response.json()
    return data


def state(client: httpx.Client, job: dict[str, Any]) -> str:
    value: str = client.get(job["status_url"]).json()["state"]
    return value


def test_a_saturated_model_does_not_hold_back_another(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(
        pools=[
            mock_pool(id="big", models=["big"], slots=1),
            mock_pool(id="small", models=["small"], slots=1),
        ]
    )
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        hog = post(client, model_ref="big", prompt=HANG)
        wait_for(lambda: state(client, hog) == "running")
        waiting_big = [post(client, model_ref="big") for _ in range(5)]
        small = [post(client, model_ref="small") for _ in range(3)]
        assert small[0]["predicted_start_ms"] == 0
        for job in small:  # all finish while the big model's jobs, queued earlier, still wait
            assert read_events(client, job["sse_url"])[-1].event == "end"
        assert [state(client, job) for job in waiting_big] == ["queued"] * 5
        assert client.post(f"/v1/tasks/{hog['job_id']}/cancel").status_code == 204
        for job in waiting_big:
            assert read_events(client, job["sse_url"])[-1].event == "end"


def test_cancel_removes_a_queued_job_at_once(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(pools=[mock_pool(slots=1)])
    store = server.app.state.services.store
    engine = server.app.state.services.adapters[("default", "r0")]
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        hog = post(client, prompt=HANG)
        wait_for(lambda: state(client, hog) == "running")
        queued = [post(client) for _ in range(20)]
        target = queued[7]
        assert client.post(f"/v1/tasks/{target['job_id']}/cancel").status_code == 204
        # Already gone from the queue when the 204 arrives, and already canceled.
        ids = {e.job_id for e in server.call(store.queued())}
        assert target["job_id"] not in ids and len(ids) == 19
        assert state(client, target) == "canceled"
        events = read_events(client, target["sse_url"])
        assert events[-1].event == "end" and events[-1].data["stop_reason"] == "canceled"
        # The jobs behind it moved up by one.
        behind = queued[8]
        assert server.call(store.place(behind["job_id"])).ahead == behind["queue_position"] - 1
        assert client.post(f"/v1/tasks/{hog['job_id']}/cancel").status_code == 204
        for job in queued[-3:]:
            assert read_events(client, job["sse_url"])[-1].event == "end"
        assert engine.stats.started == 20  # the hog and 19 survivors; never the canceled job
