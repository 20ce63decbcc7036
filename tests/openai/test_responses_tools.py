"""Function calling and structured output through the Responses API, with the official SDK against
the vLLM fake (speaking vLLM's tool-call bytes): the flat function tools reach the engine in Chat
Completions' shape, the model's calls come back as `function_call` output items (whole, and streamed
as the SDK's stream helper rebuilds them), and the loop goes on: the response's output is sent back
with each call's `function_call_output`, and the engine gets the calls and their results as chat
turns. `text.format` reaches the engine as `response_format`, and the SDK's `parse` reads the JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests.fakes.engines.server import serve
from tests.fakes.engines.vllm import VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import last_post, sdk, served, vllm_and_mock

CALLS = (("get_weather", '{"city": "Tokyo", "unit": "celsius"}'), ("get_time", '{"zone": "JST"}'))
TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "description": "the weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    {"type": "function", "name": "get_time", "parameters": {"type": "object"}, "strict": False},
]  # fmt: skip
ASK = "weather and time in Tokyo?"


@pytest.fixture
def engine() -> Iterator[VllmEngine]:
    with served(VllmEngine(tool_calls=CALLS)) as fake:
        yield fake


@pytest.fixture
def client(make_server: Callable[..., LoopbackServer], engine: VllmEngine) -> openai.OpenAI:
    return sdk(make_server(pools=vllm_and_mock(engine.url)))  # type: ignore[attr-defined]


def test_the_tools_reach_the_engine_and_its_calls_are_function_call_items(
    client: openai.OpenAI, engine: VllmEngine
) -> None:
    response = client.responses.create(
        model="qwen", input=ASK, tools=TOOLS, tool_choice={"type": "function", "name": "get_time"}
    )
    assert last_post(engine)["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "the weather in a city",
                                          "parameters": TOOLS[0]["parameters"]}},
        {"type": "function",
         "function": {"name": "get_time", "parameters": {"type": "object"}, "strict": False}},
    ]  # fmt: skip
    assert last_post(engine)["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert response.status == "completed"
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.name, c.arguments, c.status) for c in calls] == [(*call, "completed") for call in CALLS]
    assert [c.call_id for c in calls] == ["chatcmpl-tool-0abc", "chatcmpl-tool-1abc"]  # the engine's ids
    assert len({c.id for c in calls}) == 2 and all(c.id and c.id.startswith("fc_") for c in calls)
    assert response.output_text == ""  # the model said nothing besides its calls


def test_parallel_tool_calls_false_gives_one_function_call_item(client: openai.OpenAI) -> None:
    """The engine makes two calls; with `parallel_tool_calls: false` the response holds its first."""
    response = client.responses.create(model="qwen", input=ASK, tools=TOOLS, parallel_tool_calls=False)
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.name, c.arguments, c.call_id) for c in calls] == [(*CALLS[0], "chatcmpl-tool-0abc")]
    assert response.status == "completed"


def test_streamed_calls_are_rebuilt_by_the_sdks_stream_helper(client: openai.OpenAI) -> None:
    with client.responses.stream(model="qwen", input=ASK, tools=TOOLS) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds.count("response.output_item.added") == 2 and kinds.count("response.output_item.done") == 2
    deltas: dict[int, str] = {}
    for event in events:
        if event.type == "response.function_call_arguments.delta":
            deltas[event.output_index] = deltas.get(event.output_index, "") + event.delta
    assert deltas == {0: CALLS[0][1], 1: CALLS[1][1]}  # in pieces, joined in order
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [(e.output_index, e.arguments) for e in done] == [(0, CALLS[0][1]), (1, CALLS[1][1])]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, c.arguments) for c in calls] == list(CALLS)
    assert all(json.loads(c.arguments) for c in calls)


def test_the_loop_sends_the_calls_and_their_outputs_back_as_chat_turns(
    client: openai.OpenAI, engine: VllmEngine
) -> None:
    """The loop as OpenAI's docs write it: the response's output appended to the input as it came,
    then a `function_call_output` for each call."""
    conversation: list[Any] = [{"role": "user", "content": ASK}]
    first = client.responses.create(model="qwen", input=conversation, tools=TOOLS)
    conversation += first.output
    for item, result in zip(first.output, ('{"celsius": 21}', '"09:30"'), strict=True):
        assert item.type == "function_call"
        conversation.append({"type": "function_call_output", "call_id": item.call_id, "output": result})
    second = client.responses.create(model="qwen", input=conversation, tools=TOOLS)
    assert second.status == "completed"
    assert last_post(engine)["messages"] == [
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"chatcmpl-tool-{i}abc", "type": "function",
             "function": {"name": name, "arguments": arguments}}
            for i, (name, arguments) in enumerate(CALLS)
        ]},
        {"role": "tool", "content": '{"celsius": 21}', "tool_call_id": "chatcmpl-tool-0abc"},
        {"role": "tool", "content": '"09:30"', "tool_call_id": "chatcmpl-tool-1abc"},
    ]  # fmt: skip
    # the input items read back as the client gave them, the calls and their outputs included
    items = list(client.responses.input_items.list(second.id, order="asc"))
    assert [i.type for i in items] == [
        "message",
        "function_call",
        "function_call",
        *["function_call_output"] * 2,
    ]
    assert [(i.call_id, i.name, i.arguments) for i in items[1:3]] == [  # type: ignore[union-attr]
        (f"chatcmpl-tool-{n}abc", name, arguments) for n, (name, arguments) in enumerate(CALLS)
    ]
    assert [(i.call_id, i.output) for i in items[3:]] == [  # type: ignore[union-attr]
        ("chatcmpl-tool-0abc", '{"celsius": 21}'), ("chatcmpl-tool-1abc", '"09:30"')
    ]  # fmt: skip


def test_the_loop_carries_on_from_the_previous_response_with_only_the_outputs(
    client: openai.OpenAI, engine: VllmEngine
) -> None:
    """With `previous_response_id` the client sends only the calls' outputs: the previous response's
    turns and calls come from it, and the outputs answer its calls."""
    first = client.responses.create(model="qwen", input=ASK, tools=TOOLS)
    outputs = [
        {"type": "function_call_output", "call_id": item.call_id, "output": result}
        for item, result in zip(first.output, ('{"celsius": 21}', '"09:30"'), strict=True)
        if item.type == "function_call"
    ]
    second = client.responses.create(model="qwen", input=outputs, tools=TOOLS, previous_response_id=first.id)  # type: ignore[arg-type]
    assert second.status == "completed"
    sent_turns = last_post(engine)["messages"]
    assert sent_turns[0] == {"role": "user", "content": ASK}
    assert [c["id"] for c in sent_turns[1]["tool_calls"]] == ["chatcmpl-tool-0abc", "chatcmpl-tool-1abc"]
    assert sent_turns[1]["content"] is None and [t["tool_call_id"] for t in sent_turns[2:]] == [
        "chatcmpl-tool-0abc", "chatcmpl-tool-1abc"
    ]  # fmt: skip


def test_a_text_responses_output_sent_back_is_the_assistants_turn(
    client: openai.OpenAI, engine: VllmEngine
) -> None:
    """A conversation carried on by appending a response's output (its message item with id, status,
    annotations and logprobs) to the next input, as the SDKs' docs show."""
    first = client.responses.create(model="qwen", input="hello", max_output_tokens=3)
    assert first.output_text
    client.responses.create(model="qwen", input=[{"role": "user", "content": "hello"}, *first.output,
                                                  {"role": "user", "content": "and then?"}])  # fmt: skip
    assert last_post(engine)["messages"] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "and then?"},
    ]


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"input": [{"type": "function_call_output", "call_id": "c9", "output": "x"}], "tools": TOOLS},
         "input[0].call_id", "no function_call item before it has call_id 'c9'"),
        ({"input": ASK, "tools": [{"type": "web_search"}]}, "tools.0.type",
         "tools.0.type: Input should be 'function'"),
        ({"model": "mock", "input": ASK, "tools": TOOLS}, "tools",
         "not supported by the engines serving 'mock'"),
        ({"input": [{"type": "function_call", "call_id": "c1"}], "tools": TOOLS}, "input",
         "input.0.function_call.name: field required"),
    ],
    ids=["output_without_its_call", "a_hosted_tool", "an_engine_without_tools", "a_call_without_its_name"],
)  # fmt: skip
def test_what_cannot_be_honoured_is_refused_by_name(
    client: openai.OpenAI, body: dict[str, Any], param: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(**{"model": "qwen", **body})
    error: dict[str, Any] = caught.value.body  # type: ignore[assignment]
    assert says in error["message"], error
    assert error["param"] == param, error


class Weather(BaseModel):
    city: str
    celsius: int


def test_a_json_schema_text_format_is_the_engines_response_format(
    make_server: Callable[..., LoopbackServer],
) -> None:
    fake = VllmEngine(tokens=('{"city": ', '"Tokyo", ', '"celsius": 21}'), eos_after=3)
    with serve(fake) as url:
        client = sdk(make_server(pools=vllm_and_mock(url)))
        parsed = client.responses.parse(model="qwen", input=ASK, text_format=Weather)
        client.responses.create(model="qwen", input=ASK, text={"format": {"type": "json_object"}})
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="mock", input=ASK, text={"format": {"type": "json_object"}})
    assert parsed.output_parsed == Weather(city="Tokyo", celsius=21)
    bodies = [r.body for r in fake.record.requests if r.method == "POST"]
    form = bodies[0]["response_format"]
    assert form["type"] == "json_schema" and form["json_schema"]["name"] == "Weather"
    assert form["json_schema"]["strict"] is True  # as the SDK asked
    assert set(form["json_schema"]["schema"]["properties"]) == {"city", "celsius"}
    assert bodies[1]["response_format"] == {"type": "json_object"}
    error: dict[str, Any] = caught.value.body  # type: ignore[assignment]
    assert error["param"] == "text.format", error  # as this API names it, not the job's field
    assert error["message"].startswith("text.format is not supported by the engines serving 'mock'"), error


def test_a_limit_on_built_in_tool_calls_leaves_function_calls_alone(
    client: openai.OpenAI, engine: VllmEngine
) -> None:
    """`max_tool_calls` limits OpenAI's built-in tools, which orchestratord does not run: the model's
    function calls (the client runs them) come back whole, as OpenAI gives them; 0 is refused naming it."""
    response = client.responses.create(model="qwen", input=ASK, tools=TOOLS, max_tool_calls=1)
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.name, c.arguments) for c in calls] == list(CALLS)
    assert "max_tool_calls" not in last_post(engine)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="qwen", input=ASK, tools=TOOLS, max_tool_calls=0)
    assert caught.value.body["param"] == "max_tool_calls"  # type: ignore[index]
