"""OpenAI-dialect specifics: the request, auth, health and props, and the stream mapping on real-world
chunk shapes (llama-cpp-python, OpenAI, OpenRouter, llama.cpp, vLLM, TGI, Ollama)."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from tests.fakes.engines import llamacpp as llama_fake
from tests.fakes.engines.harness import collect, request
from tests.fakes.engines.llamacpp import LlamaCppEngine
from worker_adapters._sse import SSEDecoder
from worker_adapters.base import (
    AdapterError,
    EngineInternal,
    EngineRejected,
    EngineReset,
    EngineUnavailable,
    Finished,
    Token,
    TokenLogprob,
    WorkerProps,
)
from worker_adapters.openai_http import OpenAIAdapter, OpenAIStream, token_logprobs

MakeAdapter = Any


def run(wire: str, engine: str = "openai", *, final_step_chunks: bool = False) -> list[Any]:
    """Decode a captured stream and map it, the way the adapter does."""
    stream = OpenAIStream(engine, final_step_chunks=final_step_chunks)
    out: list[Any] = []
    for event in SSEDecoder().feed(wire.encode()):
        out += stream.feed(event)
        if stream.done:
            break
    return out


def test_llama_cpp_python_one_chunk_per_token_then_a_bare_finish() -> None:
    # llama-cpp-python 0.3: json.dumps with spaces, one chunk per token ("" while a UTF-8 character is
    # incomplete), then a chunk with "text": "" and the finish reason; no usage chunk even when asked.
    head = (
        '{"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m.gguf", "choices": [{"text": '
    )
    wire = "".join(
        f'data: {head}{text}, "index": 0, "logprobs": null, "finish_reason": {reason}}}]}}\n\n'
        for text, reason in [
            ('"Hi"', "null"),
            ('""', "null"),
            ('"\\ud83d\\ude42"', "null"),
            ('""', '"length"'),
        ]
    )
    events = run(wire + "data: [DONE]\n\n")
    assert events == [Token("Hi"), Token(""), Token("🙂"), Finished("max_tokens")]


def test_a_finish_chunk_that_carries_text_is_a_token() -> None:
    wire = 'data: {"choices":[{"index":0,"text":" end","finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    assert run(wire) == [Token(" end"), Finished("eos")]


def test_llamacpp_streamed_final_completion_chunk_is_a_bare_finish() -> None:
    final = (
        '{"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}],"created":1,"model":"q",'
        '"system_fingerprint":"b1","object":"text_completion","usage":{"completion_tokens":1,"prompt_tokens":2,'
        '"total_tokens":3},"id":"chatcmpl-x"}'
    )
    wire = 'data: {"choices":[{"text":"a","index":0,"logprobs":null,"finish_reason":null}]}\n\n'
    assert run(wire + f"data: {final}\n\ndata: [DONE]\n\n") == [
        Token("a"),
        Finished("eos", prompt_tokens=2, completion_tokens=1),
    ]


def frames(*events: object, prefix: str = "data: ") -> str:
    """SSE frames: JSON objects (compact, as most engines write them), or raw strings such as [DONE]."""
    return "".join(
        prefix + (e if isinstance(e, str) else json.dumps(e, separators=(",", ":"))) + "\n\n" for e in events
    )


def chat_choice(delta: dict[str, Any], reason: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason, **extra}


def test_openai_chat_role_chunk_usage_chunk_and_unknown_fields() -> None:
    base = {"id": "chatcmpl-B", "object": "chat.completion.chunk", "created": 1753357673, "model": "gpt-4.1"}
    base["service_tier"] = "default"
    role = chat_choice({"role": "assistant", "content": "", "refusal": None})
    usage = {"prompt_tokens": 14, "completion_tokens": 2, "total_tokens": 16}
    wire = frames(
        {**base, "choices": [role], "usage": None},
        {**base, "choices": [chat_choice({"content": "The"})], "usage": None, "obfuscation": "x1"},
        {**base, "choices": [chat_choice({}, "stop")], "usage": None},
        {**base, "choices": [], "usage": usage},
        "[DONE]",
    )
    assert run(wire) == [Token("The"), Finished("eos", prompt_tokens=14, completion_tokens=2)]


def test_llamacpp_role_chunk_with_null_content_is_not_a_token() -> None:
    wire = frames(
        {"choices": [{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}]},
        {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": "Hello"}}]},
        {"choices": [{"finish_reason": "length", "index": 0, "delta": {}}]},
        "[DONE]",
    )
    assert run(wire) == [Token("Hello"), Finished("max_tokens")]


def test_tgi_chat_repeats_the_role_and_names_stop_sequence() -> None:
    head = {"object": "chat.completion.chunk", "id": ""}
    wire = frames(
        {**head, "choices": [chat_choice({"role": "assistant", "content": "Deep"})], "usage": None},
        {
            **head,
            "choices": [chat_choice({"role": "assistant", "content": ""}, "stop_sequence")],
            "usage": None,
        },
        "[DONE]",
        prefix="data:",
    )
    assert run(wire, final_step_chunks=True) == [Token("Deep"), Token(""), Finished("stop_sequence")]


def test_vllm_stop_reason_string_means_stop_sequence() -> None:
    choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop", "stop_reason": "\n\n"}
    wire = frames({"choices": [choice], "usage": None}, "[DONE]")
    assert run(wire, final_step_chunks=True) == [Token(""), Finished("stop_sequence")]


def test_other_choices_are_ignored() -> None:
    wire = frames(
        {"choices": [{"index": 1, "text": "other", "finish_reason": None}]},
        {"choices": [{"index": 0, "text": "mine", "finish_reason": "length"}]},
        "[DONE]",
    )
    assert run(wire) == [Token("mine"), Finished("max_tokens")]


def test_2024_ollama_empty_finish_reason_is_not_a_finish() -> None:
    wire = frames({"choices": [chat_choice({"role": "assistant", "content": "Hi"}, "")]}, "[DONE]")
    with pytest.raises(EngineReset, match="without a finish_reason"):
        run(wire)


_OPENROUTER = {
    "error": {"code": "server_error", "message": "upstream died"},
    "choices": [chat_choice({"content": ""}, "error")],
}
_ANTHROPIC_BUSY = {"type": "error", "error": {"type": "overloaded_error", "message": "Busy"}}
_OPENAI_ERROR = 'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n'


@pytest.mark.parametrize(
    ("wire", "error", "text"),
    [
        (_OPENAI_ERROR, EngineInternal, "The server had an error"),
        ("event: error\n" + frames(_ANTHROPIC_BUSY), EngineUnavailable, "Busy"),
        ('event: error\ndata: {"message":"bad","type":"invalid_request_error"}\n\n', EngineRejected, "bad"),
        (frames(_OPENROUTER), EngineInternal, "upstream died"),
        (frames({"choices": [{"index": 0, "text": "", "finish_reason": "error"}]}), EngineInternal,
         "finish_reason 'error'"),
        (frames({"choices": [{"index": 0, "text": "", "finish_reason": "abort"}]}), EngineReset, "aborted"),
        (frames({"error": {"message": "full", "http_status_code": 503}}), EngineUnavailable, "full"),
        ("data: [1,2]\n\n", EngineInternal, "not an object"),
        ("data: {not json\n\n", EngineInternal, "invalid JSON"),
    ],
)  # fmt: skip
def test_error_shapes(wire: str, error: type[AdapterError], text: str) -> None:
    with pytest.raises(error) as caught:
        run(wire)
    assert type(caught.value) is error
    assert text in caught.value.message


def test_done_without_a_finish_reason_is_not_success() -> None:
    with pytest.raises(EngineReset, match=r"\[DONE\] without a finish_reason"):
        run('data: {"choices":[{"index":0,"text":"a","finish_reason":null}]}\n\ndata: [DONE]\n\n')


@pytest.fixture
def oai(serve_fake: Any, make_adapter: MakeAdapter) -> Any:
    def start(**options: Any) -> tuple[LlamaCppEngine, OpenAIAdapter]:
        engine = LlamaCppEngine()
        return engine, make_adapter(OpenAIAdapter, serve_fake(engine), model="served-name", **options)

    return start


async def test_completion_request_body(oai: Any) -> None:
    engine, adapter = oai()
    sampling: dict[str, Any] = {"seed": 1, "temperature": 0.5, "top_p": 0.9, "stop": ("x", "y")}
    await collect(adapter, request(max_tokens=4, model="served-name", **sampling))
    assert engine.record.last("/v1/completions").body == {
        "model": "served-name",
        "prompt": "Say hi",
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": 1,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["x", "y"],
    }


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "Answer", "schema": SCHEMA, "strict": True}}


@pytest.mark.parametrize(
    ("options", "given", "sent"),
    [
        ({}, JSON_SCHEMA, JSON_SCHEMA),  # OpenAI's shape, as the client sent it
        ({"json_schema": "json_object"}, JSON_SCHEMA, {"type": "json_object", "schema": SCHEMA}),
        ({"json_schema": "json_object"}, {"type": "json_object"}, {"type": "json_object"}),
        ({"json_schema": "json_object"}, None, None),  # nothing asked, nothing sent
    ],
)
async def test_a_json_schema_goes_in_the_shape_the_pool_says(
    oai: Any, options: dict[str, str], given: dict[str, Any] | None, sent: dict[str, Any] | None
) -> None:
    """llama-cpp-python samples under `{"type": "json_object", "schema": ...}` and refuses OpenAI's
    `json_schema` type: its pool's `json_schema: json_object` says so."""
    engine, adapter = oai(**options)
    fmt = None if given is None else json.dumps(given)
    await collect(adapter, request(chat=True, model="served-name", response_format=fmt))
    assert engine.record.last("/v1/chat/completions").body.get("response_format") == sent


