"""The transport under each engine's client: the connections to one engine split among small
httpcore2 pools.

An httpcore pool does work that grows with its size each time a request starts or a response is
closed: httpcore 1.0 walked every connection and, for each one, counted all of them again
(encode/httpcore#1035); httpcore2 made that one pass, but the pass still visits every connection and
probes each idle one's socket for expiry. Measured through orchestratord (`jobs` scenario, 2026-12-03):
one httpx2 pool costs 8.9-9.7 ms of CPU per 50-token job at 128-256 concurrent jobs, pools of 8 6.4-7.4
ms. A pool of 8 keeps that pass short; each request goes to the pool with the fewest responses open, so
there is room wherever the replica's `max_connections` allows it, and connections are still reused (an
idle one is only ever in the pool that opened it). Pools are added as the concurrency needs them, and
share one TLS context (a context of its own would cost each pool about 0.9 MB of CA certificates).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import httpx2

SHARD_CONNECTIONS = 8


class _Shard:
    __slots__ = ("open", "transport")

    def __init__(self, transport: httpx2.AsyncHTTPTransport) -> None:
        self.transport = transport
        self.open = 0  # responses handed out and not yet closed


class _Released(httpx2.AsyncByteStream):
    """A response body that gives its shard's place back when closed (exactly once)."""

    __slots__ = ("_inner", "_shard")

    def __init__(self, inner: httpx2.AsyncByteStream, shard: _Shard) -> None:
        self._inner = inner
        self._shard: _Shard | None = shard

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._inner.__aiter__()

    async def aclose(self) -> None:
        if self._shard is not None:
            self._shard.open -= 1
            self._shard = None
        await self._inner.aclose()


class ShardedTransport(httpx2.AsyncBaseTransport):
    """`max_connections` to one engine as pools of at most `SHARD_CONNECTIONS` (see the module
    docstring), each keeping all of its connections alive between requests."""

    def __init__(self, limits: httpx2.Limits) -> None:
        total = limits.max_connections or 256
        self._most = math.ceil(total / SHARD_CONNECTIONS)
        self._size = math.ceil(total / self._most)
        self._limits = httpx2.Limits(
            max_connections=self._size,
            max_keepalive_connections=self._size,
            keepalive_expiry=limits.keepalive_expiry,
        )
        self._tls = httpx2.create_ssl_context()
        self.shards = [self._shard()]

    def _shard(self) -> _Shard:
        return _Shard(httpx2.AsyncHTTPTransport(limits=self._limits, verify=self._tls))

    def _pick(self) -> _Shard:
        """The pool with the fewest open responses (the first of equals: a lone client stays on one
        pool); a new pool when every one is full and `max_connections` allows another."""
        shard = min(self.shards, key=_open)
        if shard.open >= self._size and len(self.shards) < self._most:
            shard = self._shard()
            self.shards.append(shard)
        return shard

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        shard = self._pick()
        shard.open += 1
        try:
            response = await shard.transport.handle_async_request(request)
        except BaseException:
            shard.open -= 1
            raise
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        response.stream = _Released(response.stream, shard)
        return response

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.transport.aclose()


def _open(shard: _Shard) -> int:
    return shard.open
