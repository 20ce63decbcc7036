"""Request bodies are validated as the contract says, with no coercion: a boolean, a string or a float
is not an integer, a string is not a boolean or a number. Each is a 400 naming the field, and nothing
is admitted or changed."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fakes.servers import LoopbackServer

TASK = {"model_ref": "mock", "prompt": "hello", "max_tokens": 3}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", True),
        ("max_tokens", "3"),
        ("max_tokens", 3.0),
        ("seed", True),
        ("seed", "7"),
        ("cancel_on_disconnect", "false"),
        ("cancel_on_disconnect", 0),
        ("temperature", "0.5"),
        ("deadline_ms", False),
    ],
)
def test_a_task_with_a_coercible_value_is_refused(client: httpx.Client, field: str, value: Any) -> None:
    response = client.post("/v1/tasks", json={**TASK, field: value})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "INVALID_PARAMS" and body["message"].startswith(f"{field}:")
    assert client.get("/metrics").text.count("tasks_enqueued_total{") == 0 or "priority" in response.text


def test_a_drain_deadline_of_false_does_not_drain(server: LoopbackServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        response = client.post("/v1/pools/default/drain", json={"deadline_ms": False})
        assert response.status_code == 400 and response.json()["message"].startswith("deadline_ms:")
        assert client.get("/v1/pools/default/health").json()["draining"] is False


def test_the_openai_surface_does_not_coerce_either(client: httpx.Client) -> None:
    body = {"model": "mock", "messages": [{"role": "user", "content": "x"}], "max_tokens": "3"}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_tokens"
