"""Function calling in its deprecated form, which older clients still send (`functions`,
`function_call`, `function` turns): it reaches the engine as tools and tool turns, and the model's call
comes back as the client asked it, `message.function_call` (streamed, `delta.function_call`) with
`finish_reason: function_call`, one call a turn. Against the vLLM fake, which answers with two calls."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from tests.fakes.engines.vllm import VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import last_post, sdk, served, vllm_and_mock

CALLS = (("get_weather", '{"city": "Tokyo", "unit": "celsius"}'), ("get_time", '{"zone": "JST"}'))
FUNCTIONS: list[Any] = [
    {"name": "get_weather", "description": "The weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    {"name": "get_time", "parameters": {"type": "object"}},
]  # fmt: skip
ASK: list[Any] = [{"role": "user", "content": "weather in Tokyo?"}]


@pytest.fixture
def deployment(make_server: Callable[..., LoopbackServer]) -> Iterator[tuple[openai.OpenAI, VllmEngine]]:
    with served(VllmEngine(tool_calls=CALLS)) as fake:
        yield sdk(make_server(pools=vllm_and_mock(fake.url))), fake  # type: ignore[attr-defined]


def test_functions_reach_the_engine_as_tools_and_the_call_comes_back_as_function_call(
    deployment: tuple[openai.OpenAI, VllmEngine],
) -> None:
    client, fake = deployment
    whole = client.chat.completions.create(model="qwen", messages=ASK, functions=FUNCTIONS, max_tokens=50)
    sent = last_post(fake)
    assert sent["tools"] == [{"type": "function", "function": f} for f in FUNCTIONS]
    assert "tool_choice" not in sent and sent["parallel_tool_calls"] is False  # one call a turn
    (choice,) = whole.choices
    assert choice.finish_reason == "function_call"
    message = choice.message
    assert message.content is None and message.tool_calls is None
    assert message.function_call is not None
    # the engine made two calls: the first is the turn's one call
    assert (message.function_call.name, message.function_call.arguments) == CALLS[0]


def test_a_streamed_call_comes_as_function_call_deltas(deployment: tuple[openai.OpenAI, VllmEngine]) -> None:
    client, _ = deployment
    chunks = [
        c for c in client.chat.completions.create(
            model="qwen", messages=ASK, functions=FUNCTIONS, max_tokens=50, stream=True
        ) if c.choices
    ]  # fmt: skip
    deltas = [c.choices[0].delta for c in chunks]
    assert all(d.tool_calls is None for d in deltas)
    pieces = [d.function_call for d in deltas if d.function_call is not None]
    assert pieces[0].name == "get_weather" and all(p.name is None for p in pieces[1:])
    assert len(pieces) > 1 and "".join(p.arguments or "" for p in pieces) == CALLS[0][1]
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["function_call"]


def test_function_call_is_the_tool_choice(deployment: tuple[openai.OpenAI, VllmEngine]) -> None:
    client, fake = deployment
    asked = {"model": "qwen", "messages": ASK, "functions": FUNCTIONS, "max_tokens": 50}
    client.chat.completions.create(**asked, function_call={"name": "get_time"})
    assert last_post(fake)["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    client.chat.completions.create(**asked, function_call="none")
    assert last_post(fake)["tool_choice"] == "none"


def test_the_loops_next_turn_reaches_the_engine_as_a_call_and_its_result(
    deployment: tuple[openai.OpenAI, VllmEngine],
) -> None:
    """The loop as the older clients run it: the response's message appended as it came, then a
    `function` turn with the result. The engine gets them as a tool call and its result, tied by an id
    orchestratord gives the call (the deprecated form has none)."""
    client, fake = deployment
    first = client.chat.completions.create(model="qwen", messages=ASK, functions=FUNCTIONS, max_tokens=50)
    messages = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "function", "name": "get_weather", "content": '{"celsius": 21}'}]  # fmt: skip
    client.chat.completions.create(model="qwen", messages=messages, functions=FUNCTIONS, max_tokens=50)
    turns = last_post(fake)["messages"]
    assert turns[0] == ASK[0]
    assert turns[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_fn1", "type": "function", "function": {"name": CALLS[0][0], "arguments": CALLS[0][1]}}
    ]}  # fmt: skip
    assert turns[2] == {"role": "tool", "content": '{"celsius": 21}', "tool_call_id": "call_fn1"}


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"functions": FUNCTIONS, "tools": [{"type": "function", "function": FUNCTIONS[0]}]},
         "functions", "not both"),
        ({"functions": FUNCTIONS, "function_call": {"name": "get_news"}}, "function_call", "'get_news'"),
        ({"messages": [*ASK, {"role": "function", "name": "get_time", "content": "09:30"}]},
         "messages[1]", "none came before"),
        ({"messages": [*ASK, {"role": "function", "content": "09:30"}]}, "messages[1].name", "needs name"),
        ({"messages": [{"role": "user", "content": "x", "function_call": {"name": "f", "arguments": "{}"}}]},
         "messages[0].function_call", "role 'assistant'"),
        ({"functions": [{"name": "has spaces"}]}, "functions.0.name", "pattern"),
    ],
    ids=["with-tools", "unknown-function", "result-without-call", "result-without-name", "call-on-user",
         "bad-name"],
)  # fmt: skip
def test_what_openai_would_refuse_is_refused_by_name(
    deployment: tuple[openai.OpenAI, VllmEngine], body: dict[str, Any], param: str, says: str
) -> None:
    client, fake = deployment
    asked = {"model": "qwen", "messages": ASK, "max_tokens": 5, **body}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**asked)
    error: dict[str, Any] = caught.value.body  # type: ignore[assignment]
    assert error["param"] == param and says in error["message"], error
    assert not [r for r in fake.record.requests if r.method == "POST"]  # the engine was not asked


def test_an_engine_without_tools_and_a_text_completion_refuse_functions_by_name(
    deployment: tuple[openai.OpenAI, VllmEngine],
) -> None:
    client, _ = deployment
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mock", messages=ASK, functions=FUNCTIONS, max_tokens=5)
    error: dict[str, Any] = caught.value.body  # type: ignore[assignment]
    assert error["param"] == "functions"
    assert error["message"].startswith("functions is not supported by the engines serving 'mock'"), error
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="qwen", prompt="x", max_tokens=5, extra_body={"functions": FUNCTIONS})
    assert caught.value.body["param"] == "functions"  # type: ignore[index]


def test_function_call_without_functions_asks_for_nothing(
    deployment: tuple[openai.OpenAI, VllmEngine],
) -> None:
    """`function_call: "auto"` or `"none"` with no functions (clients that send their settings whole)
    runs anywhere, the mock too."""
    client, _ = deployment
    for choice in ("auto", "none"):
        done = client.chat.completions.create(model="mock", messages=ASK, function_call=choice, max_tokens=3)  # type: ignore[call-overload]
        assert done.choices[0].message.content and done.choices[0].finish_reason == "length"
