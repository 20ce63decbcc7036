"""What every fake engine shares: the behaviour knobs, the record of what the engine saw, raw-ASGI
routing, and a streamer that owns timing, chunking, keep-alives and faults.

The fakes are raw ASGI apps (no framework) so that every byte on the wire is chosen here: each engine
module builds its frames byte for byte, and `Exchange.stream` decides how they are cut into writes.
They run in a uvicorn thread (see `server.py`); tests read the `Record` from the test's thread, so the
record only ever gets appends and single assignments.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_TOKENS: tuple[str, ...] = ("Hello", ",", " wor", "ld", " ä", "日本", "🙂", " \u2028line", " end")


class Drop:
    """Yielded by an engine's frame generator: the engine dies here (connection closed mid-body)."""


DROP = Drop()
Frames = AsyncIterator[bytes | Drop]


@dataclass
class Behaviour:
    """How a fake engine behaves. Every field can be changed between requests."""

    tokens: Sequence[str] = DEFAULT_TOKENS  # the model's output, repeated as needed
    eos_after: int | None = None  # the model ends (EOS) after this many tokens; None: at max_tokens
    prompt_tokens: int = 7  # what the engine reports as the prompt's length
    token_delay_s: float = 0.0  # between two frames
    header_delay_s: float = 0.0  # before the response headers (waiting for a slot)
    fail_after: int | None = None  # after this many tokens the stream fails, as `failure` says
    failure: Literal["error", "drop", "eof"] = "error"  # in-stream error / dropped connection / clean EOF
    error_status: int = 500  # the code an in-stream error reports
    error_type: str | None = None  # the engine-specific error type; None: the engine's default
    error_message: str = "the engine failed while generating"
    legacy_errors: bool = False  # llama.cpp builds through 2025: `error: {…}` field instead of data
    loading: bool = False  # llama.cpp: 503 "Loading model" on every route but /v1/models
    http_status: int | None = None  # answer generation routes with this HTTP error, before any stream
    keepalive: bool = False  # a keep-alive comment before every frame
    prefill_pings_s: float = 0.0  # after the headers, keep-alive comments only (every 50 ms) this long
    eol: str = "\n"  # SSE line ending: "\n", "\r\n" (sse-starlette's default) or "\r"
    split: Callable[[bytes], Iterable[bytes]] | None = None  # cut each write into these pieces
    piece_delay_s: float = 0.0  # pause between the pieces of one write
    coalesce: bool = False  # send the whole stream in one write (many events per read)
    tool_calls: Sequence[tuple[str, str]] = ()  # (name, arguments JSON): called when a request has tools
    # with tool_calls: a request whose last turn is a tool's result is answered with text, as a model
    # answers once it has its tools' results (an agent's loop then ends)
    answers_results: bool = False
    stream_interval: int = 1  # vLLM's --stream-interval: tokens per chunk (their text joined)
    # A thinking model behind a reasoning parser: these pieces of reasoning, one a step, before the
    # answer (vLLM: `delta.reasoning`; Ollama: `thinking`); each counts as a generated token
    thinking: Sequence[str] = ()
    # vLLM: `stream_options.include_usage` answered with a usage chunk; False: ignored, as an
    # OpenAI-compatible server that streams no usage does (llama-cpp-python)
    usage: bool = True


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Record:
    """What the engine observed. `disconnects` holds `time.monotonic()` stamps of clients that closed
    the connection before the response was complete."""

    requests: list[Seen] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)
    frames_sent: int = 0
    completed: int = 0

    def last(self, path: str | None = None) -> Seen:
        matching = [seen for seen in self.requests if path is None or seen.path == path]
        assert matching, f"the engine saw no request for {path}"
        return matching[-1]


@dataclass(frozen=True)
class Script:
    """What the model will do for one request: `count` tokens, then `ending`."""

    tokens: Sequence[str]
    count: int
    ending: Literal["eos", "length", "stop", "fail"]
    stop_word: str = ""

    def token(self, i: int) -> str:
        return self.tokens[i % len(self.tokens)]

    def texts(self) -> Iterable[str]:
        return (self.token(i) for i in range(self.count))


def plan(b: Behaviour, max_tokens: int, stop: Sequence[str] = ()) -> Script:
    limit = max_tokens if b.eos_after is None else min(max_tokens, b.eos_after)
    script = Script(b.tokens, limit, "length" if limit == max_tokens else "eos")
    for i in range(limit) if stop else ():
        if script.token(i) in stop:
            script = Script(b.tokens, i, "stop", script.token(i))
            break
    if b.fail_after is not None and b.fail_after <= script.count:
        script = Script(b.tokens, b.fail_after, "fail")
    return script


def logprob_of(i: int, rank: int = 0) -> float:
    """The fakes' log probability of token `i`'s `rank`-th likeliest candidate (0: the sampled one)."""
    return -0.25 * (i + 1) - 1.5 * rank


