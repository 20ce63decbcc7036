"""Fairness by tokens, wired end to end: a job is charged its estimate (prompt + max_tokens) when it is
dispatched and settled with the real count (the engine's prompt tokens + tokens generated) at its end;
and over HTTP, two tenants sharing one slot are served by their weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.api.helpers import wait_for
from tests.conftest import mock_pool
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events

ALPHA = {"Authorization": "Bearer alpha-secret-key-0123456789"}
BETA = {"Authorization": "Bearer beta-secret-key-0123456789"}
KEYS = [
    {"key": "alpha-secret-key-0123456789", "tenant": "alpha"},
    {"key": "beta-secret-key-0123456789", "tenant": "beta"},
]


def post(client: httpx.Client, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    payload = {"model_ref": "mock", "prompt": "hello", "max_tokens": 2, "cancel_on_disconnect": False}
    response = client.post("/v1/tasks", json={**payload, **body}, headers=headers or {})
    assert response.status_code == 202, response.text
    data: dict[str, Any] = response.json()
    return data


def test_a_job_is_settled_with_its_real_token_count(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(queue={"fairness_unit": "tokens"})
    queue = server.app.state.services.store.queue
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        # Asks for up to 400 tokens, but the engine ends after 3: its flow pays for 3, not 400.
        prompt = "[[mock eos_after=3]] four words of prompt"
        events = read_events(client, post(client, prompt=prompt, max_tokens=400)["sse_url"])
        assert events[-1].data["tokens_out"] == 3
        prompt_tokens = len(prompt.split())  # what the mock engine reports
        weight = 8.0  # the default tenant's interactive flow
        wait_for(lambda: abs(queue.flow_tag("default", "interactive") - (prompt_tokens + 3) / weight) < 1e-9)


def test_by_requests_nothing_is_settled(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server()
    queue = server.app.state.services.store.queue
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        read_events(client, post(client, prompt="[[mock eos_after=1]] hi", max_tokens=400)["sse_url"])
        wait_for(lambda: len(server.app.state.services.runs) == 0)
        assert queue.flow_tag("default", "interactive") == 1 / 8.0


def test_two_tenants_share_a_slot_by_their_weights(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(
        auth={"keys": KEYS},
        tenants=[{"id": "alpha", "weight": 3}, {"id": "beta", "weight": 1}],
        pools=[mock_pool(slots=1, options={"ttft_ms": 1, "tokens_per_s": 1000})],
    )
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        hog = post(client, ALPHA, prompt="[[mock hang]] hold the slot")
        wait_for(lambda: client.get(hog["status_url"], headers=ALPHA).json()["state"] == "running")
        jobs = [(post(client, ALPHA), ALPHA) for _ in range(12)] + [
            (post(client, BETA), BETA) for _ in range(12)
        ]
        assert client.post(f"/v1/tasks/{hog['job_id']}/cancel", headers=ALPHA).status_code == 204
        started = []
        for job, headers in jobs:
            assert read_events(client, job["sse_url"], headers=headers)[-1].event == "end"
            status = client.get(job["status_url"], headers=headers).json()
            started.append((status["started_at"], "alpha" if headers is ALPHA else "beta"))
    order = [tenant for _, tenant in sorted(started)]
    # Both backlogged: 3 alpha jobs per beta job, until alpha's 12 are done.
    assert order[:16].count("alpha") == 12 and order[:16].count("beta") == 4
