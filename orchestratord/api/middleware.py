"""ASGI middleware: X-Correlation-Id in and out, the request header limit (431) and the request body
limit (413), chunked bodies too. Both refusals carry the error envelope. A WebSocket's handshake gets
its correlation id and the header limit too (refused with a denial response).

A body over the limit is read on and discarded before the 413 is sent (up to `DRAIN_BYTES` and
`DRAIN_S`, nginx's "lingering close"): most clients read the answer only once they have sent their
whole body, and a server that closes while they still send makes their kernel see a reset instead of
the 413. Past those bounds the 413 goes out and the connection closes."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import structlog
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestratord.api.errors import error_body, error_headers
from orchestratord.errors import HeadersTooLarge, OrchestratorError, PayloadTooLarge

_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
DRAIN_BYTES = 64 * 2**20
DRAIN_S = 10.0


class CorrelationAndLimits:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_headers = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        cid = _correlation_id(headers.get(b"x-correlation-id"))
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(correlation_id=cid)
        scope.setdefault("state", {})["correlation_id"] = cid
        if sum(len(name) + len(value) + 4 for name, value in scope["headers"]) > self.max_headers:
            too_large = HeadersTooLarge(f"request headers exceed the limit of {self.max_headers} bytes")
            await _refuse(scope, send, cid, too_large)
            return
        if scope["type"] == "websocket":  # a WebSocket's handshake: its frames have uvicorn's limit
            await self.app(scope, receive, send)
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._too_large(scope, send, cid, receive if length.isdigit() else None)
            return
        await self._limited(scope, receive, send, cid)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, cid: str) -> None:
        received = 0
        too_large = False
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, too_large, body_done
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_body:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def tagged_send(message: Message) -> None:
            if too_large:
                return
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-correlation-id" for k, _ in headers):
                    headers.append((b"x-correlation-id", cid.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, limited_receive, tagged_send)
        except Exception:
            if not too_large:
                raise
        if too_large:
            await self._too_large(scope, send, cid, None if body_done else receive)

    async def _too_large(self, scope: Scope, send: Send, cid: str, rest: Receive | None = None) -> None:
        if rest is not None:
            await _drain(rest)
        too_large = PayloadTooLarge(f"request body exceeds the limit of {self.max_body} bytes")
        await _refuse(scope, send, cid, too_large)


async def _drain(receive: Receive) -> None:
    """Read the rest of a refused request's body and drop it, within `DRAIN_BYTES` and `DRAIN_S`."""
    drained = 0
    deadline = time.monotonic() + DRAIN_S
    try:
        while drained < DRAIN_BYTES:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return
    except TimeoutError:
        return


async def _refuse(scope: Scope, send: Send, cid: str, exc: OrchestratorError) -> None:
    """Answer before the app runs, in the error shape of the request's surface, and close the
    connection (the rest is not read)."""
    body = error_body(scope.get("path", ""), exc)
    extra = [(k.lower().encode(), v.encode()) for k, v in error_headers(exc).items()]
    prefix = "websocket." if scope["type"] == "websocket" else ""  # a handshake's refusal (a denial response)
    await send(
        {
            "type": prefix + "http.response.start",
            "status": exc.http_status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-correlation-id", cid.encode()),
                (b"connection", b"close"),
                *extra,
            ],
        }
    )
    await send({"type": prefix + "http.response.body", "body": body})


def _correlation_id(raw: bytes | None) -> str:
    if raw is not None:
        text = raw.decode("latin-1")
        if _VALID_ID.match(text):
            return text
    return str(uuid.uuid4())


def install(app: FastAPI, *, max_body_bytes: int, max_header_bytes: int) -> None:
    app.add_middleware(CorrelationAndLimits, max_body_bytes=max_body_bytes, max_header_bytes=max_header_bytes)
