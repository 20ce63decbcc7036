"""`limits.max_prompt_chars` bounds a prompt (or the messages' content together): over it, 400 naming
the limit. `expected_tokens` is the token-fairness estimate of a job's output, capped at max_tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.api.helpers import wait_for
from tests.fakes.servers import LoopbackServer


def _post(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/tasks", json={"model_ref": "mock", "max_tokens": 2, **body})


def test_a_prompt_over_max_prompt_chars_is_refused_naming_the_limit(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(limits={"max_prompt_chars": 10})
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        assert _post(client, prompt="ä" * 10).status_code == 202  # characters, not bytes
        refused = _post(client, prompt="x" * 11)
        assert refused.status_code == 400
        body = refused.json()
        assert body["code"] == "INVALID_PARAMS" and body["retriable"] is False
        assert "limits.max_prompt_chars" in body["message"] and "11" in body["message"]
        messages = [{"role": "system", "content": "x" * 6}, {"role": "user", "content": "y" * 5}]
        refused = _post(client, messages=messages)
        assert refused.status_code == 400 and "limits.max_prompt_chars" in refused.json()["message"]
        assert _post(client, messages=messages[1:]).status_code == 202


@pytest.mark.parametrize(("expected", "charged"), [(10, 10), (None, 400), (5000, 400)])
def test_expected_tokens_is_the_fairness_estimate(
    make_server: Callable[..., LoopbackServer], expected: int | None, charged: int
) -> None:
    server = make_server(queue={"fairness_unit": "tokens"})
    queue = server.app.state.services.store.queue
    prompt = "[[mock hang]] sixteen bytes....."  # 32 bytes: an estimate of 8 prompt tokens
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = _post(client, prompt=prompt, max_tokens=400, expected_tokens=expected).json()
        wait_for(lambda: client.get(job["status_url"]).json()["state"] == "running")
        weight = 8.0  # the default tenant's interactive flow
        assert queue.flow_tag("default", "interactive") == pytest.approx((8 + charged) / weight)
        assert client.post(f"/v1/tasks/{job['job_id']}/cancel").status_code == 204
