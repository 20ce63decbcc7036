"""A stream cut mid-event by the network is resumed with Last-Event-ID: same text, every token once."""

from __future__ import annotations

import pytest
from orchestratord_client import AsyncClient, Client, End, Event, StreamInterrupted, Token

from tests.client.proxy import cutting_proxy
from tests.fakes.servers import LoopbackServer

MAX_TOKENS, SEED = 24, 11
PROMPT = "resume me"


def text_and_indexes(events: list[Event]) -> tuple[str, list[int]]:
    tokens = [e for e in events if isinstance(e, Token)]
    assert sum(isinstance(e, End) for e in events) == 1 and isinstance(events[-1], End)
    return "".join(t.text for t in tokens), [t.index for t in tokens]


def resumed_after(stream_requests: list[bytes]) -> list[bool]:
    return [b"last-event-id:" in head.lower() for head in stream_requests]


def test_cut_stream_resumes_without_losing_or_repeating(server: LoopbackServer) -> None:
    with Client(server.base_url) as direct:
        uncut = direct.text("mock", PROMPT, max_tokens=MAX_TOKENS, seed=SEED)
    # max_resumes=1: three cuts pass only because each connection brought events (the count is of
    # breaks in a row)
    with (
        cutting_proxy(server.base_url, cut_after=260, cuts=3) as proxy,
        Client(proxy.base_url, max_resumes=1) as client,
    ):
        text, indexes = text_and_indexes(list(client.run("mock", PROMPT, max_tokens=MAX_TOKENS, seed=SEED)))
    assert proxy.cut_count == 3 and len(proxy.stream_requests) == 4  # three cuts, three resumes
    assert resumed_after(proxy.stream_requests) == [False, True, True, True]
    assert indexes == list(range(MAX_TOKENS))
    assert text == uncut


async def test_async_cut_stream_resumes(server: LoopbackServer) -> None:
    async with AsyncClient(server.base_url) as direct:
        uncut = await direct.text("mock", PROMPT, max_tokens=MAX_TOKENS, seed=SEED)
    with cutting_proxy(server.base_url, cut_after=233, cuts=4) as proxy:
        async with AsyncClient(proxy.base_url, max_resumes=1) as client:
            text, indexes = text_and_indexes(
                [e async for e in client.run("mock", PROMPT, max_tokens=MAX_TOKENS, seed=SEED)]
            )
    assert proxy.cut_count == 4 and resumed_after(proxy.stream_requests)[1:] == [True] * 4
    assert indexes == list(range(MAX_TOKENS))
    assert text == uncut


def test_stream_that_keeps_breaking_raises_with_the_resume_point(server: LoopbackServer) -> None:
    """No event gets through: after max_resumes reconnects in a row the client gives up, saying
    where to resume; resuming there later reads the rest."""
    waits: list[float] = []
    with cutting_proxy(server.base_url, cut_after=0, cuts=10) as proxy:
        with Client(proxy.base_url, max_resumes=2, sleep=waits.append) as client:
            job = client.submit("mock", PROMPT, max_tokens=MAX_TOKENS, seed=SEED)
            with pytest.raises(StreamInterrupted) as caught:
                list(client.events(job))
        assert proxy.cut_count == 3  # the first connection and two resumes
    assert caught.value.job_id == job.job_id and caught.value.last_event_id is None
    assert waits == [0.0, 0.5]  # the first resume at once, then backing off
    with Client(server.base_url) as direct:
        assert text_and_indexes(list(direct.events(job, last_event_id=caught.value.last_event_id)))[0]
