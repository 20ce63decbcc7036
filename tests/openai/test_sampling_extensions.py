"""vLLM's sampling extensions, `top_k`, `min_p` and `repetition_penalty` (what models' cards recommend,
sent through the SDK's `extra_body`), against the protocol-faithful fakes: each engine gets them under
its own names (llama.cpp's and Ollama's `repeat_penalty`); the values that turn a sampler off ask for
nothing; refused by name where no engine serving the model takes them (TGI, the mock, a generic
OpenAI-compatible server, which OpenAI's own API would answer with a 400)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from orchestratord.settings import ConfigError, load_settings
from tests.fakes.engines.llamacpp import LlamaCppEngine
from tests.fakes.engines.ollama import OllamaEngine
from tests.fakes.engines.vllm import MODEL, VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import last_post, pool, sdk, served, vllm_and_mock

ASK = [{"role": "user", "content": "Hi"}]
QWEN = {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.05}  # Qwen3's card, for example
OFF = {"top_k": -1, "min_p": 0, "repetition_penalty": 1}


@pytest.fixture
def engines() -> Iterator[tuple[VllmEngine, LlamaCppEngine, OllamaEngine]]:
    with served(VllmEngine()) as vllm, served(LlamaCppEngine()) as llama, served(OllamaEngine()) as ollama:
        yield vllm, llama, ollama


@pytest.fixture
def server(
    make_server: Callable[..., LoopbackServer], engines: tuple[VllmEngine, LlamaCppEngine, OllamaEngine]
) -> LoopbackServer:
    vllm, llama, ollama = (e.url for e in engines)  # type: ignore[attr-defined]
    pools = [
        *vllm_and_mock(vllm),
        pool("l", "llamacpp", "gguf", llama),
        pool("o", "ollama", "llama3.2", ollama),
        pool("c", "openai", "compatible", vllm, engine_model=MODEL),
        pool(
            "p", "openai", "lcp", vllm, engine_model=MODEL, options={"sampling_extensions": "repeat_penalty"}
        ),
        pool("s", "openai", "sglang", vllm, engine_model=MODEL, options={"sampling_extensions": True}),
    ]
    return make_server(pools=pools)


def test_each_engine_gets_them_under_its_own_names(
    server: LoopbackServer, engines: tuple[VllmEngine, LlamaCppEngine, OllamaEngine]
) -> None:
    vllm, llama, ollama = engines
    client = sdk(server)
    client.chat.completions.create(model="qwen", messages=ASK, max_tokens=2, extra_body=QWEN)  # type: ignore[arg-type]
    assert {k: last_post(vllm)[k] for k in QWEN} == QWEN
    client.completions.create(model="qwen", prompt="Hi", max_tokens=2, extra_body=QWEN)
    assert {k: last_post(vllm)[k] for k in QWEN} == QWEN
    client.completions.create(model="gguf", prompt="Hi", max_tokens=2, extra_body=QWEN)
    native = llama.record.last("/completion").body
    assert (native["top_k"], native["min_p"], native["repeat_penalty"]) == (20, 0.05, 1.05)
    assert "repetition_penalty" not in native
    client.chat.completions.create(model="gguf", messages=ASK, max_tokens=2, extra_body=QWEN)  # type: ignore[arg-type]
    assert llama.record.last("/v1/chat/completions").body["repeat_penalty"] == 1.05
    client.chat.completions.create(model="llama3.2", messages=ASK, max_tokens=2, extra_body=QWEN)  # type: ignore[arg-type]
    options = ollama.record.last("/api/chat").body["options"]
    assert (options["top_k"], options["min_p"], options["repeat_penalty"]) == (20, 0.05, 1.05)


def test_the_values_that_turn_a_sampler_off_ask_for_nothing(
    server: LoopbackServer, engines: tuple[VllmEngine, LlamaCppEngine, OllamaEngine]
) -> None:
    """`top_k` -1 or 0, `min_p` 0, `repetition_penalty` 1: taken on any engine (the mock too), and not
    sent."""
    client = sdk(server)
    client.chat.completions.create(model="mock", messages=ASK, max_tokens=2, extra_body=OFF)  # type: ignore[arg-type]
    client.chat.completions.create(model="qwen", messages=ASK, max_tokens=2, extra_body={**OFF, "top_k": 0})  # type: ignore[arg-type]
    assert not set(OFF) & set(last_post(engines[0]))


@pytest.mark.parametrize("model", ["mock", "compatible"])
@pytest.mark.parametrize("name", sorted(QWEN))
def test_they_are_refused_by_name_where_no_engine_takes_them(
    server: LoopbackServer, model: str, name: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).chat.completions.create(
            model=model,
            messages=ASK,
            max_tokens=2,
            extra_body={name: QWEN[name]},  # type: ignore[arg-type]
        )
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == name, error
    assert f"{name} is not supported by the engines serving" in error["message"]


@pytest.mark.parametrize(
    ("name", "value"), [("top_k", -2), ("top_k", 1.5), ("min_p", 1.5), ("repetition_penalty", 0)]
)
def test_out_of_range_values_are_a_400_naming_them(server: LoopbackServer, name: str, value: Any) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        answer = http.post(
            "/v1/chat/completions", json={"model": "qwen", "messages": ASK, "max_tokens": 2, name: value}
        )
    assert answer.status_code == 400 and answer.json()["error"]["param"] == name, answer.text


def test_the_native_api_takes_them(
    server: LoopbackServer, engines: tuple[VllmEngine, LlamaCppEngine, OllamaEngine]
) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        posted = http.post("/v1/tasks", json={"model_ref": "gguf", "prompt": "Hi", "max_tokens": 2, **QWEN})
        assert posted.status_code == 202, posted.text
        with http.stream("GET", posted.json()["sse_url"]) as stream:
            assert "event: end" in "".join(stream.iter_text())
        refused = http.post(
            "/v1/tasks", json={"model_ref": "mock", "prompt": "Hi", "max_tokens": 2, "min_p": 0.1}
        )
    native = engines[1].record.last("/completion").body
    assert (native["top_k"], native["min_p"], native["repeat_penalty"]) == (20, 0.05, 1.05)
    assert refused.status_code == 400 and "min_p" in refused.json()["message"], refused.text


@pytest.mark.parametrize(("model", "penalty"), [("lcp", "repeat_penalty"), ("sglang", "repetition_penalty")])
def test_an_openai_pool_that_says_its_server_takes_them_sends_them(
    server: LoopbackServer, engines: tuple[VllmEngine, LlamaCppEngine, OllamaEngine], model: str, penalty: str
) -> None:
    """`options: {sampling_extensions: repeat_penalty}` (llama-cpp-python, LM Studio) or `true` (vLLM's
    names: SGLang): the pool takes them, the penalty under the name given."""
    sdk(server).completions.create(model=model, prompt="Hi", max_tokens=2, extra_body=QWEN)
    sent = last_post(engines[0])
    assert (sent["top_k"], sent["min_p"], sent[penalty]) == (20, 0.05, 1.05)
    assert ({"repeat_penalty", "repetition_penalty"} - {penalty}).isdisjoint(sent)  # one name only


def test_an_unknown_sampling_extensions_value_is_a_settings_error() -> None:
    bad = pool("p", "openai", "lcp", "http://127.0.0.1:9", options={"sampling_extensions": "yes please"})
    with pytest.raises(ConfigError, match="sampling_extensions is 'yes please'; give repetition_penalty"):
        load_settings(None, pools=[bad])
