"""orchestratord → OpenAI adapter → a real engine (llama-cpp-python on a tiny generated model)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.api.helpers import wait_for
from tests.e2e_engine.test_llama_cpp_python import Engine
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import Event, parse_frames, read_events

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def real_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    server = Engine(tmp_path_factory.mktemp("llama-through-orchestratord"))
    try:
        yield server
    finally:
        server.stop()


def start(make_server: Callable[..., LoopbackServer], engine: Engine) -> LoopbackServer:
    engine.start()  # inside the test: a missing engine fails it
    pool = {
        "id": "llama",
        "engine": "openai",
        "models": ["tiny"],
        "engine_model": str(engine.model),
        "replicas": [{"id": "a", "url": engine.url}],
        "slots": 1,
        "ctx_max": 512,
        "read_timeout_s": 30,
    }
    return make_server(pools=[pool])


def test_tokens_stream_and_the_count_matches_the_engine(
    make_server: Callable[..., LoopbackServer], real_engine: Engine
) -> None:
    server = start(make_server, real_engine)
    body = {"model_ref": "tiny", "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "seed": 1}
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        job = client.post("/v1/tasks", json=body).json()
        events = read_events(client, job["sse_url"])
        status = client.get(job["status_url"]).json()
    direct = httpx.post(
        f"{real_engine.url}/v1/completions",
        json={"model": str(real_engine.model), "prompt": body["prompt"], "max_tokens": 24, "temperature": 0,
              "seed": 1},
        timeout=60,
    ).json()  # fmt: skip
    tokens = [e for e in events if e.event == "token"]
    assert events[-1].event == "end", events[-1]
    assert events[-1].data["tokens_out"] == len(tokens) == direct["usage"]["completion_tokens"]
    assert [t.data["i"] for t in tokens] == list(range(len(tokens)))
    assert status["text"] == "".join(t.data["t"] for t in tokens) == direct["choices"][0]["text"]
    dispatch = next(e for e in events if e.event == "metrics" and "engine" in e.data)
    assert dispatch.data["engine"] == "openai" and dispatch.data["pool_id"] == "llama"


def test_cancel_frees_the_engine_slot(
    make_server: Callable[..., LoopbackServer], real_engine: Engine
) -> None:
    server = start(make_server, real_engine)
    body: dict[str, Any] = {"model_ref": "tiny", "prompt": "Hello", "max_tokens": 450, "temperature": 0}
    seen: list[Event] = []
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        job = client.post("/v1/tasks", json=body).json()
        with client.stream("GET", job["sse_url"]) as stream:
            for item in parse_frames(stream.iter_lines()):
                if isinstance(item, str):
                    continue
                seen.append(item)
                if sum(e.event == "token" for e in seen) == 3:
                    assert client.post(f"/v1/tasks/{job['job_id']}/cancel").status_code == 204
                if item.event in ("end", "error"):
                    break
        assert seen[-1].event == "end" and seen[-1].data["stop_reason"] == "canceled"
        deadline = time.monotonic() + 10
        while "Disconnected from client" not in real_engine.log():
            assert time.monotonic() < deadline, real_engine.log()
            time.sleep(0.05)
        registry = server.app.state.services.registry
        wait_for(lambda: not server.call(registry.leases.all()))
        after = client.post("/v1/tasks", json={**body, "max_tokens": 4}).json()
        assert read_events(client, after["sse_url"])[-1].event == "end"


def test_the_openai_sdk_through_orchestratord_gets_what_the_engine_says(
    make_server: Callable[..., LoopbackServer], real_engine: Engine
) -> None:
    """The official SDK against orchestratord in front of the real engine: the same text and counts as
    the engine answers the same request directly."""
    import openai

    server = start(make_server, real_engine)
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    direct = openai.OpenAI(base_url=f"{real_engine.url}/v1", api_key="unused", max_retries=0)
    sampling: dict[str, Any] = {"max_tokens": 16, "temperature": 0, "seed": 3}
    ours = client.completions.create(model="tiny", prompt="The river", **sampling)
    theirs = direct.completions.create(model=str(real_engine.model), prompt="The river", **sampling)
    assert ours.choices[0].text == theirs.choices[0].text
    assert ours.usage is not None and theirs.usage is not None
    assert ours.usage.completion_tokens == theirs.usage.completion_tokens
    # llama-cpp-python streams no usage, so the prompt's count is ours, and named an estimate
    assert ours.usage.model_extra == {"prompt_tokens_estimated": True} and ours.usage.prompt_tokens > 0
    chunks = list(client.completions.create(model="tiny", prompt="The river", stream=True, **sampling))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == theirs.choices[0].text
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], **sampling
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage is not None


def test_logprobs_through_orchestratord_are_the_engines(
    make_server: Callable[..., LoopbackServer], real_engine: Engine
) -> None:
    """`logprobs` reaches the real engine and its numbers come back unchanged, whole and streamed, in
    each surface's shape."""
    import openai

    server = start(make_server, real_engine)
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    direct = openai.OpenAI(base_url=f"{real_engine.url}/v1", api_key="unused", max_retries=0)
    sampling: dict[str, Any] = {"max_tokens": 6, "temperature": 0, "seed": 3, "logprobs": 2}
    ours = client.completions.create(model="tiny", prompt="The river", **sampling)
    theirs = direct.completions.create(model=str(real_engine.model), prompt="The river", **sampling)
    mine, engine_said = ours.choices[0].logprobs, theirs.choices[0].logprobs
    assert mine is not None and engine_said is not None and engine_said.token_logprobs
    # Two runs of the engine differ in the last float bits (batching order), never more.
    assert mine.tokens == engine_said.tokens
    assert mine.token_logprobs == pytest.approx(engine_said.token_logprobs, abs=1e-4)
    assert mine.top_logprobs is not None and engine_said.top_logprobs is not None
    assert [sorted(top) for top in mine.top_logprobs] == [sorted(top) for top in engine_said.top_logprobs]
    streamed = client.completions.create(model="tiny", prompt="The river", stream=True, **sampling)
    logprobs = [lp for c in streamed if c.choices and (lp := c.choices[0].logprobs) is not None]
    got = [x for lp in logprobs for x in lp.token_logprobs or []]
    assert got == pytest.approx(engine_said.token_logprobs, abs=1e-4)
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0,
        logprobs=True, top_logprobs=2,
    )  # fmt: skip
    content = chat.choices[0].logprobs and chat.choices[0].logprobs.content
    assert content and all(len(entry.top_logprobs) == 2 for entry in content)
    assert all(entry.logprob <= 0 for entry in content)
