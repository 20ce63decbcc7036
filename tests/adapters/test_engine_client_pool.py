"""The engine client's connection pool (`worker_adapters._http.build_client`, one httpx2 pool): a
lone client reuses one connection; as many responses as `max_connections` stay open at once, each on
its own connection, and once read to their end those connections serve the next round (none closed
and reopened); one more waits for a place; a failed request keeps no place; an idle connection the
engine closed is replaced. Against a raw HTTP/1.1 server on loopback that records the client port of
each request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx2
import pytest

from worker_adapters._http import build_client
from worker_adapters.base import AdapterConfig

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


def _client(max_connections: int = 64) -> httpx2.AsyncClient:
    return build_client(
        AdapterConfig("openai", "http://unused", "m", options={"max_connections": max_connections})
    )


async def test_a_lone_client_reuses_one_connection(server: Server) -> None:
    async with _client() as client:
        for _ in range(5):
            assert (await client.get(server.url)).text == "ok"
    assert len(server.ports) == 5 and len(set(server.ports)) == 1


async def test_open_responses_each_hold_a_connection_and_the_next_round_reuses_them(server: Server) -> None:
    held = 26
    server.bodies.clear()  # responses stay open: their heads arrive, their bodies wait
    async with _client(max_connections=64) as client:
        async with AsyncExitStack() as stack:
            responses = [
                await stack.enter_async_context(client.stream("GET", server.url)) for _ in range(held)
            ]
            server.bodies.set()
            for response in responses:  # read to the end: the connection is free again
                assert await response.aread() == b"ok"
        first_round = set(server.ports)
        for _ in range(3):  # the connections opened for the first round serve the next ones
            await asyncio.gather(*(client.get(server.url) for _ in range(held)))
    assert len(first_round) == held
    assert set(server.ports) == first_round


async def test_no_more_connections_than_max_connections(server: Server) -> None:
    server.bodies.clear()
    async with _client(max_connections=4) as client, AsyncExitStack() as stack:
        for _ in range(4):
            await stack.enter_async_context(client.stream("GET", server.url))
        with pytest.raises(httpx2.PoolTimeout):  # the fifth waits for a connection, in a full pool
            await client.get(server.url, timeout=httpx2.Timeout(5.0, pool=0.2))
        server.bodies.set()
    assert len(set(server.ports)) == 4


async def test_a_failed_request_keeps_no_place(server: Server) -> None:
    async with _client(max_connections=1) as client:
        for _ in range(3):
            with pytest.raises(httpx2.ConnectError):
                await client.get("http://127.0.0.1:9/")  # discard port: nothing listens
        assert (await client.get(server.url, timeout=httpx2.Timeout(5.0, pool=0.5))).text == "ok"


async def test_an_idle_connection_the_engine_closed_is_replaced(server: Server) -> None:
    server.close_after_answer = True
    async with _client() as client:
        assert (await client.get(server.url)).text == "ok"
        await asyncio.sleep(0.2)  # the server's FIN arrives while the connection is idle
        assert (await client.get(server.url)).text == "ok"
    assert len(server.ports) == 2 and server.ports[0] != server.ports[1]
