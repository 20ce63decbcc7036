"""Tools and response formats pass through to an engine that takes them (the vLLM fake, speaking
vLLM's tool-call bytes), and tool-call deltas come back intact to the official SDK: `delta.tool_calls`
keyed by index, arguments as fragments; whole, the joined calls with finish_reason `tool_calls`. An
engine that takes no tools gets none: the request is refused, naming the field."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import orjson
import pytest

from orchestratord.api.openai.requests import ChatCompletionRequest
from orchestratord.core.tasks import spec_from_dict, spec_json
from orchestratord.relay import submit_request
from tests.fakes.engines.server import serve
from tests.fakes.engines.vllm import VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import sdk, vllm_and_mock
from worker_adapters.ollama_http import ollama_body
from worker_adapters.openai_http import request_body

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


def test_no_tools_ask_for_nothing(client: openai.OpenAI) -> None:
    """`tools: []` (agent frameworks send it when they have none), with `tool_choice` `auto` or `none`,
    runs on an engine that takes no tools; `required` without tools still asks for a tool engine."""
    for choice in ("auto", "none"):
        done = client.chat.completions.create(
            model="mock", messages=ASK, tools=[], tool_choice=choice, max_tokens=2
        )
        assert done.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="mock", messages=ASK, tools=[], tool_choice="required", max_tokens=2
        )
    assert caught.value.body["param"] == "tool_choice"  # type: ignore[index]


def test_tools_on_a_text_completion_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="qwen", prompt="x", max_tokens=3, extra_body={"tools": TOOLS})
    assert caught.value.body["param"] == "tools"  # type: ignore[index]


def test_a_tool_loop_sends_the_calls_and_their_results_back_to_the_engine(
    client: openai.OpenAI, engine: tuple[VllmEngine, str]
) -> None:
    """OpenAI's function-calling loop, as its docs write it: the response's message is appended as it
    came, then one `tool` message for each call. The engine gets the assistant's calls (content null)
    and each result with the id of its call."""
    fake, _ = engine
    messages: list[Any] = list(ASK)
    first = client.chat.completions.create(model="qwen", messages=messages, tools=TOOLS, max_tokens=50)  # type: ignore[arg-type]
    said = first.choices[0].message
    messages.append(said)
    for call, result in zip(said.tool_calls or [], ('{"celsius": 21}', '"09:30"'), strict=True):
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    second = client.chat.completions.create(model="qwen", messages=messages, tools=TOOLS, max_tokens=50)
    assert second.choices[0].finish_reason == "tool_calls"  # the fake answers every turn with calls
    sent = [r for r in fake.record.requests if r.method == "POST"][-1].body["messages"]
    assert sent[0] == ASK[0]
    assert sent[1]["role"] == "assistant" and sent[1]["content"] is None
    assert [
        (c["id"], c["type"], c["function"]["name"], c["function"]["arguments"]) for c in sent[1]["tool_calls"]
    ] == [
        ("chatcmpl-tool-0abc", "function", *CALLS[0]),
        (said.tool_calls[1].id, "function", *CALLS[1]),  # type: ignore[index]
    ]
    assert sent[2:] == [
        {"role": "tool", "content": '{"celsius": 21}', "tool_call_id": "chatcmpl-tool-0abc"},
        {"role": "tool", "content": '"09:30"', "tool_call_id": said.tool_calls[1].id},  # type: ignore[index]
    ]


def test_a_tool_loop_that_names_no_output_limit_gets_what_the_context_leaves(
    client: openai.OpenAI, engine: tuple[VllmEngine, str]
) -> None:
    """Without `max_tokens` the output limit is what the model's context leaves after the prompt, as
    admission estimates the prompt: the calls' JSON counts in both (a second turn was once refused
    for a prompt estimated larger at admission than when its limit was worked out)."""
    fake, _ = engine
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "JST"}'}}
    ]
    turns: list[Any] = [*ASK, {"role": "assistant", "content": None, "tool_calls": calls},
                        {"role": "tool", "tool_call_id": "c1", "content": '"09:30"'}]  # fmt: skip
    client.chat.completions.create(model="qwen", messages=turns, tools=TOOLS)  # type: ignore[arg-type]
    request = ChatCompletionRequest.model_validate({"model": "qwen", "messages": turns, "tools": TOOLS})
    estimate = request.to_spec(job_id="j", tenant="t", correlation_id=None, max_tokens=1).tokens_in_estimate
    sent = [r for r in fake.record.requests if r.method == "POST"][-1].body
    assert sent["max_tokens"] == 4096 - estimate  # the fake's context (max_model_len)


def test_tool_turns_reach_only_an_engine_that_takes_tools(client: openai.OpenAI) -> None:
    turns = [*ASK, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    ]}, {"role": "tool", "tool_call_id": "c1", "content": "09:30"}]  # fmt: skip
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mock", messages=turns, max_tokens=3)  # type: ignore[arg-type]
    assert caught.value.body["param"] == "messages"  # type: ignore[index]
    assert "tool calls or tool results need an engine that takes tools" in caught.value.body["message"]  # type: ignore[index]
    assert "'mock' (mock)" in caught.value.body["message"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("turn", "param", "says"),
    [
        (
            {"role": "tool", "content": "09:30"},
            "messages[1].tool_call_id",
            "a tool message needs tool_call_id",
        ),
        ({"role": "user", "content": "x", "tool_call_id": "c1"}, "messages[1].tool_call_id", "role 'tool'"),
        ({"role": "user", "content": "x", "tool_calls": []}, "messages[1].tool_calls", "role 'assistant'"),
        ({"role": "assistant"}, "messages[1].content", "content is required"),
        ({"role": "tool", "tool_call_id": "c1"}, "messages[1].content", "content is required"),
    ],
    ids=[
        "result-without-its-call",
        "call-id-on-a-user",
        "calls-on-a-user",
        "empty-assistant",
        "empty-result",
    ],
)
def test_a_tool_turn_openai_would_refuse_is_refused_by_name(
    client: openai.OpenAI, turn: dict[str, Any], param: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="qwen", messages=[*ASK, turn], max_tokens=3)  # type: ignore[arg-type]
    assert caught.value.body["param"] == param, caught.value.body  # type: ignore[index]
    assert says in caught.value.body["message"]  # type: ignore[index]


def test_tool_turns_are_kept_in_the_stored_spec_that_any_replica_runs() -> None:
    """A job is stored as its spec's JSON and run from it, on this replica or another (Redis): the
    engine request built from the stored spec carries the turns as the client sent them."""
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "JST"}'}}
    ]
    result = {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "09:30"}]}
    turns = [*ASK, {"role": "assistant", "content": None, "tool_calls": calls, "refusal": None}, result]
    request = ChatCompletionRequest.model_validate({"model": "qwen", "messages": turns, "tools": TOOLS})
    spec = request.to_spec(job_id="j", tenant="t", correlation_id=None, max_tokens=5)
    stored = spec_from_dict(orjson.loads(spec_json(spec)))  # as admission stores it, as dispatch reads it
    assert stored == spec
    body = request_body(submit_request(stored, "m"), "m", chat=True)
    assert body["messages"] == [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "content": "09:30", "tool_call_id": "c1"},
    ]
    assert spec.tokens_in_estimate > len("weather and time in Tokyo?09:30") // 4  # the calls count too


def test_a_participants_name_reaches_an_openai_engine_and_not_ollama(
    client: openai.OpenAI, engine: tuple[VllmEngine, str]
) -> None:
    """OpenAI's `name` on a turn (multi-agent clients set it; some chat templates render it) is passed
    to the engines of OpenAI's dialect, through the stored spec; Ollama's chat has no such field."""
    fake, _ = engine
    turns = [{"role": "system", "content": "be brief", "name": "planner"}, {"role": "user", "content": "hi"}]
    client.chat.completions.create(model="qwen", messages=turns, max_tokens=3)  # type: ignore[arg-type]
    sent = [r for r in fake.record.requests if r.method == "POST"][-1].body["messages"]
    assert sent == turns
    request = ChatCompletionRequest.model_validate({"model": "qwen", "messages": turns})
    spec = spec_from_dict(
        orjson.loads(spec_json(request.to_spec(job_id="j", tenant="t", correlation_id=None, max_tokens=3)))
    )
    assert ollama_body(submit_request(spec, "m"), "m", chat=True, raw=False)["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]


def test_parallel_tool_calls_false_gives_only_the_first_call(
    client: openai.OpenAI, engine: tuple[VllmEngine, str]
) -> None:
    """`parallel_tool_calls: true` is OpenAI's default and asks for nothing (clients that send their
    settings whole send it) and is not sent; `false` reaches the engine (llama-server's grammar then
    allows one call) and gives at most one call even where the engine makes two (as this fake does):
    the engine's first, streamed and whole, as vLLM answers it."""
    fake, _ = engine

    def calls(parallel: bool) -> list[tuple[str, str]]:
        done = client.chat.completions.create(
            model="qwen",
            messages=ASK,
            tools=TOOLS,
            parallel_tool_calls=parallel,
            max_tokens=50,  # type: ignore[arg-type]
        )
        assert done.choices[0].finish_reason == "tool_calls"
        return [(c.function.name, c.function.arguments) for c in done.choices[0].message.tool_calls or []]  # type: ignore[union-attr]

    assert calls(True) == list(CALLS)
    assert calls(False) == [CALLS[0]]
    chunks = list(
        client.chat.completions.create(
            model="qwen",
            messages=ASK,
            tools=TOOLS,
            parallel_tool_calls=False,
            max_tokens=50,
            stream=True,  # type: ignore[arg-type]
        )
    )
    fragments = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert {f.index for f in fragments} == {0}
    assert "".join(f.function.arguments or "" for f in fragments) == CALLS[0][1]  # type: ignore[union-attr]
    posts = [r.body for r in fake.record.requests if r.method == "POST"]
    assert [body.get("parallel_tool_calls") for body in posts] == [None, False, False]
