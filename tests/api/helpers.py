"""Small helpers shared by the API tests."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

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


HANG = "[[mock hang]] hold the only slot until canceled"


def post(client: httpx.Client, **body: Any) -> httpx.Response:
    """A POST of a short job that keeps running without a reader; fields in `body` override."""
    payload = {"model_ref": "mock", "prompt": "hello", "max_tokens": 2, "cancel_on_disconnect": False}
    return client.post("/v1/tasks", json={**payload, **body})


def admit(client: httpx.Client, **body: Any) -> str:
    response = post(client, **body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def engine_started(server: Any, pool: str = "default", replica: str = "r0") -> int:
    """How many requests the pool's mock engine has begun."""
    started: int = server.app.state.services.adapters[(pool, replica)].stats.started
    return started


def silent_reader(base_url: str, path: str) -> socket.socket:
    """A client that asks for a stream and then reads nothing: a tiny receive window fills at once."""
    url = urlsplit(base_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((url.hostname or "127.0.0.1", url.port or 80))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
    return sock
