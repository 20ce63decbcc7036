"""vLLM's `/tokenize` and `/detokenize` through orchestratord, against the protocol-faithful fakes: the
engine serving the model tokenizes (vLLM with the model's name, llama-server its one model), the ids
are its own and go back into a prompt of ids; a model no tokenizing engine serves is refused naming
`model`; the engine's refusal and failure are OpenAI errors, a 400 and a 502; no ready replica, a 503."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from orchestratord.settings import ConfigError, load_settings
from tests.api.helpers import wait_for
from tests.fakes.engines.vllm import MODEL, VllmEngine, fake_tokenize
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import (
    ThreeEngines,
    pool,
    sdk,
    served,
    three_engines,
    three_pools,
    vllm_and_mock,
)

TEXT = "The river runs"


@pytest.fixture
def engines() -> Iterator[ThreeEngines]:
    with three_engines() as engines:
        yield engines


@pytest.fixture
def server(make_server: Callable[..., LoopbackServer], engines: ThreeEngines) -> Iterator[LoopbackServer]:
    pools = three_pools(engines)
    server = make_server(pools=pools, health_interval_s=0.2)
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        wait_for(lambda: all(ready(http, model) for model in ("qwen", "gguf", "llama3.2")))
    yield server


def ready(http: httpx.Client, model: str) -> bool:
    """Whether a replica serving `model` is ready (the model list says)."""
    return bool(http.get(f"/v1/models/{model}").json()["orchestratord"]["ready"])


def test_the_engine_serving_the_model_tokenizes(server: LoopbackServer, engines: ThreeEngines) -> None:
    vllm, llama, _ = engines
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        answer = http.post("/tokenize", json={"model": "qwen", "prompt": TEXT})
        assert answer.status_code == 200, answer.text
        ids = fake_tokenize(TEXT, True)
        # the context a job may use there: the pool's 4,096 (configured), less than vLLM's 32,768
        assert answer.json() == {"count": len(ids), "max_model_len": 4096, "tokens": ids}
        # vLLM is asked with its own name for the model
        assert vllm.record.last("/tokenize").body == {
            "model": MODEL,
            "prompt": TEXT,
            "add_special_tokens": True,
        }
        plain = http.post("/tokenize", json={"model": "gguf", "prompt": TEXT, "add_special_tokens": False})
        assert plain.json()["tokens"] == fake_tokenize(TEXT, False)
        assert llama.record.last("/tokenize").body == {"content": TEXT, "add_special": False}
        back = http.post("/detokenize", json={"model": "gguf", "tokens": [791, 15140]})
        assert back.status_code == 200 and back.json() == {"prompt": " w791 w15140"}
        assert llama.record.last("/detokenize").body == {"tokens": [791, 15140]}


def test_the_ids_go_back_as_a_prompt(server: LoopbackServer, engines: ThreeEngines) -> None:
    """What a client that tokenizes does: the ids of /tokenize, sent as a prompt, reach the engine as
    they were given."""
    vllm, _, _ = engines
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        ids = http.post("/tokenize", json={"model": "qwen", "prompt": TEXT}).json()["tokens"]
    answer = sdk(server).completions.create(model="qwen", prompt=ids, max_tokens=3)
    assert vllm.record.last("/v1/completions").body["prompt"] == ids
    assert answer.choices[0].text == " to the sea"


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "says"),
    [
        (
            "/tokenize",
            {"model": "llama3.2", "prompt": "x"},
            400,
            "model",
            "the engines serving 'llama3.2' (ollama)",
        ),
        ("/tokenize", {"model": "mock", "prompt": "x"}, 400, "model", "tokenizer route"),
        ("/tokenize", {"model": "nope", "prompt": "x"}, 400, "model", "'nope' is not served here"),
        ("/detokenize", {"model": "qwen", "tokens": [40000]}, 400, "tokens", "out of vocabulary"),
        ("/detokenize", {"model": "qwen", "tokens": []}, 400, "tokens", "tokens:"),
        ("/tokenize", {"model": "qwen"}, 400, None, "exactly one of 'prompt' and 'messages'"),
    ],
)
def test_refusals_are_openai_errors_naming_the_field(
    server: LoopbackServer, path: str, body: dict[str, object], status: int, param: str | None, says: str
) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        answer = http.post(path, json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and says in error["message"], error
    assert answer.headers["x-should-retry"] == "false"


def test_an_engine_failure_is_a_502_and_no_ready_replica_a_503(
    make_server: Callable[..., LoopbackServer],
) -> None:
    with served(VllmEngine()) as vllm:
        server = make_server(pools=vllm_and_mock(vllm.url), health_interval_s=0.2)  # type: ignore[attr-defined]
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            wait_for(lambda: ready(http, "qwen"))
            vllm.behaviour.http_status, vllm.behaviour.error_message = 500, "tokenizer crashed"
            failed = http.post("/tokenize", json={"model": "qwen", "prompt": "x"})
            assert failed.status_code == 502 and "tokenizer crashed" in failed.json()["error"]["message"]
            vllm.behaviour.http_status, vllm.behaviour.loading = None, True  # its health fails now
            wait_for(lambda: not ready(http, "qwen"))
            unready = http.post("/tokenize", json={"model": "qwen", "prompt": "x"})
    assert unready.status_code == 503 and unready.headers["x-should-retry"] == "true"
    assert (
        int(unready.headers["retry-after-ms"]) == 1000 and "no replica" in unready.json()["error"]["message"]
    )


def test_a_chats_turns_are_tokenized_as_the_engine_reads_a_chat(
    server: LoopbackServer, engines: ThreeEngines
) -> None:
    """`messages`: vLLM's chat form (its template, the generation prompt, its own default for special
    tokens); llama-server's template through `/apply-template`, then its tokens as it reads a chat's
    prompt (special tokens added)."""
    vllm, llama, _ = engines
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TEXT}]
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        ours = http.post("/tokenize", json={"model": "qwen", "messages": turns})
        assert ours.status_code == 200, ours.text
        assert ours.json()["tokens"] == fake_tokenize("Be brief." + TEXT, False)
        assert vllm.record.last("/tokenize").body == {
            "model": MODEL,
            "messages": turns,
            "add_generation_prompt": True,
        }
        theirs = http.post("/tokenize", json={"model": "gguf", "messages": turns})
        assert theirs.json()["tokens"] == fake_tokenize("Be brief." + TEXT, True)
        assert llama.record.last("/apply-template").body == {"messages": turns}
        assert llama.record.last("/tokenize").body == {"content": "Be brief." + TEXT, "add_special": True}
        both = http.post("/tokenize", json={"model": "qwen", "prompt": TEXT, "messages": turns})
        assert (
            both.status_code == 400
            and "exactly one of 'prompt' and 'messages'" in both.json()["error"]["message"]
        )


def test_a_draining_pool_tokenizes_nothing(server: LoopbackServer) -> None:
    """A model whose every pool drains is refused as its jobs are: a retriable 503 that says so."""
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        assert http.post("/v1/pools/l/drain", json={"deadline_ms": 60_000}).status_code == 202
        answer = http.post("/tokenize", json={"model": "gguf", "prompt": TEXT})
        assert http.post("/tokenize", json={"model": "qwen", "prompt": TEXT}).status_code == 200
    assert (
        answer.status_code == 503
        and "every pool serving 'gguf' is draining" in answer.json()["error"]["message"]
    )
    assert answer.headers["x-should-retry"] == "true" and answer.headers["retry-after"] == "1"


def test_an_openai_pool_tokenizes_when_its_server_has_vllms_routes(
    make_server: Callable[..., LoopbackServer], server: LoopbackServer
) -> None:
    """An orchestratord in front of another (its `openai` pool): with `options: {tokenizer: vllm}` its
    `/tokenize` and `/detokenize` ask the one behind, whose routes are vLLM's, and answer as it does;
    without the option a generic server is not asked (OpenAI's own API has no such route)."""
    front = make_server(
        pools=[
            pool("ours", "openai", "qwen", server.base_url, options={"tokenizer": "vllm"}),
            pool("plain", "openai", "gguf", server.base_url),
        ],
        health_interval_s=0.2,
    )
    with httpx.Client(base_url=front.base_url, timeout=10) as http:
        wait_for(lambda: ready(http, "qwen") and ready(http, "gguf"))
        asked = {"model": "qwen", "messages": [{"role": "user", "content": TEXT}]}
        answer = http.post("/tokenize", json=asked)
        assert answer.status_code == 200, answer.text
        behind = httpx.post(f"{server.base_url}/tokenize", json=asked, timeout=10).json()
        assert answer.json()["tokens"] == behind["tokens"] and answer.json()["count"] == behind["count"]
        back = http.post("/detokenize", json={"model": "qwen", "tokens": [791, 15140]})
        assert back.status_code == 200 and back.json() == {"prompt": " w791 w15140"}
        unsupported = http.post("/tokenize", json={**asked, "add_generation_prompt": False})
        assert (
            unsupported.status_code == 400 and unsupported.json()["error"]["param"] == "add_generation_prompt"
        )
        refused = http.post("/tokenize", json={"model": "gguf", "prompt": TEXT})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
        assert "options.tokenizer: vllm" in refused.json()["error"]["message"]


def test_an_unknown_tokenizer_option_is_a_settings_error() -> None:
    bad = pool("p", "openai", "lcp", "http://127.0.0.1:9", options={"tokenizer": "sentencepiece"})
    with pytest.raises(ConfigError, match="tokenizer is 'sentencepiece'; give vllm"):
        load_settings(None, pools=[bad])