def alternative(text: str, rank: int) -> str:
    """The fakes' `rank`-th likeliest candidate at a position whose sampled token is `text`."""
    return text if rank == 0 else f"{text.strip() or '_'}~{rank}"


def fake_embedding(text: str) -> list[float]:
    """A fake engine's embedding of `text`: four numbers of its hash (exact in 32-bit floats)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(digest[i] - 128) / 128 for i in range(4)]


def compact(value: object) -> bytes:
    """JSON as llama.cpp (nlohmann), vLLM chunks (pydantic) and TGI (serde) write it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def sse(payload: bytes, eol: str, *, space: bool = True) -> bytes:
    end = eol.encode()
    return b"data: " + payload + end + end if space else b"data:" + payload + end + end


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Handler = Callable[[Request, "Exchange"], Awaitable[None]]


class FakeEngine:
    """A raw ASGI app: routes ``(method, path)`` to handlers; records every request."""

    keepalive_frame = b":\n\n"

    def __init__(self, **behaviour: Any) -> None:
        self.behaviour = Behaviour(**behaviour)
        self.record = Record()
        self.routes: dict[tuple[str, str], Handler] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request = Request(scope["method"], scope["path"], headers, bytes(body))
        self.record.requests.append(Seen(request.method, request.path, headers, _json_or_text(request.body)))
        exchange = Exchange(receive, send, self)
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            await exchange.respond(404, b'{"error":"not found"}')
            return
        await handler(request, exchange)


def _json_or_text(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return body.decode("utf-8", "replace")


class Exchange:
    """One request's response side."""

    def __init__(self, receive: Any, send: Any, engine: FakeEngine) -> None:
        self._receive = receive
        self._send = send
        self._engine = engine
        self._complete = False
        self.disconnected = asyncio.Event()

    async def respond(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        headers = [(b"content-type", content_type.encode())] if body else []
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def stream(
        self, content_type: str, frames: Frames, extra_headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Send `frames` as a chunked 200 body under the engine's behaviour; stop when the client leaves."""
        b = self._engine.behaviour
        watcher = asyncio.create_task(self._watch_disconnect())
        try:
            if b.header_delay_s and await self._pause(b.header_delay_s):
                return
            headers = [(b"content-type", content_type.encode())]
            headers += [(k.encode(), v.encode()) for k, v in extra_headers]
            await self._send({"type": "http.response.start", "status": 200, "headers": headers})
            if b.coalesce:
                await self._send_coalesced(frames)
            else:
                await self._send_frames(frames)
        finally:
            watcher.cancel()

    async def _send_frames(self, frames: Frames) -> None:
        b = self._engine.behaviour
        first = True
        pings_until = time.monotonic() + b.prefill_pings_s
        while time.monotonic() < pings_until:  # a long prefill, announced by keep-alives
            ping = self._engine.keepalive_frame
            await self._send({"type": "http.response.body", "body": ping, "more_body": True})
            if await self._pause(0.05):
                return
        async for frame in frames:
            if isinstance(frame, Drop):
                return  # returning without the final body message makes uvicorn close the socket
            if not first and b.token_delay_s and await self._pause(b.token_delay_s):
                return
            first = False
            if b.keepalive:
                frame = self._engine.keepalive_frame + frame
            for piece in b.split(frame) if b.split else (frame,):
                await self._send({"type": "http.response.body", "body": piece, "more_body": True})
                if b.piece_delay_s:
                    await asyncio.sleep(b.piece_delay_s)
            self._engine.record.frames_sent += 1
            if self.disconnected.is_set():
                return
        await self._finish()

    async def _send_coalesced(self, frames: Frames) -> None:
        body = bytearray()
        async for frame in frames:
            if isinstance(frame, Drop):
                await self._send({"type": "http.response.body", "body": bytes(body), "more_body": True})
                return
            body += frame
        await self._send({"type": "http.response.body", "body": bytes(body), "more_body": True})
        await self._finish()

    async def _finish(self) -> None:
        self._complete = True
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        self._engine.record.completed += 1

    async def _pause(self, seconds: float) -> bool:
        """Sleep, unless the client leaves first; True if it left."""
        try:
            await asyncio.wait_for(self.disconnected.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _watch_disconnect(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                if not self._complete:
                    self._engine.record.disconnects.append(time.monotonic())
                self.disconnected.set()
                return


def split_every(n: int) -> Callable[[bytes], list[bytes]]:
    """Cut each write into `n`-byte pieces (1: byte by byte, inside UTF-8 characters and CRLFs)."""
    return lambda data: [data[i : i + n] for i in range(0, len(data), n)]


def split_at(offsets: Sequence[int]) -> Callable[[bytes], list[bytes]]:
    """Cut each write at these offsets (taken modulo its length)."""

    def cut(data: bytes) -> list[bytes]:
        points = sorted({o % len(data) for o in offsets if len(data)} - {0})
        return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]

    return cut
