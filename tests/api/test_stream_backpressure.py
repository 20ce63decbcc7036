"""A reader that stops reading costs bounded memory and is cut off after `stream.send_timeout_s`."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import httpx

from orchestratord.api.stream import MAX_PENDING_BYTES, coalesced, encode
from orchestratord.core.tasks import LogEvent
from tests.api.helpers import silent_reader, submit, wait_for
from tests.conftest import mock_pool
from tests.fakes.servers import LoopbackServer


def _token(i: int) -> LogEvent:
    return LogEvent(str(i), "token", f'{{"t":" word","i":{i}}}')


async def test_the_log_is_read_ahead_of_a_stalled_reader_by_a_bounded_amount() -> None:
    pulled = 0

    async def endless() -> AsyncIterator[LogEvent]:
        nonlocal pulled
        while True:
            yield _token(pulled)
            pulled += 1
            await asyncio.sleep(0)

    frames = coalesced(endless())
    first = await anext(frames)  # the reader takes one write, then stops reading
    for _ in range(2000):
        await asyncio.sleep(0)
    bound = MAX_PENDING_BYTES // len(encode(_token(0))) + 2  # frames of at least this size
    assert pulled - first.count(b"event: token") <= bound
    resumed = await anext(frames)  # reading again picks up where it left off, nothing lost
    ids = [int(line.split()[1]) for line in (first + resumed).decode().splitlines() if line.startswith("id:")]
    assert ids == list(range(len(ids)))
    await frames.aclose()


def _read_to_eof(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    received = bytearray()
    while chunk := sock.recv(1 << 16):  # a socket.timeout here: the server never let go
        received += chunk
    return bytes(received)


def test_a_reader_that_takes_nothing_is_cut_off_after_send_timeout(
    make_server: Callable[..., LoopbackServer],
) -> None:
    tokens = 20_000  # about 1 MB of frames: far more than the socket buffers between us and the server
    server = make_server(
        pools=[
            mock_pool(
                ctx_max=tokens * 2, max_tokens_out=tokens, options={"ttft_ms": 0, "tokens_per_s": 1_000_000}
            )
        ],
        limits={"max_tokens": tokens},
        stream={"send_timeout_s": 0.3, "keepalive_s": 60},
    )
    # Connections inherit the listening socket's buffer size: small and fixed, so the server's writes
    # block after a few kB instead of after the megabytes loopback autotuning would allow.
    server.server.servers[0].sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = submit(client, max_tokens=tokens, cancel_on_disconnect=False)
        sock = silent_reader(server.base_url, job["sse_url"])
        try:
            wait_for(lambda: client.get(job["status_url"]).json()["state"] == "succeeded", timeout=60)
            store = server.app.state.services.store
            wait_for(lambda: server.call(store.get(job["job_id"])).readers == 0, timeout=15)  # detached
            received = _read_to_eof(sock, timeout=20)
        finally:
            sock.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert b"event: end" not in received  # cut off mid-stream: the client reconnects with Last-Event-ID
