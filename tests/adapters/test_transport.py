"""The engine clients' transport: connections split among small pools. A lone client stays on one
pool and reuses one connection; open responses spread so that no pool holds more than its share;
every response closed (or failed) gives its place back; an idle connection the engine closed is
replaced. Against a raw HTTP/1.1 server on loopback that records the client port of each request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx2
import pytest

from worker_adapters._transport import SHARD_CONNECTIONS, ShardedTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\n"


class Server:
    def __init__(self) -> None:
        self.ports: list[int] = []
        self.close_after_answer = False
        self.url = ""
        self.bodies = asyncio.Event()  # bodies wait for this after the head is sent
        self.bodies.set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                self.ports.append(writer.get_extra_info("peername")[1])
                writer.write(HEAD)
                await writer.drain()
                await self.bodies.wait()
                writer.write(b"ok")
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    listener = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/"
    async with listener:
        yield srv


def _client(max_connections: int = 64) -> tuple[httpx2.AsyncClient, ShardedTransport]:
    transport = ShardedTransport(httpx2.Limits(max_connections=max_connections, keepalive_expiry=15))
    return httpx2.AsyncClient(transport=transport), transport


async def test_a_lone_client_reuses_one_connection(server: Server) -> None:
    client, _ = _client()
    async with client:
        for _ in range(5):
            assert (await client.get(server.url)).text == "ok"
    assert len(server.ports) == 5 and len(set(server.ports)) == 1


async def test_open_responses_spread_over_the_pools_and_give_their_place_back(server: Server) -> None:
    client, transport = _client(max_connections=64)
    assert len(transport.shards) == 1  # more are added as they are needed
    held = 3 * SHARD_CONNECTIONS + 2
    server.bodies.clear()  # responses stay open: their heads arrive, their bodies wait
    async with client:
        async with AsyncExitStack() as stack:
            responses = [
                await stack.enter_async_context(client.stream("GET", server.url)) for _ in range(held)
            ]
            counts = [shard.open for shard in transport.shards]
            assert sum(counts) == held
            assert len(counts) == 4 and max(counts) == SHARD_CONNECTIONS  # a new pool once all are full
            server.bodies.set()
            for response in responses:  # read to the end: the place, and the connection, are free
                assert await response.aread() == b"ok"
            assert [shard.open for shard in transport.shards] == [0] * len(transport.shards)
        first_round = set(server.ports)
        for _ in range(held):  # the connections opened for the first round serve the next
            assert (await client.get(server.url)).text == "ok"
    assert len(first_round) == held
    assert set(server.ports) == first_round


async def test_no_more_pools_than_max_connections_allow(server: Server) -> None:
    client, transport = _client(max_connections=2 * SHARD_CONNECTIONS)
    server.bodies.clear()
    async with client, AsyncExitStack() as stack:
        for _ in range(2 * SHARD_CONNECTIONS):
            await stack.enter_async_context(client.stream("GET", server.url))
        assert [shard.open for shard in transport.shards] == [SHARD_CONNECTIONS] * 2
        with pytest.raises(httpx2.PoolTimeout):  # the 17th waits for a connection, in a full pool
            await client.get(server.url, timeout=httpx2.Timeout(5.0, pool=0.2))
        assert len(transport.shards) == 2
        server.bodies.set()


async def test_a_failed_request_gives_its_place_back() -> None:
    client, transport = _client(max_connections=8)
    async with client:
        with pytest.raises(httpx2.ConnectError):
            await client.get("http://127.0.0.1:9/")  # discard port: nothing listens
    assert [shard.open for shard in transport.shards] == [0]


async def test_an_idle_connection_the_engine_closed_is_replaced(server: Server) -> None:
    server.close_after_answer = True
    client, _ = _client()
    async with client:
        assert (await client.get(server.url)).text == "ok"
        await asyncio.sleep(0.2)  # the server's FIN arrives while the connection is idle
        assert (await client.get(server.url)).text == "ok"
    assert len(server.ports) == 2 and server.ports[0] != server.ports[1]


async def test_every_pool_shares_one_tls_context(server: Server) -> None:
    """A TLS context holds the CA certificates (about 0.9 MB): one per pool made the bench's idle RSS
    six times larger. Pools added under load take the transport's one context."""
    client, transport = _client(max_connections=64)
    server.bodies.clear()
    async with client, AsyncExitStack() as stack:
        for _ in range(2 * SHARD_CONNECTIONS + 1):
            await stack.enter_async_context(client.stream("GET", server.url))
        contexts = {id(shard.transport._pool._ssl_context) for shard in transport.shards}
        assert len(transport.shards) == 3 and len(contexts) == 1
        server.bodies.set()
