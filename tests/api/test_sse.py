"""The SSE response every stream is written with (`orchestratord.api.sse.EventStream`), on a real
uvicorn: a comment when the stream is quiet and none while it is not, a client that leaves noticed
while the frames' source waits, a client that takes nothing cut off, and a shutdown's close."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from orchestratord.api.sse import EventStream, frame
from orchestratord.open_streams import OpenStreams
from tests.api.helpers import silent_reader
from tests.fakes.servers import LoopbackServer, serve_in_thread


@dataclass
class Source:
    """The frames a test's stream writes: `every_s` apart, `count` of them (then it waits for ever),
    each `size` bytes; what happened to the source and the response is recorded."""

    every_s: float = 0.0
    count: int = 0
    size: int = 0
    stubborn: bool = False  # a cancellation of its wait does not end it: it yields a frame more
    closed: list[float] = field(default_factory=list)  # when the source's `finally` ran
    ended: list[float] = field(default_factory=list)  # when the response's `on_end` ran

    async def frames(self) -> AsyncIterator[bytes]:
        try:
            for i in range(self.count):
                await asyncio.sleep(self.every_s)
                yield frame("token", f'{{"i":{i}}}' if not self.size else "x" * self.size, str(i))
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if not self.stubborn:
                    raise
            yield frame("token", "{}", "last")
            await asyncio.Event().wait()
        finally:
            self.closed.append(time.monotonic())

    async def on_end(self) -> None:
        self.ended.append(time.monotonic())


@dataclass
class Harness:
    server: LoopbackServer
    streams: OpenStreams
    sources: list[Source]


@pytest.fixture
def harness() -> Iterator[Harness]:
    streams = OpenStreams()
    sources: list[Source] = []

    async def stream(request: Request) -> EventStream:
        q = request.query_params
        source = Source(
            float(q.get("every_s", 0)), int(q.get("count", 0)), int(q.get("size", 0)), "stubborn" in q
        )
        sources.append(source)
        return EventStream(
            source.frames(),
            keepalive_s=float(q.get("keepalive_s", 60)),
            send_timeout_s=float(q.get("send_timeout_s", 60)),
            streams=streams,
            on_end=source.on_end,
        )

    app = Starlette(routes=[Route("/stream", stream)])
    with serve_in_thread(app) as server:
        yield Harness(server, streams, sources)


def _lines(client: httpx.Client, url: str, seconds: float) -> tuple[list[str], dict[str, Any]]:
    """The lines of a stream read for `seconds` (then the client leaves), and its headers."""
    lines: list[str] = []
    with client.stream("GET", url) as response:
        assert response.status_code == 200
        deadline = time.monotonic() + seconds
        for line in response.iter_lines():
            lines.append(line)
            if time.monotonic() > deadline:
                break
        return lines, dict(response.headers)


def _wait(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_quiet_stream_gets_comments_and_a_busy_one_none(harness: Harness) -> None:
    with httpx.Client(base_url=harness.server.base_url, timeout=10) as client:
        quiet, headers = _lines(client, "/stream?keepalive_s=0.1&count=1&every_s=0.9", 0.85)
        busy, _ = _lines(client, "/stream?keepalive_s=0.3&count=30&every_s=0.02", 0.5)
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
    pings = [line for line in quiet if line.startswith(":")]
    assert 4 <= len(pings) <= 9, quiet  # one each 0.1 s of the 0.85 s before the first frame
    assert not [line for line in busy if line.startswith(":")], busy  # a frame each 0.02 s
    assert "event: token" in busy and "id: 0" in busy


def _leave_after_the_first_frame(harness: Harness, path: str) -> float:
    """Read `path` to its first frame's data, leave, and say when."""
    with (
        httpx.Client(base_url=harness.server.base_url, timeout=10) as client,
        client.stream("GET", path) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data:"):
                break
    return time.monotonic()


def test_a_client_that_leaves_ends_the_response_while_its_source_waits(harness: Harness) -> None:
    left = _leave_after_the_first_frame(harness, "/stream?count=1")
    source = harness.sources[0]
    _wait(lambda: source.ended)  # the source waits for ever: only the disconnect can end it
    assert source.closed and source.closed[0] - left < 1.0 and len(source.ended) == 1
    _wait(lambda: len(harness.streams) == 0)


def test_a_source_that_outlives_the_cancellation_ends_at_its_next_frame(harness: Harness) -> None:
    _leave_after_the_first_frame(harness, "/stream?count=1&stubborn=1")
    source = harness.sources[0]
    _wait(lambda: source.ended)  # without the check at the write it would wait for ever
    assert source.closed and len(harness.streams) == 0


def test_a_client_that_takes_nothing_is_cut_off_after_the_send_timeout(harness: Harness) -> None:
    started = time.monotonic()
    sock = silent_reader(harness.server.base_url, "/stream?count=400&size=65536&send_timeout_s=0.5")
    try:
        _wait(lambda: harness.sources and harness.sources[0].ended, timeout=10)
        cut = harness.sources[0].ended[0] - started
        assert 0.5 <= cut < 5.0  # a write blocked 0.5 s ends it; not before, and not never
        assert harness.sources[0].closed
    finally:
        sock.close()


def test_close_ends_every_open_stream_and_its_clients_see_the_end(harness: Harness) -> None:
    with (
        httpx.Client(base_url=harness.server.base_url, timeout=10) as client,
        client.stream("GET", "/stream?count=1") as response,
    ):
        lines = response.iter_lines()
        assert next(lines).startswith("id: 0")
        _wait(lambda: len(harness.streams) == 1)
        assert harness.server.call(_close(harness.streams)) == 1
        rest = list(lines)  # the body ends (no terminal event: the client resumes elsewhere)
    assert "event: token" in rest
    assert harness.sources[0].ended and harness.sources[0].closed
    assert len(harness.streams) == 0


async def _close(streams: OpenStreams) -> int:
    return streams.close()
