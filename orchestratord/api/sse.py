"""Server-Sent Events as orchestratord writes them, for every surface that streams (a job's events,
the OpenAI surfaces' chunks, the queue page).

An `EventStream` writes its frames as they come, sends a comment after `keepalive_s` without a write
(proxies keep the connection open), cuts off a client that takes no bytes for `send_timeout_s`, and
notices at once a client that leaves (a disconnect is what starts cancel-on-disconnect's grace).
It costs one task beside the request's own (the one waiting for the disconnect) and a timer handle
a write. sse-starlette, which served these streams before, ran four tasks a stream and opened a
cancel scope for every write; bench/results/NOTES.md ("Streams written by our own response") has
the figures that made the difference worth the code. Each stream is known to the process's
`OpenStreams` while it lasts, so that a shutdown can close it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from orchestratord.logs import get_logger
from orchestratord.open_streams import OpenStreams

log = get_logger(__name__)
PING = b": ping\n\n"
FINISH_TIMEOUT_S = 1.0  # how long a closed stream waits for its client to take the body's end

# A stream that cuts off a client taking nothing ends without the body's end (the client could not
# take it), and uvicorn then closes the connection and logs an error, as it would for an application
# that forgot to finish its response. The stream says so in its request's task (each request has its
# own), where uvicorn logs, and this filter drops that one record: the stream logs the cut itself.
_INCOMPLETE = "ASGI callable returned without completing response."
_cut_off_here: ContextVar[bool] = ContextVar("stream_cut_off", default=False)


def _not_a_cut_off_stream(record: logging.LogRecord) -> bool:
    return not (record.msg == _INCOMPLETE and _cut_off_here.get())


logging.getLogger("uvicorn.error").addFilter(_not_a_cut_off_stream)


def frame(event: str, data: str, event_id: str | None = None) -> bytes:
    """One SSE frame. A line break in `data` starts a new data line (the client joins them back with
    LF: SSE cannot carry a CR), a trailing one included."""
    if "\n" in data or "\r" in data:
        data = "\ndata: ".join(data.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    head = "" if event_id is None else f"id: {event_id}\n"
    return f"{head}event: {event}\ndata: {data}\n\n".encode()


class EventStream(Response):
    """A `text/event-stream` response of `frames`, each already encoded (see `frame`).

    `keepalive_s`: a comment after that long without a write (None: never). `send_timeout_s`: a write
    that the client does not take within it ends the response (None: wait). `on_end` runs once the
    response is over, however it ended (whether or not `frames` was ever started)."""

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        status_code: int = 200,  # (FastAPI reads a response class's default status from here)
        *,
        keepalive_s: float | None,
        send_timeout_s: float | None,
        headers: Mapping[str, str] | None = None,
        streams: OpenStreams | None = None,
        on_end: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.status_code = status_code
        self.media_type = "text/event-stream"  # (on the instance: the route's error answers stay JSON)
        self.background = None
        self.body_iterator = frames
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})
        self._keepalive = keepalive_s
        self._send_timeout = send_timeout_s
        self._streams = streams
        self._on_end = on_end
        self._task: asyncio.Task[object] | None = None
        self._send: Send | None = None
        self._cut: str | None = None  # why the response was ended from outside: gone, slow, closed
        self._started = False  # the response's head is written
        self._over = False
        self._writing = 0  # writes under way (a comment's may overlap the frames')
        self._last = 0.0  # when the last write began (loop time)
        self._ticker: asyncio.TimerHandle | None = None
        self._pinging: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._send = send
        watcher = loop.create_task(self._watch(receive))
        if self._keepalive:
            self._ticker = loop.call_later(self._keepalive, self._tick)
        if self._streams is not None:
            self._streams.add(self)
        try:
            await self._relay()
        except asyncio.CancelledError:
            if self._cut is None or self._task is None or self._task.uncancel() > 0:
                raise  # a cancellation of the request itself (the server stopping)
            if self._cut == "slow":
                log.warning("stream_send_timeout", path=scope.get("path"), send_timeout_s=self._send_timeout)
                _cut_off_here.set(True)
            elif self._cut == "closed":
                await self._finish()
        except OSError:
            pass  # the client went away in the middle of a write
        finally:
            await self._end(watcher)

    async def _relay(self) -> None:
        await self._write(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        self._started = True
        async for chunk in self.body_iterator:
            await self._write({"type": "http.response.body", "body": chunk, "more_body": True})
        await self._write({"type": "http.response.body", "body": b"", "more_body": False})

    async def _finish(self) -> None:
        """End the body where it stands (a closed stream's client sees a whole response, not a broken
        one), unless the client does not take it within a second."""
        if self._started and self._send is not None:
            with contextlib.suppress(TimeoutError, OSError):
                async with asyncio.timeout(FINISH_TIMEOUT_S):
                    await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _end(self, watcher: asyncio.Task[None]) -> None:
        self._over = True
        if self._streams is not None:
            self._streams.discard(self)
        watcher.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
        if self._pinging is not None:
            self._pinging.cancel()
        try:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()  # a log reader left at a frame it yielded counts its reader out
        finally:
            if self._on_end is not None:
                await self._on_end()

    def cut_off(self, why: str) -> None:
        """End the response from outside (the client left, took nothing in time, or the server stops):
        the frames' reader is canceled where it waits."""
        if self._over or self._cut is not None or self._task is None:
            return
        self._cut = why
        self._task.cancel()

    async def _write(self, message: Message) -> None:
        assert self._send is not None
        if self._cut is not None:  # cut off, and the cancellation did not end the frames' reader
            raise asyncio.CancelledError
        loop = asyncio.get_running_loop()
        self._writing += 1
        self._last = loop.time()
        timer = (
            None if self._send_timeout is None else loop.call_later(self._send_timeout, self.cut_off, "slow")
        )
        try:
            await self._send(message)
        finally:
            self._writing -= 1
            if timer is not None:
                timer.cancel()

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.cut_off("gone")

    def _tick(self) -> None:
        """A comment once the stream has been quiet for `keepalive_s` (a write under way is not quiet)."""
        assert self._keepalive is not None
        loop = asyncio.get_running_loop()
        due = self._last + self._keepalive
        now = loop.time()
        if now < due:
            self._ticker = loop.call_at(due, self._tick)
            return
        self._ticker = loop.call_at(now + self._keepalive, self._tick)
        if not self._writing and (self._pinging is None or self._pinging.done()):
            self._pinging = loop.create_task(self._ping())

    async def _ping(self) -> None:
        with contextlib.suppress(OSError):  # the disconnect's watcher ends the response
            await self._write({"type": "http.response.body", "body": PING, "more_body": True})
