"""Interactive work protected from batch (issue 16): with `queue.holdback`, batch jobs never take the
last `floor(holdback x slots)` free slots of a pool, so an interactive arrival starts at once while
batch jobs fill the rest; without it, the interactive job waits behind them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.api.helpers import wait_for
from tests.conftest import mock_pool
from tests.fakes.servers import LoopbackServer

POOL = mock_pool(slots=4, options={"ttft_ms": 5, "tokens_per_s": 20})


def post(client: httpx.Client, priority: str, max_tokens: int) -> dict[str, Any]:
    body = {"model_ref": "mock", "prompt": "x", "max_tokens": max_tokens, "priority": priority,
            "cancel_on_disconnect": False}  # fmt: skip
    answer = client.post("/v1/tasks", json=body)
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()
    return job


def states(client: httpx.Client, jobs: list[dict[str, Any]]) -> list[str]:
    return [client.get(job["status_url"]).json()["state"] for job in jobs]


def interactive_behind_batch(server: LoopbackServer, running: int) -> tuple[list[str], str]:
    """Five long batch jobs, then an interactive one: the batch jobs' states once `running` of them
    run (and a little more time, in which dispatch could start more), and the interactive job's state
    after up to a second."""
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        batch = [post(client, "batch", 400) for _ in range(5)]
        wait_for(lambda: states(client, batch).count("running") >= running)
        time.sleep(0.5)
        settled = states(client, batch)
        urgent = post(client, "interactive", 5)
        deadline = time.monotonic() + 1.0
        while (state := client.get(urgent["status_url"]).json()["state"]) == "queued":
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        for job in [*batch, urgent]:
            client.post(f"/v1/tasks/{job['job_id']}/cancel")
    return settled, state


def test_a_held_back_slot_waits_for_interactive_work(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(pools=[POOL], queue={"holdback": 0.25})  # one of the four slots
    settled, urgent = interactive_behind_batch(server, running=3)
    assert sorted(settled) == ["queued", "queued", "running", "running", "running"], settled
    assert urgent in ("running", "succeeded"), urgent


def test_without_holdback_batch_takes_every_slot_and_interactive_waits(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(pools=[POOL])
    settled, urgent = interactive_behind_batch(server, running=4)
    assert sorted(settled) == ["queued", "running", "running", "running", "running"], settled
    assert urgent == "queued"
