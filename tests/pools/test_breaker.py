"""A replica whose /health is fine while its generations fail: its breaker opens from the failed
requests, health probes do not close it, /v1/pools says why, and every job still ends, on the replica
that works."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events


def test_failing_generations_open_the_breaker_whatever_health_says(
    make_server: Callable[..., LoopbackServer],
) -> None:
    pool = {
        "id": "p", "engine": "mock", "models": ["m"], "slots": 1,
        "replicas": [{"id": "sick", "options": {"refuse": True}}, {"id": "well"}],
        "options": {"ttft_ms": 0, "tokens_per_s": 1000},
    }  # fmt: skip
    server = make_server(pools=[pool], health_interval_s=0.1, breaker={"failures": 2, "backoff_s": 60})
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        ends = []
        for _ in range(6):
            job = client.post("/v1/tasks", json={"model_ref": "m", "prompt": "hi", "max_tokens": 2}).json()
            ends.append(read_events(client, job["sse_url"])[-1].event)
        assert ends == ["end"] * 6  # the failures moved to the other replica, unseen by clients
        time.sleep(0.5)  # five health probes, all passing: the breaker stays open
        sick = client.get("/v1/pools").json()["pools"][0]["replicas"][0]
        assert sick["id"] == "sick" and sick["ready"] is False
        breaker = sick["breaker"]
        assert breaker["state"] == "open" and "refused" in breaker["reason"]
        assert 55_000 < breaker["half_opens_in_ms"] <= 60_000 and breaker["failures"] == 2
        well = client.get("/v1/pools").json()["pools"][0]["replicas"][1]
        assert well["breaker"] == {"state": "closed", "reason": None, "half_opens_in_ms": None, "failures": 0}
