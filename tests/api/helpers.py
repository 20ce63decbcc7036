"""Small helpers shared by the API tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx


def submit(client: httpx.Client, **body: Any) -> dict[str, Any]:
    payload = {"model_ref": "mock", "prompt": "hello", "max_tokens": 5, **body}
    response = client.post("/v1/tasks", json=payload)
    assert response.status_code == 202, response.text
    data: dict[str, Any] = response.json()
    return data


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def state_of(client: httpx.Client, job_id: str) -> str:
    state: str = client.get(f"/v1/tasks/{job_id}").json()["state"]
    return state
