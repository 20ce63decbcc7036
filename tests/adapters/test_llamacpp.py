"""llama.cpp specifics: the native /completion request and stop types, both in-stream error dialects,
/health while loading, /props, and the chat route."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.fakes.engines import llamacpp as fake
from tests.fakes.engines.asgi import logprob_of
from tests.fakes.engines.harness import collect, finished, request, texts
from tests.fakes.engines.llamacpp import LlamaCppEngine
from tests.fakes.engines.server import closed_port_url
from worker_adapters._sse import SSEEvent
from worker_adapters.base import EngineRejected, EngineUnavailable, Finished, Token, WorkerProps
from worker_adapters.llamacpp_http import LlamaCppAdapter, NativeStream

MakeAdapter = Any


@pytest.fixture
def llama(serve_fake: Any, make_adapter: MakeAdapter) -> Any:
    def start(**behaviour: Any) -> tuple[LlamaCppEngine, LlamaCppAdapter]:
        engine = LlamaCppEngine(**behaviour)
        return engine, make_adapter(LlamaCppAdapter, serve_fake(engine), model="qwen")

    return start


async def test_native_request_body(llama: Any) -> None:
    engine, adapter = llama()
    req = request(max_tokens=3, seed=42, temperature=0.0, top_p=0.9, stop=("\n\n",))
    await collect(adapter, req)
    body = engine.record.last("/completion").body
    assert body == {
        "prompt": "Say hi",
        "n_predict": 3,
        "stream": True,
        "cache_prompt": True,
        "seed": 42,
        "temperature": 0.0,
        "top_p": 0.9,
        "stop": ["\n\n"],
    }


async def test_unset_sampling_fields_are_left_to_the_engine(llama: Any) -> None:
    engine, adapter = llama()
    await collect(adapter, request())
    assert set(engine.record.last("/completion").body) == {"prompt", "n_predict", "stream", "cache_prompt"}


async def test_stop_word_ends_with_stop_sequence(llama: Any) -> None:
    _, adapter = llama()
    events = await collect(adapter, request(max_tokens=20, stop=(" wor",)))
    assert texts(events) == ["Hello", ","]
    assert finished(events) == Finished("stop_sequence", prompt_tokens=7, completion_tokens=2)


async def test_text_survives_u2028_and_multibyte_tokens_split_bytewise(llama: Any) -> None:
    from tests.fakes.engines.asgi import split_every

    _, adapter = llama(tokens=("ä", "\u2028", "日本🙂", "\x85"), split=split_every(1))
    events = await collect(adapter, request(max_tokens=4))
    assert texts(events) == ["ä", "\u2028", "日本🙂", "\x85"]


@pytest.mark.parametrize("legacy", [False, True], ids=["data-error", "legacy-error-field"])
async def test_context_overflow_in_stream_is_rejected(llama: Any, legacy: bool) -> None:
    message = "request (33056 tokens) exceeds the available context size (32768 tokens), try increasing it"
    _, adapter = llama(
        fail_after=0,
        error_status=400,
        error_type="exceed_context_size_error",
        error_message=message,
        legacy_errors=legacy,
    )
    with pytest.raises(EngineRejected) as caught:
        await collect(adapter, request())
    assert message in caught.value.message
    assert "exceed_context_size_error" in caught.value.message


async def test_legacy_error_field_on_the_chat_route_is_not_an_empty_success(llama: Any) -> None:
    # Builds through 2025 wrote `error: {…}` then `data: [DONE]`: a compliant parser would see only [DONE].
    _, adapter = llama(fail_after=1, error_status=500, legacy_errors=True, error_message="slot died")
    with pytest.raises(Exception, match="slot died"):
        await collect(adapter, request(chat=True))


async def test_completion_while_loading_is_unavailable(llama: Any) -> None:
    _, adapter = llama(loading=True)
    with pytest.raises(EngineUnavailable, match="Loading model"):
        await collect(adapter, request())


async def test_chat_goes_to_the_openai_route_with_the_requests_model(llama: Any) -> None:
    engine, adapter = llama()
    events = await collect(adapter, request(chat=True, max_tokens=3, model="qwen"))
    assert texts(events) == ["Hello", ",", " wor"]
    body = engine.record.last("/v1/chat/completions").body
    assert body["model"] == "qwen"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
    ]
    assert body["stream_options"] == {"include_usage": True}


async def test_completion_only_replica_refuses_messages(serve_fake: Any, make_adapter: MakeAdapter) -> None:
    engine = LlamaCppEngine()
    adapter = make_adapter(LlamaCppAdapter, serve_fake(engine), api="completion")
    with pytest.raises(EngineRejected, match="completions only"):
        await collect(adapter, request(chat=True))
    assert engine.record.requests == []


async def test_chat_replica_sends_a_prompt_as_one_user_message(
    serve_fake: Any, make_adapter: MakeAdapter
) -> None:
    engine = LlamaCppEngine()
    adapter = make_adapter(LlamaCppAdapter, serve_fake(engine), api="chat")
    await collect(adapter, request())
    assert engine.record.last("/v1/chat/completions").body["messages"] == [
        {"role": "user", "content": "Say hi"}
    ]


async def test_health_ready_loading_and_down(llama: Any, make_adapter: MakeAdapter) -> None:
    engine, adapter = llama()
    health = await adapter.health()
    assert (health.live, health.ready) == (True, True)
    engine.behaviour.loading = True
    health = await adapter.health()
    assert (health.live, health.ready) == (True, False)
    assert "503" in health.detail and "Loading model" in health.detail
    down = await make_adapter(LlamaCppAdapter, closed_port_url()).health()
    assert (down.live, down.ready) == (False, False)
    assert "cannot connect" in down.detail


async def test_props(llama: Any) -> None:
    engine, adapter = llama()
    assert await adapter.props() == WorkerProps(
        slots=fake.SLOTS, ctx_max=fake.N_CTX, engine_version=fake.BUILD
    )  # no models: llama-server serves its one model whatever a request names
    engine.behaviour.loading = True
    with pytest.raises(EngineUnavailable, match="Loading model"):
        await adapter.props()


def native(stream: NativeStream, obj: str) -> list[Any]:
    return stream.feed(SSEEvent("message", obj))


def test_progress_reports_are_not_tokens_but_empty_steps_are() -> None:
    stream = NativeStream("llamacpp")
    progress = '{"index":0,"content":"","tokens":[],"stop":false,"prompt_progress":{"total":6,"processed":3}}'
    assert native(stream, progress) == []
    assert native(stream, '{"index":0,"content":"","tokens":[228],"stop":false}') == [Token("")]


@pytest.mark.parametrize(
    ("final", "reason"),
    [
        ('"stop_type":"eos"', "eos"),
        ('"stop_type":"limit"', "max_tokens"),
        ('"stop_type":"word","stopping_word":"\\n"', "stop_sequence"),
        ('"stop_type":"none"', "eos"),
        ('"stopped_eos":false,"stopped_word":true,"stopped_limit":false', "stop_sequence"),  # 2024 builds
        ('"stopped_eos":false,"stopped_word":false,"stopped_limit":true', "max_tokens"),
        ('"stopped_eos":true,"stopped_word":false,"stopped_limit":false', "eos"),
    ],
)
def test_stop_types(final: str, reason: str) -> None:
    stream = NativeStream("llamacpp")
    events = native(
        stream, '{"content":"","stop":true,"tokens_predicted":3,"tokens_evaluated":6,' + final + "}"
    )
    assert events == [Finished(reason, prompt_tokens=6, completion_tokens=3)]  # type: ignore[arg-type]
    assert stream.done


def test_a_final_event_that_carries_text_relays_it_first() -> None:
    events = native(NativeStream("llamacpp"), '{"content":" end","stop":true,"stop_type":"eos"}')
    assert events == [Token(" end"), Finished("eos")]


async def test_the_servers_n_predict_is_its_output_limit(llama: Any) -> None:
    engine, adapter = llama()
    engine.n_predict = 128  # llama-server --n-predict 128: no request generates more
    assert (await adapter.props()).max_tokens_out == 128


@pytest.mark.parametrize(
    ("fields", "sent", "alternatives"),
    [
        ({"logprobs": 0}, {"n_probs": 1}, 0),  # llama-server reports none for 0: one is asked, cut back
        ({"logprobs": 3}, {"n_probs": 3}, 3),
        ({"logit_bias": '{"68": 100}'}, {"logit_bias": {"68": 100}}, None),
    ],
)
async def test_a_prompt_asking_for_logprobs_or_a_bias_takes_the_native_route(
    llama: Any, fields: dict[str, Any], sent: dict[str, Any], alternatives: int | None
) -> None:
    """A prompt's log probabilities come from the native stream's `completion_probabilities` (asked
    with `n_probs`), each token's entry with as many alternatives as asked; a logit bias as the native
    route reads it; the end keeps its native `stop_type`."""
    engine, adapter = llama()
    events = await collect(adapter, request(max_tokens=2, **fields))
    body = engine.record.last("/completion").body
    assert {key: body.get(key) for key in sent} == sent and body["prompt"] == "Say hi"
    assert not [r for r in engine.record.requests if r.path.startswith("/v1/")]
    tokens = [e for e in events if isinstance(e, Token)]
    if alternatives is None:
        assert all(t.logprobs == () for t in tokens)
    else:
        assert [len(t.logprobs) for t in tokens] == [1, 1]
        assert [t.logprobs[0].logprob for t in tokens] == [logprob_of(0), logprob_of(1)]
        assert [len(t.logprobs[0].top) for t in tokens] == [alternatives] * 2
    assert finished(events).stop_reason == "max_tokens"


async def test_a_prompts_stop_string_is_told_from_its_end_with_logprobs(llama: Any) -> None:
    _, adapter = llama()
    events = await collect(adapter, request(max_tokens=20, logprobs=1, stop=(" wor",)))
    assert texts(events) == ["Hello", ","]
    assert finished(events).stop_reason == "stop_sequence"


async def test_a_chat_job_asking_for_no_alternatives_asks_llama_server_for_one(llama: Any) -> None:
    engine, adapter = llama()
    await collect(adapter, request(chat=True, max_tokens=2, logprobs=0))
    body = engine.record.last("/v1/chat/completions").body
    assert (body["logprobs"], body["top_logprobs"]) == (True, 1)


TOOLS = [{"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
         for name in ("get_weather", "get_time")]  # fmt: skip


async def test_a_tool_choice_naming_a_function_is_that_tool_required(llama: Any) -> None:
    """llama-server reads a `tool_choice` that is not a word as `auto`: a forced function is asked for as
    a call `required` with that function the only tool; a word goes as it is."""
    engine, adapter = llama()
    forced = '{"type": "function", "function": {"name": "get_time"}}'
    await collect(
        adapter, request(chat=True, max_tokens=2, tools=orjson.dumps(TOOLS).decode(), tool_choice=forced)
    )
    body = engine.record.last("/v1/chat/completions").body
    assert (body["tools"], body["tool_choice"]) == ([TOOLS[1]], "required")
    await collect(
        adapter, request(chat=True, max_tokens=2, tools=orjson.dumps(TOOLS).decode(), tool_choice='"auto"')
    )
    body = engine.record.last("/v1/chat/completions").body
    assert (body["tools"], body["tool_choice"]) == (TOOLS, "auto")
    unknown = '{"type": "function", "function": {"name": "get_news"}}'
    with pytest.raises(EngineRejected, match="'get_news', which tools does not list"):
        await collect(
            adapter, request(chat=True, max_tokens=2, tools=orjson.dumps(TOOLS).decode(), tool_choice=unknown)
        )
