"""One connection to Redis shared by every request of an instance, its commands pipelined.

Redis answers one connection's commands in the order they came, so callers need not take turns: each
call appends its command to the connection's outgoing buffer and a future to a queue, the commands of
one event-loop turn go out in one write, and each reply read resolves the oldest future (hiredis parses
replies in C). A call costs a packed command and a future; redis-py's asyncio client spends a pool
checkout, a lock and two or three timeouts on each (bench/results/NOTES.md, "the Redis line").

What redis-py still does here: the URL and error parsing (`parse_url`, `BaseParser.parse_error`, so an
error reply is the redis-py exception callers already handle), the blocking stream read and the pub/sub
(each one long-lived connection of its own), transactions with WATCH, and a cluster's slot map.

Nothing is sent twice: a connection lost with commands in flight fails them (the caller answers 503;
Redis may have run them, and a script run twice is not always harmless), and the next call connects
again. A caller that gives up early (a client gone) leaves its reply to be read and dropped. The line
keeps the deadline itself: when the oldest command in flight has waited a whole timeout (from its
call, its connect included), the connection is closed (dead, or holding a backlog no caller waits
for) and everything in flight fails, so a call needs no timer of its own (`asyncio.timeout` per call
cost 5 µs, 14 times a job: bench/results/NOTES.md)."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ExecAbortError, NoScriptError, ResponseError

Arg = str | int | float | bytes


class ErrorReply(Exception):
    """An error reply as hiredis hands it over; turned into redis-py's exception for it."""


def exception_of(reply: ErrorReply) -> ResponseError:
    """redis-py's exception for an error reply (MOVED, NOSCRIPT, WRONGPASS, ... each its own class)."""
    return cast(ResponseError, cast(Any, BaseParser).parse_error(str(reply)))


def pack(args: tuple[Arg, ...]) -> bytes:
    """One command in RESP, an array of bulk strings, packed by hiredis in C (1.2 µs for a job's
    script call where our Python loop took 3.4 µs; the same bytes). A bool is refused (TypeError): no
    Redis argument means True."""
    packed: bytes = hiredis.pack_command(cast(Any, args))  # its stub types a 1-tuple
    return packed


class _Transaction:
    """The replies of MULTI, each queued command and EXEC, gathered for one future."""

    __slots__ = ("future", "need", "replies")

    def __init__(self, future: asyncio.Future[Any], size: int) -> None:
        self.future = future
        self.need = size + 2
        self.replies: list[Any] = []

    def take(self, reply: Any) -> bool:
        self.replies.append(reply)
        if len(self.replies) < self.need:
            return False
        if not self.future.done():
            exec_reply = self.replies[-1]
            queued_errors = [r for r in self.replies[:-1] if isinstance(r, ErrorReply)]
            if isinstance(exec_reply, ErrorReply) or exec_reply is None:
                cause = queued_errors[0] if queued_errors else exec_reply
                error = (
                    exception_of(cause)
                    if isinstance(cause, ErrorReply)
                    else ExecAbortError("transaction aborted")
                )
                self.future.set_exception(error)
            else:
                bad = next((r for r in exec_reply if isinstance(r, ErrorReply)), None)
                if bad is not None:
                    self.future.set_exception(exception_of(bad))
                else:
                    self.future.set_result(exec_reply)
        return True


