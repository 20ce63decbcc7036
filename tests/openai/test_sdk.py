"""The official `openai` Python SDK against a live orchestratord (real uvicorn on loopback, the mock
engine): Chat Completions and Completions, sync and async, streaming and not, Models, errors, the
SDK's retries, and the job behind each request."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from orchestratord.logs import configure
from tests.api.helpers import HANG, state_of, submit, wait_for
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events

ServerFactory = Callable[..., LoopbackServer]
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say something nice"}]


def sdk(server: LoopbackServer, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", **kw)


def job_of(server: LoopbackServer, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{server.base_url}/v1/tasks/{job_id}", timeout=10).json()
    return data


def test_chat_completion_is_a_job_and_says_what_the_job_said(server: LoopbackServer) -> None:
    raw = sdk(server).chat.completions.with_raw_response.create(model="mock", messages=CHAT, max_tokens=6)
    completion = raw.parse()
    job = job_of(server, raw.headers["x-job-id"])
    assert job["state"] == "succeeded" and job["tokens_out"] == 6
    assert completion.id == f"chatcmpl-{raw.headers['x-job-id']}" and completion.object == "chat.completion"
    assert completion.model == "mock"
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.message.content == job["text"]
    assert choice.finish_reason == "length"
    assert completion.usage is not None
    end = read_events(httpx.Client(base_url=server.base_url), f"/v1/tasks/{job['job_id']}/stream")[-1]
    assert end.event == "end" and end.data["tokens_in"] > 0
    assert completion.usage.completion_tokens == 6 and completion.usage.prompt_tokens == end.data["tokens_in"]
    assert completion.usage.total_tokens == 6 + end.data["tokens_in"]


def test_chat_stream_has_the_shape_the_sdk_expects(server: LoopbackServer) -> None:
    stream = sdk(server).chat.completions.create(
        model="mock", messages=CHAT, max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert len({(c.id, c.created, c.model) for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    assert [c.choices[0].finish_reason for c in with_choices[:-1]] == [None] * (len(with_choices) - 1)
    assert with_choices[-1].choices[0].finish_reason == "length"
    *before, last = chunks
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 5
    assert all(c.usage is None for c in before)
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    job = job_of(server, chunks[0].id.removeprefix("chatcmpl-"))
    assert text == job["text"] and job["tokens_out"] == 5


def test_completions_whole_and_streamed(server: LoopbackServer) -> None:
    client = sdk(server)
    whole = client.completions.create(model="mock", prompt="once upon a time", max_tokens=4, seed=7)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 4
    streamed = list(client.completions.create(model="mock", prompt="once upon a time", max_tokens=4, seed=7,
                                              stream=True))  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text  # same seed, same text
    assert streamed[-1].choices[0].finish_reason == "length"


def test_the_async_client_streams_too(server: LoopbackServer) -> None:
    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
        stream = await client.chat.completions.create(model="mock", messages=CHAT, max_tokens=3, stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await client.close()
        return parts

    parts = asyncio.run(run())
    assert len([p for p in parts if p]) == 3


def test_models_lists_what_routes_with_the_deployments_limits(server: LoopbackServer) -> None:
    models = sdk(server).models.list()
    (model,) = models.data
    assert model.id == "mock" and model.owned_by == "orchestratord"
    limits = model.model_extra["orchestratord"] if model.model_extra else {}
    assert limits["pools"] == ["default"] and limits["ctx_max"] > 0 and limits["ready"] is True


def test_a_model_is_retrieved_as_the_list_gives_it(make_server: ServerFactory) -> None:
    """`models.retrieve` (GET /v1/models/{model}): a Hugging Face name's slash is part of the id; a
    model no pool serves is OpenAI's 404 naming `model`."""
    hf = "Qwen/Qwen3-0.6B"
    server = make_server(
        pools=[{"id": "p", "engine": "mock", "models": ["mock", hf], "replicas": [{"id": "r0"}]}]
    )
    client = sdk(server)
    listed = {m.id: m for m in client.models.list().data}
    assert set(listed) == {"mock", hf}
    for name, model in listed.items():
        assert client.models.retrieve(name) == model
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("Qwen/other")
    assert caught.value.body["param"] == "model" and "not served here" in caught.value.body["message"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("extra", "param", "fragment"),
    [
        ({"model": "nope"}, None, "not served here"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "tools is not supported"),
        ({"n": 129}, "n", "n:"),
        ({"logprobs": True}, "logprobs", "logprobs is not supported"),
        ({"temperature": 5}, "temperature", "temperature:"),
    ],
)
def test_refusals_are_openai_errors_that_name_the_field(
    server: LoopbackServer, extra: dict[str, Any], param: str | None, fragment: str
) -> None:
    body: dict[str, Any] = {"model": "mock", "messages": CHAT, "max_tokens": 3, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server, max_retries=0).chat.completions.create(**body)
    error = caught.value.body
    assert isinstance(error, dict) and fragment in error["message"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_params"
    assert error["param"] == param
    assert caught.value.response.headers["x-should-retry"] == "false"


def rejected(server: LoopbackServer, reason: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    prefix = "tasks_rejected_total{"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and f'reason="{reason}"' in line
    )


def one_slot_held(make_server: ServerFactory, **settings: Any) -> tuple[LoopbackServer, str]:
    """A server with one slot, held by a job that runs until canceled (its id returned)."""
    pool = {"id": "p", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}], "slots": 1}
    server = make_server(pools=[pool], **settings)
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        holder = submit(client, prompt=HANG, cancel_on_disconnect=False)
        wait_for(lambda: state_of(client, holder["job_id"]) == "running")
    return server, str(holder["job_id"])


