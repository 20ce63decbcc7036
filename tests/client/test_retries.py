"""Retries: what the server marks retriable is sent again after its hint, up to max_retries, with one
Idempotency-Key; what it marks non-retriable never is. Attempts are counted at the transport."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from orchestratord_client import (
    AsyncClient,
    BudgetExceeded,
    Client,
    ConnectionFailed,
    InvalidRequest,
    QueueFull,
    RateLimited,
    StreamInterrupted,
)

from tests.client.transports import AsyncRecordingTransport, RecordingTransport, Seen
from tests.conftest import mock_pool
from tests.fakes.servers import LoopbackServer, free_port

HANG = "[[mock hang]] hold the only slot"


def full_queue(make_server: Callable[..., LoopbackServer]) -> tuple[LoopbackServer, str, str]:
    """A server whose only slot runs a job that never ends and whose queue (of one) holds another:
    every further submit answers 429. Returns the server and the two jobs' ids."""
    server = make_server(pools=[mock_pool(slots=1)], queue={"capacity": 1})
    with Client(server.base_url) as client:
        hang = client.submit("mock", HANG, max_tokens=4, cancel_on_disconnect=False)
        deadline = time.monotonic() + 10
        while client.status(hang).state != "running":
            assert time.monotonic() < deadline, "the hanging job never started"
            time.sleep(0.01)
        waiting = client.submit("mock", "wait", max_tokens=2, cancel_on_disconnect=False)
    return server, hang.job_id, waiting.job_id


def hints(seen: list[Seen]) -> list[float]:
    """The wait each answer asked for, from its `retry-after-ms` header."""
    return [int(s.answer_headers["retry-after-ms"]) / 1000 for s in seen]


def test_full_queue_is_retried_after_each_hint_then_raised(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server, _, _ = full_queue(make_server)
    transport, waits = RecordingTransport(), list[float]()
    with (
        Client(server.base_url, max_retries=2, transport=transport, sleep=waits.append) as client,
        pytest.raises(QueueFull) as caught,
    ):
        client.submit("mock", "one more", max_tokens=2)
    attempts = transport.to("/v1/tasks")
    assert [s.status for s in attempts] == [429, 429, 429]  # the first try and two retries
    assert waits == hints(attempts)[:2]  # each wait is the hint of the answer before it
    assert len({s.headers["Idempotency-Key"] for s in attempts}) == 1
    error = caught.value
    assert isinstance(error, RateLimited) and error.status == 429 and error.code == "ADMISSION_REJECT"
    assert error.retriable and error.policy_label == "reject" and error.retry_after_s == hints(attempts)[2]


def test_retry_goes_through_once_there_is_room(make_server: Callable[..., LoopbackServer]) -> None:
    server, hang, waiting = full_queue(make_server)
    transport = RecordingTransport()
    with Client(server.base_url) as other:

        def free_a_place(seconds: float) -> None:
            other.cancel(hang)  # the waiting job takes the slot, and its place in the queue frees
            while other.status(waiting).state == "queued":
                time.sleep(0.01)

        with Client(server.base_url, transport=transport, sleep=free_a_place) as client:
            job = client.submit("mock", "one more", max_tokens=2, idempotency_key="my-key")
    attempts = transport.to("/v1/tasks")
    assert [s.status for s in attempts] == [429, 202]
    assert [s.headers["Idempotency-Key"] for s in attempts] == ["my-key", "my-key"]
    assert job.job_id not in (hang, waiting)


def test_hint_longer_than_max_wait_is_raised_at_once(make_server: Callable[..., LoopbackServer]) -> None:
    server, _, _ = full_queue(make_server)
    transport, waits = RecordingTransport(), list[float]()
    with (
        Client(server.base_url, max_retry_wait_s=0.0001, transport=transport, sleep=waits.append) as client,
        pytest.raises(QueueFull),
    ):
        client.submit("mock", "one more", max_tokens=2)
    assert len(transport.to("/v1/tasks")) == 1 and waits == []


def test_non_retriable_429_is_never_retried(make_server: Callable[..., LoopbackServer]) -> None:
    """A spent session budget answers 429 with `retriable: false`: sending it again cannot help."""
    server = make_server(budgets={"session": {"tokens": 5}})
    transport, waits = RecordingTransport(), list[float]()
    with (
        Client(server.base_url, transport=transport, sleep=waits.append) as client,
        pytest.raises(BudgetExceeded) as caught,
    ):
        client.submit("mock", "hello", max_tokens=40, session_id="s")
    assert caught.value.status == 429 and not caught.value.retriable and caught.value.policy_label == "quota"
    assert len(transport.to("/v1/tasks")) == 1 and waits == []


def test_bad_request_is_never_retried(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server()
    transport, waits = RecordingTransport(), list[float]()
    with (
        Client(server.base_url, transport=transport, sleep=waits.append) as client,
        pytest.raises(InvalidRequest) as caught,
    ):
        client.submit("mock", "hello", max_tokens=0)
    assert caught.value.status == 400 and caught.value.code == "INVALID_PARAMS"
    assert "max_tokens" in caught.value.message and caught.value.correlation_id
    assert len(transport.to("/v1/tasks")) == 1 and waits == []


def test_lost_answer_is_retried_without_a_second_job(make_server: Callable[..., LoopbackServer]) -> None:
    """The server admits the job but its answer is lost: the retry, with the same Idempotency-Key,
    gets that job back instead of creating another."""
    server = make_server()
    transport, waits = RecordingTransport(lose_first=("/v1/tasks",)), list[float]()
    with Client(server.base_url, transport=transport, sleep=waits.append) as client:
        job = client.submit("mock", "hello", max_tokens=2)
    lost, retried = transport.to("/v1/tasks")
    assert lost.status is None and retried.status == 202 and waits == [0.5]
    assert lost.headers["Idempotency-Key"] == retried.headers["Idempotency-Key"]
    assert job.job_id in lost.body.decode()


def test_unreachable_server_raises_connection_failed_after_retries() -> None:
    waits: list[float] = []
    with (
        Client(f"http://127.0.0.1:{free_port()}", max_retries=3, sleep=waits.append) as client,
        pytest.raises(ConnectionFailed) as caught,
    ):
        client.pools()
    assert caught.value.status is None and caught.value.retriable
    assert waits == [0.5, 1.0, 2.0]  # exponential backoff when the server gave no hint


def test_unreachable_stream_raises_stream_interrupted_with_the_resume_point() -> None:
    waits: list[float] = []
    with (
        Client(f"http://127.0.0.1:{free_port()}", max_retries=1, sleep=waits.append) as client,
        pytest.raises(StreamInterrupted) as caught,
    ):
        list(client.events("some-job", last_event_id="7"))
    assert isinstance(caught.value, ConnectionFailed) and isinstance(caught.value.__cause__, ConnectionFailed)
    assert caught.value.job_id == "some-job" and caught.value.last_event_id == "7" and waits == [0.5]


async def test_async_full_queue_is_retried_then_raised(make_server: Callable[..., LoopbackServer]) -> None:
    server, _, _ = full_queue(make_server)
    transport, waits = AsyncRecordingTransport(), list[float]()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async with AsyncClient(server.base_url, max_retries=1, transport=transport, sleep=sleep) as client:
        with pytest.raises(QueueFull):
            await client.submit("mock", "one more", max_tokens=2)
        with pytest.raises(InvalidRequest):
            await client.submit("mock", "hello", max_tokens=0)
    attempts = transport.to("/v1/tasks")
    assert [s.status for s in attempts] == [429, 429, 400]
    assert waits == hints(attempts[:1])
