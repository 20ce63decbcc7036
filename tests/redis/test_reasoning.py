"""A thinking model's reasoning on the Redis backend: a response run on replica A and read through
replica B (two orchestratord replicas on one Redis, the official SDK) holds its reasoning item and its
message apart, whole and streamed from the shared log; the job's text stays the answer's."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.api.helpers import wait_for
from tests.fakes.engines.server import serve
from tests.fakes.engines.vllm import VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import sdk, vllm_and_mock
from tests.redis.conftest import RedisServer, prefix

pytestmark = pytest.mark.redis
THINKING = ("The user greets me. ", "A short answer.")


def test_a_response_run_on_one_replica_reasons_the_same_through_another(
    make_server: Callable[..., LoopbackServer], redis_server: RedisServer
) -> None:
    fake = VllmEngine(thinking=THINKING, tokens=("Hello", "!"), eos_after=2, token_delay_s=0.05)
    with serve(fake) as url:
        shared = {
            "pools": vllm_and_mock(url),
            "state_url": redis_server.url,
            "redis": {"key_prefix": prefix()},
        }
        a, b = make_server(**shared), make_server(**shared)
        created = sdk(a).responses.create(model="qwen", input="hi", max_output_tokens=8, background=True)
        wait_for(lambda: sdk(b).responses.retrieve(created.id).status == "completed", timeout=15)
        whole = sdk(b).responses.retrieve(created.id)
        streamed = list(sdk(b).responses.retrieve(created.id, stream=True))
        job = uuid.UUID(created.id.removeprefix("resp_"))  # a response's id is its job's, in hex
        status = httpx.get(f"{b.base_url}/v1/tasks/{job}", timeout=10).json()
    reasoning, message = whole.output
    assert reasoning.type == "reasoning" and [p.text for p in reasoning.content or []] == ["".join(THINKING)]
    assert message.type == "message" and whole.output_text == "Hello!" and status["text"] == "Hello!"
    deltas = [e.delta for e in streamed if e.type == "response.reasoning_text.delta"]  # type: ignore[union-attr]
    assert deltas == list(THINKING)
    assert [e.sequence_number for e in streamed] == list(range(len(streamed)))
