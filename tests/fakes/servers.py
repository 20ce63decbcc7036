"""Run an ASGI app under a real uvicorn server on 127.0.0.1 with a free port, in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from orchestratord.cli import http_protocol, websocket_options

REPO = Path(__file__).resolve().parents[2]


@dataclass
class LoopbackServer:
    base_url: str
    app: Any
    server: uvicorn.Server
    loop: asyncio.AbstractEventLoop

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the server's event loop (to inspect or poke its services)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextlib.contextmanager
def serve_in_thread(app: Any, **config: Any) -> Iterator[LoopbackServer]:
    """An orchestratord app (it carries its settings) runs the HTTP and WebSocket protocols
    `orchestratord serve` runs, with the same deadlines, header limit, frame limit and connection caps;
    `config` overrides any uvicorn option."""
    settings = getattr(getattr(app, "state", None), "settings", None)
    if settings is not None:
        config.setdefault("http", http_protocol(settings.limits))
        for name, value in websocket_options(settings.limits).items():
            config.setdefault(name, value)
    cfg = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, **config)
    server = uvicorn.Server(cfg)
    holder: dict[str, Any] = {}

    async def main() -> None:
        await server.serve()
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def run() -> None:
        loop = asyncio.new_event_loop()
        holder["loop"] = loop
        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LoopbackServer(f"http://127.0.0.1:{port}", app, server, holder["loop"])
    finally:
        _drain(app, holder["loop"])
        server.should_exit = True
        thread.join(timeout=30)


def _drain(app: Any, loop: asyncio.AbstractEventLoop) -> None:
    """End every job first, as SIGTERM would, so open streams close and uvicorn can stop at once."""
    services = getattr(getattr(app, "state", None), "services", None)
    if services is None or services.shutdown.is_set():
        return
    from orchestratord.shutdown import drain_and_stop

    asyncio.run_coroutine_threadsafe(drain_and_stop(services), loop).result(30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serve_in_process(
    *args: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
    log_path: Path | None = None,
    max_files: int | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m orchestratord serve --port N ...` as a child process; yields (base_url, process).
    `max_files` lowers the child's file-descriptor limit (RLIMIT_NOFILE) before it starts."""
    port = port or free_port()
    child_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestratord", "serve", "--port", str(port), *args],
        env=child_env,
        stdout=out,
        stderr=subprocess.STDOUT if log_path else subprocess.DEVNULL,
        cwd=REPO,
        preexec_fn=None if max_files is None else partial(_limit_files, max_files),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log_path:
            out.close()  # type: ignore[union-attr]


def _limit_files(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server did not become healthy")
