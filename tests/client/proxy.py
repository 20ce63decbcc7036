"""A loopback TCP proxy that cuts event streams: the network failure the client must survive.

It forwards bytes both ways unchanged. On a connection whose request is for a job's stream, it
passes on the response's headers and then `cut_after` bytes of its body, and closes both sides:
the client sees a connection reset mid-event, exactly as a flaky network or a restarted load
balancer would show it. Only the first `cuts` streams are cut; later ones pass whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class _Cut:
    """The response of one cut stream: headers pass, then `budget` bytes of body, then the cut."""

    budget: int
    head: bytes = b""
    in_body: bool = False

    def take(self, data: bytes) -> tuple[bytes, bool]:
        """What to pass on of `data`, and whether to cut the connection after it."""
        start = 0
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return data, False
            self.in_body = True
            start = len(data) - (len(self.head) - end - 4)
        body = len(data) - start
        if body >= self.budget:
            passed = data[: start + self.budget]
            self.budget = 0
            return passed, True
        self.budget -= body
        return data, False


@dataclass
class CuttingProxy:
    upstream: str  # the server's base URL
    cut_after: int
    cuts: int
    base_url: str = ""
    stream_requests: list[bytes] = field(default_factory=list)  # the head of each stream request
    cut_count: int = 0
    connections: set[asyncio.Event] = field(default_factory=set)  # each open one's "done" signal

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = urlsplit(self.upstream)
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        cut: list[_Cut] = []  # the current request's cut, set when a stream request passes
        done = asyncio.Event()
        self.connections.add(done)
        pumps = [
            asyncio.create_task(self._requests(reader, up_writer, cut, done)),
            asyncio.create_task(self._responses(up_reader, writer, cut, done)),
        ]
        try:
            await done.wait()
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()
            self.connections.discard(done)

    async def _requests(
        self, reader: asyncio.StreamReader, out: asyncio.StreamWriter, cut: list[_Cut], done: asyncio.Event
    ) -> None:
        while data := await reader.read(65536):
            line = data.split(b"\r\n", 1)[0]
            if line.startswith(b"GET ") and b"/stream " in line:
                self.stream_requests.append(data)
                cut.clear()
                if self.cut_count < self.cuts:
                    self.cut_count += 1
                    cut.append(_Cut(self.cut_after))
            out.write(data)
            await out.drain()
        done.set()

    async def _responses(
        self, reader: asyncio.StreamReader, out: asyncio.StreamWriter, cut: list[_Cut], done: asyncio.Event
    ) -> None:
        while data := await reader.read(65536):
            stop = False
            if cut:
                data, stop = cut[0].take(data)
            out.write(data)
            await out.drain()
            if stop:
                break
        done.set()


@contextlib.contextmanager
def cutting_proxy(upstream: str, *, cut_after: int, cuts: int) -> Iterator[CuttingProxy]:
    """A `CuttingProxy` in front of `upstream`, served on its own event loop in a thread (so a
    blocking client and an asyncio one can both use it)."""
    proxy = CuttingProxy(upstream, cut_after, cuts)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        proxy.base_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        started.set()
        async with server:
            await stop.wait()
        # Python 3.11's server does not wait for its connections: end them, so none outlives the loop.
        for done in list(proxy.connections):
            done.set()
        await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}), return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    started.wait(5)
    try:
        yield proxy
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(5)
        loop.close()
