"""What the OpenAI surfaces share to serve a job's events: tailing its log as its reader (the reader's
leaving may cancel the job after the grace), batching what is already there into one write, and a
streaming response that notices a client that left."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from orchestratord.core.tasks import LogEvent
from orchestratord.errors import StateUnavailable
from orchestratord.services import Services

T = TypeVar("T")
_BACKLOG = 256  # events read from the log ahead of the client; the log itself is the buffer


class Chunks(StreamingResponse):
    """Starlette's streaming response, stopped when the client leaves: under ASGI 2.4 Starlette relies
    on a failed send to notice, and uvicorn drops a send to a closed connection in silence, so a
    stream between chunks (a job still queued, a slow engine) would never learn of it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.ensure_future(self.stream_response(send))
        gone = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({streaming, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            streaming.cancel()
            gone.cancel()
            await asyncio.gather(streaming, gone, return_exceptions=True)
        if not streaming.cancelled() and isinstance(streaming.exception(), Exception):
            failure = streaming.exception()
            if not isinstance(failure, OSError):  # a client gone mid-write is no error of ours
                raise failure  # type: ignore[misc]


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
