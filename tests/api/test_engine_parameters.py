"""Our own API takes the engine parameters the OpenAI surfaces take: the penalties, `ignore_eos`, and,
for messages jobs, a thinking model's `reasoning_effort` and `chat_template_kwargs`. They reach the
engine (the vLLM fake, as vLLM's fields); a pool whose engine cannot honour one is not used, and a
job no pool serving its model can honour is a 400 naming the field; a prompt job cannot ask for what a
chat template reads."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.control.helpers import assert_envelope
from tests.fakes.engines.vllm import VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.openai.pools import last_post, served, vllm_and_mock

ASK = [{"role": "user", "content": "hi"}]
PARAMETERS: dict[str, Any] = {
    "presence_penalty": 0.5, "frequency_penalty": -0.25, "ignore_eos": True,
    "reasoning_effort": "low", "chat_template_kwargs": {"enable_thinking": False},
    "logit_bias": {"9891": 100, "15": -2.5},
}  # fmt: skip


@pytest.fixture
def engine() -> Iterator[VllmEngine]:
    with served(VllmEngine(tokens=("Hello", "!"), eos_after=2)) as fake:
        yield fake


@pytest.fixture
def http(make_server: Callable[..., LoopbackServer], engine: VllmEngine) -> Iterator[httpx.Client]:
    server = make_server(pools=vllm_and_mock(engine.url))  # type: ignore[attr-defined]
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def test_the_engine_parameters_reach_the_engine(http: httpx.Client, engine: VllmEngine) -> None:
    job = http.post("/v1/tasks", json={"model_ref": "qwen", "messages": ASK, "max_tokens": 4, **PARAMETERS})
    assert job.status_code == 202, job.text
    assert read_events(http, job.json()["sse_url"])[-1].event == "end"
    sent = last_post(engine)
    assert {name: sent.get(name) for name in PARAMETERS} == PARAMETERS


@pytest.mark.parametrize(
    ("name", "taken"),
    [(name, name in ("presence_penalty", "frequency_penalty", "ignore_eos")) for name in PARAMETERS],
)
def test_what_no_engine_serving_the_model_takes_is_a_400_naming_it(
    http: httpx.Client, name: str, taken: bool
) -> None:
    """The mock takes the penalties and `ignore_eos`, and no effort or template variables."""
    body = {"model_ref": "mock", "messages": ASK, "max_tokens": 4, name: PARAMETERS[name]}
    response = http.post("/v1/tasks", json=body)
    if taken:
        assert response.status_code == 202, response.text
        assert read_events(http, response.json()["sse_url"])[-1].event == "end"
    else:
        assert name in assert_envelope(response, 400, "INVALID_PARAMS")["message"]


@pytest.mark.parametrize("name", ["reasoning_effort", "chat_template_kwargs"])
def test_a_prompt_job_cannot_ask_for_what_a_chat_template_reads(http: httpx.Client, name: str) -> None:
    body = {"model_ref": "qwen", "prompt": "hi", "max_tokens": 4, name: PARAMETERS[name]}
    message = assert_envelope(http.post("/v1/tasks", json=body), 400, "INVALID_PARAMS")["message"]
    assert name in message and "give messages" in message
