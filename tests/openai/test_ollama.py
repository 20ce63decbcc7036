"""What the OpenAI surfaces ask of an Ollama pool (its native API, the protocol-faithful fake), through
the official SDK: structured output (`response_format`, the Responses API's `text.format`) becomes
Ollama's `format`, "json" or the JSON schema itself, and the SDK's `parse` reads the answer."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests.fakes.engines.asgi import logprob_of
from tests.fakes.engines.ollama import OllamaEngine
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import sdk, served

ASK = [{"role": "user", "content": "the weather in Tokyo, as JSON"}]


class Weather(BaseModel):
    city: str
    celsius: int


SCHEMA = Weather.model_json_schema()


@pytest.fixture
def engine() -> Iterator[OllamaEngine]:
    with served(OllamaEngine(tokens=('{"city": ', '"Tokyo", ', '"celsius": 21}'), eos_after=3)) as fake:
        yield fake


@pytest.fixture
def client(make_server: Callable[..., LoopbackServer], engine: OllamaEngine) -> openai.OpenAI:
    pool = {"id": "o", "engine": "ollama", "models": ["llama3.2"],
            "replicas": [{"id": "r0", "url": engine.url}]}  # type: ignore[attr-defined]  # fmt: skip
    return sdk(make_server(pools=[pool]))


def test_a_response_format_becomes_ollamas_format(client: openai.OpenAI, engine: OllamaEngine) -> None:
    schema_format = {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True},
    }
    done = client.chat.completions.create(
        model="llama3.2",
        messages=ASK,
        max_tokens=16,
        response_format=schema_format,  # type: ignore[arg-type]
    )
    assert engine.record.last("/api/chat").body["format"] == SCHEMA
    assert Weather.model_validate_json(done.choices[0].message.content or "") == Weather(
        city="Tokyo", celsius=21
    )
    client.chat.completions.create(
        model="llama3.2",
        messages=ASK,
        max_tokens=16,
        response_format={"type": "json_object"},  # type: ignore[arg-type]
    )
    assert engine.record.last("/api/chat").body["format"] == "json"
    client.chat.completions.create(
        model="llama3.2",
        messages=ASK,
        max_tokens=16,
        response_format={"type": "text"},  # type: ignore[arg-type]
    )
    assert "format" not in engine.record.last("/api/chat").body


def test_the_sdks_parse_reads_a_structured_answer_from_ollama(
    client: openai.OpenAI, engine: OllamaEngine
) -> None:
    parsed = client.chat.completions.parse(
        model="llama3.2", messages=ASK, max_tokens=16, response_format=Weather
    )  # type: ignore[arg-type]
    assert parsed.choices[0].message.parsed == Weather(city="Tokyo", celsius=21)
    sent = engine.record.last("/api/chat").body["format"]
    assert sent["properties"].keys() == {"city", "celsius"}  # the SDK's strict form of the schema
    response = client.responses.parse(model="llama3.2", input="the weather in Tokyo", text_format=Weather)
    assert response.output_parsed == Weather(city="Tokyo", celsius=21)
    assert engine.record.last("/api/chat").body["format"]["properties"].keys() == {"city", "celsius"}


CALLS = (("get_weather", '{"city": "Tokyo", "unit": "celsius"}'), ("get_time", '{"zone": "JST"}'))
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


@pytest.fixture
def caller(make_server: Callable[..., LoopbackServer]) -> Iterator[tuple[openai.OpenAI, OllamaEngine]]:
    """An Ollama model that calls both tools when it has tools, and says "It is 21°C." otherwise."""
    with served(OllamaEngine(tool_calls=CALLS, tokens=("It is 21°C.",), eos_after=1)) as fake:
        pool = {
            "id": "o",
            "engine": "ollama",
            "models": ["llama3.2"],
            "replicas": [{"id": "r0", "url": fake.url}],
        }  # type: ignore[attr-defined]
        yield sdk(make_server(pools=[pool])), fake


def test_ollamas_tool_calls_come_back_as_openais(caller: tuple[openai.OpenAI, OllamaEngine]) -> None:
    """Ollama sends each call whole, its arguments a JSON object and no id: they come back as OpenAI's
    calls (arguments as JSON text, an id each), whole and streamed, finishing with `tool_calls`."""
    client, engine = caller
    done = client.chat.completions.create(model="llama3.2", messages=ASK, tools=TOOLS, max_tokens=16)  # type: ignore[arg-type]
    assert engine.record.last("/api/chat").body["tools"] == TOOLS
    choice = done.choices[0]
    calls = choice.message.tool_calls or []
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        (name, json.loads(arguments)) for name, arguments in CALLS
    ]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)
    chunks = list(client.chat.completions.create(model="llama3.2", messages=ASK, tools=TOOLS, stream=True))  # type: ignore[arg-type]
    fragments = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert [(f.index, f.function.name) for f in fragments] == [(0, "get_weather"), (1, "get_time")]  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_the_tool_loop_reaches_ollama_in_its_shape(caller: tuple[openai.OpenAI, OllamaEngine]) -> None:
    """The response's message sent back with the results: Ollama gets the calls' arguments as objects
    and each result naming its function (`tool_name`)."""
    client, engine = caller
    asked = client.chat.completions.create(model="llama3.2", messages=ASK, tools=TOOLS, max_tokens=16)  # type: ignore[arg-type]
    message = asked.choices[0].message
    calls = message.tool_calls or []
    results = [
        {"role": "tool", "tool_call_id": c.id, "content": f"result of {c.function.name}"} for c in calls
    ]  # type: ignore[union-attr]
    turns = [*ASK, message.model_dump(exclude_none=True), *results]
    client.chat.completions.create(model="llama3.2", messages=turns, tools=TOOLS, max_tokens=16)  # type: ignore[arg-type]
    sent = engine.record.last("/api/chat").body["messages"]
    assert sent[1]["tool_calls"] == [
        {"id": c.id, "function": {"name": name, "arguments": json.loads(arguments)}}
        for c, (name, arguments) in zip(calls, CALLS, strict=True)
    ]
    assert [(t["role"], t.get("tool_name"), t["content"]) for t in sent[2:]] == [
        ("tool", "get_weather", "result of get_weather"), ("tool", "get_time", "result of get_time")
    ]  # fmt: skip


def test_a_tool_choice_ollama_cannot_honour_is_refused_by_name(
    caller: tuple[openai.OpenAI, OllamaEngine],
) -> None:
    """Ollama lets the model choose: `auto` runs, `none` sends no tools (the model answers), `required`
    or a named function is a 400 naming `tool_choice`."""
    client, engine = caller
    ask: dict[str, Any] = {"model": "llama3.2", "messages": ASK, "tools": TOOLS, "max_tokens": 16}
    none = client.chat.completions.create(**ask, tool_choice="none")
    assert none.choices[0].message.content == "It is 21°C."
    assert "tools" not in engine.record.last("/api/chat").body
    auto = client.chat.completions.create(**ask, tool_choice="auto")
    assert auto.choices[0].finish_reason == "tool_calls"
    for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(**ask, tool_choice=choice)
        assert caught.value.body["param"] == "tool_choice"  # type: ignore[index]


def test_a_response_calls_ollamas_tools(caller: tuple[openai.OpenAI, OllamaEngine]) -> None:
    client, engine = caller
    flat = [
        {"type": "function", "name": t["function"]["name"], "parameters": {"type": "object"}} for t in TOOLS
    ]
    done = client.responses.create(model="llama3.2", input="weather and time in Tokyo?", tools=flat)  # type: ignore[arg-type]
    assert [(item.type, item.name) for item in done.output] == [  # type: ignore[union-attr]
        ("function_call", "get_weather"), ("function_call", "get_time")
    ]  # fmt: skip
    assert [t["function"]["name"] for t in engine.record.last("/api/chat").body["tools"]] == [
        "get_weather",
        "get_time",
    ]


# Log probabilities (Ollama 0.12.11 and later): asked with `logprobs`/`top_logprobs`, read from each line


@pytest.fixture
def speaker(make_server: Callable[..., LoopbackServer]) -> Iterator[tuple[openai.OpenAI, OllamaEngine]]:
    with served(OllamaEngine(tokens=("It", " is", " 21", "°C."), eos_after=4)) as fake:
        pool = {"id": "o", "engine": "ollama", "models": ["llama3.2"],
                "replicas": [{"id": "r0", "url": fake.url}]}  # type: ignore[attr-defined]  # fmt: skip
        yield sdk(make_server(pools=[pool])), fake


def test_chat_carries_ollamas_logprobs_streamed_and_whole(
    speaker: tuple[openai.OpenAI, OllamaEngine],
) -> None:
    client, engine = speaker
    chunks = list(
        client.chat.completions.create(
            model="llama3.2", messages=ASK, max_tokens=8, logprobs=True, top_logprobs=2, stream=True
        )  # type: ignore[arg-type]
    )
    sent = engine.record.last("/api/chat").body
    assert (sent["logprobs"], sent["top_logprobs"]) == (True, 2)
    entries = [c.choices[0].logprobs.content for c in chunks if c.choices and c.choices[0].delta.content]  # type: ignore[union-attr]
    assert [[(e.token, e.logprob, e.bytes) for e in entry or []] for entry in entries] == [
        [(text, logprob_of(i), list(text.encode()))] for i, text in enumerate(("It", " is", " 21", "°C."))
    ]
    assert [(t.token, t.logprob) for t in entries[2][0].top_logprobs] == [  # type: ignore[index]
        (" 21", logprob_of(2)), ("21~1", logprob_of(2, 1))
    ]  # fmt: skip
    whole = client.chat.completions.create(model="llama3.2", messages=ASK, max_tokens=8, logprobs=True)  # type: ignore[arg-type]
    assert "top_logprobs" not in engine.record.last("/api/chat").body
    content = whole.choices[0].logprobs.content  # type: ignore[union-attr]
    assert [(e.token, e.logprob, e.top_logprobs) for e in content or []] == [
        (text, logprob_of(i), []) for i, text in enumerate(("It", " is", " 21", "°C."))
    ]


def test_completions_and_responses_carry_ollamas_logprobs(
    speaker: tuple[openai.OpenAI, OllamaEngine],
) -> None:
    client, engine = speaker
    done = client.completions.create(model="llama3.2", prompt="The weather:", max_tokens=8, logprobs=1)
    assert engine.record.last("/api/generate").body["top_logprobs"] == 1
    logprobs = done.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens == ["It", " is", " 21", "°C."]
    assert logprobs.token_logprobs == [logprob_of(i) for i in range(4)]
    assert logprobs.top_logprobs == [{text: logprob_of(i)} for i, text in enumerate(logprobs.tokens)]
    answer = client.responses.create(
        model="llama3.2", input="the weather?", include=["message.output_text.logprobs"], top_logprobs=2
    )
    part = answer.output[0].content[0]  # type: ignore[union-attr]
    assert part.text == "It is 21°C."  # type: ignore[union-attr]
    assert [(e.token, e.logprob, len(e.top_logprobs)) for e in part.logprobs] == [  # type: ignore[union-attr]
        (text, logprob_of(i), 2) for i, text in enumerate(("It", " is", " 21", "°C."))
    ]


def test_an_ollama_too_old_for_logprobs_answers_a_400_saying_so(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """Before 0.12.11 Ollama ignores `logprobs`: the client is told so (a 400 naming the release), not
    answered without them; the same request without `logprobs` runs."""
    old = OllamaEngine(tokens=("It", " is", " 21", "°C."), eos_after=4)
    old.version_text = "0.12.6"
    with served(old) as fake:
        pool = {"id": "o", "engine": "ollama", "models": ["llama3.2"],
                "replicas": [{"id": "r0", "url": fake.url}]}  # type: ignore[attr-defined]  # fmt: skip
        client = sdk(make_server(pools=[pool]))
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="llama3.2", messages=ASK, max_tokens=8, logprobs=True)  # type: ignore[arg-type]
        assert "ollama 0.12.6 reports no log probabilities (Ollama 0.12.11 and later do)" in str(caught.value)
        assert all(seen.path != "/api/chat" for seen in fake.record.requests)
        answer = client.chat.completions.create(model="llama3.2", messages=ASK, max_tokens=8)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "It is 21°C."


def test_the_deprecated_function_loop_reaches_ollama_in_its_shape(
    caller: tuple[openai.OpenAI, OllamaEngine],
) -> None:
    """`functions` reach Ollama as its tools; its call comes back as `function_call` (the first, one a
    turn); sent back with a `function` turn, the result names its function (`tool_name`); a forced
    function, which Ollama has no way to ask for, is refused naming `function_call`."""
    client, engine = caller
    functions = [tool["function"] for tool in TOOLS]
    first = client.chat.completions.create(model="llama3.2", messages=ASK, functions=functions, max_tokens=16)  # type: ignore[arg-type]
    assert engine.record.last("/api/chat").body["tools"] == TOOLS
    call = first.choices[0].message.function_call
    assert call is not None and first.choices[0].finish_reason == "function_call"
    assert (call.name, json.loads(call.arguments)) == (CALLS[0][0], json.loads(CALLS[0][1]))
    turns = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
             {"role": "function", "name": call.name, "content": "21 C"}]  # fmt: skip
    client.chat.completions.create(model="llama3.2", messages=turns, functions=functions, max_tokens=16)  # type: ignore[arg-type]
    sent = engine.record.last("/api/chat").body["messages"]
    assert sent[1]["tool_calls"] == [
        {"id": "call_fn1", "function": {"name": call.name, "arguments": json.loads(call.arguments)}}
    ]
    assert (sent[2]["role"], sent[2].get("tool_name"), sent[2]["content"]) == ("tool", call.name, "21 C")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="llama3.2",
            messages=ASK,
            functions=functions,
            function_call={"name": "get_time"},
            max_tokens=16,
        )  # type: ignore[arg-type]
    assert caught.value.body["param"] == "function_call"  # type: ignore[index]
