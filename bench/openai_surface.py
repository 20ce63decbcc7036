"""One streamed ``POST /v1/completions`` as our load generator sends it, to the engine or to
orchestratord's OpenAI surface alike.

``bench/sse.py``'s `EngineStream` counts every choice frame as a token, which is right for the fake
engine (it puts ``finish_reason`` on the last token's frame, as vLLM does). orchestratord, like OpenAI,
closes with one more frame that carries ``finish_reason`` and an empty text; `TextStream` counts only
frames with text, so both servers' 50-token answers count 50.
"""

from __future__ import annotations

import time

from bench.client import Client, HTTPError
from bench.load import JobResult, engine_body
from bench.sse import EngineStream

PATH = "/v1/completions"


class TextStream(EngineStream):
    def feed(self, chunk: bytes, now: float) -> None:
        region = self.complete(chunk)
        if not region:
            return
        tokens = region.count(b'"text":') - region.count(b'"text":""')
        if tokens and self.first_token_at is None:
            self.first_token_at = now
        self.tokens += tokens
        if b"data: [DONE]" in region:
            self.done, self.ended_at = True, now


async def completion(
    client: Client, max_tokens: int, limit_s: float = 120.0, stream: TextStream | None = None
) -> JobResult:
    """The request `bench.load.direct_to_engine` sends, read with `TextStream` (or `stream`, a
    subclass that records more)."""
    result = JobResult(time.perf_counter(), expected=max_tokens)
    stream = stream or TextStream()
    try:
        answer = await client.request("POST", PATH, engine_body(max_tokens), sink=stream, limit_s=limit_s)
    except (HTTPError, OSError, TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.sent_at, result.status = answer.sent_at, answer.status
    result.first_token_at, result.ended_at = stream.first_token_at, stream.ended_at
    result.tokens, result.terminal = stream.tokens, "end" if stream.done else None
    return result
