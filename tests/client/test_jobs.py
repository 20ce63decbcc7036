"""Cancel, status, a job that fails mid-stream, sessions, the deployment's views, and auth."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from orchestratord_client import (
    AsyncClient,
    Client,
    End,
    Error,
    Event,
    Forbidden,
    JobFailed,
    NotFound,
    Started,
    Token,
    Unauthorized,
)

from tests.fakes.servers import LoopbackServer

HANG = "[[mock hang]] run until canceled"
FAIL = "[[mock fail_after=1]] fail after one token"
KEY = "k" * 32
ADMIN = "a" * 32


def test_cancel_ends_the_stream_and_the_status_says_so(server: LoopbackServer) -> None:
    events: list[Event] = []
    with Client(server.base_url) as client:
        job = client.submit("mock", HANG, max_tokens=8)
        for event in client.events(job):
            events.append(event)
            if isinstance(event, Started):
                assert client.status(job).state in ("queued", "running")
                client.cancel(job)
        client.cancel(job.job_id)  # again, once it has ended: still fine
        status = client.status(job)
    end = events[-1]
    assert isinstance(end, End) and end.stop_reason == "canceled" and end.tokens_in is None
    assert not any(isinstance(e, Token) for e in events)
    assert status.state == "canceled" and status.done and status.stop_reason == "canceled"


async def test_async_cancel_and_status(server: LoopbackServer) -> None:
    async with AsyncClient(server.base_url) as client:
        job = await client.submit("mock", HANG, max_tokens=8)
        await client.cancel(job)
        events = [e async for e in client.events(job)]
        status = await client.status(job.job_id)
    assert isinstance(events[-1], End) and events[-1].stop_reason == "canceled"
    assert status.state == "canceled"


def test_failed_job_ends_in_error_event_and_text_raises(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server()  # its own: failures open the replica's breaker, which would slow other tests
    with Client(server.base_url) as client:
        job = client.submit("mock", FAIL, max_tokens=8)
        events = list(client.events(job))
        with pytest.raises(JobFailed) as caught:
            client.text("mock", FAIL, max_tokens=8)
        status = client.status(job)
    error = events[-1]
    assert isinstance(error, Error) and error.code == "WORKER_RESET" and error.retriable
    assert [e.index for e in events if isinstance(e, Token)] == [0]
    failed = caught.value
    assert failed.code == "WORKER_RESET" and failed.status is None and failed.retriable
    assert isinstance(failed.event, Error) and failed.event.id and failed.job_id != job.job_id
    assert status.state == "failed" and status.error_code == "WORKER_RESET" and status.error_message


async def test_async_failed_job_raises_job_failed(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server()
    async with AsyncClient(server.base_url) as client:
        with pytest.raises(JobFailed, match="WORKER_RESET"):
            await client.text("mock", FAIL, max_tokens=8)


def test_session_is_created_by_a_job_read_and_deleted(server: LoopbackServer) -> None:
    with Client(server.base_url) as client:
        client.text("mock", "turn one", max_tokens=3, session_id="chat #1?")  # quoted in the path
        session = client.session("chat #1?")
        assert session.session_id == "chat #1?" and session.turns == 1 and session.max_turns >= 1
        assert session.pool_id == "default" and session.ttl_ms_remaining > 0
        assert session.tokens_budget_remaining is None  # no budget configured
        client.delete_session("chat #1?")
        with pytest.raises(NotFound) as caught:
            client.session("chat #1?")
        assert caught.value.status == 404 and caught.value.code == "NOT_FOUND"


async def test_async_sessions_pools_and_capabilities(server: LoopbackServer) -> None:
    async with AsyncClient(server.base_url) as client:
        await client.text("mock", "turn one", max_tokens=2, session_id="s1")
        assert (await client.session("s1")).turns == 1
        await client.delete_session("s1")
        with pytest.raises(NotFound):
            await client.delete_session("s1")
        pools = await client.pools()
        capabilities = await client.capabilities()
    assert [p["id"] for p in pools] == ["default"] and pools[0]["engine"] == "mock"
    assert capabilities["pools"][0]["pool_id"] == "default" and capabilities["api_version"]


def test_pools_capabilities_and_unknown_job(server: LoopbackServer) -> None:
    with Client(server.base_url) as client:
        assert [p["id"] for p in client.pools()] == ["default"]
        assert "mock" in client.capabilities()["pools"][0]["models"]
        with pytest.raises(NotFound):
            client.status(str(uuid.uuid4()))


def test_api_key_from_argument_or_environment(
    make_server: Callable[..., LoopbackServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server(
        auth={"keys": [{"key": KEY, "tenant": "t1"}, {"key": ADMIN, "tenant": "ops", "role": "admin"}]}
    )
    monkeypatch.delenv("ORCHD_API_KEY", raising=False)
    with Client(server.base_url) as anonymous, pytest.raises(Unauthorized) as unauthorized:
        anonymous.capabilities()
    assert unauthorized.value.status == 401 and not unauthorized.value.retriable
    with Client(server.base_url, api_key=KEY) as client:
        assert client.text("mock", "hello", max_tokens=2)
        with pytest.raises(Forbidden) as forbidden:
            client.pools()  # an admin endpoint
        assert forbidden.value.status == 403
    monkeypatch.setenv("ORCHD_URL", server.base_url)
    monkeypatch.setenv("ORCHD_API_KEY", ADMIN)
    with Client() as from_env:
        assert from_env.base_url.rstrip("/") == server.base_url
        assert from_env.pools()


def test_jobs_pages_through_every_tenants_jobs(server: LoopbackServer) -> None:
    """The server is shared with other tests: this test's jobs are the newest three."""
    with Client(server.base_url) as client:
        made = [client.submit("mock", "hello", max_tokens=1).job_id for _ in range(3)]
        first = client.jobs(limit=2)
        assert first["next_cursor"] is not None and len(first["tasks"]) == 2
        second = client.jobs(limit=2, cursor=first["next_cursor"])
        seen = [t["job_id"] for t in first["tasks"] + second["tasks"]]
        assert seen[:3] == made[::-1], "newest first, no job twice across pages"
        assert all(t["state"] == "failed" for t in client.jobs(state=["failed"])["tasks"])


async def test_async_jobs_filters(server: LoopbackServer) -> None:
    async with AsyncClient(server.base_url) as client:
        job = await client.submit("mock", HANG, max_tokens=8)
        listed = await client.jobs(state=["queued", "running"], model_ref="mock", tenant="default")
        assert [t["job_id"] for t in listed["tasks"]] == [job.job_id]
        await client.cancel(job)
        assert (await client.jobs(state=["canceled"]))["tasks"][0]["job_id"] == job.job_id
