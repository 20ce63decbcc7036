"""GET /v1/tasks/{job_id}/stream: the job's event log as Server-Sent Events, resumable by id."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Header
from fastapi.responses import Response

from orchestratord.api.deps import get_owner, get_services
from orchestratord.api.responses import BUDGET_HEADERS, errors_for
from orchestratord.api.sse import EventStream, frame
from orchestratord.core.tasks import RS, US, EventRun, LogEvent
from orchestratord.errors import InvalidParams, StateUnavailable
from orchestratord.logs import get_logger
from orchestratord.services import Services

router = APIRouter(tags=["tasks"])
log = get_logger(__name__)
MAX_PENDING_BYTES = 64 * 1024  # how far a stream reads the log ahead of what the client has taken


@router.get(
    "/v1/tasks/{job_id}/stream",
    response_class=EventStream,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "The job's events.",
            "headers": BUDGET_HEADERS,
        },
        204: {"description": "The job has ended and the reader has seen its terminal event."},
        **errors_for(400, 404, 503),
    },
    operation_id="streamTask",
)
async def stream_task(
    job_id: uuid.UUID,
    services: Annotated[Services, Depends(get_services)],
    owner: Annotated[str | None, Depends(get_owner)],
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
) -> Response:
    if last_event_id is None:  # a reader from the start: counted in with the read of the record
        record = await services.jobs.open(str(job_id), owner)
        reader = Reader(services, record.job_id, attached=True)
    else:  # counted in once its resume point is checked (an ended job read to its end: 204)
        record = await services.jobs.get(str(job_id), owner)
        reader = Reader(services, record.job_id, attached=False)
        if not services.store.valid_event_id(last_event_id):
            raise InvalidParams(f"Last-Event-ID {last_event_id!r} is not an event id of this stream")
        if not record.state.terminal and await services.store.beyond(record.job_id, last_event_id):
            raise InvalidParams(
                f"Last-Event-ID {last_event_id!r} is ahead of this stream's newest event; resume from an "
                "id this stream sent, or leave the header out to read from the start"
            )
        if record.state.terminal and await _seen_all(services, record.job_id, last_event_id):
            return Response(status_code=204)  # tells an EventSource to stop reconnecting
    try:
        budget = await services.control.gate.budget_headers(record.tenant, record.session_id)
    except BaseException:
        await reader.leave()
        raise
    return EventStream(
        frames(services, record.job_id, last_event_id, reader),
        keepalive_s=services.settings.stream.keepalive_s,
        send_timeout_s=services.settings.stream.send_timeout_s,
        headers=budget,
        streams=services.streams,
        on_end=reader.leave,  # counted out even if its frames were never read
    )


async def _seen_all(services: Services, job_id: str, after: str) -> bool:
    """Whether nothing of an ended job's log comes after `after` (its reader has the terminal event)."""
    async for _ in services.store.read(job_id, after):
        return False
    return True


class Reader:
    """A stream's reader in its job's presence: counted in once, and counted out once unless it read
    the log to its end (the job has ended: nothing is left to cancel, and the store forgets its count
    with the job)."""

    __slots__ = ("_job_id", "_services", "attached", "ended")

    def __init__(self, services: Services, job_id: str, *, attached: bool) -> None:
        self._services = services
        self._job_id = job_id
        self.attached = attached
        self.ended = False

    async def attach(self) -> None:
        if not self.attached:
            await self._services.presence.attach(self._job_id)
            self.attached = True

    async def leave(self) -> None:
        """Count the reader out, if it is counted in and did not read to the end; runs shielded, so
        that a reader cut off counts out all the same."""
        if self.attached and not self.ended:
            self.attached = False
            await asyncio.shield(self._services.presence.detach(self._job_id))


async def frames(
    services: Services, job_id: str, after: str | None, reader: Reader | None = None
) -> AsyncIterator[bytes]:
    """Tail the event log, with `reader` (a new one when not given) counted in while it reads. A
    reader never touches the engine: leaving only updates presence.

    If a shared state backend goes away mid-stream, the stream ends without a terminal event: the
    client reconnects with Last-Event-ID (503 with Retry-After until the backend is back) and loses
    nothing."""
    if reader is None:
        reader = Reader(services, job_id, attached=False)
    try:
        await reader.attach()
        async for chunk in coalesced(services.store.read_runs(job_id, after)):
            yield chunk
        reader.ended = True  # `read_runs` ends by itself only once the job has ended
    except StateUnavailable:
        log.warning("stream_lost_state_backend", job_id=job_id)
    finally:
        await reader.leave()


def encode(event: LogEvent) -> bytes:
    """One event's SSE frame, with its id (event data is JSON, one line)."""
    return frame(event.name, event.data, event.id)


_TOKEN_SEP = f"{US}token{US}"  # between a token's id and its data, in a run's records
_NAME_SEPS = re.compile(f"{US}([^{US}{RS}]*){US}")  # between any event's id and its data


def encode_run(run: EventRun) -> bytes:
    """The frames of a run's events, each as `encode` gives it, made from the run's stored records by a
    few replacements over the whole run: relaying a batch of tokens costs no step per token."""
    text = run.records
    if "\n" in text or "\r" in text:  # data with line breaks (no JSON text has any): encode's data lines
        return b"".join(encode(event) for event in run.events())
    text = text.replace(_TOKEN_SEP, "\nevent: token\ndata: ")
    if US in text:  # events other than tokens
        text = _NAME_SEPS.sub(r"\nevent: \1\ndata: ", text)
    return ("id: " + text.replace(RS, "\n\nid: ") + "\n\n").encode()


async def coalesced(
    events: AsyncIterator[LogEvent | EventRun], *, max_pending_bytes: int = MAX_PENDING_BYTES
) -> AsyncIterator[bytes]:
    """The frames of `events`, joined: every event already in the log when the reader is scheduled
    leaves in one write (a burst of tokens from one engine read is one write, not one per token).

    The log is read ahead of the writes by at most `max_pending_bytes`: a reader that does not read
    holds back the log's tail, never more than that much memory (the log itself is the buffer)."""
    buffer = _Pending(max_pending_bytes)

    async def pump() -> None:
        try:
            async for event in events:  # (a run's batch, from the Redis log of a job running elsewhere)
                frame = encode(event) if type(event) is LogEvent else encode_run(cast(EventRun, event))
                await buffer.put(frame)
        finally:
            buffer.ready.set()

    task = asyncio.create_task(pump())
    try:
        while True:
            if not buffer.frames and not task.done():
                await buffer.ready.wait()
            buffer.ready.clear()
            if buffer.frames:
                yield buffer.take()
            elif task.done():
                task.result()  # an error in the log's reader surfaces here
                return
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class _Pending:
    """Frames read from the log and not yet written; `put` waits while they exceed the bound."""

    def __init__(self, limit: int) -> None:
        self.frames: list[bytes] = []
        self.ready = asyncio.Event()  # set when frames arrive (or the log ends)
        self._size = 0
        self._limit = limit
        self._room = asyncio.Event()  # set while under the bound
        self._room.set()

    async def put(self, frame: bytes) -> None:
        self.frames.append(frame)
        self._size += len(frame)
        self.ready.set()
        if self._size >= self._limit:
            self._room.clear()
            await self._room.wait()

    def take(self) -> bytes:
        chunk = b"".join(self.frames)
        self.frames.clear()
        self._size = 0
        self._room.set()
        return chunk
