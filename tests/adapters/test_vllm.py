"""vLLM specifics: error-then-[DONE], stop_reason, /health with an empty body, /version, /metrics."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.fakes.engines import vllm as fake
from tests.fakes.engines.harness import collect, finished, request, texts
from tests.fakes.engines.server import closed_port_url
from tests.fakes.engines.vllm import VllmEngine
from worker_adapters._sse import SSEEvent
from worker_adapters.base import EngineInternal, EngineRejected, Finished, Reasoning, Token, WorkerProps
from worker_adapters.openai_http import OpenAIStream
from worker_adapters.vllm_http import VllmAdapter, kv_cache_usage

MakeAdapter = Any


@pytest.fixture
def vllm(serve_fake: Any, make_adapter: MakeAdapter) -> Any:
    def start(**behaviour: Any) -> tuple[VllmEngine, VllmAdapter]:
        engine = VllmEngine(**behaviour)
        return engine, make_adapter(VllmAdapter, serve_fake(engine), model=fake.MODEL)

    return start


async def test_error_event_then_done_is_an_error_not_a_success(vllm: Any) -> None:
    _, adapter = vllm(
        fail_after=2, error_status=400, error_type="BadRequestError", error_message="bad logits"
    )
    with pytest.raises(EngineRejected, match="bad logits") as caught:
        await collect(adapter, request(chat=True, max_tokens=8, model=fake.MODEL))
    assert "400 BadRequestError" in caught.value.message


async def test_stop_string_is_a_stop_sequence(vllm: Any) -> None:
    engine, adapter = vllm()
    events = await collect(adapter, request(max_tokens=20, stop=("ld",), model=fake.MODEL))
    assert texts(events) == ["Hello", ",", " wor", ""]
    assert finished(events) == Finished("stop_sequence", prompt_tokens=7, completion_tokens=4)
    assert engine.record.last("/v1/completions").body["stop"] == ["ld"]


async def test_pre_stream_error_body_is_in_the_message(vllm: Any) -> None:
    message = "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens"
    _, adapter = vllm(http_status=400, error_message=message)
    with pytest.raises(EngineRejected) as caught:
        await collect(adapter, request(chat=True))
    assert message in caught.value.message


async def test_health(vllm: Any, make_adapter: MakeAdapter) -> None:
    engine, adapter = vllm()
    assert (await adapter.health()).ready
    assert engine.record.last().path == "/health"
    engine.behaviour.loading = True  # the engine process died: 503 with an empty body
    dead = await adapter.health()
    assert (dead.live, dead.ready) == (True, False)
    assert "HTTP 503" in dead.detail
    refused = await make_adapter(VllmAdapter, closed_port_url()).health()  # still loading: refused
    assert (refused.live, refused.ready) == (False, False)


async def test_props(vllm: Any) -> None:
    _, adapter = vllm()
    assert await adapter.props() == WorkerProps(
        ctx_max=fake.MAX_MODEL_LEN,
        engine_version=fake.VERSION,
        models=(fake.MODEL,),
        kv_cache_usage_ratio=0.5,
    )


def test_kv_cache_usage_reads_either_gauge_name() -> None:
    old = '# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{model_name="m"} 0.3\n'
    assert kv_cache_usage(old) == pytest.approx(0.3)
    assert kv_cache_usage("vllm:num_requests_running 2.0\n") is None
    assert (
        kv_cache_usage('vllm:kv_cache_usage_perc{engine="0"} NaNx\nvllm:kv_cache_usage_perc{engine="1"} 1\n')
        == 1.0
    )


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (
            b'{"object":"error","message":"flat before 0.10.1","type":"BadRequestError","code":400}',
            "flat",
        ),
        (b'{"error":"Unauthorized"}', "Unauthorized"),
    ],
)
async def test_error_bodies_of_other_versions(body: bytes, text: str, make_adapter: MakeAdapter) -> None:
    import httpx2

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(401 if b"Unauthorized" in body else 400, content=body)

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
    adapter = make_adapter(VllmAdapter, "http://vllm.invalid", client=client)
    with pytest.raises((EngineRejected, EngineInternal), match=text):
        await collect(adapter, request())


async def test_requests_carry_the_job_id_as_vllms_request_id(vllm: Any) -> None:
    engine, adapter = vllm()
    for _ in range(2):  # a retried job: the same job id, a new request id
        await collect(adapter, request("9f1c-job", max_tokens=2, model=fake.MODEL))
    ids = [seen.headers["x-request-id"] for seen in engine.record.requests if seen.path == "/v1/completions"]
    assert [i.rsplit("-", 1)[0] for i in ids] == ["9f1c-job", "9f1c-job"] and ids[0] != ids[1]


@pytest.mark.parametrize("scheduling", [False, True])
async def test_priority_reaches_vllm_only_when_the_pool_says_it_schedules_by_it(
    serve_fake: Any, make_adapter: MakeAdapter, scheduling: bool
) -> None:
    engine = VllmEngine()
    options = {"priority_scheduling": True} if scheduling else {}
    adapter = make_adapter(VllmAdapter, serve_fake(engine), model=fake.MODEL, **options)
    for priority in ("batch", "interactive"):
        events = await collect(adapter, request(max_tokens=2, model=fake.MODEL, priority=priority))
        assert isinstance(events[-1], Finished)
    sent = [seen.body.get("priority") for seen in engine.record.requests if seen.path == "/v1/completions"]
    assert sent == ([1, 0] if scheduling else [None, None])


async def test_a_reasoning_parsers_output_is_reasoning_before_the_answer(vllm: Any) -> None:
    """vLLM with `--reasoning-parser`: `delta.reasoning` (older builds and llama.cpp:
    `reasoning_content`) is the model's reasoning, apart from its text, and counted by the engine."""
    _, adapter = vllm(thinking=("Let me ", "think."), tokens=("Hi", "!"), eos_after=2)
    events = await collect(adapter, request(chat=True, max_tokens=8, model=fake.MODEL))
    kinds = [(type(e).__name__, e.text) for e in events[:-1] if isinstance(e, Token | Reasoning) and e.text]
    assert kinds == [("Reasoning", "Let me "), ("Reasoning", "think."), ("Token", "Hi"), ("Token", "!")]
    assert finished(events).completion_tokens == 5  # two of reasoning, two of text, the EOS token


def test_reasoning_content_is_read_as_reasoning_too() -> None:
    stream = OpenAIStream("vllm")
    chunk = {"choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}, "finish_reason": None}]}
    assert stream.feed(SSEEvent("message", orjson.dumps(chunk).decode())) == [Reasoning("hmm")]
    empty = {"choices": [{"index": 0, "delta": {"content": "a", "reasoning_content": ""}}]}
    assert stream.feed(SSEEvent("message", orjson.dumps(empty).decode())) == [Token("a")]
