"""The Responses API with the official SDK: whole, background, streamed, resumed with `starting_after`
from the job's event log, retrieved and canceled; every event exactly once, in order."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.api.helpers import HANG, wait_for
from tests.fakes.servers import LoopbackServer


def sdk(server: LoopbackServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def job(server: LoopbackServer, response_id: str) -> dict[str, object]:
    """The job behind a response (its id is the job's UUID in hex)."""
    job_id = uuid.UUID(response_id.removeprefix("resp_"))
    data: dict[str, object] = httpx.get(f"{server.base_url}/v1/tasks/{job_id}", timeout=10).json()
    return data


def test_a_whole_response_is_the_jobs_answer(server: LoopbackServer) -> None:
    response = sdk(server).responses.create(model="mock", input="tell me a story", max_output_tokens=6)
    status = job(server, response.id)
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"  # it stopped at the limit
    assert response.output_text == status["text"] and status["state"] == "succeeded"
    assert response.usage is not None and response.usage.output_tokens == 6


def test_a_background_response_is_retrieved_when_done(server: LoopbackServer) -> None:
    client = sdk(server)
    created = client.responses.create(model="mock", input="hello", max_output_tokens=4, background=True)
    assert created.status in ("queued", "in_progress") and created.background is True
    wait_for(lambda: client.responses.retrieve(created.id).status == "incomplete")
    done = client.responses.retrieve(created.id)
    assert done.output_text == job(server, created.id)["text"] and done.usage is not None


def test_a_stream_resumed_after_any_event_gives_the_rest_exactly_once(server: LoopbackServer) -> None:
    client = sdk(server)
    stream = client.responses.create(
        model="mock",
        input=[{"role": "user", "content": "go"}],
        max_output_tokens=6,
        background=True,
        stream=True,
    )
    events = list(stream)
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert kinds.count("response.output_text.delta") == 6 and kinds[-1] == "response.incomplete"
    queued = events[1]
    assert queued.model_extra is not None and queued.model_extra["queue_position"] == 0
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == job(server, events[0].response.id)["text"]
    for after in (-1, 0, 4, len(events) - 2):
        resumed = list(client.responses.retrieve(events[0].response.id, stream=True, starting_after=after))
        assert [e.sequence_number for e in resumed] == numbers[after + 1 :]
        assert [e.type for e in resumed] == kinds[after + 1 :]


def test_cancel_ends_a_background_response_and_is_idempotent(server: LoopbackServer) -> None:
    client = sdk(server)
    created = client.responses.create(model="mock", input=HANG, max_output_tokens=5, background=True)
    assert client.responses.cancel(created.id).status == "cancelled"
    assert client.responses.cancel(created.id).status == "cancelled"
    assert job(server, created.id)["state"] == "canceled"
    engine = server.app.state.services.adapters[("default", "r0")]
    wait_for(lambda: engine.stats.active == 0)


def test_a_deleted_response_is_gone_everywhere(server: LoopbackServer) -> None:
    """`responses.delete`: a finished response and a running one (canceled first, its engine request
    closed) are forgotten at once: reading, streaming, cancelling, deleting again, carrying it on and
    its job's status answer 404."""
    client = sdk(server)
    done = client.responses.create(model="mock", input="hi", max_output_tokens=3)
    running = client.responses.create(model="mock", input=HANG, max_output_tokens=5, background=True)
    wait_for(lambda: client.responses.retrieve(running.id).status == "in_progress")
    for response in (done, running):
        raw = client.responses.with_raw_response.delete(response.id)
        assert raw.http_request.method == "DELETE" and raw.status_code == 200
        assert orjson.loads(raw.content) == {"id": response.id, "object": "response", "deleted": True}
        _answers_404_everywhere(client, response.id)
        assert job(server, response.id)["code"] == "NOT_FOUND"
    engine = server.app.state.services.adapters[("default", "r0")]
    wait_for(lambda: engine.stats.active == 0)  # the running one's engine request was closed


def _answers_404_everywhere(client: openai.OpenAI, response_id: str) -> None:
    for gone in (
        lambda: client.responses.retrieve(response_id),
        lambda: list(client.responses.retrieve(response_id, stream=True)),
        lambda: client.responses.cancel(response_id),
        lambda: client.responses.delete(response_id),
        lambda: client.responses.create(model="mock", input="and?", previous_response_id=response_id),
    ):
        with pytest.raises(openai.NotFoundError):
            gone()


def test_a_background_response_outlives_its_client(make_server: object) -> None:
    server = make_server(stream={"reconnect_grace_s": 0.1, "attach_timeout_s": 0.1})  # type: ignore[operator]
    client = sdk(server)
    created = client.responses.create(model="mock", input="[[mock tokens_per_s=20]] go", max_output_tokens=20,
                                      background=True)  # fmt: skip
    wait_for(lambda: client.responses.retrieve(created.id).status == "incomplete", timeout=15)


def test_unknown_or_foreign_responses_are_404(server: LoopbackServer) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk(server).responses.retrieve("resp_not-one-of-ours")
    with pytest.raises(openai.NotFoundError):
        sdk(server).responses.retrieve("resp_" + "0" * 32)


def test_unsupported_response_fields_are_named(server: LoopbackServer) -> None:
    """What orchestratord cannot honour is refused by name: an include, an effort no engine serving
    the model takes (the mock takes none)."""
    for fields, param in [({"include": ["message.output_text.logprobs"]}, "include"),
                          ({"reasoning": {"effort": "high"}}, "reasoning.effort")]:  # fmt: skip
        with pytest.raises(openai.BadRequestError) as caught:
            sdk(server).responses.create(model="mock", input="x", **fields)  # type: ignore[arg-type]
        assert caught.value.body["param"] == param, caught.value.body  # type: ignore[index]


def stored_turns(server: LoopbackServer, response_id: str) -> list[dict[str, object]]:
    """The chat turns the job behind a response runs, as its stored spec holds them."""
    job_id = str(uuid.UUID(response_id.removeprefix("resp_")))
    record = server.call(server.app.state.services.store.get(job_id))
    turns: list[dict[str, object]] = orjson.loads(record.spec)["messages"]
    return turns


def test_a_response_carries_on_from_a_previous_one(server: LoopbackServer) -> None:
    """`previous_response_id`: the previous response's turns and its output come before the new input;
    the previous instructions do not (the new ones lead), as OpenAI's API does it."""
    client = sdk(server)
    first = client.responses.create(model="mock", input="hello", instructions="be brief", max_output_tokens=4)
    second = client.responses.create(
        model="mock",
        input="and then?",
        instructions="be terse",
        previous_response_id=first.id,
        max_output_tokens=4,
    )
    third = client.responses.create(
        model="mock", input="bye", previous_response_id=second.id, max_output_tokens=4
    )
    assert stored_turns(server, second.id) == [
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "and then?"},
    ]
    assert stored_turns(server, third.id) == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "and then?"},
        {"role": "assistant", "content": second.output_text},
        {"role": "user", "content": "bye"},
    ]


