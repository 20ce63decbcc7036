"""Log probabilities pass through from an engine that reports them (the vLLM fake, speaking vLLM's
bytes) to the official SDK, in each surface's shape: chat's `logprobs.content[]` with `top_logprobs`,
completions' `tokens`/`token_logprobs`/`top_logprobs`, the Responses API's `output_text.logprobs`
(asked with `include`); streamed per chunk and whole. The job's own
`token` events carry them (one rendering of one log). An engine that reports none gets no such
request: it is refused, naming the field."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.fakes.engines.server import serve
from tests.fakes.engines.vllm import VllmEngine, alternative, logprob_of
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import sdk, vllm_and_mock

ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "say something"}]


@pytest.fixture
def engine() -> Iterator[tuple[VllmEngine, str]]:
    fake = VllmEngine()
    with serve(fake) as url:
        yield fake, url


@pytest.fixture
def server(make_server: Callable[..., LoopbackServer], engine: tuple[VllmEngine, str]) -> LoopbackServer:
    _, url = engine
    return make_server(pools=vllm_and_mock(url))


@pytest.fixture
def client(server: LoopbackServer) -> openai.OpenAI:
    return sdk(server)


def sent(fake: VllmEngine) -> dict[str, object]:
    body: dict[str, object] = [r for r in fake.record.requests if r.method == "POST"][-1].body
    return body


def test_chat_streams_each_tokens_logprobs(client: openai.OpenAI, engine: tuple[VllmEngine, str]) -> None:
    fake, _ = engine
    stream = client.chat.completions.create(
        model="qwen",
        messages=ASK,
        max_tokens=5,
        logprobs=True,
        top_logprobs=2,
        stream=True,
    )
    chunks = [c for c in stream if c.choices and c.choices[0].delta.content]
    assert sent(fake)["logprobs"] is True and sent(fake)["top_logprobs"] == 2
    assert len(chunks) == 5
    for i, chunk in enumerate(chunks):
        text = chunk.choices[0].delta.content or ""
        logprobs = chunk.choices[0].logprobs
        assert logprobs is not None and logprobs.content is not None
        (entry,) = logprobs.content
        assert (entry.token, entry.logprob, entry.bytes) == (text, logprob_of(i), list(text.encode()))
        assert [(t.token, t.logprob) for t in entry.top_logprobs] == [
            (alternative(text, r), logprob_of(i, r)) for r in range(2)
        ]


def test_a_whole_chat_completion_has_every_tokens_logprobs(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="qwen", messages=ASK, max_tokens=4, logprobs=True)
    (choice,) = completion.choices
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    assert [e.logprob for e in entries] == [logprob_of(i) for i in range(4)]
    assert all(e.top_logprobs == [] for e in entries)  # logprobs without top_logprobs: none


def test_completions_carry_logprobs_streamed_and_whole(
    client: openai.OpenAI, engine: tuple[VllmEngine, str]
) -> None:
    fake, _ = engine
    whole = client.completions.create(model="qwen", prompt="x", max_tokens=3, logprobs=3)
    assert sent(fake)["logprobs"] == 3 and "top_logprobs" not in sent(fake)
    logprobs = whole.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None and logprobs.top_logprobs is not None
    assert "".join(logprobs.tokens) == whole.choices[0].text
    assert logprobs.token_logprobs == [logprob_of(i) for i in range(3)]
    # where each token begins in the text: the characters of those before it
    t = logprobs.tokens
    assert logprobs.text_offset == [0, len(t[0]), len(t[0]) + len(t[1])]
    text = whole.choices[0].text
    assert all(text[o:].startswith(token) for o, token in zip(logprobs.text_offset, t, strict=True))
    assert logprobs.top_logprobs[1] == {
        alternative(logprobs.tokens[1], r): logprob_of(1, r) for r in range(3)
    }
    streamed = [
        c.choices[0].logprobs
        for c in client.completions.create(model="qwen", prompt="x", max_tokens=3, logprobs=1, stream=True)
        if c.choices and c.choices[0].text
    ]
    assert [lp.token_logprobs for lp in streamed if lp] == [[logprob_of(i)] for i in range(3)]
    # each chunk's offsets go on from the last chunk's: the whole answer's
    assert [o for lp in streamed if lp for o in lp.text_offset or ()] == logprobs.text_offset


def test_without_logprobs_nothing_is_asked_or_sent(
    client: openai.OpenAI, engine: tuple[VllmEngine, str]
) -> None:
    fake, _ = engine
    chunks = list(client.chat.completions.create(model="qwen", messages=ASK, max_tokens=3, stream=True))
    assert "logprobs" not in sent(fake) and "top_logprobs" not in sent(fake)
    assert all(c.choices[0].logprobs is None for c in chunks if c.choices)


def test_the_jobs_own_stream_carries_them(server: LoopbackServer, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="qwen",
        messages=ASK,
        max_tokens=2,
        logprobs=True,
        top_logprobs=1,
    )
    job_id = raw.headers["x-job-id"]
    with httpx.Client(base_url=server.base_url) as http:
        events = http.get(f"/v1/tasks/{job_id}/stream").text
    tokens = [
        orjson.loads(line[5:]) for line in events.splitlines() if line.startswith("data:") and '"t"' in line
    ]
    assert [t["logprobs"][0]["logprob"] for t in tokens] == [logprob_of(0), logprob_of(1)]
    assert tokens[0]["logprobs"][0]["top_logprobs"] == [{"token": tokens[0]["t"], "logprob": logprob_of(0)}]


def test_an_engine_that_reports_none_gets_no_such_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mock", messages=ASK, max_tokens=3, logprobs=True)
    assert caught.value.body["param"] == "logprobs"  # type: ignore[index]
    assert "logprobs is not supported by the engines serving 'mock'" in caught.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="mock", prompt="x", max_tokens=3, logprobs=0)
    assert caught.value.body["param"] == "logprobs"  # type: ignore[index]


def test_top_logprobs_needs_logprobs(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="qwen", messages=ASK, max_tokens=3, top_logprobs=2)
    assert caught.value.body["param"] == "top_logprobs"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="qwen", messages=ASK, max_tokens=3, logprobs=True, top_logprobs=21
        )
    assert caught.value.body["param"] == "top_logprobs"  # type: ignore[index]


LOGPROBS = "message.output_text.logprobs"


def test_a_response_includes_each_tokens_logprobs_streamed_and_whole(
    client: openai.OpenAI, engine: tuple[VllmEngine, str]
) -> None:
    """`include: ["message.output_text.logprobs"]` with `top_logprobs`: every `output_text.delta` carries
    its token's entry, and the output_text part (whole, and in the stream's done events) all of them."""
    fake, _ = engine
    whole = client.responses.create(
        model="qwen", input="say something", max_output_tokens=4, include=[LOGPROBS], top_logprobs=2
    )
    assert sent(fake)["logprobs"] is True and sent(fake)["top_logprobs"] == 2
    (message,) = whole.output
    assert message.type == "message" and message.content[0].type == "output_text"
    part = message.content[0]
    assert part.logprobs is not None and "".join(e.token for e in part.logprobs) == part.text
    assert [e.logprob for e in part.logprobs] == [logprob_of(i) for i in range(4)]
    assert [e.bytes for e in part.logprobs] == [list(e.token.encode()) for e in part.logprobs]
    assert [(t.token, t.logprob) for t in part.logprobs[1].top_logprobs] == [
        (alternative(part.logprobs[1].token, r), logprob_of(1, r)) for r in range(2)
    ]
    asked: dict[str, Any] = {"input": "say something", "max_output_tokens": 3, "include": [LOGPROBS]}
    events = list(client.responses.create(model="qwen", stream=True, **asked))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert [[(lp.token, lp.logprob) for lp in e.logprobs] for e in deltas] == [
        [(e.delta, logprob_of(i))] for i, e in enumerate(deltas)
    ]
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert [lp.logprob for lp in done.logprobs] == [logprob_of(i) for i in range(3)]
    final = events[-1]  # cut at max_output_tokens: incomplete
    assert final.type == "response.incomplete", final
    kept = final.response.output[0].content[0].logprobs  # type: ignore[union-attr]
    assert [(lp.token, lp.logprob) for lp in kept] == [(lp.token, lp.logprob) for lp in done.logprobs]


def test_a_response_without_the_include_asks_for_none(
    client: openai.OpenAI, engine: tuple[VllmEngine, str]
) -> None:
    fake, _ = engine
    answer = client.responses.create(model="qwen", input="say something", max_output_tokens=2, top_logprobs=3)
    assert "logprobs" not in sent(fake) and "top_logprobs" not in sent(fake)
    assert answer.output[0].content[0].logprobs == []  # type: ignore[union-attr]


def test_a_responses_logprobs_are_refused_by_name_where_no_engine_reports_them(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="mock", input="x", max_output_tokens=2, include=[LOGPROBS])
    assert caught.value.body["param"] == "include", caught.value.body  # type: ignore[index]
    assert "include is not supported by the engines serving 'mock'" in caught.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="qwen", input="x", include=[LOGPROBS], top_logprobs=21)
    assert caught.value.body["param"] == "top_logprobs"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="qwen", input="x", include=["file_search_call.results"])
    assert caught.value.body["param"] == "include"  # type: ignore[index]
