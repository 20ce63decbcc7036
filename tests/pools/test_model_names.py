"""Any model name a pool can list is served, on either backend: names holding `@`, `,`, `/` and `:`
(engines name models `org/name`, `name:tag`, LoRA adapters `base@adapter`), for jobs that may run on
every pool serving the model and for jobs restricted to some pools (pinned, or fitting only some)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.pools.test_pools_e2e import leases

NAMES = ("m@v1", "org/llama-3:8b@lora,a", "a,b", "weird@@name:/,")


def pools() -> list[dict[str, Any]]:
    small = {"id": "small", "engine": "mock", "models": [*NAMES, "mock"], "ctx_max": 64}
    large = {"id": "large", "engine": "mock", "models": [*NAMES], "ctx_max": 4096}
    return [{**p, "replicas": [{"id": "r0"}]} for p in (small, large)]


def run_each_name(server: LoopbackServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for name in NAMES:
            bodies = [
                {},  # every pool serving the model may take it
                {"placement": {"mode": "pin", "pin_pool_id": "small"}},  # restricted by a pin
                {"max_tokens": 200},  # restricted by its size: only `large` fits it
            ]
            for extra in bodies:
                body = {"model_ref": name, "prompt": "hi", "max_tokens": 3, **extra}
                response = client.post("/v1/tasks", json=body)
                assert response.status_code == 202, (name, extra, response.text)
                events = read_events(client, response.json()["sse_url"])
                assert events[-1].event == "end", (name, extra, events[-1])
                status = client.get(response.json()["status_url"]).json()
                assert status["state"] == "succeeded" and status["model_ref"] == name
                if "placement" in extra:
                    assert status["pool_id"] == "small"
                if "max_tokens" in extra:
                    assert status["pool_id"] == "large"
    assert leases(server) == 0


def test_any_model_name_runs_on_the_embedded_backend(make_server: Callable[..., LoopbackServer]) -> None:
    run_each_name(make_server(pools=pools()))
