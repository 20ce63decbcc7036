"""Each job reaches the engine under its own model's name, on pools that serve several models: an
Ollama with two models installed on one replica and one on the other (a job goes only to a replica
that has its model), and a vLLM serving a base model and a LoRA adapter. A pool naming one
`engine_model` for several models is refused at start, with what to do instead."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from orchestratord.settings import ConfigError, load_settings
from tests.fakes.engines.llamacpp import MODEL as LLAMA_MODEL
from tests.fakes.engines.llamacpp import LlamaCppEngine
from tests.fakes.engines.ollama import OllamaEngine
from tests.fakes.engines.server import serve
from tests.fakes.engines.vllm import MODEL as VLLM_MODEL
from tests.fakes.engines.vllm import VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events

Factory = Callable[..., LoopbackServer]


def run(server: LoopbackServer, model: str) -> dict[str, Any]:
    """One job for `model`, read to its end; its final status."""
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        response = client.post("/v1/tasks", json={"model_ref": model, "prompt": "hi", "max_tokens": 3})
        assert response.status_code == 202, response.text
        events = read_events(client, response.json()["sse_url"])
        assert events[-1].event == "end", events[-1]
        status: dict[str, Any] = client.get(response.json()["status_url"]).json()
        return status


def models_sent(engine: OllamaEngine | VllmEngine) -> list[str]:
    return [r.body["model"] for r in engine.record.requests if r.method == "POST"]


@pytest.fixture
def ollamas() -> Iterator[tuple[tuple[OllamaEngine, str], tuple[OllamaEngine, str]]]:
    both, llama_only = OllamaEngine(), OllamaEngine()
    both.installed = ["llama3.2:latest", "qwen2.5:latest"]
    with ExitStack() as stack:
        yield (both, stack.enter_context(serve(both))), (llama_only, stack.enter_context(serve(llama_only)))


def test_each_job_runs_the_model_it_asked_for_on_a_replica_that_has_it(
    make_server: Factory, ollamas: tuple[tuple[OllamaEngine, str], tuple[OllamaEngine, str]]
) -> None:
    (both, url_a), (llama_only, url_b) = ollamas
    replicas = [{"id": "a", "url": url_a}, {"id": "b", "url": url_b}]
    pools = [{"id": "o", "engine": "ollama", "models": ["llama3.2", "qwen2.5"], "replicas": replicas}]
    server = make_server(pools=pools)
    for _ in range(4):
        assert run(server, "qwen2.5")["replica_id"] == "a"  # b has no qwen2.5
        run(server, "llama3.2")
    assert "qwen2.5" not in models_sent(llama_only)
    assert models_sent(both).count("qwen2.5") == 4
    assert models_sent(both).count("llama3.2") + models_sent(llama_only).count("llama3.2") == 4


def test_a_lora_adapter_and_its_base_model_each_get_their_own_jobs(make_server: Factory) -> None:
    engine = VllmEngine()
    engine.loras = ["sql-lora"]
    with serve(engine) as url:
        pools = [{"id": "v", "engine": "vllm", "models": [VLLM_MODEL, "sql-lora"],
                  "replicas": [{"id": "r0", "url": url}]}]  # fmt: skip
        server = make_server(pools=pools)
        run(server, "sql-lora")
        run(server, VLLM_MODEL)
    assert models_sent(engine) == ["sql-lora", VLLM_MODEL]


def test_one_engine_model_for_several_models_is_refused() -> None:
    pool = {"id": "p", "engine": "mock", "models": ["a", "b"], "engine_model": "x", "replicas": [{"id": "r"}]}
    with pytest.raises(ConfigError, match="engine_model names the engine's name for a pool's only model"):
        load_settings(None, pools=[pool])


def test_a_seed_llama_cpp_cannot_take_as_given_is_refused_or_routed_elsewhere(make_server: Factory) -> None:
    """llama.cpp's seed is 32 bits (its largest value meaning "random"): a larger seed would mean
    something else there than on other engines, so it goes to a pool that takes it, or is refused."""
    engine = LlamaCppEngine()
    with serve(engine) as url:
        llama = {"engine": "llamacpp", "engine_model": LLAMA_MODEL, "replicas": [{"id": "r0", "url": url}]}
        pools = [
            {"id": "llama", "models": ["qwen"], **llama},
            {"id": "both-llama", "models": ["tiny"], **llama},
            {"id": "both-mock", "engine": "mock", "models": ["tiny"], "replicas": [{"id": "r0"}]},
        ]
        server = make_server(pools=pools)
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            body = {"prompt": "hi", "max_tokens": 2, "seed": 2**63 - 1}
            refused = client.post("/v1/tasks", json={"model_ref": "qwen", **body})
            assert refused.status_code == 400 and refused.json()["code"] == "INVALID_PARAMS"
            assert "seed 9223372036854775807 is larger" in refused.json()["message"]
            assert "at most 4294967294" in refused.json()["message"]
            routed = client.post("/v1/tasks", json={"model_ref": "tiny", **body}).json()
            assert read_events(client, routed["sse_url"])[-1].event == "end"
            assert client.get(routed["status_url"]).json()["pool_id"] == "both-mock"
            small = client.post("/v1/tasks", json={"model_ref": "qwen", **body, "seed": 2**32 - 2}).json()
            assert read_events(client, small["sse_url"])[-1].event == "end"
    assert engine.record.last("/completion").body["seed"] == 2**32 - 2


def test_a_pools_max_seed_is_the_seed_limit_of_an_engine_kind_that_does_not_tell(
    make_server: Factory,
) -> None:
    """An OpenAI-compatible llama-cpp-python cuts seeds to 32 bits, which its kind (`openai`) does not
    say: the pool's `max_seed` does, and admission holds to it like to llama.cpp's own."""
    pools = [
        {"id": "cut", "engine": "mock", "models": ["m"], "replicas": [{"id": "r0"}], "max_seed": 2**32 - 2}
    ]
    server = make_server(pools=pools)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        body = {"model_ref": "m", "prompt": "hi", "max_tokens": 2}
        refused = client.post("/v1/tasks", json={**body, "seed": 2**32})
        assert refused.status_code == 400 and refused.json()["code"] == "INVALID_PARAMS"
        assert "at most 4294967294" in refused.json()["message"]
        taken = client.post("/v1/tasks", json={**body, "seed": 2**32 - 2})
        assert taken.status_code == 202
        assert read_events(client, taken.json()["sse_url"])[-1].event == "end"
