"""A lean HTTP/1.1 client for the load generator: asyncio protocol + httptools, keep-alive, loopback only.

httpx costs about a millisecond of CPU per request, which on a 2-core machine would be taken from the
process under test. This client parses with httptools (C) and hands each body chunk, stamped with its
arrival time, to a synchronous `Sink` inside `data_received`, so a timestamp is never delayed by the
scheduling of the coroutine that waits for the response.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Sink(Protocol):
    def feed(self, chunk: bytes, now: float) -> None: ...


class BufferSink:
    """Keeps the whole body (small JSON answers)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.first_at: float | None = None

    def feed(self, chunk: bytes, now: float) -> None:
        if self.first_at is None:
            self.first_at = now
        self.parts.append(chunk)

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[bytes, bytes]
    sink: Sink
    sent_at: float  # the request's bytes were handed to the socket
    headers_at: float
    done_at: float


class HTTPError(Exception):
    """The connection broke or the server closed it before the response was complete."""


class StaleConnection(HTTPError):
    """A kept-alive connection was closed by the server before any byte of the answer: safe to retry."""


@dataclass
class _Pending:
    sink: Sink
    future: asyncio.Future[Response]
    sent_at: float
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    headers_at: float = 0.0


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, host_header: bytes) -> None:
        self._host = host_header
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._pending: _Pending | None = None
        self.closed = False
        self.keep_alive = True
        self.from_pool = False  # it waited idle before this request: the server may have closed it

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HTTPError(f"bad HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        pending = self._pending
        stale = pending is not None and pending.headers_at == 0.0 and self.from_pool
        self._fail((StaleConnection if stale else HTTPError)(f"connection closed: {exc}"))

    # -- httptools callbacks ----------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if self._pending is not None:
            self._pending.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        if self._pending is not None:
            self._pending.status = self._parser.get_status_code()
            self._pending.headers_at = time.perf_counter()
        self.keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self._pending is not None:
            self._pending.sink.feed(body, time.perf_counter())

    def on_message_complete(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not pending.future.done():
            response = Response(
                pending.status,
                pending.headers,
                pending.sink,
                pending.sent_at,
                pending.headers_at,
                time.perf_counter(),
            )
            pending.future.set_result(response)
        if not self.keep_alive:
            self.close()

    # -- requests ---------------------------------------------------------------------------------
    def request(
        self, method: str, path: str, body: bytes | None, sink: Sink, headers: dict[str, str] | None = None
    ) -> asyncio.Future[Response]:
        if self._transport is None or self.closed or self._pending is not None:
            raise HTTPError("connection not usable")
        lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + self._host]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}".encode())
        if body is not None:
            lines.append(b"Content-Type: application/json")
            lines.append(b"Content-Length: " + str(len(body)).encode())
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending = _Pending(sink, future, time.perf_counter())
        self._transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))
        return future

    def _fail(self, exc: Exception) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not pending.future.done():
            pending.future.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


class Client:
    """Connections to one loopback base URL, reused while they stay alive."""

    def __init__(self, base_url: str, *, max_connections: int = 4096) -> None:
        parts = urlsplit(base_url)
        if parts.hostname not in LOOPBACK or parts.port is None:
            raise ValueError(f"the benchmark only talks to loopback addresses, not {base_url!r}")
        self.host, self.port = parts.hostname, parts.port
        self._host_header = f"{self.host}:{self.port}".encode()
        self._idle: list[Connection] = []
        self._open = 0
        self._slots = asyncio.Semaphore(max_connections)

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: Connection(self._host_header), self.host, self.port)
        return conn

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        sink: Sink | None = None,
        headers: dict[str, str] | None = None,
        limit_s: float = 120.0,
    ) -> Response:
        """Send one request on an idle connection (or a new one) and wait for the whole response.
        A kept-alive connection that the server closed before answering is replaced once."""
        sink = sink or BufferSink()
        async with self._slots:
            try:
                return await self._send(self._take(), method, path, body, sink, headers, limit_s)
            except StaleConnection:
                return await self._send(None, method, path, body, sink, headers, limit_s)

    async def _send(
        self,
        conn: Connection | None,
        method: str,
        path: str,
        body: bytes | None,
        sink: Sink,
        headers: dict[str, str] | None,
        limit_s: float,
    ) -> Response:
        if conn is None:
            conn = await self._connect()
            self._open += 1
            conn.from_pool = False
        try:
            response = await asyncio.wait_for(conn.request(method, path, body, sink, headers), limit_s)
        except BaseException:
            conn.close()
            self._open -= 1
            raise
        if conn.closed:
            self._open -= 1
        else:
            self._idle.append(conn)
        return response

    async def prewarm(self, count: int) -> None:
        """Open `count` keep-alive connections now, so that no measured request waits for a connect."""
        conns = await asyncio.gather(*(self._connect() for _ in range(count)))
        self._open += len(conns)
        self._idle.extend(conns)

    def _take(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                conn.from_pool = True
                return conn
            self._open -= 1
        return None

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