@pytest.mark.parametrize(
    ("single", "tools", "sent"), [(True, True, False), (None, True, None), (True, False, None)]
)
async def test_one_tool_call_asked_is_parallel_tool_calls_false(
    oai: Any, single: bool | None, tools: bool, sent: bool | None
) -> None:
    """A job that takes at most one call tells the engine (llama-server's grammar then allows one);
    nothing is said without tools, or when several calls may come."""
    engine, adapter = oai()
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    listed = json.dumps([tool]) if tools else None
    await collect(adapter, request(chat=True, model="served-name", tools=listed, single_tool_call=single))
    assert engine.record.last("/v1/chat/completions").body.get("parallel_tool_calls") == sent


async def test_api_key_is_sent_as_a_bearer_token(oai: Any) -> None:
    engine, adapter = oai(api_key="sk-test")
    await collect(adapter, request())
    await adapter.health()
    assert engine.record.last("/v1/completions").headers["authorization"] == "Bearer sk-test"
    assert engine.record.last("/v1/models").headers["authorization"] == "Bearer sk-test"


async def test_no_authorization_header_without_a_key(oai: Any) -> None:
    engine, adapter = oai()
    await collect(adapter, request())
    assert "authorization" not in engine.record.last("/v1/completions").headers


async def test_health_and_props_from_v1_models(oai: Any) -> None:
    engine, adapter = oai()
    health = await adapter.health()
    assert (health.live, health.ready) == (True, True)
    assert engine.record.last().path == "/v1/models"
    assert await adapter.props() == WorkerProps(models=(llama_fake.MODEL,))  # llama.cpp tells no version


