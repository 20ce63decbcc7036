"""The HTTP/1.1 protocol the server runs: uvicorn's httptools protocol (llhttp, a C parser: less CPU
per request than the pure-Python h11) with the guards it lacks.

- A header deadline. uvicorn waits forever for the first request on a new connection (its keep-alive
  timeout only starts after a response), so a client that connects and sends nothing, or trickles its
  headers, would hold a connection for good. Here a new connection's first request head must be
  complete within `header_timeout_s` of the connection opening, and every later one within
  `header_timeout_s` of its first byte (or of the previous response's end, for a head that began
  before it); else the connection is closed.
- A keep-alive of its own length. Between a response and the next request's first byte, a connection
  idles for up to `keep_alive_s` (uvicorn's keep-alive timer, set from it here), apart from the header
  deadline: a load balancer that keeps idle connections to its backends for 60 s needs backends that
  keep them longer, while a slow head is still cut off after `header_timeout_s`.
- A body deadline. A request's body must be complete within max(`body_timeout_s`, its length /
  `min_body_rate_bytes_s`) of its headers; else the client gets 408 and the connection closes.
- Connection caps (`Connections`): at most `max_connections` open client connections, and at most
  `max_connections_per_client` from one address. A connection over a cap is not refused while one of
  its kind (any, or the same address's) waits on its client: the one waiting longest (for a head, a
  body, or the next request of a keep-alive) is closed (408 when it had sent part of a request) and
  the newcomer is served. So trickling clients cannot lock out well-behaved ones, and the cap, below
  the process's file-descriptor limit, keeps the server able to accept at all.
- A header size limit. llhttp has none, and uvicorn would buffer a head of any size. Here the bytes
  of a head still incomplete are counted as they arrive, and past `max_header_bytes` the client gets
  431. (A head that arrives whole in one read is measured by the middleware, which answers 431 too.)
  When one read ends a request and begins the next (pipelining), where the new head begins is not
  known: that read is not counted, so such a head may exceed the limit by one read (at most 256 kB)
  before the 431, or the deadline, ends it.
- Errors the application never sees (headers over the limit, a request llhttp cannot parse, an HTTP
  version other than 1.0 or 1.1) get the JSON envelope like every other error: 431 for oversized
  headers, 400 otherwise. Then the connection closes gracefully: our side is shut, and what the client
  still sends is read and dropped for a moment, so the client reads the answer instead of a reset
  connection (nginx's "lingering close"). llhttp parses pipelined requests as they arrive, before the
  responses to earlier ones are written: the answer waits until those are complete, so responses stay
  in request order. A request whose body is malformed gets the answer in place of its own response,
  unless that response has begun: then the connection just closes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from orchestratord.api.errors import envelope
from orchestratord.errors import HeadersTooLarge, InvalidParams, OrchestratorError, RequestTimeout
from orchestratord.logs import get_logger

log = get_logger(__name__)
REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
LINGER_S = 2.0
HTTP_VERSIONS = ("1.0", "1.1")


class Connections:
    """The open client connections of one server, for the caps: in total and per client address."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._open: dict[GuardedHttpToolsProtocol, str] = {}
        self._by_client: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, conn: GuardedHttpToolsProtocol, client: str) -> bool:
        """Count `conn` in. At a cap, the connection of that scope waiting longest on its client is
        evicted to make room; False when none waits (every one is being served): `conn` must go."""
        if len(self._open) >= self.total:
            scope: str | None = None
        elif self._by_client[client] >= self.per_client:
            scope = client
        else:
            self._add(conn, client)
            return True
        victim = self._longest_waiting(scope)
        if victim is None:
            return False
        self.leave(victim)
        victim.evict()
        self._add(conn, client)
        return True

    def leave(self, conn: GuardedHttpToolsProtocol) -> None:
        client = self._open.pop(conn, None)
        if client is not None:
            self._by_client[client] -= 1
            if not self._by_client[client]:
                del self._by_client[client]

    def _add(self, conn: GuardedHttpToolsProtocol, client: str) -> None:
        self._open[conn] = client
        self._by_client[client] += 1

    def _longest_waiting(self, client: str | None) -> GuardedHttpToolsProtocol | None:
        waiting = [
            c for c, addr in self._open.items() if c.waiting_since is not None and client in (None, addr)
        ]
        return min(waiting, key=lambda c: c.waiting_since or 0.0, default=None)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    keep_alive_s: int = 75
    max_header_bytes: int = 16 * 1024
    body_timeout_s: float = 30.0
    min_body_rate_bytes_s: int = 4096
    open_connections: Connections = Connections(total=1 << 30, per_client=1 << 30)

    # When the connection began waiting on its client (for a head or a body); None while the server
    # owes the response, or once it is closing.
    waiting_since: float | None = None

    _deadline: asyncio.TimerHandle | None = None
    _in_head: bool = True  # the bytes arriving belong to a request head (or come before one)
    _boundaries: int = 0  # heads and messages ended so far: tells whether a read crossed one
    _head_bytes: int = 0
    _head_began: bool = False  # the parser has begun a request it has not ended yet
    _owed: int = 0  # requests parsed whose response is not complete yet
    _refusal: OrchestratorError | None = None  # the answer to send once `_owed` is 0
    _lingering: bool = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.timeout_keep_alive = self.keep_alive_s  # uvicorn arms it when a response ends
        super().connection_made(transport)
        client = self.client[0] if self.client else ""
        if not self.open_connections.admit(self, client):
            log.warning("connection_refused", client=client, open=len(self.open_connections))
            self.transport.close()  # every open connection is being served: no room for this one
            return
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.waiting_since = None
        self.open_connections.leave(self)
        super().connection_lost(exc)

    def evict(self) -> None:
        """Close for a newcomer (`Connections`): 408 if the client had begun a request, else quietly."""
        began = not self._in_head or self._head_bytes > 0
        log.info("connection_evicted", waited_s=round(time.monotonic() - (self.waiting_since or 0.0), 1))
        self._disarm()
        self.waiting_since = None
        self._lingering = True
        if began and (self._in_head or self._disown(self.cycle)):
            self._send_error(
                RequestTimeout("the connection was closed for another client: send requests promptly"),
                linger=False,
            )
        else:
            self.transport.close()

    def handle_websocket_upgrade(self) -> None:
        """The connection is a WebSocket's from here (uvicorn's WebSocket protocol takes the transport,
        and this one never hears of it again): its HTTP deadlines stop, and it stays counted in the
        caps, never evicted (it is being served), until the WebSocket's connection is lost."""
        self._disarm()
        self.waiting_since = None
        super().handle_websocket_upgrade()
        socket = self.transport.get_protocol()
        lost = socket.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            self.open_connections.leave(self)
            lost(exc)

        socket.connection_lost = connection_lost  # type: ignore[method-assign]

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the answer is sent; what follows is dropped until the connection closes
        if self._deadline is None and self._owed == 0:
            self._await_headers()  # an idle keep-alive's next request begins (uvicorn unsets its timer)
        boundaries = self._boundaries
        super().data_received(data)
        # A read that crossed no boundary and ends inside a head is all head. One that crossed one
        # began a new head somewhere inside: counting starts with the next read.
        if self._in_head and boundaries == self._boundaries and not self._lingering:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                limit = self.max_header_bytes
                self._refuse(HeadersTooLarge(f"request headers exceed the limit of {limit} bytes"))

    # -- llhttp's callbacks (the parser calls them from inside `data_received`) ------------------
    def on_message_begin(self) -> None:
        self._head_began = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._disarm()
        if self.parser.get_http_version() not in HTTP_VERSIONS:
            # stops the parser; uvicorn answers with `send_400_response` (HTTP/0.9 and 2.0 parse fine)
            raise httptools.HttpParserError("unsupported HTTP version")
        self._in_head = False
        self._boundaries += 1
        self._head_bytes = 0
        self._await_body()
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:  # not a WebSocket upgrade: a request that needs a response
            self._owed += 1

    def on_message_complete(self) -> None:
        self._disarm()  # the body is in: the server owes the response now
        self.waiting_since = None
        self._head_began = False
        self._in_head = True
        self._boundaries += 1
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._owed -= 1
        next_is_parsed = bool(self.pipeline)
        super().on_response_complete()  # starts the next pipelined request, if one is parsed
        if self.transport.is_closing():
            return
        if self._refusal is not None:
            self._answer_when_due()
        elif self._head_began and not next_is_parsed:
            self._await_headers()  # a head began while the server owed the response
        elif not next_is_parsed:
            self.waiting_since = time.monotonic()  # idle: uvicorn's keep-alive timer closes it

    def send_400_response(self, msg: str) -> None:
        """llhttp refused the bytes received, or `on_headers_complete` refused the HTTP version."""
        self._refuse(InvalidParams("malformed HTTP/1.1 request; check the request line and headers"))

    # -- the header deadline ---------------------------------------------------------------------
    def _await_headers(self) -> None:
        self.waiting_since = time.monotonic()
        self._deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _await_body(self) -> None:
        """The body's deadline: `body_timeout_s`, or longer for a long body at the minimum rate."""
        length = next((int(v) for k, v in self.headers if k == b"content-length" and v.isdigit()), 0)
        allowed = max(self.body_timeout_s, length / self.min_body_rate_bytes_s)
        self.waiting_since = time.monotonic()
        self._deadline = self.loop.call_later(allowed, self._body_late, allowed)

    def _body_late(self, allowed: float) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.info("request_body_timed_out", waited_s=round(allowed, 1))
            rate = self.min_body_rate_bytes_s
            late = (
                f"the request body did not arrive within {allowed:.0f} s; send it at {rate} bytes/s or faster"
            )
            self._refuse(RequestTimeout(late))

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.info("connection_timed_out", waited_s=self.header_timeout_s, header_bytes=self._head_bytes)
            self.transport.close()

    # -- answering what the application never sees -----------------------------------------------
    def _refuse(self, exc: OrchestratorError) -> None:
        """Stop reading requests; answer `exc` once the responses owed before it are complete."""
        self._disarm()
        self.waiting_since = None
        self._lingering = True
        if not self._in_head and not self._disown(self.cycle):
            self.transport.close()
            return
        self._refusal = exc
        self._answer_when_due()

    def _disown(self, cycle: RequestResponseCycle) -> bool:
        """The request whose body broke gets the refusal as its answer: its app sees a disconnect
        (and writes nothing), and if it waits in the pipeline it never starts. False if its own
        response has begun already."""
        if cycle.response_started:
            return False
        cycle.disconnected = True
        cycle.message_event.set()
        if self.pipeline and self.pipeline[0][0] is cycle:  # the newest request is queued leftmost
            self.pipeline.popleft()
        self._owed -= 1
        return True

    def _answer_when_due(self) -> None:
        if self._owed == 0 and self._refusal is not None:
            self._send_error(self._refusal)

    def _send_error(self, exc: OrchestratorError, *, linger: bool = True) -> None:
        body = orjson.dumps(envelope(exc))
        head = [
            b"HTTP/1.1 %d %s" % (exc.http_status, REASONS.get(exc.http_status, b"Error")),
            b"content-type: application/json",
            b"content-length: %d" % len(body),
            b"x-correlation-id: " + str(uuid.uuid4()).encode(),
            b"x-should-retry: " + (b"true" if exc.retriable else b"false"),
            b"connection: close",
        ]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        if linger and self.transport.can_write_eof():
            self.transport.write_eof()  # the client's end of file then closes the transport
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


def guarded_protocol(
    *,
    header_timeout_s: float,
    keep_alive_s: int,
    max_header_bytes: int,
    body_timeout_s: float = 30.0,
    min_body_rate_bytes_s: int = 4096,
    connections: Connections | None = None,
) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn's `http=`, with this server's deadlines, size limit and caps."""

    class Guarded(GuardedHttpToolsProtocol):
        pass

    Guarded.header_timeout_s = header_timeout_s
    Guarded.keep_alive_s = keep_alive_s
    Guarded.max_header_bytes = max_header_bytes
    Guarded.body_timeout_s = body_timeout_s
    Guarded.min_body_rate_bytes_s = min_body_rate_bytes_s
    Guarded.open_connections = connections if connections is not None else Connections(1 << 30, 1 << 30)
    return Guarded