@pytest.fixture
def full(make_server: ServerFactory) -> Iterator[LoopbackServer]:
    """A server whose one slot is held and whose one-place queue is taken."""
    server, _ = one_slot_held(make_server, queue={"capacity": 1})
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        submit(client, cancel_on_disconnect=False)
        yield server


def test_a_full_queue_is_a_retriable_429_the_sdk_retries_after_the_hint(full: LoopbackServer) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(full, max_retries=2).chat.completions.create(model="mock", messages=CHAT, max_tokens=2)
    headers = caught.value.response.headers
    assert headers["x-should-retry"] == "true"
    assert int(headers["retry-after-ms"]) >= 1 and int(headers["retry-after"]) >= 1
    assert caught.value.body["type"] == "rate_limit_error"  # type: ignore[index]
    assert caught.value.body["code"] == "admission_reject"  # type: ignore[index]
    assert rejected(full, "ADMISSION_REJECT") == 3, "the first try and the SDK's two retries"


def test_a_non_retriable_429_is_not_retried_by_the_sdk(make_server: ServerFactory) -> None:
    # A tenant budget with no window never starts afresh: retrying cannot help.
    server = make_server(budgets={"tenant_default": {"tokens": 10}, "window_s": None})
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(server, max_retries=2).chat.completions.create(model="mock", messages=CHAT, max_tokens=500)
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.body["type"] == "insufficient_quota"  # type: ignore[index]
    assert rejected(server, "BUDGET_EXCEEDED") == 1, "the SDK did not retry it"


def test_our_own_api_says_whether_to_retry_too(full: LoopbackServer) -> None:
    with httpx.Client(base_url=full.base_url, timeout=10) as client:
        refused = client.post("/v1/tasks", json={"model_ref": "mock", "prompt": "x", "max_tokens": 1})
        invalid = client.post("/v1/tasks", json={"model_ref": "mock", "prompt": "x", "max_tokens": 0})
    assert refused.status_code == 429 and refused.headers["x-should-retry"] == "true"
    assert refused.headers["retry-after-ms"] == refused.headers["x-backoff-ms"]
    assert invalid.status_code == 400 and invalid.headers["x-should-retry"] == "false"


def test_an_error_after_the_stream_began_is_an_error_chunk_then_done(server: LoopbackServer) -> None:
    body = {"model": "mock", "messages": [{"role": "user", "content": "[[mock fail_after=2]] hi"}],
            "max_tokens": 8, "stream": True}  # fmt: skip
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=10) as response:
        raw = response.read().decode()
    frames = [f for f in raw.split("\n\n") if f]
    assert not any(line.startswith("id:") for f in frames for line in f.splitlines())
    assert frames[-1] == "data: [DONE]"
    assert frames[-2].startswith('data: {"error":') and '"code":"worker_reset"' in frames[-2]
    with pytest.raises(openai.APIError, match=r"mock: "):  # the SDK raises the error chunk's message
        list(
            sdk(server).chat.completions.create(
                stream=True, **{k: v for k, v in body.items() if k != "stream"}
            )
        )


def test_keep_alives_only_before_the_first_chunk(make_server: ServerFactory) -> None:
    server, holder = one_slot_held(make_server, stream={"keepalive_s": 0.05})
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        body = {"model": "mock", "prompt": "[[mock tokens_per_s=20]] hi", "max_tokens": 4, "stream": True}
        with client.stream("POST", "/v1/completions", json=body) as response:
            frames: list[str] = []
            for line in response.iter_lines():
                if line:
                    frames.append(line)
                if len([f for f in frames if f.startswith(":")]) == 3:
                    client.post(f"/v1/tasks/{holder}/cancel")  # the slot frees: it starts
    first_data = next(i for i, f in enumerate(frames) if f.startswith("data:"))
    assert all(f.startswith(":") for f in frames[:first_data]) and first_data >= 3
    assert not any(f.startswith(":") for f in frames[first_data:]), "no comment once a chunk was sent"
    assert frames[-1] == "data: [DONE]"


