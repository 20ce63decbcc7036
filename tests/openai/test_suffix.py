"""Completions' `suffix` (fill-in-the-middle: the prompt is the text before the gap, the suffix the text
after it), through the official SDK, against the protocol-faithful fakes: llama-server's `/infill`,
Ollama's generate route, an OpenAI-compatible server; refused by name where no engine serving the model
takes one (vLLM, TGI, the mock), and each engine's own refusal reaches the client as a 400 in its words."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from tests.fakes.engines.asgi import logprob_of
from tests.fakes.engines.llamacpp import LlamaCppEngine
from tests.fakes.engines.ollama import OllamaEngine
from tests.fakes.engines.vllm import MODEL, VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import last_post, pool, sdk, served, vllm_and_mock

BEFORE = "def add(a, b):\n    "
AFTER = "\n\nprint(add(1, 2))\n"
TOKENS = ("return", " a", " +", " b")


@pytest.fixture
def engines() -> Iterator[tuple[LlamaCppEngine, OllamaEngine, VllmEngine]]:
    with (
        served(LlamaCppEngine(tokens=TOKENS, eos_after=4)) as llama,
        served(OllamaEngine(tokens=TOKENS, eos_after=4)) as ollama,
        served(VllmEngine(tokens=TOKENS, eos_after=4)) as vllm,
    ):
        yield llama, ollama, vllm


@pytest.fixture
def client(
    make_server: Callable[..., LoopbackServer], engines: tuple[LlamaCppEngine, OllamaEngine, VllmEngine]
) -> openai.OpenAI:
    llama, ollama, vllm = (e.url for e in engines)  # type: ignore[attr-defined]
    pools = [
        *vllm_and_mock(vllm),
        pool("l", "llamacpp", "coder", llama),
        pool("o", "ollama", "llama3.2", ollama, options={"raw": "true"}),
        pool("c", "openai", "compatible", vllm, engine_model=MODEL),
        pool("h", "openai", "chatty", vllm, engine_model=MODEL, api="chat"),
    ]
    return sdk(make_server(pools=pools))


def test_llama_server_fills_the_middle_through_infill(
    client: openai.OpenAI, engines: tuple[LlamaCppEngine, OllamaEngine, VllmEngine]
) -> None:
    """The prompt goes as `/infill`'s `input_prefix`, the suffix as its `input_suffix`, whole and
    streamed; the answer is the middle (no suffix appended), as llama-server generates it."""
    llama = engines[0]
    whole = client.completions.create(model="coder", prompt=BEFORE, suffix=AFTER, max_tokens=8, seed=4)
    sent = llama.record.last("/infill").body
    assert (sent["input_prefix"], sent["input_suffix"], sent["n_predict"]) == (BEFORE, AFTER, 8)
    assert "prompt" not in sent and sent["seed"] == 4 and sent["stream"] is True
    assert whole.choices[0].text == "return a + b"
    assert whole.usage is not None and whole.usage.completion_tokens == 4
    chunks = list(
        client.completions.create(model="coder", prompt=BEFORE, suffix=AFTER, max_tokens=8, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "return a + b"
    assert [r.path for r in llama.record.requests if r.method == "POST"] == ["/infill", "/infill"]
    client.completions.create(model="coder", prompt=BEFORE, max_tokens=2)  # no suffix: the plain route
    assert llama.record.last("/completion").body["prompt"] == BEFORE


def test_a_suffix_with_a_logit_bias_or_logprobs_takes_infill_too(
    client: openai.OpenAI, engines: tuple[LlamaCppEngine, OllamaEngine, VllmEngine]
) -> None:
    """`/infill` reads a logit bias as the native routes do, `{"id": bias}`, and streams each token's
    log probabilities as `/completion` does (`n_probs`): the middle comes back with them."""
    llama = engines[0]
    client.completions.create(
        model="coder", prompt=BEFORE, suffix=AFTER, max_tokens=4, logit_bias={"15": -100}
    )
    assert llama.record.last("/infill").body["logit_bias"] == {"15": -100}
    scored = client.completions.create(model="coder", prompt=BEFORE, suffix=AFTER, max_tokens=3, logprobs=2)
    assert llama.record.last("/infill").body["n_probs"] == 2
    logprobs = scored.choices[0].logprobs
    assert logprobs is not None and "".join(logprobs.tokens or ()) == scored.choices[0].text
    assert logprobs.token_logprobs == [logprob_of(i) for i in range(3)]
    assert [len(top) for top in logprobs.top_logprobs or ()] == [2, 2, 2]


def test_a_model_without_fim_tokens_is_refused_in_llama_servers_words(
    client: openai.OpenAI, engines: tuple[LlamaCppEngine, OllamaEngine, VllmEngine]
) -> None:
    engines[0].fim = False  # llama-server answers 501 not_supported_error
    with pytest.raises(openai.BadRequestError, match="Infill is not supported by this model"):
        client.completions.create(model="coder", prompt=BEFORE, suffix=AFTER, max_tokens=4)
    with pytest.raises(openai.APIError, match="Infill is not supported by this model"):  # in the stream
        list(client.completions.create(model="coder", prompt=BEFORE, suffix=AFTER, max_tokens=4, stream=True))


def test_ollama_takes_the_suffix_through_its_template(
    client: openai.OpenAI, engines: tuple[LlamaCppEngine, OllamaEngine, VllmEngine]
) -> None:
    """Ollama's own `suffix`, never in raw mode (Ollama reads none there; only the model's template
    knows its FIM tokens), though the pool sends its other prompts raw; a model whose template takes no
    suffix is Ollama's 400, "… does not support insert"."""
    ollama = engines[1]
    ollama.inserts = True
    answer = client.completions.create(model="llama3.2", prompt=BEFORE, suffix=AFTER, max_tokens=8)
    sent = ollama.record.last("/api/generate").body
    assert (sent["prompt"], sent["suffix"]) == (BEFORE, AFTER) and "raw" not in sent
    assert answer.choices[0].text == "return a + b"
    client.completions.create(model="llama3.2", prompt=BEFORE, max_tokens=2)
    assert ollama.record.last("/api/generate").body["raw"] is True
    ollama.inserts = False
    with pytest.raises(openai.BadRequestError, match="does not support insert"):
        client.completions.create(model="llama3.2", prompt=BEFORE, suffix=AFTER, max_tokens=8)


