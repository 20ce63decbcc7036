"""Ollama specifics: the native requests, Go's JSON escapes, done_reason and counts, error lines, busy
and unknown-model answers, /api/tags health and /api/version."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.engines import harness
from tests.fakes.engines import ollama as fake
from tests.fakes.engines.asgi import alternative, logprob_of
from tests.fakes.engines.harness import collect, finished, texts
from tests.fakes.engines.ollama import OllamaEngine
from tests.fakes.engines.server import closed_port_url
from worker_adapters.base import (
    EngineInternal,
    EngineRejected,
    EngineUnavailable,
    Finished,
    SubmitRequest,
    Token,
    TokenLogprob,
    WorkerProps,
)
from worker_adapters.ollama_http import OllamaAdapter

MakeAdapter = Any


def request(*args: Any, model: str = "llama3.2", **fields: Any) -> SubmitRequest:
    """A request for an installed model (the fake answers 404 for another, as Ollama does)."""
    return harness.request(*args, model=model, **fields)


@pytest.fixture
def ollama(serve_fake: Any, make_adapter: MakeAdapter) -> Any:
    def start(model: str = "llama3.2", **behaviour: Any) -> tuple[OllamaEngine, OllamaAdapter]:
        engine = OllamaEngine(**behaviour)
        return engine, make_adapter(OllamaAdapter, serve_fake(engine), model=model)

    return start


async def test_generate_request_body(ollama: Any) -> None:
    engine, adapter = ollama()
    await collect(adapter, request(max_tokens=4, seed=9, temperature=0.2, top_p=0.8, stop=("\n",)))
    assert engine.record.last("/api/generate").body == {
        "model": "llama3.2",
        "prompt": "Say hi",
        "stream": True,
        "options": {"num_predict": 4, "seed": 9, "temperature": 0.2, "top_p": 0.8, "stop": ["\n"]},
    }


async def test_raw_option_and_chat_body(serve_fake: Any, make_adapter: MakeAdapter) -> None:
    engine = OllamaEngine()
    adapter = make_adapter(OllamaAdapter, serve_fake(engine), model="llama3.2", raw="true")
    await collect(adapter, request())
    assert engine.record.last("/api/generate").body["raw"] is True
    await collect(adapter, request(chat=True))
    chat = engine.record.last("/api/chat").body
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
    ]
    assert "raw" not in chat


async def test_go_html_escapes_decode_to_the_text(ollama: Any) -> None:
    _, adapter = ollama(tokens=("<b>", " & ", "\u2028", "</b>"))
    events = await collect(adapter, request(max_tokens=4))
    assert texts(events) == ["<b>", " & ", "\u2028", "</b>"]


async def test_done_reasons_and_omitted_prompt_count(ollama: Any) -> None:
    _, adapter = ollama(eos_after=2, prompt_tokens=0)  # a fully cached prompt: prompt_eval_count absent
    events = await collect(adapter, request(max_tokens=5))
    assert finished(events) == Finished("eos", prompt_tokens=None, completion_tokens=2)


async def test_error_line_mid_stream(ollama: Any) -> None:
    _, adapter = ollama(fail_after=2, error_message="an error was encountered while running the model")
    with pytest.raises(EngineInternal, match="an error was encountered while running the model"):
        await collect(adapter, request(max_tokens=5))


async def test_busy_is_unavailable(ollama: Any) -> None:
    _, adapter = ollama(http_status=503)
    with pytest.raises(EngineUnavailable, match=r"server busy, please try again\.  maximum pending"):
        await collect(adapter, request())


async def test_unknown_model_names_the_model(ollama: Any) -> None:
    _, adapter = ollama()
    with pytest.raises(EngineInternal, match='model "mistral" not found'):
        await collect(adapter, request(model="mistral"))


@pytest.mark.parametrize(
    ("model", "ready"),
    [("llama3.2", True), ("llama3.2:latest", True), ("llama3.2:1b", False), ("mistral", False)],
)
async def test_health_checks_the_model_is_installed(ollama: Any, model: str, ready: bool) -> None:
    _, adapter = ollama(model=model)
    health = await adapter.health()
    assert (health.live, health.ready) == (True, ready)
    if not ready:
        assert f"model {model!r} is not installed" in health.detail and fake.MODEL in health.detail


async def test_health_when_down(make_adapter: MakeAdapter) -> None:
    health = await make_adapter(OllamaAdapter, closed_port_url(), model="llama3.2").health()
    assert (health.live, health.ready) == (False, False)


async def test_props(ollama: Any) -> None:
    _, adapter = ollama()
    # a `:latest` model answers to its bare name too; the context is the model's own (`/api/show`)
    assert await adapter.props() == WorkerProps(
        engine_version=fake.VERSION, models=(fake.MODEL, "llama3.2"), ctx_max=131072
    )


async def test_the_modelfiles_num_ctx_and_num_predict_are_the_engines_limits(ollama: Any) -> None:
    engine, adapter = ollama()
    engine.parameters = (
        'num_ctx                        8192\nnum_predict                    256\nstop "<|eot_id|>"'
    )
    props = await adapter.props()
    assert (props.ctx_max, props.max_tokens_out) == (8192, 256)


@pytest.mark.parametrize(("configured", "trained", "asked"), [(4096, 131072, 4096), (8192, 2048, 2048)])
async def test_requests_name_the_context_admission_checked(
    serve_fake: Any, make_adapter: MakeAdapter, configured: int, trained: int, asked: int
) -> None:
    """Ollama silently drops the start of a prompt beyond its num_ctx: every request names it, the pool's
    ctx_max or the model's own context where smaller."""
    engine = OllamaEngine()
    engine.context_length = trained
    adapter = make_adapter(OllamaAdapter, serve_fake(engine), model="llama3.2", ctx_max=configured)
    await adapter.props()
    await collect(adapter, request(max_tokens=2))
    assert engine.record.last("/api/generate").body["options"]["num_ctx"] == asked


