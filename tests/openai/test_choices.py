"""Several choices in one request, through the official SDK: `n` on Chat Completions and Completions,
and several prompts on Completions. Each choice is a job of its own (placed as any other, named in
`X-Job-Id` in the choices' order); the answer holds every choice by its `index`, whole or streamed
side by side, with the usage counting each prompt once. The request is admitted whole or not at all."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.api.helpers import HANG, state_of, submit, wait_for
from tests.fakes.engines.vllm import VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import sdk, served, vllm_and_mock

ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "say something"}]


@pytest.fixture
def engine() -> Iterator[VllmEngine]:
    with served(VllmEngine(tokens=("one", " two", " three"), eos_after=3, prompt_tokens=11)) as fake:
        yield fake


@pytest.fixture
def server(make_server: Callable[..., LoopbackServer], engine: VllmEngine) -> LoopbackServer:
    return make_server(pools=vllm_and_mock(engine.url))  # type: ignore[attr-defined]


def generations(engine: VllmEngine) -> list[dict[str, Any]]:
    return [seen.body for seen in engine.record.requests if seen.method == "POST"]


def job(server: LoopbackServer, job_id: str) -> dict[str, Any]:
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        body: dict[str, Any] = http.get(f"/v1/tasks/{job_id}").json()
    return body


def test_n_chat_choices_are_a_job_each_with_seeds_that_differ(
    server: LoopbackServer, engine: VllmEngine
) -> None:
    raw = sdk(server).chat.completions.with_raw_response.create(
        model="qwen", messages=ASK, max_tokens=8, n=3, seed=7
    )
    completion = raw.parse()
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert all(c.message.content == "one two three" and c.finish_reason == "stop" for c in completion.choices)
    jobs = raw.headers["x-job-id"].split(", ")
    assert len(set(jobs)) == 3 and completion.id == f"chatcmpl-{jobs[0]}"
    assert [job(server, j)["state"] for j in jobs] == ["succeeded"] * 3
    # the prompt read once, as OpenAI counts it; every choice's tokens (vLLM counts the end of sequence)
    assert completion.usage is not None and completion.usage.prompt_tokens == 11
    assert completion.usage.completion_tokens == sum(job(server, j)["tokens_out"] for j in jobs) == 3 * 4
    assert sorted(body["seed"] for body in generations(engine)) == [7, 8, 9]  # the k-th choice: seed + k
    assert all(body.get("n", 1) == 1 for body in generations(engine))


def test_choices_stream_side_by_side_each_finishing_on_its_own(server: LoopbackServer) -> None:
    chunks = list(
        sdk(server).chat.completions.create(
            model="qwen", messages=ASK, max_tokens=8, n=2, stream=True, stream_options={"include_usage": True}
        )
    )
    assert len({c.id for c in chunks}) == 1
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == "one two three"
        assert [c.finish_reason for c in mine if c.finish_reason] == ["stop"]
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (11, 2 * 4)  # 3 tokens and the end, a choice


def test_several_prompts_and_n_make_their_choices_prompt_by_prompt(
    server: LoopbackServer, engine: VllmEngine
) -> None:
    completion = sdk(server).completions.create(model="qwen", prompt=["first", "second"], n=2, max_tokens=8)
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert [body["prompt"] for body in generations(engine)].count("first") == 2
    assert sorted(body["prompt"] for body in generations(engine)) == ["first", "first", "second", "second"]
    assert all(c.text == "one two three" for c in completion.choices)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        22,
        4 * 4,
    )  # each prompt once
    streamed = list(
        sdk(server).completions.create(model="qwen", prompt=["a", "b", "c"], max_tokens=8, stream=True)
    )
    texts = {i: "".join(c.choices[0].text for c in streamed if c.choices[0].index == i) for i in range(3)}
    assert texts == {0: "one two three", 1: "one two three", 2: "one two three"}


def test_which_prompt_each_choice_answers(server: LoopbackServer) -> None:
    """The mock echoes nothing, but its answer depends on the prompt: each choice answers its own."""
    client = sdk(server)
    alone = [
        client.completions.create(model="mock", prompt=p, max_tokens=6, seed=1).choices[0].text for p in "xyz"
    ]
    together = client.completions.create(model="mock", prompt=["x", "y", "z"], max_tokens=6, seed=1)
    assert [c.text for c in together.choices] == alone


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"prompt": ["a", "b"], "n": 65}, "n", "130 choices, more than 128"),
        ({"prompt": "x", "n": 129}, "n", "less than or equal to 128"),
        ({"prompt": ["x"] * 129}, "prompt", "at most 128"),
        ({"prompt": "x", "n": 2, "stream": True, "stream_options": {"continuous_usage_stats": True}},
         "stream_options", "continuous_usage_stats"),
    ],
)  # fmt: skip
def test_too_many_choices_are_refused_by_name(
    server: LoopbackServer, body: dict[str, Any], param: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).post("/completions", body={"model": "mock", "max_tokens": 2, **body}, cast_to=object)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param and says in error["message"], error


def test_a_request_is_admitted_whole_or_not_at_all(make_server: Callable[..., LoopbackServer]) -> None:
    """One slot held and a queue of two: three choices do not fit, so none is kept (the two admitted are
    taken back, and their places with them: the refused one's place is held for the retry, as for any
    refused request with an Idempotency-Key, and the other is free for the next request)."""
    pool = {"id": "p", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}], "slots": 1}
    server = make_server(pools=[pool], queue={"capacity": 2})
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        holder = submit(http, prompt=HANG, cancel_on_disconnect=False)
        wait_for(lambda: state_of(http, holder["job_id"]) == "running")
        body = {"model": "mock", "prompt": "x", "max_tokens": 2, "n": 3, "stream": True}
        refused = http.post("/v1/completions", json=body, headers={"Idempotency-Key": "k1"})
        listed = http.get("/v1/tasks").json()["tasks"]
        with http.stream("POST", "/v1/completions", json={**body, "n": 1}) as next_one:
            queued = state_of(http, next_one.headers["x-job-id"])
            http.post(f"/v1/tasks/{holder['job_id']}/cancel")
            text = next_one.read().decode()
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "admission_reject"
    assert [j["job_id"] for j in listed] == [holder["job_id"]]
    assert next_one.status_code == 200 and queued == "queued"
    assert text.endswith("data: [DONE]\n\n") and '"finish_reason":"length"' in text


def test_an_idempotency_key_replays_every_choice(server: LoopbackServer) -> None:
    client = sdk(server)
    first = client.chat.completions.with_raw_response.create(
        model="mock", messages=ASK, max_tokens=3, n=2, extra_headers={"Idempotency-Key": "same"}
    )
    again = client.chat.completions.with_raw_response.create(
        model="mock", messages=ASK, max_tokens=3, n=2, extra_headers={"Idempotency-Key": "same"}
    )
    assert first.headers["x-job-id"] == again.headers["x-job-id"]
    assert again.parse().choices == first.parse().choices


def test_a_choice_that_fails_fails_the_answer(make_server: Callable[..., LoopbackServer]) -> None:
    with served(VllmEngine(http_status=500, error_message="CUDA out of memory")) as broken:
        client = sdk(make_server(pools=vllm_and_mock(broken.url)))  # type: ignore[attr-defined]
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="qwen", messages=ASK, max_tokens=3, n=2)
        with pytest.raises(openai.APIError, match="CUDA out of memory"):
            list(client.chat.completions.create(model="qwen", messages=ASK, max_tokens=3, n=2, stream=True))
    assert caught.value.status_code == 502 and "CUDA out of memory" in str(caught.value)


def test_a_prompts_choices_go_to_one_replica_where_it_can_take_them(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """Two replicas of four slots: a prompt's four choices land on one of them (its engine reads the
    common prompt once, as for its own `n`); two prompts' choices each keep together."""
    pool = {
        "id": "p",
        "engine": "mock",
        "models": ["mock"],
        "replicas": [{"id": "a"}, {"id": "b"}],
        "slots": 4,
    }
    server = make_server(pools=[pool])
    client = sdk(server)
    together = client.completions.with_raw_response.create(model="mock", prompt="x", n=4, max_tokens=4)
    by_prompt = client.completions.with_raw_response.create(
        model="mock", prompt=["x", "y"], n=2, max_tokens=4
    )
    placed = [job(server, j)["replica_id"] for j in together.headers["x-job-id"].split(", ")]
    pairs = [job(server, j)["replica_id"] for j in by_prompt.headers["x-job-id"].split(", ")]
    assert len(set(placed)) == 1, placed
    assert pairs[0] == pairs[1] and pairs[2] == pairs[3], pairs
