"""Completions' prompts given as token ids (`prompt: [ids]` or `[[ids], …]`, the engine's tokenizer's:
what lm-eval's `local-completions` sends by default), through the official SDK, against the
protocol-faithful fakes: the ids reach vLLM, llama-server and OpenAI-compatible servers as they were
sent; a scored prompt (`echo`, `logprobs`) comes back with the prompt's text as the engine decoded it;
refused by name where no engine serving the model takes token ids (Ollama, TGI, the mock)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.contract.test_sse_events import validate_stream
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.openai.pools import (
    ThreeEngines,
    last_post,
    sdk,
    three_engines,
    three_pools,
    vllm_and_mock,
)

IDS = [791, 15140, 8640]  # "The river runs", in the fake's tokenizer: " w791 w15140 w8640"
TEXT = " w791 w15140 w8640"


@pytest.fixture
def engines() -> Iterator[ThreeEngines]:
    with three_engines() as engines:
        yield engines


@pytest.fixture
def server(make_server: Callable[..., LoopbackServer], engines: ThreeEngines) -> LoopbackServer:
    pools = three_pools(engines)
    return make_server(pools=pools)


def test_token_ids_reach_the_engine_as_they_were_sent(server: LoopbackServer, engines: ThreeEngines) -> None:
    """One prompt of ids (vLLM's `/v1/completions`, llama-server's native `/completion`), whole and
    streamed; their count is the prompt's estimate (exact: a token an id)."""
    vllm, llama, _ = engines
    client = sdk(server)
    answer = client.completions.create(model="qwen", prompt=IDS, max_tokens=3, temperature=0)
    assert last_post(vllm)["prompt"] == IDS and answer.choices[0].text == " to the sea"
    streamed = client.completions.create(model="gguf", prompt=IDS, max_tokens=3, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == " to the sea"
    assert llama.record.last("/completion").body["prompt"] == IDS


def test_several_prompts_of_ids_are_a_choice_each(server: LoopbackServer, engines: ThreeEngines) -> None:
    """`prompt: [[ids], [ids]]` (a batch, as lm-eval sends it): a job for each, in order."""
    answer = sdk(server).completions.create(model="qwen", prompt=[IDS, IDS[:1]], max_tokens=3)
    assert [c.index for c in answer.choices] == [0, 1]
    sent = [r.body["prompt"] for r in engines[0].record.requests if r.path == "/v1/completions"]
    assert sent == [IDS, IDS[:1]]


def test_a_scored_prompt_of_ids_gives_its_text_and_scores(
    server: LoopbackServer, engines: ThreeEngines
) -> None:
    """lm-eval's loglikelihood request with tokenized requests: `prompt: [[ids]]`, `echo`, `logprobs: 1`,
    `max_tokens: 1`. The engine decodes the ids; the choice's text begins with the prompt's text as the
    engine decoded it (its `text_offset` says where the completion begins), the entries with the
    prompt's tokens, the first null, whole and streamed; the job's `prompt` event carries the text."""
    client = sdk(server)
    ask: dict[str, Any] = {"model": "qwen", "prompt": [IDS], "max_tokens": 1, "logprobs": 1, "echo": True}
    answer = client.completions.create(**ask, temperature=0)
    sent = last_post(engines[0])
    assert (sent["prompt"], sent["echo"], sent["stream"]) == (IDS, True, False)
    choice = answer.choices[0]
    assert choice.text == TEXT + " to"
    assert choice.logprobs is not None and choice.logprobs.tokens == [" w791", " w15140", " w8640", " to"]
    assert choice.logprobs.token_logprobs is not None and choice.logprobs.token_logprobs[0] is None
    chunks = [c.choices[0] for c in client.completions.create(**ask, stream=True) if c.choices]
    assert chunks[0].text == TEXT and "".join(c.text for c in chunks) == TEXT + " to"
    raw = client.completions.with_raw_response.create(**ask)
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        events = read_events(http, f"/v1/tasks/{raw.headers['x-job-id']}/stream")
    validate_stream(events)
    assert [e.data.get("text") for e in events if e.event == "prompt"] == [TEXT]


@pytest.mark.parametrize("model", ["llama3.2", "mock"])
def test_token_ids_are_refused_by_name_where_no_engine_takes_them(server: LoopbackServer, model: str) -> None:
    """Ollama's and the mock's prompts are text: a 400 naming `prompt`, saying what was asked."""
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).completions.create(model=model, prompt=IDS, max_tokens=3)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "prompt", error
    assert "a prompt of token ids is not supported by the engines serving" in error["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"echo": True}, "echo"), ({"suffix": "x"}, "suffix")],
)
def test_what_a_prompt_of_ids_cannot_do_is_refused_by_name(
    server: LoopbackServer, extra: dict[str, Any], param: str
) -> None:
    """Echo without logprobs (only the engine knows the ids' text, and says it only with the scores),
    and a suffix (text after a gap in text)."""
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).completions.create(model="qwen", prompt=IDS, max_tokens=3, **extra)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param, error


