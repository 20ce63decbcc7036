"""The HTTP/1.1 protocol the server runs: uvicorn's h11 protocol with two guards it lacks.

- A header deadline. uvicorn waits forever for the first request on a new connection (its keep-alive
  timeout only starts after a response), so a client that connects and sends nothing, or trickles its
  headers, would hold a connection for good. Here every request's headers must be complete within
  `header_timeout_s` of the connection opening or the previous response ending; else it is closed.
- Errors the application never sees (headers over the limit, a request h11 cannot parse) get the JSON
  envelope like every other error: 431 for oversized headers, 400 otherwise. Then the connection closes
  gracefully: our side is shut, and what the client still sends is read and dropped for a moment, so
  the client reads the answer instead of a reset connection (nginx's "lingering close").
"""

from __future__ import annotations

import asyncio
import uuid

import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol

from orchestratord.api.errors import envelope
from orchestratord.errors import HeadersTooLarge, InvalidParams, OrchestratorError
from orchestratord.logs import get_logger

log = get_logger(__name__)
REASONS = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}
LINGER_S = 2.0


class GuardedH11Protocol(H11Protocol):
    header_timeout_s: float = 10.0

    _deadline: asyncio.TimerHandle | None = None
    _waiting_cycle: object = None
    _header_bytes: int = 0
    _lingering: bool = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the answer is sent; what follows is dropped until the connection closes
        if self._deadline is not None:
            self._header_bytes += len(data)
        super().data_received(data)
        if self.cycle is not self._waiting_cycle:
            self._disarm()  # a request's headers are complete

    def on_response_complete(self) -> None:
        finished = self.cycle
        super().on_response_complete()  # may already start a pipelined request: a new cycle
        if self.cycle is finished and not self.transport.is_closing():
            self._await_headers()

    def send_400_response(self, msg: str) -> None:
        """h11 refused the bytes received: too many of them before the headers ended, or malformed."""
        limit = self.config.h11_max_incomplete_event_size or 0
        if self._header_bytes > limit:
            self._send_error(HeadersTooLarge(f"request headers exceed the limit of {limit} bytes"))
        else:
            self._send_error(InvalidParams("malformed HTTP/1.1 request; check the request line and headers"))

    # -- the header deadline ---------------------------------------------------------------------
    def _await_headers(self) -> None:
        self._disarm()
        self._waiting_cycle = self.cycle
        self._header_bytes = 0
        self._deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.info("connection_timed_out", waited_s=self.header_timeout_s, header_bytes=self._header_bytes)
            self.transport.close()

    def eof_received(self) -> None:
        if self._lingering:
            self.transport.close()  # the client is done sending: no need to linger longer

    def _send_error(self, exc: OrchestratorError) -> None:
        self._disarm()
        self._lingering = True
        body = orjson.dumps(envelope(exc))
        head = [
            b"HTTP/1.1 %d %s" % (exc.http_status, REASONS.get(exc.http_status, b"Error")),
            b"content-type: application/json",
            b"content-length: %d" % len(body),
            b"x-correlation-id: " + str(uuid.uuid4()).encode(),
            b"connection: close",
        ]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


def guarded_protocol(*, header_timeout_s: float) -> type[H11Protocol]:
    """The protocol class for uvicorn's `http=`, with this server's header deadline."""

    class Guarded(GuardedH11Protocol):
        pass

    Guarded.header_timeout_s = header_timeout_s
    return Guarded
