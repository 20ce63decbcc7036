"""TGI specifics: the native request and its validation quirks, special tokens, generated_text,
in-stream validation and overload errors after a 200, /health and /info."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.engines import tgi as fake
from tests.fakes.engines.harness import collect, finished, request, texts
from tests.fakes.engines.tgi import TgiEngine
from worker_adapters.base import EngineInternal, EngineRejected, EngineUnavailable, Finished, WorkerProps
from worker_adapters.tgi_http import TgiAdapter, generate_body

MakeAdapter = Any


@pytest.fixture
def tgi(serve_fake: Any, make_adapter: MakeAdapter) -> Any:
    def start(**behaviour: Any) -> tuple[TgiEngine, TgiAdapter]:
        engine = TgiEngine(**behaviour)
        return engine, make_adapter(TgiAdapter, serve_fake(engine), model=fake.MODEL)

    return start


async def test_native_request_body(tgi: Any) -> None:
    engine, adapter = tgi()
    await collect(adapter, request(max_tokens=6, seed=3, temperature=0.7, top_p=0.9, stop=("\n\n",)))
    assert engine.record.last("/generate_stream").body == {
        "inputs": "Say hi",
        "parameters": {
            "max_new_tokens": 6,
            "details": True,
            "temperature": 0.7,
            "top_p": 0.9,
            "do_sample": True,
            "seed": 3,
            "stop": ["\n\n"],
        },
    }


@pytest.mark.parametrize(
    ("temperature", "top_p", "params"),
    [
        (None, None, {"do_sample": False}),
        (0.0, 1.0, {"do_sample": False}),  # TGI refuses temperature 0 and top_p 1: greedy instead
        (0.5, None, {"temperature": 0.5, "do_sample": True}),
        (None, 0.5, {"top_p": 0.5, "do_sample": True}),
    ],
)
def test_sampling_parameters_tgi_accepts(
    temperature: float | None, top_p: float | None, params: dict[str, Any]
) -> None:
    body = generate_body(request(temperature=temperature, top_p=top_p))
    assert body["parameters"] == {"max_new_tokens": 5, "details": True, **params}


async def test_special_eos_token_is_an_empty_token_and_generated_text_is_not_appended(tgi: Any) -> None:
    _, adapter = tgi(eos_after=3)
    events = await collect(adapter, request(max_tokens=10))
    assert texts(events) == ["Hello", ",", " wor", ""]
    assert "".join(texts(events)) == "Hello, wor"
    assert finished(events) == Finished("eos", prompt_tokens=7, completion_tokens=4)


async def test_stop_sequence(tgi: Any) -> None:
    _, adapter = tgi()
    events = await collect(adapter, request(max_tokens=10, stop=(" wor",)))
    assert texts(events) == ["Hello", ",", " wor"]
    assert finished(events).stop_reason == "stop_sequence"


@pytest.mark.parametrize(
    ("error_type", "message", "error"),
    [
        (
            "validation",
            "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096",
            EngineRejected,
        ),
        ("overloaded", "Model is overloaded", EngineUnavailable),
        ("generation", "Request failed during generation: Server error: CUDA OOM", EngineInternal),
        ("incomplete_generation_stream", "Incomplete generation stream", EngineInternal),
    ],
)
async def test_errors_inside_a_200_stream(
    tgi: Any, error_type: str, message: str, error: type[Exception]
) -> None:
    _, adapter = tgi(fail_after=0, error_type=error_type, error_message=message)
    with pytest.raises(error) as caught:
        await collect(adapter, request())
    assert type(caught.value) is error
    assert message in str(caught.value)


async def test_health(tgi: Any) -> None:
    engine, adapter = tgi()
    assert (await adapter.health()).ready
    engine.behaviour.loading = True
    health = await adapter.health()
    assert (health.live, health.ready) == (True, False)
    assert "unhealthy" in health.detail


async def test_props_from_info(tgi: Any) -> None:
    engine, adapter = tgi()
    # no slots from max_concurrent_requests (an admission limit): the pool's configured slots stand
    assert await adapter.props() == WorkerProps(ctx_max=8192, engine_version=fake.VERSION)
    engine.info_body = {
        "model_id": "old",
        "max_concurrent_requests": 16,
        "max_input_length": 1024,
        "version": "1.4.5",
    }
    assert await adapter.props() == WorkerProps(ctx_max=1024, engine_version="1.4.5")


async def test_chat_uses_the_messages_route(tgi: Any) -> None:
    engine, adapter = tgi()
    events = await collect(adapter, request(chat=True, max_tokens=2, model=fake.MODEL))
    assert texts(events) == ["Hello", ","]
    body = engine.record.last("/v1/chat/completions").body
    assert body["model"] == fake.MODEL and body["messages"][1] == {"role": "user", "content": "Say hi"}