@pytest.mark.parametrize("prompt", [[], [[]], [-1, 3], [1, "a"], [[1], "a"]])
def test_malformed_token_prompts_are_a_400(server: LoopbackServer, prompt: Any) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        answer = http.post("/v1/completions", json={"model": "qwen", "prompt": prompt, "max_tokens": 3})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"].startswith("prompt"), answer.text


def test_a_chat_only_pool_refuses_token_ids_saying_so(
    make_server: Callable[..., LoopbackServer], engines: ThreeEngines
) -> None:
    vllm = engines[0]
    chat_only = {**vllm_and_mock(vllm.url)[0], "api": "chat"}  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError, match="serves chat only"):
        sdk(make_server(pools=[chat_only])).completions.create(model="qwen", prompt=IDS, max_tokens=3)
    assert not [seen for seen in vllm.record.requests if seen.method == "POST"]


def test_our_own_api_takes_a_prompt_of_ids(server: LoopbackServer, engines: ThreeEngines) -> None:
    """`POST /v1/tasks` with `prompt_ids`: the ids reach the engine as they were sent and the job runs
    as any other; refused naming `prompt_ids` where no engine serving the model takes them, with a
    prompt or messages too, with a suffix, and for an id out of range."""
    vllm, llama, _ = engines
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        for model, engine, path in (("qwen", vllm, "/v1/completions"), ("gguf", llama, "/completion")):
            posted = http.post("/v1/tasks", json={"model_ref": model, "prompt_ids": IDS, "max_tokens": 3})
            assert posted.status_code == 202, posted.text
            events = read_events(http, posted.json()["sse_url"])
            validate_stream(events)
            assert "".join(e.data["t"] for e in events if e.event == "token") == " to the sea"
            assert events[-1].event == "end"
            assert engine.record.last(path).body["prompt"] == IDS
        refused = [
            (
                {"model_ref": "llama3.2", "prompt_ids": IDS},
                "prompt_ids is not supported by the engines serving",
            ),
            ({"model_ref": "mock", "prompt_ids": IDS}, "prompt_ids is not supported by the engines serving"),
            (
                {"model_ref": "qwen", "prompt_ids": IDS, "prompt": "x"},
                "exactly one of 'prompt', 'prompt_ids'",
            ),
            ({"model_ref": "qwen", "prompt_ids": IDS, "suffix": "x"}, "give a prompt (as text) with it"),
            ({"model_ref": "qwen", "prompt_ids": [-1]}, "prompt_ids.0:"),
            ({"model_ref": "qwen", "prompt_ids": []}, "prompt_ids:"),
        ]
        for body, says in refused:
            answer = http.post("/v1/tasks", json={**body, "max_tokens": 3})
            assert answer.status_code == 400 and says in answer.json()["message"], (body, answer.text)
