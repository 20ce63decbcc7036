"""Engine name → adapter class, by import string, loaded lazily: unused engines cost nothing."""

from __future__ import annotations

import importlib
from typing import Any, cast

from worker_adapters.base import AdapterConfig, WorkerAdapter

ADAPTERS: dict[str, str] = {
    "mock": "worker_adapters.mock:MockAdapter",
    "llamacpp": "worker_adapters.llamacpp_http:LlamaCppAdapter",
    "openai": "worker_adapters.openai_http:OpenAIAdapter",
    "vllm": "worker_adapters.vllm_http:VllmAdapter",
    "tgi": "worker_adapters.tgi_http:TgiAdapter",
    "ollama": "worker_adapters.ollama_http:OllamaAdapter",
}


def load_adapter(config: AdapterConfig) -> WorkerAdapter:
    """Build the adapter for `config.engine`; ValueError names the known engines if it is unknown."""
    try:
        target = ADAPTERS[config.engine]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise ValueError(f"unknown engine {config.engine!r}; known engines: {known}") from None
    module_name, _, class_name = target.partition(":")
    cls: Any = getattr(importlib.import_module(module_name), class_name)
    return cast(WorkerAdapter, cls(config))
