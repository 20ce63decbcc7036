"""OpenAI's `logit_bias` (the official SDK, chat and text completions): passed to an engine of OpenAI's
dialect (the vLLM fake) as the client gave it; `{}` asks for nothing; a pool whose engine does not take
it (the mock) makes the request a 400 naming it, and so does a key that is not a token id or a bias
outside -100..100."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest

from tests.fakes.engines.vllm import VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import last_post, sdk, served, vllm_and_mock

ASK = [{"role": "user", "content": "yes or no?"}]
BIAS = {"9891": 100, "2201": -100, "15": 2.5}


@pytest.fixture
def engine() -> Iterator[VllmEngine]:
    with served(VllmEngine(tokens=("yes",), eos_after=1)) as fake:
        yield fake


@pytest.fixture
def client(make_server: Callable[..., LoopbackServer], engine: VllmEngine) -> openai.OpenAI:
    return sdk(make_server(pools=vllm_and_mock(engine.url)))  # type: ignore[attr-defined]


def test_a_logit_bias_reaches_the_engine_as_given(client: openai.OpenAI, engine: VllmEngine) -> None:
    done = client.chat.completions.create(model="qwen", messages=ASK, max_tokens=2, logit_bias=BIAS)  # type: ignore[arg-type]
    assert done.choices[0].message.content == "yes" and last_post(engine)["logit_bias"] == BIAS
    client.completions.create(model="qwen", prompt="yes or no?", max_tokens=2, logit_bias=BIAS)  # type: ignore[arg-type]
    assert last_post(engine)["logit_bias"] == BIAS
    client.chat.completions.create(model="qwen", messages=ASK, max_tokens=2, logit_bias={})  # type: ignore[arg-type]
    assert "logit_bias" not in last_post(engine)
    assert client.chat.completions.create(model="mock", messages=ASK, max_tokens=2, logit_bias={}).choices  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "bias", "fragment"),
    [
        ("mock", BIAS, "logit_bias is not supported by the engines serving 'mock'"),
        ("qwen", {"yes": 5}, "logit_bias"),
        ("qwen", {"9891": 101}, "logit_bias"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_logit_bias(
    client: openai.OpenAI, model: str, bias: dict[str, float], fragment: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=ASK, max_tokens=2, logit_bias=bias)  # type: ignore[arg-type]
    body = caught.value.body
    assert body["param"].startswith("logit_bias") and fragment in body["message"], body  # type: ignore[index]
