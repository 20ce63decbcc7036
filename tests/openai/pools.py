"""The deployment the OpenAI tests against the vLLM fake share: model `qwen` on a `vllm` pool in front of
the fake, and `mock` on the built-in engine (which takes no tools, response formats or logprobs)."""

from __future__ import annotations

from typing import Any

import openai

from tests.fakes.engines.vllm import MODEL
from tests.fakes.servers import LoopbackServer


def vllm_and_mock(url: str, *more: dict[str, Any]) -> list[dict[str, Any]]:
    """`qwen` on a vllm pool at `url`, `mock` on the mock engine, and any `more` pools."""
    return [
        {"id": "v", "engine": "vllm", "models": ["qwen"], "engine_model": MODEL,
         "replicas": [{"id": "r0", "url": url}]},
        {"id": "m", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}]},
        *more,
    ]  # fmt: skip


def sdk(server: LoopbackServer) -> openai.OpenAI:
    """The official SDK pointed at `server`, retrying nothing (the tests count every request)."""
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
