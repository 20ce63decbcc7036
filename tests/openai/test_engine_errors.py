"""An engine's failure, answered to a whole (non-streamed) OpenAI request as a gateway answers it: the
engine's HTTP 500 is our 502 Bad Gateway carrying the engine's message; what is ours stays 500."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import pytest

from tests.fakes.engines.vllm import VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import sdk, served, vllm_and_mock

ASK = [{"role": "user", "content": "hello"}]


def test_an_engines_500_is_a_502_naming_the_engine(make_server: Callable[..., LoopbackServer]) -> None:
    with served(VllmEngine(http_status=500, error_message="CUDA error: out of memory")) as engine:
        server = make_server(pools=vllm_and_mock(engine.url))  # type: ignore[attr-defined]
        client = sdk(server)
        with pytest.raises(openai.InternalServerError) as chat:
            client.chat.completions.create(model="qwen", messages=ASK, max_tokens=2)  # type: ignore[arg-type]
        with pytest.raises(openai.InternalServerError) as completion:
            client.completions.create(model="qwen", prompt="hello", max_tokens=2)
        job = httpx.get(f"{server.base_url}/v1/tasks/{chat.value.response.headers['x-job-id']}", timeout=10)
    for caught in (chat.value, completion.value):
        assert caught.status_code == 502, caught.response.text
        error = caught.body
        assert isinstance(error, dict) and error["code"] == "internal" and error["type"] == "server_error"
        assert "CUDA error: out of memory" in error["message"] and "HTTP 500" in error["message"]
        assert caught.response.headers["x-should-retry"] == "false"
    # our own API's record of the job is unchanged: the job ended with the engine's INTERNAL error
    assert job.json()["error"]["code"] == "INTERNAL", job.text
