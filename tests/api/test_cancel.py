"""Cancel is race-free: after the 204 no token follows, queued jobs never start, slots come back."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx

from tests.api.helpers import state_of, submit, wait_for
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import Event, parse_frames


def _mock(server: LoopbackServer) -> Any:
    return server.app.state.services.adapters[("default", "r0")]


def _leases(server: LoopbackServer) -> int:
    return len(server.call(server.app.state.services.registry.leases.all()))


def test_cancel_running_job_stops_tokens_and_the_engine(make_server: Callable[..., LoopbackServer]) -> None:
    """Tokens already on the wire when the cancel lands may still arrive; none the engine makes after the
    204 may. So: read the status right after the 204, and check every token against it and the `end`."""
    server = make_server(pools=[{**_pool(), "options": {"tokens_per_s": 50}}])
    events: list[Event] = []
    after_cancel: dict[str, Any] = {}
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = submit(client, max_tokens=3000)
        with client.stream("GET", job["sse_url"]) as stream:
            for item in parse_frames(stream.iter_lines()):  # to the end of the response, not just `end`
                if isinstance(item, str):
                    continue
                events.append(item)
                if sum(e.event == "token" for e in events) == 5 and not after_cancel:
                    assert client.post(f"/v1/tasks/{job['job_id']}/cancel").status_code == 204
                    after_cancel.update(client.get(job["status_url"]).json())
        assert client.post(f"/v1/tasks/{job['job_id']}/cancel").status_code == 204  # idempotent
        assert state_of(client, job["job_id"]) == "canceled"
    assert after_cancel["state"] == "canceled"
    assert [e.event for e in events].count("end") == 1 and events[-1].event == "end", "nothing follows end"
    end = events[-1].data
    assert end["stop_reason"] == "canceled"
    indices = [e.data["i"] for e in events if e.event == "token"]
    assert indices == list(range(len(indices))) and len(indices) == end["tokens_out"]
    assert all(i < end["tokens_out"] for i in indices)
    assert all(i < after_cancel["tokens_out"] for i in indices), "a token was made after the 204"
    assert after_cancel["tokens_out"] == end["tokens_out"]  # the count froze at the 204
    wait_for(lambda: _mock(server).stats.canceled == 1 and _mock(server).stats.active == 0)
    wait_for(lambda: _leases(server) == 0)


def test_cancel_queued_job_never_starts(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(pools=[{**_pool(), "slots": 1, "options": {"tokens_per_s": 20}}])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        busy = submit(client, max_tokens=1000)
        queued = submit(client, max_tokens=5)
        assert queued["queue_position"] == 0 and queued["predicted_start_ms"] > 0
        assert state_of(client, queued["job_id"]) == "queued"
        assert client.post(f"/v1/tasks/{queued['job_id']}/cancel").status_code == 204
        client.post(f"/v1/tasks/{busy['job_id']}/cancel")
        status = client.get(queued["status_url"]).json()
        assert status["state"] == "canceled" and status["started_at"] is None and status["pool_id"] is None
    assert _mock(server).stats.started == 1


def test_concurrent_cancels_and_readers_agree(make_server: Callable[..., LoopbackServer]) -> None:
    """Two readers and a cancel racing: both readers see the same single terminal event, no token after."""
    server = make_server(pools=[{**_pool(), "options": {"tokens_per_s": 200}}])
    results: list[list[Event]] = []
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = submit(client, max_tokens=3000)

        def read() -> None:
            with httpx.Client(base_url=server.base_url, timeout=30) as own:
                with own.stream("GET", job["sse_url"]) as stream:
                    got = [i for i in parse_frames(stream.iter_lines()) if not isinstance(i, str)]
                results.append(got)

        readers = [threading.Thread(target=read) for _ in range(2)]
        for r in readers:
            r.start()
        wait_for(lambda: client.get(job["status_url"]).json()["tokens_out"] >= 10)
        client.post(f"/v1/tasks/{job['job_id']}/cancel")
        for r in readers:
            r.join(20)
    assert len(results) == 2
    assert [e.raw for e in results[0]] == [e.raw for e in results[1]]
    assert [e.event for e in results[0]].count("end") == 1 and results[0][-1].event == "end"


def _pool() -> dict[str, Any]:
    return {"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}]}
