"""Run an ASGI app under a real uvicorn server on 127.0.0.1, in a background thread, for loopback tests.

The socket is bound before the thread starts (port 0: the kernel picks a free port), so there is no
race for the port, and the thread is stopped and joined on exit. Streaming tests need a real socket:
httpx's ASGITransport buffers whole bodies and cannot show a client disconnect to the app.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

_START_TIMEOUT_S = 10.0
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


@contextmanager
def serve(app: ASGIApp) -> Iterator[str]:
    """Serve `app` until the block exits; yields its base URL, e.g. ``http://127.0.0.1:43117``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"fake-engine-{port}")
    thread.start()
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the fake engine on port {port} did not start")
            time.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


def closed_port_url() -> str:
    """A loopback URL on which nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class AppSwitch:
    """An ASGI app that forwards to whichever app is current: one server can host a fresh fake per test
    (starting and stopping uvicorn costs a fifth of a second each time)."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        app = self.app
        if app is None:
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"no fake engine is mounted"})
            return
        await app(scope, receive, send)
