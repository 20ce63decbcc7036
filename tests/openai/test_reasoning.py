"""A thinking model behind a reasoning parser (the vLLM fake, speaking vLLM's `delta.reasoning`): its
reasoning is relayed apart from its answer, as `reasoning` events in our stream, chat's
`reasoning` / `reasoning_content`, and the Responses API's `reasoning` output item, whole and
streamed; it is never part of the job's text, and a client may send it back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.contract.test_sse_events import validate_stream
from tests.fakes.engines.ollama import OllamaEngine
from tests.fakes.engines.server import serve
from tests.fakes.engines.vllm import VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.openai.pools import sdk, served, vllm_and_mock

THINKING = ("The user greets me. ", "A short answer.")
ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture
def engine() -> Iterator[VllmEngine]:
    with served(VllmEngine(thinking=THINKING, tokens=("Hello", "!"), eos_after=2)) as fake:
        yield fake


@pytest.fixture
def server(make_server: Callable[..., LoopbackServer], engine: VllmEngine) -> LoopbackServer:
    return make_server(pools=vllm_and_mock(engine.url))  # type: ignore[attr-defined]


def test_our_stream_relays_the_reasoning_before_the_answer_and_keeps_it_out_of_the_text(
    server: LoopbackServer,
) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        job = http.post("/v1/tasks", json={"model_ref": "qwen", "messages": ASK, "max_tokens": 8}).json()
        events = read_events(http, job["sse_url"])
        status = http.get(job["status_url"]).json()
    validate_stream(events)
    said = [(e.event, e.data["t"]) for e in events if e.event in ("reasoning", "token") and e.data["t"]]
    assert said == [
        ("reasoning", THINKING[0]),
        ("reasoning", THINKING[1]),
        ("token", "Hello"),
        ("token", "!"),
    ]
    assert status["text"] == "Hello!"
    assert events[-1].data["tokens_out"] == 5  # the engine's count: reasoning, text and the EOS token


def test_chat_streams_the_reasoning_under_both_names_and_joins_it_whole(server: LoopbackServer) -> None:
    client = sdk(server)
    chunks = list(client.chat.completions.create(model="qwen", messages=ASK, max_tokens=8, stream=True))  # type: ignore[arg-type]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    thoughts = [d.model_extra for d in deltas if d.model_extra and "reasoning" in d.model_extra]
    assert [t["reasoning"] for t in thoughts] == list(THINKING)
    assert all(t["reasoning_content"] == t["reasoning"] for t in thoughts)
    assert "".join(d.content or "" for d in deltas) == "Hello!"
    whole = client.chat.completions.create(model="qwen", messages=ASK, max_tokens=8)  # type: ignore[arg-type]
    message = whole.choices[0].message
    assert message.content == "Hello!"
    assert message.model_extra == {"reasoning": "".join(THINKING), "reasoning_content": "".join(THINKING)}


def test_an_assistant_turn_sent_back_with_its_reasoning_is_taken_without_it(
    server: LoopbackServer, engine: VllmEngine
) -> None:
    """Clients that thread reasoning (the Vercel AI SDK, for one) send it back on the assistant turn;
    it is accepted, and left out of what reaches the engine."""
    said = {"role": "assistant", "content": "Hello!", "reasoning_content": "thought", "reasoning": "thought"}
    turns = [*ASK, said, {"role": "user", "content": "and?"}]
    sdk(server).chat.completions.create(model="qwen", messages=turns, max_tokens=4)  # type: ignore[arg-type]
    sent = [r for r in engine.record.requests if r.method == "POST"][-1].body
    assert sent["messages"] == [
        *ASK,
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "and?"},
    ]


def test_a_response_holds_a_reasoning_item_before_its_message(
    server: LoopbackServer, engine: VllmEngine
) -> None:
    client = sdk(server)
    response = client.responses.create(model="qwen", input="hi", max_output_tokens=8)
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.status == "completed"
    assert [part.text for part in reasoning.content or []] == ["".join(THINKING)]
    assert message.type == "message" and response.output_text == "Hello!"
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens == 2
    # The output sent back as input, as the SDKs' docs show: the reasoning item is taken and left out.
    client.responses.create(model="qwen", input=[{"role": "user", "content": "hi"}, *response.output,
                                                  {"role": "user", "content": "and?"}])  # type: ignore[list-item]  # fmt: skip
    sent = [r for r in engine.record.requests if r.method == "POST"][-1].body
    assert sent["messages"] == [
        *ASK,
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "and?"},
    ]


def test_a_streamed_response_reasons_then_answers_as_the_sdks_helper_rebuilds_it(
    server: LoopbackServer,
) -> None:
    with sdk(server).responses.stream(model="qwen", input="hi", max_output_tokens=8) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    thinking = kinds[kinds.index("response.output_item.added") : kinds.index("response.output_item.done") + 1]
    assert thinking == [
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
    ]  # fmt: skip
    done: Any = next(e for e in events if e.type == "response.reasoning_text.done")
    assert done.text == "".join(THINKING) and done.output_index == 0
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == "Hello!"


def test_an_effort_reaches_the_engine_from_either_surface(server: LoopbackServer, engine: VllmEngine) -> None:
    """Chat's `reasoning_effort` and the Responses API's `reasoning.effort` reach vLLM as
    `reasoning_effort`; a summary is not an engine's to give (the reasoning comes whole instead)."""
    client = sdk(server)
    client.chat.completions.create(model="qwen", messages=ASK, max_tokens=4, reasoning_effort="low")  # type: ignore[arg-type]
    bodies = [r.body for r in engine.record.requests if r.method == "POST"]
    assert bodies[-1]["reasoning_effort"] == "low"
    done = client.responses.create(model="qwen", input="hi", max_output_tokens=8,
                                   reasoning={"effort": "high", "summary": "auto"})  # fmt: skip
    bodies = [r.body for r in engine.record.requests if r.method == "POST"]
    assert bodies[-1]["reasoning_effort"] == "high" and "summary" not in bodies[-1]
    assert done.output[0].type == "reasoning"
    plain = client.chat.completions.create(model="qwen", messages=ASK, max_tokens=4)  # type: ignore[arg-type]
    assert plain.choices[0].message.content and "reasoning_effort" not in engine.record.requests[-1].body