def test_service_tier_flex_is_the_batch_class(server: LoopbackServer) -> None:
    raw = sdk(server).chat.completions.with_raw_response.create(
        model="mock", messages=CHAT, max_tokens=1, service_tier="flex"
    )
    assert job_of(server, raw.headers["x-job-id"])["priority"] == "batch"


def canceled(server: LoopbackServer, reason: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tasks_canceled_total{") and f'reason="{reason}"' in line
    )


@pytest.fixture
def quick_grace(make_server: ServerFactory) -> LoopbackServer:
    return make_server(stream={"reconnect_grace_s": 0.1})


def test_a_streaming_client_that_leaves_cancels_its_job(quick_grace: LoopbackServer) -> None:
    body = {"model": "mock", "prompt": "[[mock tokens_per_s=5]] go on", "max_tokens": 50, "stream": True}
    with httpx.stream("POST", f"{quick_grace.base_url}/v1/completions", json=body, timeout=10) as response:
        job_id = response.headers["x-job-id"]
        next(response.iter_lines())  # the first chunk came: the job runs
    with httpx.Client(base_url=quick_grace.base_url, timeout=10) as client:
        wait_for(lambda: state_of(client, job_id) == "canceled")
    assert canceled(quick_grace, "client_disconnect") == 1


def test_a_waiting_non_streaming_client_that_leaves_cancels_its_job(quick_grace: LoopbackServer) -> None:
    body = {"model": "mock", "messages": [{"role": "user", "content": HANG}], "max_tokens": 5}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{quick_grace.base_url}/v1/chat/completions", json=body, timeout=0.5)
    wait_for(lambda: canceled(quick_grace, "client_disconnect") == 1)
    engine = quick_grace.app.state.services.adapters[("default", "r0")]
    wait_for(lambda: engine.stats.active == 0)
    assert engine.stats.canceled == 1, "the engine request was closed"


def test_a_penalty_no_engine_of_the_model_honours_is_refused_by_name(make_server: ServerFactory) -> None:
    server = make_server(
        pools=[
            {
                "id": "t",
                "engine": "tgi",
                "models": ["m"],
                "replicas": [{"id": "r0", "url": "http://127.0.0.1:9"}],
            }
        ]
    )
    client = sdk(server, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="m", prompt="hi", max_tokens=2, presence_penalty=0.5)
    assert "presence_penalty is not supported" in str(caught.value.body)


def test_models_leaves_out_what_the_catalog_forbids(make_server: ServerFactory) -> None:
    """A retired or deprecated model does not route for a job outside a session: it is not listed."""
    pools = [{"id": "p", "engine": "mock", "models": ["mock", "old", "gone"], "replicas": [{"id": "r0"}]}]
    server = make_server(pools=pools)
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        for model, state in (("old", "Deprecated"), ("gone", "Retired")):
            body = {"id": model, "digest": "a" * 64, "source": f"/srv/models/{model}.gguf"}
            assert client.post("/v1/catalog/models", json=body).status_code == 201
            assert client.post(f"/v1/catalog/models/{model}/state", json={"state": state}).status_code == 200
    openai_client = sdk(server, max_retries=0)
    assert [m.id for m in openai_client.models.list().data] == ["mock"]
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("old")
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(model="old", messages=CHAT, max_tokens=2)


def test_the_clients_user_and_metadata_reach_the_logs_but_not_the_prompt(make_server: ServerFactory) -> None:
    """The ids a client sets (`user`, `metadata`, `safety_identifier`) are in the request's log lines;
    those it leaves out are not there at all."""
    server = make_server()
    out = io.StringIO()
    configure("info", "json", stream=out)  # the suite runs at warning; the admission line is info
    try:
        client = sdk(server)
        client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "my secret plan"}], max_tokens=2,
            user="user-42", metadata={"app": "notes"},
        )  # fmt: skip
        client.responses.create(model="mock", input="hi", max_output_tokens=2, safety_identifier="hashed-7")
        client.chat.completions.create(model="mock", messages=CHAT, max_tokens=2)
    finally:
        configure("warning", "json")
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    chat, response, plain = (e for e in lines if e["event"] == "task_admitted")
    assert chat["user"] == "user-42" and chat["metadata"] == {"app": "notes"}
    assert "safety_identifier" not in chat and response["safety_identifier"] == "hashed-7"
    assert not {"user", "safety_identifier", "metadata"} & set(plain)
    assert "my secret plan" not in out.getvalue()


