"""Completions' `echo: true`, through the official SDK: the prompt comes back before the completion's
text, whole and streamed (its own first chunk), for every choice (each its own prompt), on any engine;
the usage still counts only the tokens generated as the completion's."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from tests.contract.test_sse_events import validate_stream
from tests.fakes.engines.asgi import logprob_of
from tests.fakes.engines.vllm import VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.openai.pools import last_post, sdk, served, vllm_and_mock


def test_the_prompt_comes_back_before_the_text(server: LoopbackServer) -> None:
    client = sdk(server)
    plain = client.completions.create(model="mock", prompt="Once upon a time", max_tokens=5, seed=3)
    echoed = client.completions.create(
        model="mock", prompt="Once upon a time", max_tokens=5, seed=3, echo=True
    )
    assert echoed.choices[0].text == "Once upon a time" + plain.choices[0].text
    assert echoed.usage == plain.usage  # the echoed prompt is no completion token
    chunks = list(
        client.completions.create(
            model="mock", prompt="Once upon a time", max_tokens=5, seed=3, echo=True, stream=True
        )
    )
    assert chunks[0].choices[0].text == "Once upon a time"
    assert "".join(c.choices[0].text for c in chunks if c.choices) == echoed.choices[0].text


def test_each_choice_echoes_its_own_prompt(server: LoopbackServer) -> None:
    client = sdk(server)
    answer = client.completions.create(model="mock", prompt=["red: ", "blue: "], n=2, max_tokens=3, echo=True)
    assert [c.text.split(": ")[0] for c in answer.choices] == ["red", "red", "blue", "blue"]
    chunks = list(
        client.completions.create(
            model="mock", prompt=["red: ", "blue: "], max_tokens=3, echo=True, stream=True
        )
    )
    firsts = {}
    for chunk in chunks:
        for choice in chunk.choices:
            firsts.setdefault(choice.index, choice.text)
    assert firsts == {0: "red: ", 1: "blue: "}


def test_echo_false_echoes_nothing(server: LoopbackServer) -> None:
    answer = sdk(server).completions.create(model="mock", prompt="Once", max_tokens=3, seed=3, echo=False)
    assert not answer.choices[0].text.startswith("Once")


@pytest.fixture
def vllm(make_server: Callable[..., LoopbackServer]) -> Iterator[tuple[LoopbackServer, VllmEngine]]:
    with served(VllmEngine(tokens=(" blue", " sky"), eos_after=2)) as fake:
        yield make_server(pools=vllm_and_mock(fake.url)), fake  # type: ignore[attr-defined]


PROMPT = "The sky is"


def test_echo_with_logprobs_scores_the_prompt(vllm: tuple[LoopbackServer, VllmEngine]) -> None:
    """What evaluation harnesses send (lm-eval's loglikelihood: `echo`, `logprobs: 1`, `max_tokens: 1`):
    the prompt's tokens come first in `logprobs`, the first with none (null), then the completion's;
    the engine is asked for them whole (`stream: false`, `echo`)."""
    server, engine = vllm
    answer = sdk(server).completions.create(
        model="qwen", prompt=PROMPT, max_tokens=1, logprobs=1, echo=True, temperature=0
    )
    sent = last_post(engine)
    assert (sent["stream"], sent["echo"], sent["logprobs"]) == (False, True, 1)
    choice = answer.choices[0]
    assert choice.text == PROMPT + " blue"
    assert choice.logprobs is not None
    assert choice.logprobs.tokens == ["The", " sky", " is", " blue"]
    assert choice.logprobs.token_logprobs == [None, -0.5, -1.0, logprob_of(0)]
    assert choice.logprobs.top_logprobs == [None, {" sky": -0.5}, {" is": -1.0}, {" blue": logprob_of(0)}]
    assert choice.logprobs.text_offset == [0, 3, 7, 10]  # from the echoed prompt's first character
    ctxlen = 3  # lm-eval's reading: the continuation's log probability, the last (generated) token left out
    assert sum(choice.logprobs.token_logprobs[1:ctxlen]) == -1.5  # type: ignore[arg-type]
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3, 1)


def test_a_scored_prompt_streams_as_its_own_chunk_and_event(vllm: tuple[LoopbackServer, VllmEngine]) -> None:
    server, _ = vllm
    raw = sdk(server).completions.with_raw_response.create(
        model="qwen", prompt=PROMPT, max_tokens=4, logprobs=2, echo=True, stream=True
    )
    chunks = [c for c in raw.parse() if c.choices]
    first = chunks[0].choices[0]
    assert first.text == PROMPT and first.logprobs is not None
    assert first.logprobs.tokens == ["The", " sky", " is"] and first.logprobs.token_logprobs[0] is None
    assert first.logprobs.top_logprobs == [None, {" sky": -0.5, "sky~1": -2.0}, {" is": -1.0, "is~1": -2.5}]
    assert "".join(c.choices[0].text for c in chunks) == PROMPT + " blue sky"
    assert first.logprobs.text_offset == [0, 3, 7]
    offsets = [o for c in chunks if c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset or ()]
    assert offsets == [0, 3, 7, 10, 15]  # each chunk's going on from the last's
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        events = read_events(http, f"/v1/tasks/{raw.headers['x-job-id']}/stream")
    validate_stream(events)
    names = [e.event for e in events]
    assert names.count("prompt") == 1 and names.index("prompt") < names.index("token")
    prompt = events[names.index("prompt")].data
    assert [entry["logprob"] for entry in prompt["logprobs"]] == [None, -0.5, -1.0]


def test_scoring_the_prompt_is_refused_by_name_where_no_engine_can(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """llama-server reports log probabilities but echoes no prompt: a job that asks it to score one is
    refused, naming `echo`; without `echo` the same request is taken."""
    llama = {"id": "l", "engine": "llamacpp", "models": ["gguf"],
             "replicas": [{"id": "r0", "url": "http://127.0.0.1:9"}]}  # fmt: skip
    client = sdk(make_server(pools=[llama]))
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="gguf", prompt="x", max_tokens=1, echo=True, logprobs=1)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "echo", error
    assert "echo with logprobs (the prompt's own log probabilities) is not supported" in error["message"]


def test_a_chat_only_pool_refuses_to_score_a_prompt_saying_so(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """A vLLM pool configured `api: chat` sends prompts as a user turn, which echoes nothing: the job is
    refused (400, saying why), never answered without the prompt's scores; the engine is not asked."""
    with served(VllmEngine()) as fake:
        chat_only = {**vllm_and_mock(fake.url)[0], "api": "chat"}  # type: ignore[attr-defined]
        client = sdk(make_server(pools=[chat_only]))
        with pytest.raises(openai.BadRequestError, match="serves chat only"):
            client.completions.create(model="qwen", prompt=PROMPT, max_tokens=1, echo=True, logprobs=1)
        assert not [seen for seen in fake.record.requests if seen.method == "POST"]
        plain = client.completions.create(model="qwen", prompt=PROMPT, max_tokens=2, echo=True)
    assert plain.choices[0].text.startswith(PROMPT)
