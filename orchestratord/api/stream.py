"""GET /v1/tasks/{job_id}/stream: the job's event log as Server-Sent Events, resumable by id."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
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
WRITE_BYTES = 64 * 1024  # a batch's frames are joined into writes of about this size


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

    The log is read as the client takes the stream, in the response's own task: each time the
    response is ready for more, everything the log holds past its last write leaves as one write (see
    `joined`). Nothing reads ahead of the client: the log itself is the buffer.

    If a shared state backend goes away mid-stream, the stream ends without a terminal event: the
    client reconnects with Last-Event-ID (503 with Retry-After until the backend is back) and loses
    nothing."""
    if reader is None:
        reader = Reader(services, job_id, attached=False)
    try:
        await reader.attach()
        async for batch in services.store.read_batches(job_id, after):
            for chunk in joined(batch):
                yield chunk
        reader.ended = True  # `read_batches` ends by itself only once the job has ended
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


def joined(batch: Sequence[LogEvent | EventRun], write_bytes: int = WRITE_BYTES) -> Iterator[bytes]:
    """The frames of a batch the log gave at once, joined into writes of about `write_bytes` (a burst
    of tokens from one engine read is one write, not one per token; a replay from the start of a long
    log is many, so that a reader's next write is never more than that, and a frame)."""
    if len(batch) == 1:
        event = batch[0]
        yield encode(event) if type(event) is LogEvent else encode_run(cast(EventRun, event))
        return
    frames: list[bytes] = []
    size = 0
    for event in batch:
        frames.append(encode(event) if type(event) is LogEvent else encode_run(cast(EventRun, event)))
        size += len(frames[-1])
        if size >= write_bytes:
            yield b"".join(frames)
            frames.clear()
            size = 0
    if frames:
        yield b"".join(frames)
