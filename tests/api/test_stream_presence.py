"""A stream's reader and presence (orchestratord/api/stream.py `frames`): a reader that leaves before
its job has ended is counted out (the job may be canceled for it); one that read the log to its end
is not (nothing is left to cancel: a shared store would spend a round trip for nothing, and forgets
its count with the job)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from orchestratord.api.sse import EventStream
from orchestratord.api.stream import Reader, frames
from orchestratord.core.tasks import LogEvent


class _Presence:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def attach(self, job_id: str) -> None:
        self.calls.append(f"attach {job_id}")

    async def detach(self, job_id: str) -> None:
        self.calls.append(f"detach {job_id}")


class _Store:
    def __init__(self, ends: bool) -> None:
        self.ends = ends

    async def read_batches(self, job_id: str, after: str | None) -> AsyncIterator[list[LogEvent]]:
        yield [LogEvent("1-0", "started", "{}")]
        yield [LogEvent("1-1", "token", '{"t":"a","i":0}')]
        if self.ends:
            yield [LogEvent("1-2", "end", "{}")]
        else:
            await asyncio.Event().wait()  # the job goes on


def _services(ends: bool) -> Any:
    return SimpleNamespace(store=_Store(ends), presence=_Presence())


async def test_a_reader_that_read_to_the_end_is_not_counted_out() -> None:
    services = _services(ends=True)
    body = b"".join([chunk async for chunk in frames(services, "j1", None)])
    assert b"event: end" in body
    assert services.presence.calls == ["attach j1"]


async def test_a_reader_that_leaves_a_running_job_is_counted_out() -> None:
    services = _services(ends=False)
    stream = frames(services, "j1", None)
    assert b"event: token" in await anext(stream) or b"event: token" in await anext(stream)
    await stream.aclose()  # the client went away
    assert services.presence.calls == ["attach j1", "detach j1"]


async def test_a_reader_counted_in_with_its_record_is_counted_out_if_its_frames_are_never_read() -> None:
    """A reader from the start is counted in with the read of its job's record (`jobs.open`), before
    its response is sent; a client gone before the first frame is counted out by the response."""
    services = _services(ends=False)
    reader = Reader(services, "j1", attached=True)
    response = EventStream(
        frames(services, "j1", None, reader), keepalive_s=None, send_timeout_s=None, on_end=reader.leave
    )

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await asyncio.Event().wait()  # the client takes nothing, not even the headers

    scope = {"type": "http", "method": "GET", "path": "/v1/tasks/j1/stream", "headers": []}
    await asyncio.wait_for(response(scope, receive, send), 5)
    assert services.presence.calls == ["detach j1"]


async def test_a_resuming_reader_is_counted_in_by_its_frames() -> None:
    services = _services(ends=False)
    reader = Reader(services, "j1", attached=False)
    stream = frames(services, "j1", "1-0", reader)
    await anext(stream)
    await stream.aclose()
    assert services.presence.calls == ["attach j1", "detach j1"]
    await reader.leave()
    assert services.presence.calls == ["attach j1", "detach j1"], "counted out once"
