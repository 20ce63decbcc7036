"""Only a run that ended well is a service time: a canceled run's time in its slot says nothing of
how long a job takes, and must not move the predictions of the jobs behind it."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events

HANG = {"model_ref": "m", "prompt": "[[mock hang]] hold the slot", "max_tokens": 2}


def test_a_canceled_run_is_not_a_service_time(make_server: Callable[..., LoopbackServer]) -> None:
    pool = {"id": "p", "engine": "mock", "models": ["m"], "replicas": [{"id": "r0"}], "slots": 1}
    server = make_server(pools=[pool])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        first = client.post("/v1/tasks", json=HANG).json()
        read_events(client, first["sse_url"], stop_after=1)
        time.sleep(2.0)  # two seconds in the slot, then canceled
        assert client.post(f"/v1/tasks/{first['job_id']}/cancel").status_code == 204
        assert read_events(client, first["sse_url"])[-1].data["stop_reason"] == "canceled"
        holder = client.post("/v1/tasks", json=HANG).json()
        read_events(client, holder["sse_url"], stop_after=1)
        waiting = client.post("/v1/tasks", json={**HANG, "prompt": "hi"}).json()
        # Nothing ended well yet: the prediction rests on the running job's age (about 0), not on the
        # canceled run's 2 s.
        assert waiting["predicted_start_ms"] is not None and waiting["predicted_start_ms"] < 1000, waiting
        client.post(f"/v1/tasks/{holder['job_id']}/cancel")
        assert read_events(client, waiting["sse_url"])[-1].event == "end"
