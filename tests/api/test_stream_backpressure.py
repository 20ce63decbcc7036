"""A reader that stops reading costs bounded memory and is cut off after `stream.send_timeout_s`."""

from __future__ import annotations

import socket
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from orchestratord.api.stream import WRITE_BYTES, Reader, frames
from orchestratord.core.queue import QueueEntry, QueuePolicy
from orchestratord.core.route import Route
from orchestratord.core.tasks import JobState
from orchestratord.state.base import JobRecord
from orchestratord.state.memory import MemoryStore
from tests.api.helpers import silent_reader, submit, wait_for
from tests.conftest import mock_pool
from tests.fakes.servers import LoopbackServer


async def test_a_long_log_is_written_a_bounded_write_at_a_time() -> None:
    """Nothing reads ahead of the client (the log is the buffer), so what a reader holds is its one
    write under way: a replay of a long log from the start never builds more than `WRITE_BYTES` and
    a frame at once, and gives every event once, in order."""
    store = MemoryStore(QueuePolicy(capacity=4))
    record = JobRecord("job", "t", "mock", "interactive", JobState.QUEUED, 0.0, "{}")
    await store.create(record, QueueEntry("job", "t", "interactive", Route("mock")))
    for _ in range(20_000):  # about 2.5 MB of frames
        assert await store.append_token("job", " word" * 20)
    await store.finish("job", JobState.SUCCEEDED, "end", {"stop_reason": "length"})
    services: Any = SimpleNamespace(store=store, presence=SimpleNamespace())
    chunks = [chunk async for chunk in frames(services, "job", None, Reader(services, "job", attached=True))]
    assert len(chunks) > 30 and max(len(chunk) for chunk in chunks) < WRITE_BYTES + 200
    body = b"".join(chunks).decode()
    ids = [int(line.split()[1]) for line in body.splitlines() if line.startswith("id:")]
    assert ids == list(range(1, 20_002)) and '\nevent: end\ndata: {"stop_reason":"length"' in body


def _read_to_eof(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    received = bytearray()
    while chunk := sock.recv(1 << 16):  # a socket.timeout here: the server never let go
        received += chunk
    return bytes(received)


def test_a_reader_that_takes_nothing_is_cut_off_after_send_timeout(
    make_server: Callable[..., LoopbackServer], caplog: pytest.LogCaptureFixture
) -> None:
    """...and the cut is the stream's warning alone: uvicorn does not report the response it could not
    finish as the application's error."""
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
    assert [r.getMessage() for r in caplog.records if r.name.startswith("uvicorn")] == []
