"""The contract every HTTP adapter keeps, checked against each engine's fake over loopback: tokens and
counts, chunk boundaries anywhere, keep-alives, every error path, cancel and close, correlation ids.

Each case is one adapter on one route of one fake; engine-specific details live in test_<engine>.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes.engines.asgi import DEFAULT_TOKENS, FakeEngine, split_at, split_every
from tests.fakes.engines.harness import (
    collect,
    finished,
    request,
    texts,
    wait_for_disconnect,
    wait_for_request,
)
from tests.fakes.engines.llamacpp import LlamaCppEngine
from tests.fakes.engines.ollama import OllamaEngine
from tests.fakes.engines.server import closed_port_url
from tests.fakes.engines.tgi import TgiEngine
from tests.fakes.engines.vllm import MODEL as VLLM_MODEL
from tests.fakes.engines.vllm import VllmEngine
from worker_adapters import load_adapter
from worker_adapters._http import HttpAdapter
from worker_adapters.base import (
    AdapterConfig,
    AdapterError,
    EngineInternal,
    EngineRejected,
    EngineReset,
    EngineTimeout,
    EngineUnavailable,
    Finished,
    Token,
    WorkerAdapter,
)
from worker_adapters.llamacpp_http import LlamaCppAdapter
from worker_adapters.ollama_http import OllamaAdapter
from worker_adapters.openai_http import OpenAIAdapter
from worker_adapters.tgi_http import TgiAdapter
from worker_adapters.vllm_http import VllmAdapter

# A request closed at once, not at the engine's next frame: the cancel tests' engines pause
# BETWEEN_TOKENS_S between frames, and the close must be seen well before that (with room for a
# loaded machine: at 0.1 s against 0.3 s, a fifth of isolated runs here saw it at 0.10-0.13 s).
BETWEEN_TOKENS_S = 1.0
CANCEL_OBSERVED_S = 0.4
MakeAdapter = Callable[..., Any]


@dataclass(frozen=True)
class Case:
    id: str
    adapter: type[HttpAdapter]
    engine: Callable[..., FakeEngine]
    path: str
    chat: bool = False
    model: str = "m"
    eos_token_streamed: bool = False  # the engine relays its EOS token as a step with empty text
    stream_error: type[AdapterError] = EngineInternal  # what an in-stream 500-class failure becomes
    sse: bool = True

    def __str__(self) -> str:
        return self.id


CASES = [
    Case("llamacpp", LlamaCppAdapter, LlamaCppEngine, "/completion"),
    Case("llamacpp-chat", LlamaCppAdapter, LlamaCppEngine, "/v1/chat/completions", chat=True),
    Case("openai-completions", OpenAIAdapter, LlamaCppEngine, "/v1/completions"),
    Case("openai-chat", OpenAIAdapter, LlamaCppEngine, "/v1/chat/completions", chat=True),
    Case("vllm", VllmAdapter, VllmEngine, "/v1/completions", eos_token_streamed=True, model=VLLM_MODEL),
    Case("vllm-chat", VllmAdapter, VllmEngine, "/v1/chat/completions", chat=True, eos_token_streamed=True,
         model=VLLM_MODEL),
    Case("tgi", TgiAdapter, TgiEngine, "/generate_stream", eos_token_streamed=True),
    # TGI's chat route reports every in-stream failure with http_status_code 422.
    Case("tgi-chat", TgiAdapter, TgiEngine, "/v1/chat/completions", chat=True, eos_token_streamed=True,
         stream_error=EngineRejected),
    Case("ollama", OllamaAdapter, OllamaEngine, "/api/generate", model="llama3.2", sse=False),
    Case("ollama-chat", OllamaAdapter, OllamaEngine, "/api/chat", chat=True, model="llama3.2", sse=False),
]  # fmt: skip
SSE_CASES = [case for case in CASES if case.sse]


@pytest.fixture(params=CASES, ids=str)
def case(request: pytest.FixtureRequest) -> Case:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def setup(case: Case, serve_fake: Any, make_adapter: MakeAdapter) -> Callable[..., tuple[FakeEngine, Any]]:
    def start(**behaviour: Any) -> tuple[FakeEngine, Any]:
        engine = case.engine(**behaviour)
        adapter = make_adapter(case.adapter, serve_fake(engine), model=case.model)
        return engine, adapter

    return start


def expected(n: int) -> list[str]:
    return [DEFAULT_TOKENS[i % len(DEFAULT_TOKENS)] for i in range(n)]


async def test_streams_every_token_then_max_tokens(case: Case, setup: Any) -> None:
    engine, adapter = setup()
    events = await collect(adapter, request(chat=case.chat, model=case.model, max_tokens=12))
    assert texts(events) == expected(12)
    assert finished(events) == Finished("max_tokens", prompt_tokens=7, completion_tokens=12)
    assert engine.record.last(case.path).method == "POST"


async def test_eos_ending_and_token_count_match_the_engine(case: Case, setup: Any) -> None:
    _, adapter = setup(eos_after=4)
    events = await collect(adapter, request(chat=case.chat, model=case.model, max_tokens=12))
    assert texts(events) == expected(4) + ([""] if case.eos_token_streamed else [])
    end = finished(events)
    assert end.stop_reason == "eos"
    assert end.completion_tokens == len(texts(events))


async def test_forwards_the_correlation_id(case: Case, setup: Any) -> None:
    engine, adapter = setup()
    await collect(adapter, request(chat=case.chat, model=case.model, correlation_id="corr-42"))
    assert engine.record.last(case.path).headers["x-correlation-id"] == "corr-42"


@pytest.mark.parametrize("chunking", ["bytewise", "coalesced", "keepalive"])
async def test_chunking_and_keepalives_do_not_change_the_stream(
    case: Case, setup: Any, chunking: str
) -> None:
    behaviours: dict[str, dict[str, Any]] = {
        "bytewise": {"split": split_every(1)},  # inside UTF-8 characters and CRLFs, every frame
        "coalesced": {"coalesce": True},  # the whole stream in one write
        "keepalive": {"keepalive": True},  # a keep-alive comment before every frame
    }
    _, adapter = setup(**behaviours[chunking])
    events = await collect(adapter, request(chat=case.chat, model=case.model, max_tokens=12))
    assert texts(events) == expected(12)
    assert finished(events).stop_reason == "max_tokens"


@pytest.mark.parametrize("eol", ["\r\n", "\r"])
@pytest.mark.parametrize("case", SSE_CASES, ids=str)
async def test_crlf_and_cr_line_endings(case: Case, setup: Any, eol: str) -> None:
    _, adapter = setup(eol=eol, split=split_every(1))  # cuts between every \r and \n
    events = await collect(adapter, request(chat=case.chat, model=case.model, max_tokens=12))
    assert texts(events) == expected(12)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(0, 4000), min_size=1, max_size=8), eol=st.sampled_from(["\n", "\r\n"]))
async def test_any_split_points(
    case: Case, serve_fake: Any, make_adapter: MakeAdapter, cuts: list[int], eol: str
) -> None:
    engine = case.engine(split=split_at(cuts), eol=eol)
    adapter = make_adapter(case.adapter, serve_fake(engine), model=case.model)
    events = await collect(adapter, request(chat=case.chat, model=case.model, max_tokens=12))
    assert texts(events) == expected(12)
    assert finished(events).completion_tokens == 12


async def test_connection_refused_is_unavailable(case: Case, make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(case.adapter, closed_port_url(), model=case.model)
    with pytest.raises(EngineUnavailable) as caught:
        await collect(adapter, request(chat=case.chat, model=case.model))
    assert caught.value.engine == case.adapter.engine
    assert case.adapter.engine in caught.value.message


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, EngineRejected), (413, EngineRejected), (422, EngineRejected), (429, EngineUnavailable),
     (503, EngineUnavailable), (500, EngineInternal), (404, EngineInternal)],
)  # fmt: skip
async def test_http_error_before_the_stream(
    case: Case, setup: Any, status: int, error: type[AdapterError]
) -> None:
    _, adapter = setup(http_status=status, error_message="the engine says no")
    with pytest.raises(error) as caught:
        await collect(adapter, request(chat=case.chat, model=case.model))
    assert type(caught.value) is error
    assert caught.value.engine == case.adapter.engine
    assert f"HTTP {status}" in caught.value.message
    if status != 503 or case.engine is not OllamaEngine:  # Ollama's 503 has its own text
        assert "the engine says no" in caught.value.message


async def test_in_stream_error_after_some_tokens(case: Case, setup: Any) -> None:
    _, adapter = setup(fail_after=3, failure="error", error_message="KV cache exhausted")
    seen: list[Any] = []
    with pytest.raises(AdapterError) as caught:
        async with aclosing(
            adapter.submit(request(chat=case.chat, model=case.model, max_tokens=12))
        ) as events:
            async for event in events:
                seen.append(event)
    assert type(caught.value) is case.stream_error
    assert "KV cache exhausted" in caught.value.message
    assert caught.value.engine == case.adapter.engine
    assert texts(seen) == expected(3)
    assert not any(isinstance(event, Finished) for event in seen)


async def test_dropped_connection_is_a_reset(case: Case, setup: Any) -> None:
    _, adapter = setup(fail_after=3, failure="drop")
    with pytest.raises(EngineReset) as caught:
        await collect(adapter, request(chat=case.chat, model=case.model, max_tokens=12))
    assert caught.value.engine == case.adapter.engine
    assert "connection broke" in caught.value.message


async def test_eof_without_the_terminal_mark_is_a_reset(case: Case, setup: Any) -> None:
    _, adapter = setup(fail_after=3, failure="eof")
    with pytest.raises(EngineReset) as caught:
        await collect(adapter, request(chat=case.chat, model=case.model, max_tokens=12))
    assert "stream ended without" in caught.value.message
    assert case.adapter.engine in caught.value.message


async def test_no_first_event_within_the_first_token_timeout(
    case: Case, serve_fake: Any, make_adapter: MakeAdapter
) -> None:
    # The limit leaves a loaded CI machine time to deliver the request (at 0.3 s it once timed out
    # before the engine had read it, so the engine had no request to see abandoned).
    engine = case.engine(header_delay_s=8)
    adapter = make_adapter(
        case.adapter, serve_fake(engine), model=case.model, read_timeout_s=20, first_token_timeout_s=1.5
    )
    started = time.monotonic()
    with pytest.raises(EngineTimeout) as caught:
        await collect(adapter, request(chat=case.chat, model=case.model))
    assert time.monotonic() - started < 5  # the first-token limit, not the between-reads one
    assert "no first event within 1.5 s" in caught.value.message
    assert engine.record.requests, "the engine never received the request"
    await wait_for_disconnect(engine.record)


async def test_keep_alives_during_prefill_are_not_a_first_event(
    case: Case, serve_fake: Any, make_adapter: MakeAdapter
) -> None:
    engine = case.engine(prefill_pings_s=5)
    adapter = make_adapter(
        case.adapter, serve_fake(engine), model=case.model, read_timeout_s=0.2, first_token_timeout_s=0.6
    )
    with pytest.raises(EngineTimeout) as caught:
        await collect(adapter, request(chat=case.chat, model=case.model))
    assert "no first event within 0.6 s" in caught.value.message


async def test_a_prefill_longer_than_the_read_timeout_is_not_a_timeout(
    case: Case, serve_fake: Any, make_adapter: MakeAdapter
) -> None:
    engine = case.engine(header_delay_s=0.6)
    adapter = make_adapter(
        case.adapter, serve_fake(engine), model=case.model, read_timeout_s=0.2, first_token_timeout_s=5
    )
    events = await collect(adapter, request(chat=case.chat, model=case.model, max_tokens=4))
    assert isinstance(events[-1], Finished)


async def test_silence_mid_stream_is_bounded_by_the_read_timeout(
    case: Case, serve_fake: Any, make_adapter: MakeAdapter
) -> None:
    engine = case.engine(token_delay_s=5)
    adapter = make_adapter(
        case.adapter, serve_fake(engine), model=case.model, read_timeout_s=0.3, first_token_timeout_s=30
    )
    with pytest.raises(EngineTimeout) as caught:
        await collect(adapter, request(chat=case.chat, model=case.model, max_tokens=4))
    assert "no data for 0.3 s mid-stream" in caught.value.message
    await wait_for_disconnect(engine.record)


async def test_a_slow_consumer_is_not_an_engine_timeout(
    case: Case, serve_fake: Any, make_adapter: MakeAdapter
) -> None:
    adapter = make_adapter(case.adapter, serve_fake(case.engine()), model=case.model, read_timeout_s=0.1)
    async with aclosing(adapter.submit(request(chat=case.chat, model=case.model, max_tokens=4))) as events:
        seen = [await anext(events)]
        await asyncio.sleep(0.4)  # parked at a yield: our time, not the engine's
        seen += [event async for event in events]
    assert isinstance(seen[-1], Finished)


async def test_cancel_while_the_consumer_awaits_the_next_token(case: Case, setup: Any) -> None:
    engine, adapter = setup(token_delay_s=BETWEEN_TOKENS_S)
    consumer_task = asyncio.current_task()
    assert consumer_task is not None
    async with aclosing(
        adapter.submit(request("c1", chat=case.chat, model=case.model, max_tokens=50))
    ) as events:
        assert isinstance(await anext(events), Token)
        canceled_at = asyncio.get_running_loop().create_future()

        async def cancel_soon() -> None:
            await asyncio.sleep(0.05)
            canceled_at.set_result(time.monotonic())
            await adapter.cancel("c1")

        canceller = asyncio.create_task(cancel_soon())
        rest = [event async for event in events]
        await canceller
    assert rest == []
    assert consumer_task.cancelling() == 0  # the interrupt was taken back; the consumer runs on
    assert await wait_for_disconnect(engine.record) - canceled_at.result() < CANCEL_OBSERVED_S
    assert adapter.http.in_flight == 0


async def test_cancel_between_tokens(case: Case, setup: Any) -> None:
    engine, adapter = setup(token_delay_s=BETWEEN_TOKENS_S)
    async with aclosing(
        adapter.submit(request("c2", chat=case.chat, model=case.model, max_tokens=50))
    ) as events:
        assert isinstance(await anext(events), Token)
        canceled_at = time.monotonic()
        await adapter.cancel("c2")  # the stream is parked at its yield: the response is closed now
        assert await wait_for_disconnect(engine.record) - canceled_at < CANCEL_OBSERVED_S
        assert [event async for event in events] == []


async def test_closing_the_iterator_closes_the_request(case: Case, setup: Any) -> None:
    engine, adapter = setup(token_delay_s=BETWEEN_TOKENS_S)
    events = adapter.submit(request(chat=case.chat, model=case.model, max_tokens=50))
    assert isinstance(await anext(events), Token)
    closed_at = time.monotonic()
    await events.aclose()
    assert await wait_for_disconnect(engine.record) - closed_at < CANCEL_OBSERVED_S
    assert adapter.http.in_flight == 0


async def test_cancel_before_the_engine_sent_headers(case: Case, setup: Any) -> None:
    engine, adapter = setup(header_delay_s=5)  # a queued request: no headers until a slot frees up

    async def consume() -> list[Any]:
        return await collect(adapter, request("c3", chat=case.chat, model=case.model))

    consumer = asyncio.create_task(consume())
    await wait_for_request(engine.record)
    canceled_at = time.monotonic()
    await adapter.cancel("c3")
    assert await consumer == []
    assert await wait_for_disconnect(engine.record) - canceled_at < CANCEL_OBSERVED_S


async def test_canceling_the_consumer_task_propagates(case: Case, setup: Any) -> None:
    engine, adapter = setup(token_delay_s=0.3)
    first = asyncio.Event()

    async def consume() -> None:
        async with aclosing(
            adapter.submit(request(chat=case.chat, model=case.model, max_tokens=50))
        ) as events:
            async for _ in events:
                first.set()

    consumer = asyncio.create_task(consume())
    await first.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await wait_for_disconnect(engine.record)


async def test_adapter_aclose_ends_streams_in_flight(case: Case, setup: Any) -> None:
    engine, adapter = setup(token_delay_s=0.3)
    async with aclosing(adapter.submit(request(chat=case.chat, model=case.model, max_tokens=50))) as events:
        assert isinstance(await anext(events), Token)
        await adapter.aclose()
        assert [event async for event in events] == []
    await wait_for_disconnect(engine.record)


async def test_cancel_of_an_unknown_task_is_a_no_op(case: Case, setup: Any) -> None:
    _, adapter = setup()
    await adapter.cancel("nobody")
    assert (
        finished(await collect(adapter, request(chat=case.chat, model=case.model))).stop_reason
        == "max_tokens"
    )


async def test_the_registry_builds_it(case: Case) -> None:
    adapter = load_adapter(
        AdapterConfig(engine=case.adapter.engine, base_url="http://127.0.0.1:9", model="m")
    )
    try:
        assert type(adapter) is case.adapter
        assert isinstance(adapter, WorkerAdapter)
    finally:
        await adapter.aclose()


async def test_the_request_is_closed_before_finished_is_handed_over(case: Case, setup: Any) -> None:
    _, adapter = setup()
    events = adapter.submit(request(chat=case.chat, model=case.model))
    assert isinstance(await anext(events), Token)
    assert adapter.http.in_flight == 1
    while not isinstance(await anext(events), Finished):
        pass
    assert adapter.http.in_flight == 0  # a consumer that stops at Finished leaves nothing open
    await events.aclose()


async def test_a_closed_adapter_refuses_work(case: Case, setup: Any) -> None:
    _, adapter = setup()
    await adapter.aclose()
    with pytest.raises(EngineUnavailable, match="closed"):
        await collect(adapter, request(chat=case.chat, model=case.model))
    with pytest.raises(EngineUnavailable, match="closed"):
        await adapter.props()
    health = await adapter.health()
    assert (health.live, health.ready) == (False, False)