def test_an_effort_no_engine_serving_the_model_takes_is_refused_by_name(server: LoopbackServer) -> None:
    client = sdk(server)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mock", messages=ASK, max_tokens=4, reasoning_effort="low")  # type: ignore[arg-type]
    assert caught.value.body["param"] == "reasoning_effort"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="qwen", messages=ASK, extra_body={"reasoning_effort": "max"})  # type: ignore[arg-type]
    assert caught.value.body["param"] == "reasoning_effort"  # type: ignore[index]


def test_chat_template_kwargs_reach_the_engine_that_takes_them(
    server: LoopbackServer, engine: VllmEngine
) -> None:
    """vLLM's and llama.cpp's `chat_template_kwargs` (Qwen3's `enable_thinking: false`, sent through the
    SDK's `extra_body`) reach vLLM as they are; `{}` asks for nothing, and an engine without them (the
    mock) makes the request a 400 naming them."""
    client = sdk(server)
    off = {"enable_thinking": False}
    client.chat.completions.create(
        model="qwen", messages=ASK, max_tokens=4, extra_body={"chat_template_kwargs": off}
    )  # type: ignore[arg-type]
    assert [r for r in engine.record.requests if r.method == "POST"][-1].body["chat_template_kwargs"] == off
    done = client.chat.completions.create(
        model="mock", messages=ASK, max_tokens=2, extra_body={"chat_template_kwargs": {}}
    )  # type: ignore[arg-type]
    assert done.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="mock", messages=ASK, max_tokens=2, extra_body={"chat_template_kwargs": off}
        )  # type: ignore[arg-type]
    assert caught.value.body["param"] == "chat_template_kwargs"  # type: ignore[index]


def test_an_effort_turns_an_ollama_models_thinking_on_and_off(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """On Ollama (its native API), `reasoning_effort` becomes `think`, as Ollama's own OpenAI layer maps
    it: `none` turns a thinking model's thinking off, another effort on; from either surface."""
    fake = OllamaEngine(thinking=THINKING, tokens=("Hello", "!"), eos_after=2)
    with serve(fake) as url:
        pool = {"id": "o", "engine": "ollama", "models": ["llama3.2"], "replicas": [{"id": "r0", "url": url}]}
        client = sdk(make_server(pools=[pool]))
        ask = {"model": "llama3.2", "messages": ASK, "max_tokens": 8}
        off = client.chat.completions.create(**ask, reasoning_effort="none")  # type: ignore[call-overload]
        assert fake.record.last("/api/chat").body["think"] is False
        assert off.choices[0].message.content == "Hello!" and not off.choices[0].message.model_extra
        on = client.chat.completions.create(**ask, reasoning_effort="low")  # type: ignore[call-overload]
        assert fake.record.last("/api/chat").body["think"] is True
        assert on.choices[0].message.model_extra == {
            "reasoning": "".join(THINKING),
            "reasoning_content": "".join(THINKING),
        }
        done = client.responses.create(
            model="llama3.2", input="hi", max_output_tokens=8, reasoning={"effort": "none"}
        )
        assert fake.record.last("/api/chat").body["think"] is False
        assert [item.type for item in done.output] == ["message"] and done.output_text == "Hello!"
