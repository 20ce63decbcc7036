"""Submit and read a job's typed events through the client, blocking and asyncio, on a real server."""

from __future__ import annotations

from orchestratord_client import AsyncClient, Client, End, Error, Event, Metrics, Started, Token

from tests.fakes.servers import LoopbackServer


def assert_well_formed(events: list[Event], job_id: str, max_tokens: int) -> str:
    """Started first; tokens indexed 0..n-1 without a gap; one terminal End, last; distinct ids.
    Returns the text."""
    first, last = events[0], events[-1]
    assert isinstance(first, Started) and first.job_id == job_id
    tokens = [e for e in events if isinstance(e, Token)]
    assert [t.index for t in tokens] == list(range(max_tokens))
    assert isinstance(last, End) and last.stop_reason == "max_tokens" and last.tokens_out == max_tokens
    assert sum(isinstance(e, End | Error) for e in events) == 1
    ids = [e.id for e in events]
    assert None not in ids and len(set(ids)) == len(ids)
    assert all(isinstance(e, Started | Token | Metrics | End) for e in events)
    return "".join(t.text for t in tokens)


def test_events_are_typed_and_text_is_the_tokens_joined(server: LoopbackServer) -> None:
    with Client(server.base_url) as client:
        job = client.submit("mock", "hello", max_tokens=8, seed=3)
        assert job.sse_url == f"/v1/tasks/{job.job_id}/stream" and job.queue_position >= 0
        text = assert_well_formed(list(client.events(job)), job.job_id, 8)
        assert text and client.text("mock", "hello", max_tokens=8, seed=3) == text
        status = client.status(job.job_id)
    assert status.state == "succeeded" and status.done and status.text == text and status.tokens_out == 8
    assert status.finished_at is not None and status.created_at is not None


def test_run_submits_and_streams_chat_messages(server: LoopbackServer) -> None:
    with Client(server.base_url) as client:
        events = list(client.run("mock", messages=[{"role": "user", "content": "hi"}], max_tokens=4, seed=1))
    first = events[0]
    assert isinstance(first, Started)
    assert_well_formed(events, first.job_id, 4)


async def test_async_events_and_text(server: LoopbackServer) -> None:
    async with AsyncClient(server.base_url) as client:
        job = await client.submit("mock", "hello", max_tokens=6, seed=5)
        text = assert_well_formed([e async for e in client.events(job)], job.job_id, 6)
        assert await client.text("mock", "hello", max_tokens=6, seed=5) == text
        assert [e async for e in client.run("mock", "hello", max_tokens=6, seed=5) if isinstance(e, End)]
        status = await client.status(job)
    assert status.state == "succeeded" and status.text == text