def test_a_previous_response_that_is_unknown_or_unfinished_is_refused_by_name(server: LoopbackServer) -> None:
    client = sdk(server)
    running = client.responses.create(model="mock", input=HANG, background=True)
    wait_for(lambda: client.responses.retrieve(running.id).status == "in_progress")
    # unknown (404, as OpenAI answers it: schemathesis's random ids are well-formed requests) or unfinished
    cases: list[tuple[str, type[openai.APIStatusError], str]] = [
        ("resp_" + "0" * 32, openai.NotFoundError, "no response"),
        ("not-ours", openai.NotFoundError, "no response"),
        (running.id, openai.BadRequestError, "is in_progress"),
    ]  # fmt: skip
    for previous, refusal, says in cases:
        with pytest.raises(refusal) as caught:
            client.responses.create(model="mock", input="x", previous_response_id=previous)
        error = caught.value.body
        assert error["param"] == "previous_response_id" and says in error["message"], error  # type: ignore[index]
    client.responses.cancel(running.id)


def test_a_response_carries_on_from_a_job_of_our_own_api(server: LoopbackServer) -> None:
    """A job posted to `/v1/tasks` with a prompt is a response too (`resp_` and its id in hex): its
    prompt is the user's turn a response carried on from it begins with."""
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        posted = http.post("/v1/tasks", json={"model_ref": "mock", "prompt": "hello", "max_tokens": 4}).json()
        wait_for(lambda: http.get(f"/v1/tasks/{posted['job_id']}").json()["state"] == "succeeded")
        said = http.get(f"/v1/tasks/{posted['job_id']}").json()["text"]
    previous = "resp_" + uuid.UUID(posted["job_id"]).hex
    after = sdk(server).responses.create(
        model="mock", input="more", previous_response_id=previous, max_output_tokens=2
    )
    assert stored_turns(server, after.id) == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": said},
        {"role": "user", "content": "more"},
    ]


