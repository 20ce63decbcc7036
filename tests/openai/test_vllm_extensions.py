"""The two vLLM extensions benchmark tools send (guidellm sends both on every streamed request):
`ignore_eos` passes to the engines that take it and is refused by name elsewhere; with
`stream_options.continuous_usage_stats` every chunk carries `usage` counted so far, the prompt's count
named an estimate until the engine's arrives."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest

from tests.fakes.engines.server import serve
from tests.fakes.engines.vllm import MODEL, VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import sdk, vllm_and_mock

CONTINUOUS = {"stream_options": {"include_usage": True, "continuous_usage_stats": True}}


@pytest.fixture
def engine() -> Iterator[tuple[VllmEngine, str]]:
    fake = VllmEngine(tokens=("one", " two", " three"))
    with serve(fake) as url:
        yield fake, url


@pytest.fixture
def client(make_server: Callable[..., LoopbackServer], engine: tuple[VllmEngine, str]) -> openai.OpenAI:
    _, url = engine
    other = {"id": "o", "engine": "openai", "models": ["other"], "engine_model": MODEL,
             "replicas": [{"id": "r0", "url": url}]}  # fmt: skip
    return sdk(make_server(pools=vllm_and_mock(url, other)))


def test_a_guidellm_request_runs_with_usage_on_every_chunk(
    client: openai.OpenAI, engine: tuple[VllmEngine, str]
) -> None:
    fake, _ = engine
    chunks = list(
        client.completions.create(
            model="qwen",
            prompt="x" * 40,
            max_tokens=4,
            stream=True,
            extra_body={"ignore_eos": True, **CONTINUOUS},
        )
    )
    sent = fake.record.last("/v1/completions").body
    assert sent["ignore_eos"] is True
    texts = [c for c in chunks if c.choices and c.choices[0].text]
    assert [c.usage.completion_tokens for c in texts if c.usage] == [1, 2, 3, 4]
    assert all(c.usage and c.usage.prompt_tokens == 10 for c in texts)  # 40 bytes: our estimate
    assert all(c.usage and c.usage.model_extra == {"prompt_tokens_estimated": True} for c in texts)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (7, 4)  # the engine's counts
    assert not last.usage.model_extra


def test_continuous_usage_on_a_chat_stream(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="qwen", messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True,
            extra_body=CONTINUOUS,
        )
    )  # fmt: skip
    assert all(c.usage is not None for c in chunks)
    assert [c.usage.completion_tokens for c in chunks if c.usage] == [0, 1, 2, 2, 2]


def test_ignore_eos_runs_past_the_end_where_the_engine_takes_it(client: openai.OpenAI) -> None:
    prompt = "[[mock eos_after=2]] go"
    stopped = client.completions.create(model="mock", prompt=prompt, max_tokens=5)
    assert stopped.usage is not None and stopped.usage.completion_tokens == 2
    assert stopped.choices[0].finish_reason == "stop"
    ran = client.completions.create(
        model="mock", prompt=prompt, max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert (
        ran.usage is not None
        and ran.usage.completion_tokens == 5
        and ran.choices[0].finish_reason == "length"
    )


def test_ignore_eos_is_refused_by_name_where_the_engine_may_drop_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="other", prompt="x", max_tokens=2, extra_body={"ignore_eos": True})
    assert caught.value.body["param"] == "ignore_eos"  # type: ignore[index]
    plain = client.completions.create(
        model="other", prompt="x", max_tokens=2, extra_body={"ignore_eos": False}
    )
    assert plain.choices[0].finish_reason == "length"  # false asks for nothing
