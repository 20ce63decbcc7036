"""Streaming is constant-memory: a 50+ MB response goes through an adapter while the process's resident
memory stays within a few MB of where it started. The consumer drops each token as it arrives; the
decoders keep only the current incomplete line, so nothing grows with the length of the stream."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from contextlib import aclosing
from typing import Any, overload

import psutil

from tests.fakes.engines.harness import collect, request
from tests.fakes.engines.llamacpp import LlamaCppEngine
from worker_adapters.base import Finished, Token
from worker_adapters.llamacpp_http import LlamaCppAdapter

TOKEN_CHARS = 4096
TOKENS = 5_000  # 4 Ki characters of 2-4 bytes each: about 58 MiB of text
MIN_STREAMED = 50 * 1024 * 1024
MAX_GROWTH = 8 * 1024 * 1024


class BigTokens(Sequence[str]):
    """The model's output, made on demand: the fake engine does not hold the response either."""

    def __len__(self) -> int:
        return TOKENS

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            raise TypeError("no slices")
        return f"{i:08d}" + "ä日🙂\u2028"[i % 4] * (TOKEN_CHARS - 8)


async def test_a_50_mb_stream_in_constant_memory(serve_fake: Any, make_adapter: Any) -> None:
    engine = LlamaCppEngine(tokens=BigTokens())
    adapter = make_adapter(LlamaCppAdapter, serve_fake(engine))
    await collect(adapter, request(max_tokens=200))  # warm up: connections, code paths, allocator arenas
    process = psutil.Process()
    gc.collect()
    before = peak = process.memory_info().rss
    streamed = tokens = 0
    end = None
    async with aclosing(adapter.submit(request(max_tokens=TOKENS))) as events:
        async for event in events:
            if isinstance(event, Token):
                streamed += len(event.text.encode())
                tokens += 1
                if tokens % 32 == 0:
                    peak = max(peak, process.memory_info().rss)
            else:
                end = event
    peak = max(peak, process.memory_info().rss)
    growth = peak - before
    print(f"streamed {streamed / 2**20:.1f} MiB in {tokens} tokens; peak RSS growth {growth / 2**20:.2f} MiB")
    assert end == Finished("max_tokens", prompt_tokens=7, completion_tokens=TOKENS)
    assert streamed >= MIN_STREAMED
    assert growth < MAX_GROWTH, f"RSS grew by {growth / 2**20:.1f} MiB while streaming"
