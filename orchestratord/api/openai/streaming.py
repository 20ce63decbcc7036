"""What the OpenAI surfaces share to serve a job's events: tailing its log as its reader (the reader's
leaving may cancel the job after the grace), batching what is already there into one write, and the
streaming response."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any, TypeVar

from fastapi import Request

from orchestratord.api.sse import EventStream
from orchestratord.core.tasks import LogEvent
from orchestratord.errors import StateUnavailable
from orchestratord.services import Services

T = TypeVar("T")
_BACKLOG = 256  # events read from the log ahead of the client; the log itself is the buffer


def chunks(
    services: Services, body: AsyncIterator[bytes], headers: Mapping[str, str] | None = None
) -> EventStream:
    """An OpenAI surface's stream, written as every stream is (`EventStream`: a client that leaves is
    noticed at once, one that takes nothing is cut off); its keep-alives are the surface's own."""
    return EventStream(
        body,
        keepalive_s=None,
        send_timeout_s=services.settings.stream.send_timeout_s,
        headers=headers,
        streams=services.streams,
    )


async def unless_gone(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """Run `work` until it is done, or until the client goes away (then it is canceled: None)."""
    done = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not done.done():
            done.cancel()
        await asyncio.gather(done, gone, return_exceptions=True)
    return None if done.cancelled() else done.result()


async def disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body is already read: what comes next is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@contextlib.asynccontextmanager
async def tail(services: Services, job_id: str) -> AsyncIterator[asyncio.Queue[LogEvent | BaseException]]:
    """The job's events as they are appended, through a bounded queue, with this reader counted in
    the job's presence while it lasts (its leaving may cancel the job after the grace)."""
    queue: asyncio.Queue[LogEvent | BaseException] = asyncio.Queue(_BACKLOG)

    async def pump() -> None:
        try:
            async for event in services.store.read(job_id):
                await queue.put(event)
        except StateUnavailable as exc:
            await queue.put(exc)

    await services.presence.attach(job_id)
    task = asyncio.create_task(pump())
    try:
        yield queue
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.shield(services.presence.detach(job_id))


async def next_batch(queue: asyncio.Queue[LogEvent | BaseException]) -> list[LogEvent | BaseException]:
    """The next event, and every one already waiting behind it (one write for a burst of tokens)."""
    batch = [await queue.get()]
    while not queue.empty():
        batch.append(queue.get_nowait())
    return batch
