"""Completions' `echo: true`, through the official SDK: the prompt comes back before the completion's
text, whole and streamed (its own first chunk), for every choice (each its own prompt), on any engine;
the usage still counts only the tokens generated as the completion's."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.servers import LoopbackServer
from tests.openai.pools import sdk


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


def test_the_prompts_log_probabilities_are_refused_by_name(server: LoopbackServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).completions.create(model="mock", prompt="x", max_tokens=1, echo=True, logprobs=1)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "echo" and "log probabilities" in error["message"]