@pytest.mark.parametrize(
    ("routes", "version"),
    [
        ({"/version": {"version": "0.32.0"}}, "0.32.0"),  # vLLM, SGLang
        ({"/openapi.json": {"info": {"title": "🦙 llama.cpp Python API", "version": "0.3.36"}}},
         "0.3.36"),  # FastAPI servers: llama-cpp-python
        ({}, None),  # tells none
    ],
)  # fmt: skip
async def test_engine_version_where_the_server_tells_it(
    make_adapter: MakeAdapter, routes: dict[str, Any], version: str | None
) -> None:
    asked: list[str] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        asked.append(request.url.path)
        if request.url.path == "/v1/models":
            return httpx2.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})
        if request.url.path in routes:
            return httpx2.Response(200, json=routes[request.url.path])
        return httpx2.Response(404, json={"detail": "Not Found"})

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
    adapter = make_adapter(OpenAIAdapter, "http://engine", client=client)
    assert (await adapter.props()).engine_version == version
    await adapter.props()
    assert asked.count("/version") == 1  # asked once, not at every probe


async def test_health_path_option(oai: Any) -> None:
    # llama.cpp answers /v1/models even while loading; its /health tells the truth.
    engine, adapter = oai(health_path="/health")
    engine.behaviour.loading = True
    health = await adapter.health()
    assert (health.live, health.ready) == (True, False)
    assert engine.record.last().path == "/health"


def test_logprobs_are_read_in_either_dialect() -> None:
    """Chat's `content[]` (vLLM, OpenAI) and completions' parallel lists (vLLM, llama-cpp-python, whose
    alternatives come as an object keyed by token, in no particular order); incomplete entries are
    skipped, never invented."""
    top = [{"token": "Yo", "logprob": -2.0}, {"token": "Hi", "logprob": -0.5}]
    chat = {"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": top},
                        {"token": "?", "logprob": None}]}  # fmt: skip
    assert token_logprobs(chat) == (TokenLogprob("Hi", -0.5, (("Hi", -0.5), ("Yo", -2.0))),)
    legacy = {"tokens": ["a", "b"], "token_logprobs": [-1, -0.25], "top_logprobs": [{"x": -3.0, "a": -1.0}]}
    assert token_logprobs(legacy) == (
        TokenLogprob("a", -1, (("a", -1.0), ("x", -3.0))),
        TokenLogprob("b", -0.25, ()),
    )
    assert token_logprobs(None) == () and token_logprobs({"tokens": "ab"}) == ()
    assert token_logprobs({"content": [{"token": "t", "logprob": True}]}) == ()