async def test_api_show_is_asked_again_only_when_the_model_changes(ollama: Any) -> None:
    engine, adapter = ollama()
    for _ in range(3):
        await adapter.props()
    assert sum(seen.path == "/api/show" for seen in engine.record.requests) == 1
    engine.digest = "b" * 64  # `ollama pull` brought a new build of the model
    await adapter.props()
    assert sum(seen.path == "/api/show" for seen in engine.record.requests) == 2


@pytest.mark.parametrize("chat", [False, True])
async def test_a_thinking_models_thinking_is_reasoning_before_the_answer(ollama: Any, chat: bool) -> None:
    """A thinking model's `thinking` (beside `response`, or in `message`) comes apart from its text."""
    _, adapter = ollama(thinking=("Hm, ", "hi."), tokens=("Hi",), eos_after=1)
    events = await collect(adapter, request(chat=chat, max_tokens=8))
    kinds = [(type(e).__name__, getattr(e, "text", None)) for e in events[:-1]]
    assert kinds == [("Reasoning", "Hm, "), ("Reasoning", "hi."), ("Token", "Hi")]
    assert finished(events).completion_tokens == 3


@pytest.mark.parametrize(
    ("architecture", "effort", "think"),
    [
        ("llama", "none", False),  # turned off
        ("llama", "low", True),  # a thinking model without levels: on
        ("gptoss", "high", "high"),  # gpt-oss reads the level
        ("gptoss", "minimal", "low"),  # a level Ollama's releases know
    ],
)
async def test_an_effort_becomes_think_for_a_model_that_thinks(
    ollama: Any, architecture: str, effort: str, think: bool | str
) -> None:
    engine, adapter = ollama(thinking=("Hm.",), tokens=("Hi",), eos_after=1)
    engine.architecture = architecture
    await adapter.props()  # `/api/show`: capabilities ["completion", "tools", "thinking"]
    events = await collect(adapter, request(chat=True, max_tokens=8, reasoning_effort=effort))
    assert engine.record.last("/api/chat").body["think"] == think
    assert any(type(e).__name__ == "Reasoning" for e in events) is (think is not False)
    assert texts(events) == ["Hi"]


async def test_a_model_that_does_not_think_is_sent_no_think(ollama: Any) -> None:
    """Ollama refuses `think` for a model without the `thinking` capability ("does not support
    thinking"); such a model runs the job, and thinks not at all, as with OpenAI's effort `none`."""
    engine, adapter = ollama(tokens=("Hi",), eos_after=1)
    await adapter.props()
    events = await collect(adapter, request(chat=True, max_tokens=8, reasoning_effort="high"))
    assert "think" not in engine.record.last("/api/chat").body
    assert texts(events) == ["Hi"]


@pytest.mark.parametrize(("chat", "top"), [(False, 0), (True, 2)])
async def test_log_probabilities_are_asked_and_read_from_each_line(ollama: Any, chat: bool, top: int) -> None:
    """`logprobs: true` (and `top_logprobs` when alternatives are asked): each token's line carries its
    entry, the sampled token first among the alternatives; Ollama's `bytes` are not needed."""
    engine, adapter = ollama(tokens=("Hé", "llo"), eos_after=2)
    events = await collect(adapter, request(chat=chat, max_tokens=4, logprobs=top))
    sent = engine.record.last("/api/chat" if chat else "/api/generate").body
    assert sent["logprobs"] is True and sent.get("top_logprobs") == (top or None)
    tokens = [e for e in events if isinstance(e, Token)]
    assert [t.text for t in tokens] == ["Hé", "llo"]
    assert [t.logprobs for t in tokens] == [
        (
            TokenLogprob(
                text, logprob_of(i), tuple((alternative(text, r), logprob_of(i, r)) for r in range(top))
            ),
        )
        for i, text in enumerate(("Hé", "llo"))
    ]


async def test_without_logprobs_none_are_asked(ollama: Any) -> None:
    engine, adapter = ollama(tokens=("Hi",), eos_after=1)
    events = await collect(adapter, request(chat=True, max_tokens=4))
    assert {"logprobs", "top_logprobs"}.isdisjoint(engine.record.last("/api/chat").body)
    assert [e.logprobs for e in events if isinstance(e, Token)] == [()]


@pytest.mark.parametrize(("version", "refused"), [("0.12.10", True), ("0.12.11", False), ("0.0.0", False)])
async def test_an_ollama_too_old_to_report_them_refuses_the_job_saying_so(
    ollama: Any, version: str, refused: bool
) -> None:
    """Ollama before 0.12.11 ignores `logprobs`: a job asking for them is refused, naming the release
    that reports them, not answered without them. A build from source (0.0.0) tells nothing: it is sent."""
    engine, adapter = ollama(tokens=("Hi",), eos_after=1)
    engine.version_text = version
    await adapter.props()
    if refused:
        with pytest.raises(
            EngineRejected, match=r"ollama 0\.12\.10 reports no log probabilities .*0\.12\.11"
        ):
            await collect(adapter, request(max_tokens=4, logprobs=0))
        assert all(seen.path != "/api/generate" for seen in engine.record.requests)
    else:
        events = await collect(adapter, request(max_tokens=4, logprobs=0))
        assert engine.record.last("/api/generate").body["logprobs"] is True
        assert texts(events) == ["Hi"]
