"""What the OpenAI surfaces share to serve a job's events: tailing its log as its reader (the reader's
leaving may cancel the job after the grace), a batch of what is already there at each look (one
write), and the streaming response."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Mapping
from typing import Any, TypeVar

from fastapi import Request

from orchestratord.api.sse import EventStream
from orchestratord.core.tasks import EventRun, LogEvent
from orchestratord.errors import StateUnavailable
from orchestratord.services import Services

T = TypeVar("T")
MOST_A_BATCH = 256  # events a reader renders into one write at most


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
async def tail(services: Services, job_id: str) -> AsyncIterator[AsyncIterator[Batch]]:
    """The job's events, with this reader counted in the job's presence while it lasts (its leaving
    may cancel the job after the grace): each time the reader looks, every event the log holds past
    the last batch, as one batch (one write for a burst of tokens), of at most `MOST_A_BATCH` events.
    The log is read in the reader's own task and nothing reads ahead of it: the log itself is the
    buffer.

    The last batch ends with the terminal event, or with a `StateUnavailable` in place of it when the log
    cannot be read to its end (the state backend went away, or the log is gone); nothing follows."""
    await services.presence.attach(job_id)
    batches = _batches(services, job_id)
    try:
        yield batches
    finally:
        try:
            await batches.aclose()
        finally:
            await asyncio.shield(services.presence.detach(job_id))


Batch = list[LogEvent | BaseException]


async def _batches(services: Services, job_id: str) -> AsyncGenerator[Batch]:
    try:
        async for batch in services.store.read_batches(job_id):
            events: Batch = []
            for item in batch:
                if isinstance(item, EventRun):  # a run's batch from Redis, whole
                    events += item.events()
                else:
                    events.append(item)
            for start in range(0, len(events), MOST_A_BATCH):  # (a replay renders a write at a time)
                yield events[start : start + MOST_A_BATCH]
            if batch[-1].terminal:
                return
    except StateUnavailable as exc:
        yield [exc]
        return
    yield [StateUnavailable("the job's event log is no longer readable; retry", retry_after_ms=1000)]
