"""Tools and response formats pass through to an engine that takes them (the vLLM fake, speaking
vLLM's tool-call bytes), and tool-call deltas come back intact to the official SDK: `delta.tool_calls`
keyed by index, arguments as fragments; whole, the joined calls with finish_reason `tool_calls`. An
engine that takes no tools gets none: the request is refused, naming the field."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import openai
import pytest

from tests.fakes.engines.server import serve
from tests.fakes.engines.vllm import VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import sdk, vllm_and_mock

CALLS = (("get_weather", '{"city": "Tokyo", "unit": "celsius"}'), ("get_time", '{"zone": "JST"}'))
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("get_weather", "get_time")
]
ASK = [{"role": "user", "content": "weather and time in Tokyo?"}]


@pytest.fixture
def engine() -> Iterator[tuple[VllmEngine, str]]:
    fake = VllmEngine(tool_calls=CALLS)
    with serve(fake) as url:
        yield fake, url


@pytest.fixture
def client(make_server: Callable[..., LoopbackServer], engine: tuple[VllmEngine, str]) -> openai.OpenAI:
    _, url = engine
    return sdk(make_server(pools=vllm_and_mock(url)))


def test_tools_reach_the_engine_and_tool_call_deltas_come_back(
    client: openai.OpenAI, engine: tuple[VllmEngine, str]
) -> None:
    fake, _ = engine
    chunks = list(
        client.chat.completions.create(
            model="qwen",
            messages=ASK,
            tools=TOOLS,
            tool_choice="auto",
            max_tokens=50,
            stream=True,  # type: ignore[arg-type]
        )
    )
    sent = next(r for r in fake.record.requests if r.method == "POST").body
    assert sent["tools"] == TOOLS and sent["tool_choice"] == "auto"
    fragments = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert [f.index for f in fragments] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert fragments[0].id == "chatcmpl-tool-0abc" and fragments[0].function.name == "get_weather"
    assert fragments[0].type == "function" and fragments[1].id is None  # id and name on the first only
    for index, (_, arguments) in enumerate(CALLS):
        mine = [f for f in fragments if f.index == index]
        assert "".join(f.function.arguments or "" for f in mine) == arguments
        assert json.loads(arguments)  # whole JSON once joined
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]


def test_a_whole_completion_joins_the_calls(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="qwen", messages=ASK, tools=TOOLS, max_tokens=50)  # type: ignore[arg-type]
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in calls] == list(CALLS)  # type: ignore[union-attr]
    assert calls[0].id == "chatcmpl-tool-0abc"


def test_a_response_format_reaches_the_engine(client: openai.OpenAI, engine: tuple[VllmEngine, str]) -> None:
    fake, _ = engine
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}
    client.chat.completions.create(model="qwen", messages=ASK, response_format=schema, max_tokens=3)  # type: ignore[arg-type]
    sent = [r for r in fake.record.requests if r.method == "POST"][-1].body
    assert sent["response_format"] == schema


def test_an_engine_that_takes_no_tools_gets_none(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mock", messages=ASK, tools=TOOLS, max_tokens=3)  # type: ignore[arg-type]
    assert caught.value.body["param"] == "tools"  # type: ignore[index]
    assert "tools is not supported by the engines serving 'mock'" in caught.value.body["message"]  # type: ignore[index]


def test_tools_on_a_text_completion_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="qwen", prompt="x", max_tokens=3, extra_body={"tools": TOOLS})
    assert caught.value.body["param"] == "tools"  # type: ignore[index]