def test_a_number_beyond_64_bits_in_a_passed_on_field_is_a_400(server: LoopbackServer) -> None:
    """Found by schemathesis: such a number in `response_format` was a 500."""
    huge = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"maximum": 2**70}}}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server, max_retries=0).chat.completions.create(
            model="mock",
            messages=CHAT,
            response_format=huge,  # type: ignore[arg-type]
        )
    assert caught.value.body["param"] == "response_format"  # type: ignore[index]
    assert "beyond 64 bits" in caught.value.body["message"]  # type: ignore[index]


def test_best_of_one_asks_for_nothing(server: LoopbackServer) -> None:
    """`best_of: 1`, OpenAI's default, which clients that send their settings whole send: the one
    completion is the best of one, on any engine; more is refused naming it (not generated here)."""
    client = sdk(server, max_retries=0)
    done = client.completions.create(model="mock", prompt="x", max_tokens=2, best_of=1)
    assert done.choices[0].text and done.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="mock", prompt="x", max_tokens=2, best_of=2)
    assert caught.value.body["param"] == "best_of"  # type: ignore[index]


def test_text_output_asks_for_nothing(server: LoopbackServer) -> None:
    """`modalities: ["text"]`, the default, which some clients send on every request: runs on any engine;
    audio output is refused naming it."""
    client = sdk(server, max_retries=0)
    done = client.chat.completions.create(model="mock", messages=CHAT, max_tokens=2, modalities=["text"])
    assert done.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mock", messages=CHAT, max_tokens=2, modalities=["audio"])
    assert caught.value.body["param"] == "modalities"  # type: ignore[index]


def test_a_prompt_cache_kept_in_memory_asks_for_nothing(server: LoopbackServer) -> None:
    """`prompt_cache_retention: in_memory`, OpenAI's default (the Agents SDK sends what its settings
    say): what every engine's prefix cache does, on any engine, on each surface; `24h` is refused
    naming it."""
    client = sdk(server, max_retries=0)
    done = client.chat.completions.create(
        model="mock", messages=CHAT, max_tokens=2, prompt_cache_retention="in_memory"
    )
    assert done.choices[0].message.content
    answered = client.responses.create(
        model="mock", input="x", max_output_tokens=2, prompt_cache_retention="in_memory"
    )
    assert answered.output_text
    for call in (
        lambda: client.chat.completions.create(
            model="mock", messages=CHAT, max_tokens=2, prompt_cache_retention="24h"
        ),
        lambda: client.completions.create(
            model="mock", prompt="x", extra_body={"prompt_cache_retention": "24h"}
        ),
        lambda: client.responses.create(model="mock", input="x", prompt_cache_retention="24h"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        assert caught.value.body["param"] == "prompt_cache_retention"  # type: ignore[index]


def test_an_orchestratord_in_front_of_another_learns_its_context(make_server: ServerFactory) -> None:
    """Each model object says `max_model_len`, vLLM's name for the context, which gateways of vLLM read:
    an orchestratord whose `openai` pool is another orchestratord learns the context a job may use
    behind it (2,048, less than its own setting), refuses at admission what the other would refuse, and
    relays the other's answers as they come."""
    mock = {"id": "m", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}], "ctx_max": 2048}
    back = make_server(pools=[mock])
    upstream = {"id": "up", "engine": "openai", "models": ["mock"], "ctx_max": 8192,
                "replicas": [{"id": "r0", "url": back.base_url}]}  # fmt: skip
    front = make_server(pools=[upstream], health_interval_s=0.2)
    listed = sdk(back).models.retrieve("mock")
    assert listed.model_extra is not None and listed.model_extra["max_model_len"] == 2048
    with httpx.Client(base_url=front.base_url, timeout=10) as http:
        wait_for(lambda: http.get("/v1/models/mock").json()["orchestratord"]["ctx_max"] == 2048)
        assert http.get("/v1/models/mock").json()["max_model_len"] == 2048
    asked: dict[str, Any] = {"model": "mock", "messages": CHAT, "max_tokens": 6, "seed": 11}
    direct = sdk(back).chat.completions.create(**asked).choices[0].message.content
    relayed = sdk(front).chat.completions.create(**asked).choices[0].message.content
    assert relayed == direct and direct
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(front).completions.create(model="mock", prompt="word " * 3000, max_tokens=4)
    assert "2048" in caught.value.body["message"]  # type: ignore[index]
