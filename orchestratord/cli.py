"""`orchestratord serve [--host] [--port] [--config FILE]`, and the client commands (`run`, `status`,
`cancel`, `pools`: orchestratord/client_cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import socket
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from orchestratord.api.protocol import Connections, GuardedHttpToolsProtocol, guarded_protocol
from orchestratord.app import create_app
from orchestratord.client_cli import add_commands
from orchestratord.client_cli import main as client_main
from orchestratord.logs import configure, get_logger
from orchestratord.services import Services
from orchestratord.settings import ConfigError, LimitsConfig, Settings, load_settings
from orchestratord.shutdown import drain_and_stop

log = get_logger(__name__)


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT, drain (503 to new work, running jobs finish within the grace
    period, the rest end with a retriable error), then stop as uvicorn normally does."""

    def __init__(self, config: uvicorn.Config, app_state: object) -> None:
        super().__init__(config)
        self.app_state = app_state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_requested = False
        self._draining: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler may interrupt any line, including one holding the log's write lock: it
        # only flags the request and hands the work to the event loop (call_soon_threadsafe is
        # signal-safe). A second signal stops at once.
        services: Services | None = getattr(self.app_state, "services", None)
        if self._drain_requested or self._loop is None or services is None or services.shutdown.is_set():
            super().handle_exit(sig, frame)
            return
        self._drain_requested = True
        services.admission.stop_accepting()  # a plain attribute write: safe here, and immediate
        self._loop.call_soon_threadsafe(self._start_drain, services, sig)

    def _start_drain(self, services: Services, sig: int) -> None:
        log.info("shutdown_requested", signal=sig, grace_s=services.settings.shutdown_grace_s)
        self._draining = asyncio.get_running_loop().create_task(self._drain(services))

    async def _drain(self, services: Services) -> None:
        await drain_and_stop(services)
        await asyncio.sleep(0.2)  # let the terminal events reach the open streams
        self.should_exit = True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestratord", description="A control plane for LLM inference.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="bind port (default 8080)")
    serve.add_argument("--config", default=None, help="YAML config file (pools, queue, tenants, ...)")
    add_commands(sub)
    return parser


# The young generation every 20,000 allocations instead of CPython's default 700; the older ones at
# the default ratios, so a full pass (which reclaims cycles that outlived a job) is still considered every
# 4 million allocations. Measured over 6,000 50-token jobs: (700, 10, 10) 84 µs of CPU per token and
# 122 MB RSS after; (20_000, 20, 10) 63 µs and 126 MB; (50_000, 50, 100) 64 µs and 129 MB.
GC_THRESHOLDS = (20_000, 20, 10)


def serve(settings: Settings) -> None:
    configure(settings.log_level, settings.log_format, log_prompts=settings.log_prompts)
    app = create_app(settings)
    tune_gc()
    DrainingServer(uvicorn_config(app, settings), app.state).run()


def tune_gc() -> None:
    """The server allocates and frees objects per request and per token, almost none of them in
    reference cycles (which are all the cyclic collector is for). With the default thresholds a
    collection runs every few hundred allocations, and each older-generation pass walks the modules
    and app built at start-up again. So: freeze what start-up built (it lives as long as the process)
    and collect far less often. Measured with the bench harness: about 17% less CPU per relayed
    token, and less per job (docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def connection_caps(limits: LimitsConfig) -> Connections:
    """The client-connection caps; by default three quarters of the file descriptors this process may
    open (the rest is for engines, Redis and files), so accepting never fails for want of one."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    derived = 65536 if soft == resource.RLIM_INFINITY else max(8, soft * 3 // 4)
    total = limits.max_connections or derived
    return Connections(total=total, per_client=limits.max_connections_per_client or total)


def http_protocol(limits: LimitsConfig) -> type[GuardedHttpToolsProtocol]:
    """The HTTP protocol class with this configuration's deadlines, header limit and caps."""
    return guarded_protocol(
        header_timeout_s=limits.header_timeout_s,
        keep_alive_s=limits.keep_alive_s,
        max_header_bytes=limits.max_header_bytes,
        body_timeout_s=limits.body_timeout_s,
        min_body_rate_bytes_s=limits.min_body_rate_bytes_s,
        connections=connection_caps(limits),
    )


def uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """uvicorn as we run it: uvloop, and httptools with a header size limit and a header deadline (slow
    or silent clients are cut off), the idle keep-alive of `limits.keep_alive_s`, and a
    graceful-shutdown budget beyond our own drain."""
    limits = settings.limits
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http=http_protocol(limits),
        **websocket_options(limits),
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
    )


def websocket_options(limits: LimitsConfig) -> dict[str, Any]:
    """uvicorn's WebSocket options (the Responses API's WebSocket mode): a frame is a request body,
    so it has the body's limit (a larger one closes the socket with 1009, message too big)."""
    return {"ws": "websockets-sansio", "ws_max_size": limits.max_body_bytes}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        return client_main(args)
    try:
        settings = load_settings(args.config, host=args.host, port=args.port)
    except ConfigError as exc:
        print(f"orchestratord: {exc}", file=sys.stderr)
        return 2
    serve(settings)
    return 0
