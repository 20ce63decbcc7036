"""The deployment the OpenAI tests against the vLLM fake share: model `qwen` on a `vllm` pool in front of
the fake, and `mock` on the built-in engine (which takes no tools, response formats or logprobs)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import openai

from tests.fakes.engines.asgi import FakeEngine
from tests.fakes.engines.llamacpp import LlamaCppEngine
from tests.fakes.engines.ollama import OllamaEngine
from tests.fakes.engines.server import serve
from tests.fakes.engines.vllm import MODEL, VllmEngine
from tests.fakes.servers import LoopbackServer

Engine = TypeVar("Engine", bound=FakeEngine)


@contextmanager
def served(fake: Engine) -> Iterator[Engine]:
    """`fake` served on loopback for the test, at `fake.url`."""
    with serve(fake) as url:
        fake.url = url  # type: ignore[attr-defined]
        yield fake


def last_post(engine: FakeEngine) -> dict[str, Any]:
    """The body of the engine's last POST: its generation request."""
    body: dict[str, Any] = [r for r in engine.record.requests if r.method == "POST"][-1].body
    return body


def vllm_and_mock(url: str, *more: dict[str, Any]) -> list[dict[str, Any]]:
    """`qwen` on a vllm pool at `url`, `mock` on the mock engine, and any `more` pools."""
    return [
        {"id": "v", "engine": "vllm", "models": ["qwen"], "engine_model": MODEL,
         "replicas": [{"id": "r0", "url": url}]},
        {"id": "m", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}]},
        *more,
    ]  # fmt: skip


def pool(pool_id: str, engine: str, model: str, url: str, **extra: Any) -> dict[str, Any]:
    """A pool of `engine` serving `model`, its one replica at `url`; `extra`, more of its settings."""
    replicas = [{"id": "r0", "url": url}]
    return {"id": pool_id, "engine": engine, "models": [model], "replicas": replicas, **extra}


def sdk(server: LoopbackServer) -> openai.OpenAI:
    """The official SDK pointed at `server`, retrying nothing (the tests count every request)."""
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


ThreeEngines = tuple[VllmEngine, LlamaCppEngine, OllamaEngine]


@contextmanager
def three_engines() -> Iterator[ThreeEngines]:
    """vLLM's and llama-server's fakes answering " to the sea" (then their end), and Ollama's, served."""
    with (
        served(VllmEngine(tokens=(" to", " the", " sea"), eos_after=3)) as vllm,
        served(LlamaCppEngine(tokens=(" to", " the", " sea"), eos_after=3)) as llama,
        served(OllamaEngine()) as ollama,
    ):
        yield vllm, llama, ollama


def three_pools(engines: ThreeEngines) -> list[dict[str, Any]]:
    """`qwen` on the vLLM fake and `mock` on the mock (`vllm_and_mock`), `gguf` on llama-server's fake,
    `llama3.2` on Ollama's."""
    vllm, llama, ollama = (e.url for e in engines)  # type: ignore[attr-defined]
    return [
        *vllm_and_mock(vllm),
        pool("l", "llamacpp", "gguf", llama),
        pool("o", "ollama", "llama3.2", ollama),
    ]
