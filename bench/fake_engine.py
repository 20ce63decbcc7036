"""A fast OpenAI-compatible fake engine: streamed ``/v1/completions`` and ``/v1/chat/completions`` in
vLLM's wire format, and vLLM's ``/health`` and ``/version``.

It is built to never be the bottleneck of a benchmark: frames are assembled from pre-encoded byte
pieces, and with no token interval they leave in a few large writes (the first token alone, so the time
to first token is exact). Behaviour, fixed per process (one engine is started per scenario):

- ``--ttft-ms``: delay between the response headers and the first token (prefill);
- ``--interval-ms``: delay between two tokens (0: as fast as the socket takes them);
- ``--tokens``: cap on tokens per response; otherwise the request's ``max_tokens`` (chat: or
  ``max_completion_tokens``) is generated, whatever ``ignore_eos`` says (there is no EOS to ignore).

The wire format is vLLM's: one ``data: {json}\\n\\n`` frame per token (completions: ``text``; chat:
``delta.content``, after a role frame sent with the first token), ``finish_reason`` on the last token's
frame, a usage frame with ``choices: []`` when ``stream_options.include_usage`` is set, then
``data: [DONE]``. ``GET /health`` answers 200 with an empty body, ``GET /version`` a version; there is no
``/metrics``.

Run: ``python -m bench.fake_engine --port 9001 --ttft-ms 10 --interval-ms 0``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "bench-model"
WORDS = (" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ".")
BATCH = 512  # frames per write when there is no interval between tokens


@dataclass(frozen=True, slots=True)
class EngineBehaviour:
    ttft_ms: float = 0.0
    interval_ms: float = 0.0
    max_tokens: int | None = None

    def tokens_for(self, requested: int) -> int:
        return requested if self.max_tokens is None else min(requested, self.max_tokens)


class Frames:
    """The byte pieces of one completion's frames; one frame per token plus the closing frames."""

    _WORDS = tuple(orjson.dumps(w) for w in WORDS)

    def __init__(
        self, cid: str, model: str, created: int, count: int, prompt_tokens: int, *, chat: bool
    ) -> None:
        kind = "chat.completion.chunk" if chat else "text_completion"
        head = f'data: {{"id":"{cid}","object":"{kind}","created":{created},'
        choice, end = ('{"index":0,"delta":{', "},") if chat else ("{", ',"index":0,')
        self._head = (head + '"choices":[' + choice + ('"content":' if chat else '"text":')).encode()
        tail = end + f'"logprobs":null,"finish_reason":null}}],"model":"{model}"}}\n\n'
        self._tail = tail.encode()
        self._last = tail.replace('"finish_reason":null', '"finish_reason":"length"')
        role = head + '"choices":[' + choice + '"role":"assistant","content":""' + tail
        self._role = role.encode() if chat else b""
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": count}
        usage["total_tokens"] = prompt_tokens + count
        self._usage = (head + f'"model":"{model}","choices":[],"usage":').encode() + orjson.dumps(usage)
        self.count = count

    def first(self) -> bytes:
        """The first token's frame; in chat, after the role frame (vLLM sends both after prefill)."""
        return self._role + self.frame(0)

    def frame(self, index: int) -> bytes:
        tail = self._last.encode() if index == self.count - 1 else self._tail
        return self._head + self._WORDS[index % len(self._WORDS)] + tail

    def closing(self, include_usage: bool) -> bytes:
        usage = self._usage + b"}\n\n" if include_usage else b""
        return usage + b"data: [DONE]\n\n"

    def batches(self, start: int, size: int) -> Iterator[bytes]:
        for first in range(start, self.count, size):
            yield b"".join(self.frame(i) for i in range(first, min(first + size, self.count)))


class FakeEngine:
    """The ASGI app's behaviour; `app()` wraps it in Starlette routes."""

    def __init__(self, behaviour: EngineBehaviour) -> None:
        self.behaviour = behaviour
        self._ids = itertools.count(1)

    async def models(self, request: Request) -> Response:
        entry = {"id": MODEL, "object": "model", "created": 1700000000, "owned_by": "bench"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": "0.0.0+bench-fake"})

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def _complete(self, request: Request, *, chat: bool) -> Response:
        body = orjson.loads(await request.body())
        body = body if isinstance(body, dict) else {}
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if not isinstance(limit, int):
            return JSONResponse({"error": {"message": "max_tokens is required", "code": 400}}, 400)
        count = self.behaviour.tokens_for(max(1, limit))
        prompt_tokens = max(1, len(str(body.get("messages" if chat else "prompt", ""))) // 4)
        cid = f"{'chatcmpl' if chat else 'cmpl'}-{next(self._ids)}"
        frames = Frames(cid, MODEL, int(time.time()), count, prompt_tokens, chat=chat)
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if not body.get("stream"):
            text = "".join(WORDS[i % len(WORDS)] for i in range(count))
            choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            return JSONResponse({"choices": [{**choice, "index": 0, "finish_reason": "length"}]})
        return StreamingResponse(self._stream(frames, usage), media_type="text/event-stream")

    async def _stream(self, frames: Frames, include_usage: bool) -> AsyncIterator[bytes]:
        b = self.behaviour
        if b.ttft_ms > 0:
            await asyncio.sleep(b.ttft_ms / 1000)
        if b.interval_ms <= 0:
            yield frames.first()
            for chunk in frames.batches(1, BATCH):
                yield chunk
        else:
            for i in range(frames.count):
                if i:
                    await asyncio.sleep(b.interval_ms / 1000)
                yield frames.frame(i) if i else frames.first()
        yield frames.closing(include_usage)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/health", self.health, methods=["GET"]),
                Route("/version", self.version, methods=["GET"]),
            ]
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.fake_engine", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--interval-ms", type=float, default=0.0)
    parser.add_argument("--tokens", type=int, default=None, help="cap on tokens per response")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the fake engine binds to loopback only")
    engine = FakeEngine(EngineBehaviour(args.ttft_ms, args.interval_ms, args.tokens))
    uvicorn.run(
        engine.app(),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()
