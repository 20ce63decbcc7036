"""Token counts are the engine's: a vLLM that sends two tokens per chunk (`--stream-interval 2`) and
reports `completion_tokens` gives a job whose `end`, status, metrics, OpenAI usage and token-fair
settlement say 10 tokens, while its `token` events stay a gap-free index of 5 events. Where no engine
count exists (a canceled job), the count of events is named an estimate."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from tests.api.helpers import HANG
from tests.fakes.engines.server import serve
from tests.fakes.engines.vllm import MODEL, VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.observability.exposition import value


@pytest.fixture
def url() -> Iterator[str]:
    # plain words: httpx's iter_lines (the test's reader) would split a U+2028 in the default tokens
    with serve(VllmEngine(stream_interval=2, tokens=("one", " two", " three"))) as base:
        yield base


@pytest.fixture
def server(make_server: Callable[..., LoopbackServer], url: str) -> LoopbackServer:
    pools = [
        {"id": "v", "engine": "vllm", "models": ["qwen"], "engine_model": MODEL,
         "replicas": [{"id": "r0", "url": url}]},
        {"id": "m", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}]},
    ]  # fmt: skip
    return make_server(pools=pools, queue={"fairness_unit": "tokens"})


def test_the_engines_count_is_the_jobs_count(server: LoopbackServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        before = value(client.get("/metrics").text, "tokens_out_total", pool_id="v")
        job = client.post("/v1/tasks", json={"model_ref": "qwen", "prompt": "hi", "max_tokens": 10}).json()
        events = read_events(client, job["sse_url"])
        tokens = [e.data for e in events if e.event == "token"]
        assert [t["i"] for t in tokens] == [0, 1, 2, 3, 4], "one event per chunk, indexed without gaps"
        end = events[-1].data
        assert events[-1].event == "end" and end["tokens_out"] == 10 and "tokens_out_estimated" not in end
        assert client.get(job["status_url"]).json()["tokens_out"] == 10
        after = value(client.get("/metrics").text, "tokens_out_total", pool_id="v")
        assert after - before == 10
    usage = (
        openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
        .completions.create(model="qwen", prompt="hi", max_tokens=6)
        .usage
    )
    assert usage is not None and usage.completion_tokens == 6


def test_a_canceled_jobs_count_is_named_an_estimate(server: LoopbackServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = client.post("/v1/tasks", json={"model_ref": "mock", "prompt": HANG, "max_tokens": 5}).json()
        with client.stream("GET", job["sse_url"]) as stream:
            for line in stream.iter_lines():
                if line.startswith("event: started"):
                    break
        assert client.post(f"/v1/tasks/{job['job_id']}/cancel").status_code == 204
        end = read_events(client, job["sse_url"])[-1].data
        assert end["stop_reason"] == "canceled" and end["tokens_out_estimated"] is True


def test_without_an_engine_count_a_thinking_models_reasoning_counts_too(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """An OpenAI-compatible server that streams no usage (llama-cpp-python's way, the fake here): the
    estimate counts every step the engine streamed, its reasoning as well as its text."""
    fake = VllmEngine(thinking=("Hm, ", "a greeting."), tokens=("Hello", "!"), eos_after=2, usage=False)
    with serve(fake) as url:
        pool = {"id": "o", "engine": "openai", "models": ["qwen"], "engine_model": MODEL,
                "replicas": [{"id": "r0", "url": url}]}  # fmt: skip
        server = make_server(pools=[pool])
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            job = client.post(
                "/v1/tasks", json={"model_ref": "qwen", "messages": [{"role": "user", "content": "hi"}],
                                   "max_tokens": 10}
            ).json()  # fmt: skip
            events = read_events(client, job["sse_url"])
            status = client.get(job["status_url"]).json()
    assert [e.event for e in events if e.event in ("reasoning", "token")] == ["reasoning"] * 2 + ["token"] * 2
    end = events[-1].data
    assert (end["tokens_out"], end["tokens_out_estimated"], status["tokens_out"]) == (4, True, 4)