def test_an_openai_compatible_server_is_sent_the_suffix_and_its_refusal_is_relayed(
    client: openai.OpenAI, engines: tuple[LlamaCppEngine, OllamaEngine, VllmEngine]
) -> None:
    """A generic OpenAI-compatible server gets the field as OpenAI's API takes it; this one (vLLM
    behind an `openai` pool) refuses it, and the client reads vLLM's words."""
    vllm = engines[2]
    with pytest.raises(openai.BadRequestError, match="suffix is not currently supported"):
        client.completions.create(model="compatible", prompt=BEFORE, suffix=AFTER, max_tokens=4)
    assert last_post(vllm)["suffix"] == AFTER and last_post(vllm)["prompt"] == BEFORE


def test_a_chat_only_pool_refuses_a_suffix_saying_so(
    client: openai.OpenAI, engines: tuple[LlamaCppEngine, OllamaEngine, VllmEngine]
) -> None:
    vllm = engines[2]
    asked = len(vllm.record.requests)
    with pytest.raises(openai.BadRequestError, match="serves chat only"):
        client.completions.create(model="chatty", prompt=BEFORE, suffix=AFTER, max_tokens=4)
    assert len(vllm.record.requests) == asked


@pytest.mark.parametrize("model", ["qwen", "mock"])
def test_a_suffix_is_refused_by_name_where_no_engine_takes_one(client: openai.OpenAI, model: str) -> None:
    """vLLM refuses every suffix, the mock has none: 400 naming `suffix`, before any engine is asked."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=model, prompt=BEFORE, suffix=AFTER, max_tokens=4)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "suffix", error
    assert "suffix" in error["message"]


def test_a_scored_prompt_takes_no_suffix(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(
            model="compatible", prompt=BEFORE, suffix=AFTER, max_tokens=1, echo=True, logprobs=1
        )
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "suffix", error


def test_every_choice_fills_the_same_gap(
    client: openai.OpenAI, engines: tuple[LlamaCppEngine, OllamaEngine, VllmEngine]
) -> None:
    answer = client.completions.create(model="coder", prompt=BEFORE, suffix=AFTER, max_tokens=4, n=2)
    assert [c.text for c in answer.choices] == ["return a + b"] * 2
    sent = [r.body for r in engines[0].record.requests if r.path == "/infill"]
    assert [(b["input_prefix"], b["input_suffix"]) for b in sent] == [(BEFORE, AFTER)] * 2


def test_the_native_api_takes_a_suffix_with_a_prompt_only(
    make_server: Callable[..., LoopbackServer], engines: tuple[LlamaCppEngine, OllamaEngine, VllmEngine]
) -> None:
    """`POST /v1/tasks` with `suffix`: the job fills the gap on llama-server; with messages, a 400 that
    says to give a prompt; the prompt and the suffix together count against limits.max_prompt_chars."""
    llama = engines[0]
    server = make_server(
        pools=[pool("l", "llamacpp", "coder", llama.url)],  # type: ignore[attr-defined]
        limits={"max_prompt_chars": 40},
    )
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        posted = http.post("/v1/tasks", json={"model_ref": "coder", "prompt": BEFORE, "suffix": AFTER,
                                              "max_tokens": 4})  # fmt: skip
        assert posted.status_code == 202, posted.text
        with http.stream("GET", posted.json()["sse_url"]) as stream:
            text = "".join(stream.iter_text())
        assert "event: end" in text
        assert llama.record.last("/infill").body["input_suffix"] == AFTER
        turns = [{"role": "user", "content": "x"}]
        chat = http.post("/v1/tasks", json={"model_ref": "coder", "messages": turns, "suffix": AFTER,
                                            "max_tokens": 4})  # fmt: skip
        assert chat.status_code == 400 and "give a prompt (as text)" in chat.json()["message"], chat.text
        long = http.post("/v1/tasks", json={"model_ref": "coder", "prompt": BEFORE, "suffix": AFTER * 3,
                                            "max_tokens": 4})  # fmt: skip
        assert long.status_code == 400 and "limits.max_prompt_chars" in long.json()["message"], long.text