class _Protocol(asyncio.Protocol):
    def __init__(self, line: Line) -> None:
        self._line = line
        self._parser = hiredis.Reader(encoding="utf-8", replyError=ErrorReply)
        self.waiting: deque[asyncio.Future[Any] | _Transaction] = deque()
        self.since: deque[float] = deque()  # when each waiting command's call began (loop time)
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        waiting = self.waiting
        while (reply := self._parser.gets()) is not False:
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self._fail(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            head = waiting[0]
            if isinstance(head, _Transaction):
                if head.take(reply):
                    waiting.popleft()
                    self.since.popleft()
                continue
            waiting.popleft()
            self.since.popleft()
            if head.done():  # its caller gave up waiting
                continue
            if isinstance(reply, ErrorReply):
                head.set_exception(exception_of(reply))
            else:
                head.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost{f' ({exc})' if exc else ''}"))

    def _fail(self, error: Exception) -> None:
        self._line._forget(self)
        self.since.clear()
        while self.waiting:
            head = self.waiting.popleft()
            future = head.future if isinstance(head, _Transaction) else head
            if not future.done():
                future.set_exception(error)
        if not self.lost.done():
            self.lost.set_result(None)
        if self.transport is not None:
            self.transport.abort()


class Line:
    """A Redis connection many callers share at once (see the module's text). `timeout_s` bounds each
    call, its connect included."""

    def __init__(self, url: str, *, timeout_s: float = 2.0) -> None:
        self._where: dict[str, Any] = cast(Any, parse_url)(url)
        self._timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._out: list[bytes] = []
        self._flush_pending = False
        self._watch: asyncio.TimerHandle | None = None  # the deadline of the oldest command in flight
        self.connections = 0  # opened so far (the bench's and tests' count)

    async def execute(self, *args: Arg) -> Any:
        return await self._execute(args, asyncio.get_running_loop().time())

    async def _execute(self, args: tuple[Arg, ...], since: float) -> Any:
        protocol = self._protocol or await self._connected(since)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(protocol, future, since)
        self._send(pack(args))
        return await future

    async def transaction(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """`commands` as one MULTI/EXEC (the replies of EXEC); no other caller's command runs between."""
        loop = asyncio.get_running_loop()
        since = loop.time()
        protocol = self._protocol or await self._connected(since)
        future: asyncio.Future[Any] = loop.create_future()
        self._queue(protocol, _Transaction(future, len(commands)), since)
        self._send(b"".join([pack(("MULTI",)), *(pack(tuple(c)) for c in commands), pack(("EXEC",))]))
        result: list[Any] = await future
        return result

    async def evalsha(self, sha: str, source: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run a script by its digest; a Redis that does not have it (restarted, flushed) gets its source
        (within the same call's deadline)."""
        since = asyncio.get_running_loop().time()
        try:
            return await self._execute(("EVALSHA", sha, len(keys), *keys, *args), since)
        except NoScriptError:
            return await self._execute(("EVAL", source, len(keys), *keys, *args), since)

    async def _connected(self, since: float) -> _Protocol:
        """The connection, opened (or waited for, while another call opens it) within the call's
        timeout."""
        async with asyncio.timeout_at(since + self._timeout_s):
            return await self._connect()

    def _queue(self, protocol: _Protocol, waiter: asyncio.Future[Any] | _Transaction, since: float) -> None:
        """`waiter` takes its reply after those of the commands queued before it; the line's deadline
        watches it from `since` (when its call began)."""
        protocol.waiting.append(waiter)
        protocol.since.append(since)
        if self._watch is None:
            self._watch = asyncio.get_running_loop().call_at(since + self._timeout_s, self._check)

    def _check(self) -> None:
        """The deadline: the oldest command in flight answered within its timeout, or the connection
        goes, and everything in flight with it."""
        self._watch = None
        protocol = self._protocol
        if protocol is None or not protocol.since:
            return
        loop = asyncio.get_running_loop()
        due = protocol.since[0] + self._timeout_s
        if loop.time() >= due:
            protocol._fail(RedisConnectionError(f"Redis did not answer within {self._timeout_s:g} s"))
        else:
            self._watch = loop.call_at(due, self._check)

    def _send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        out, self._out = self._out, []
        protocol = self._protocol
        if protocol is None or protocol.transport is None or not out:
            return
        try:
            protocol.transport.write(b"".join(out))
        except (OSError, RuntimeError) as exc:  # uvloop: "the handler is closed"
            protocol._fail(RedisConnectionError(f"writing to Redis failed ({exc})"))

    async def _connect(self) -> _Protocol:
        """Open the connection (one caller at a time); bounded by the calling `_connected`."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None:
                return self._protocol
            loop = asyncio.get_running_loop()
            where = self._where
            if "path" in where:
                _, protocol = await loop.create_unix_connection(lambda: _Protocol(self), where["path"])
            else:
                context = (
                    ssl.create_default_context() if where.get("connection_class") is SSLConnection else None
                )
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(self),
                    where.get("host", "localhost"),
                    where.get("port", 6379),
                    ssl=context,
                )
            self._protocol = protocol
            self.connections += 1
            try:
                await self._hello(protocol)
            except BaseException:
                protocol._fail(RedisConnectionError("Redis refused the connection's setup"))
                raise
            return protocol

    async def _hello(self, protocol: _Protocol) -> None:
        where = self._where
        password, username = where.get("password"), where.get("username")
        if password is not None:
            await self.execute(*(("AUTH", username, password) if username else ("AUTH", password)))
        if where.get("db"):
            await self.execute("SELECT", where["db"])

    def _forget(self, protocol: _Protocol) -> None:
        if self._protocol is protocol:
            self._protocol = None
            self._out.clear()  # written for a connection that is gone; their futures have failed

    async def aclose(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
            await asyncio.wait({protocol.lost}, timeout=1.0)