def test_what_agent_frameworks_send_on_every_request_asks_for_nothing(server: LoopbackServer) -> None:
    """No tools (`tools: []`), no includes and `truncation: "disabled"` (OpenAI's default) run on an
    engine that takes no tools; `truncation` is one of two values (test_truncation.py: `auto`)."""
    client = sdk(server)
    done = client.responses.create(model="mock", input="x", tools=[], include=[], truncation="disabled",
                                   max_output_tokens=2)  # fmt: skip
    assert done.status == "incomplete" and done.output_text
    stateless = client.responses.create(model="mock", input="x", store=False, max_output_tokens=2,
                                        include=["reasoning.encrypted_content"])  # fmt: skip
    assert stateless.output_text
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="mock", input="x", truncation="middle", max_output_tokens=2)  # type: ignore[arg-type]
    assert caught.value.body["param"] == "truncation"  # type: ignore[index]


def test_a_response_created_with_store_false_is_not_given_back(server: LoopbackServer) -> None:
    """`store: false`: the answer comes whole or streamed, and then the API gives it back to no one:
    retrieving, streaming again, cancelling and carrying on from it are 404s that say why."""
    client = sdk(server)
    whole = client.responses.create(model="mock", input="private", store=False, max_output_tokens=3)
    assert whole.output_text and whole.usage is not None and whole.usage.output_tokens == 3
    events = list(client.responses.create(model="mock", input="private", store=False, stream=True,
                                          max_output_tokens=3))  # fmt: skip
    assert events[-1].type == "response.incomplete"
    streamed = events[-1].response.id
    kept = client.responses.create(model="mock", input="not private", max_output_tokens=3)
    refusals: list[Callable[[str], object]] = [
        lambda unstored: client.responses.retrieve(unstored),
        lambda unstored: client.responses.retrieve(unstored, stream=True),
        lambda unstored: client.responses.cancel(unstored),
        lambda unstored: client.responses.create(model="mock", input="x", previous_response_id=unstored),
    ]
    for unstored in (whole.id, streamed):
        for refused in refusals:
            with pytest.raises(openai.NotFoundError) as caught:
                refused(unstored)
            assert "store: false" in caught.value.body["message"], caught.value.body  # type: ignore[index]
    assert client.responses.retrieve(kept.id).output_text == kept.output_text


def test_a_responses_input_items_are_its_own_as_the_sdk_pages_them(server: LoopbackServer) -> None:
    """`responses.input_items.list`: the items this request gave (not the instructions, nor the turns of
    the response it carried on), as the SDK's item models read them, newest first or in order, paged
    with `after`; the same ids on every read."""
    client = sdk(server)
    first = client.responses.create(model="mock", input="the first question", max_output_tokens=2)
    given: list[Any] = [
        {"role": "developer", "content": "answer briefly"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": [{"type": "input_text", "text": "the second question"}]},
    ]
    second = client.responses.create(
        model="mock", input=given, instructions="Be kind.", previous_response_id=first.id, max_output_tokens=2
    )
    items = list(client.responses.input_items.list(second.id, order="asc"))
    assert [(i.type, i.role, i.content[0].text) for i in items] == [  # type: ignore[union-attr]
        ("message", "system", "answer briefly"),  # a developer's turn is a system turn inside
        ("message", "assistant", "an earlier answer"),
        ("message", "user", "the second question"),
    ]
    newest = client.responses.input_items.list(second.id, limit=2)
    assert [i.id for i in newest.data] == [items[2].id, items[1].id] and newest.has_more
    rest = client.responses.input_items.list(second.id, limit=2, after=newest.data[-1].id)
    assert [i.id for i in rest.data] == [items[0].id] and not rest.has_more
    assert [i.content[0].text for i in client.responses.input_items.list(first.id)] == ["the first question"]  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.input_items.list(second.id, include=["message.input_image.image_url"])
    assert caught.value.body["param"] == "include"  # type: ignore[index]


def test_verbosity_at_its_default_asks_for_nothing(server: LoopbackServer) -> None:
    """GPT-5's `verbosity` (chat) and `text.verbosity` (Responses): `medium`, OpenAI's default, runs;
    another is refused by name (no engine here takes it)."""
    client = sdk(server)
    assert client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}],
                                          max_tokens=2, verbosity="medium").choices  # fmt: skip
    assert client.responses.create(
        model="mock", input="x", max_output_tokens=2, text={"verbosity": "medium"}
    ).id
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "x"}], verbosity="low"
        )
    assert caught.value.body["param"] == "verbosity"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="mock", input="x", text={"verbosity": "high"})
    assert caught.value.body["param"] == "text.verbosity"  # type: ignore[index]
