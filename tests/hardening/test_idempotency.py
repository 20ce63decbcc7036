"""Idempotency-Key on POST /v1/tasks: a retry returns the first job, never runs a second one."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from orchestratord.api.schemas import TaskRequest
from orchestratord.idempotency import fingerprint
from tests.api.helpers import wait_for
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from worker_adapters.mock import MockAdapter

BODY = {"model_ref": "mock", "prompt": "idempotent hello", "max_tokens": 6, "seed": 7}


def engine(server: LoopbackServer) -> MockAdapter:
    adapter = server.app.state.services.adapters[("default", "r0")]
    assert isinstance(adapter, MockAdapter)
    return adapter


def post(client: httpx.Client, key: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return client.post("/v1/tasks", json=body or BODY, headers={"Idempotency-Key": key})


def post_until_admitted(base_url: str, key: str, body: bytes) -> str:
    """What a careful client does: retry the same request with the same key until it gets a 202."""
    headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for _ in range(100):
            response = client.post("/v1/tasks", content=body, headers=headers)
            if response.status_code == 202:
                job_id: str = response.json()["job_id"]
                return job_id
            assert response.status_code == 409, response.text
            assert response.json()["retriable"] is True, response.text
            time.sleep(int(response.headers["x-backoff-ms"]) / 1000)
    raise AssertionError("never admitted")


def test_same_key_and_body_give_the_same_job(client: httpx.Client, server: LoopbackServer) -> None:
    key = str(uuid.uuid4())
    first = post(client, key)
    assert first.status_code == 202, first.text
    again = [post(client, key) for _ in range(3)]
    assert all(r.status_code == 202 for r in again)
    assert {r.json()["job_id"] for r in again} == {first.json()["job_id"]}
    assert again[0].json()["sse_url"] == first.json()["sse_url"]
    other = post(client, str(uuid.uuid4()))
    assert other.status_code == 202 and other.json()["job_id"] != first.json()["job_id"]
    events = read_events(client, first.json()["sse_url"])
    assert events[-1].event == "end"
    wait_for(lambda: engine(server).stats.completed == 2)
    assert engine(server).stats.started == 2


def test_the_body_is_compared_by_meaning_not_bytes(client: httpx.Client) -> None:
    key = str(uuid.uuid4())
    compact = orjson.dumps(BODY)
    spaced = b'{ "seed": 7, "max_tokens": 6,\n "prompt": "idempotent hello", "model_ref": "mock" }'
    headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
    first = client.post("/v1/tasks", content=compact, headers=headers)
    second = client.post("/v1/tasks", content=spaced, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"]


def test_same_key_with_a_different_body_is_409(client: httpx.Client) -> None:
    key = str(uuid.uuid4())
    first = post(client, key)
    assert first.status_code == 202
    clash = post(client, key, {**BODY, "max_tokens": 7})
    assert clash.status_code == 409, clash.text
    envelope = clash.json()
    assert envelope["code"] == "CONFLICT" and envelope["retriable"] is False
    assert "different request body" in envelope["message"] and key in envelope["message"]
    assert "retry-after" not in clash.headers


def test_keys_belong_to_nothing_when_admission_refused_the_job(client: httpx.Client) -> None:
    key = str(uuid.uuid4())
    refused = post(client, key, {**BODY, "model_ref": "no-such-model"})
    assert refused.status_code == 400
    admitted = post(client, key)
    assert admitted.status_code == 202, admitted.text


def test_bad_keys_are_400(client: httpx.Client) -> None:
    too_long = post(client, "k" * 256)
    assert too_long.status_code == 400 and too_long.json()["code"] == "INVALID_PARAMS"
    assert "Idempotency-Key" in too_long.json()["message"]


def test_a_key_is_forgotten_after_its_window(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(idempotency_window_s=0.3)
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        key = str(uuid.uuid4())
        first = post(client, key).json()["job_id"]
        assert post(client, key).json()["job_id"] == first
        time.sleep(1.0)
        assert post(client, key).json()["job_id"] != first


def _send_and_hang_up(base_url: str, key: str, body: bytes) -> None:
    """A request whose client dies before reading the answer (a network error, as the client sees it)."""
    url = urlsplit(base_url)
    with socket.create_connection((url.hostname, url.port)) as sock:
        head = (
            f"POST /v1/tasks HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
            f"Idempotency-Key: {key}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)


def test_issue_7_a_retry_after_a_network_error_never_runs_the_job_twice(server: LoopbackServer) -> None:
    key = str(uuid.uuid4())
    body = orjson.dumps(BODY)
    _send_and_hang_up(server.base_url, key, body)
    job_ids: list[str] = []
    retries = [
        threading.Thread(target=lambda: job_ids.append(post_until_admitted(server.base_url, key, body)))
        for _ in range(6)
    ]
    for thread in retries:
        thread.start()
    for thread in retries:
        thread.join(30)
    assert len(job_ids) == 6 and len(set(job_ids)) == 1
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        events = read_events(client, f"/v1/tasks/{job_ids[0]}/stream")
        assert events[-1].event == "end" and events[-1].data["stop_reason"] == "max_tokens"
    wait_for(lambda: engine(server).stats.completed >= 1)
    time.sleep(0.3)  # any second run would have started by now: the queue is empty and slots are free
    assert engine(server).stats.started == 1
    assert server.call(_job_count(server)) == 1


async def _job_count(server: LoopbackServer) -> int:
    count: int = server.app.state.services.store.job_count()
    return count


def test_a_retry_while_the_first_request_is_still_being_admitted_is_409_retriable(
    client: httpx.Client, server: LoopbackServer
) -> None:
    """The key is claimed before admission; until the job exists a retry is told to come back."""
    key, pending_job = str(uuid.uuid4()), str(uuid.uuid4())
    claimed = fingerprint(TaskRequest.model_validate(BODY).model_dump(mode="json"))
    store = server.app.state.services.store
    assert server.call(store.remember_idempotency(key, "default", claimed, pending_job, 60)) is None
    early = post(client, key)
    assert early.status_code == 409, early.text
    assert early.json()["code"] == "CONFLICT" and early.json()["retriable"] is True
    assert int(early.headers["retry-after"]) >= 1 and int(early.headers["x-backoff-ms"]) > 0
    assert "still being admitted" in early.json()["message"]
