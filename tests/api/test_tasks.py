"""The dual-call path: POST answers at once, GET streams started → tokens → metrics → one terminal."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable

import httpx
import orjson
import pytest

from orchestratord.admission import Admission
from orchestratord.core.tasks import Message, TaskSpec, issued_at, spec_from_dict, spec_json
from orchestratord.errors import Internal
from orchestratord.state.base import JobRecord
from tests.api.helpers import submit
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events

KEY = "orchd-test-Zq7Xw2Lr9Tb4Nc8Vy1Hs6Kd3Mf5"


def test_submit_answers_at_once_with_ids_and_urls(client: httpx.Client) -> None:
    data = submit(client)
    job_id = data["job_id"]
    # a UUIDv7: its first 48 bits say when it was issued (how a lost job is told from a made-up id)
    assert uuid.UUID(job_id).version == 7 and abs(issued_at(job_id) - time.time()) < 60
    assert data["sse_url"] == f"/v1/tasks/{job_id}/stream"
    assert data["status_url"] == f"/v1/tasks/{job_id}"
    assert data["queue_position"] == 0
    assert data["predicted_start_ms"] == 0  # a slot is free now
    assert data["backoff_ms"] == 0


def test_stream_order_and_contiguous_tokens(client: httpx.Client) -> None:
    data = submit(client, max_tokens=12, seed=7)
    events = read_events(client, data["sse_url"])
    names = [e.event for e in events]
    assert names[0] == "started"
    assert names[-1] == "end"
    assert names.count("end") + names.count("error") == 1
    assert "metrics" in names
    tokens = [e.data for e in events if e.event == "token"]
    assert [t["i"] for t in tokens] == list(range(12))
    end = events[-1].data
    assert end["tokens_out"] == 12
    assert end["stop_reason"] == "max_tokens"
    assert end["decode_ms"] == end["decode_time_ms"] >= 0
    assert [int(e.id or 0) for e in events] == sorted(int(e.id or 0) for e in events)
    started = events[0].data
    assert started["job_id"] == data["job_id"]
    assert started["queue_position"] == data["queue_position"]
    metrics = [e.data for e in events if e.event == "metrics"]
    assert any({"queue_depth", "tokens_out", "tokens_per_s"} <= m.keys() for m in metrics)


def test_status_has_full_text_once_finished(client: httpx.Client) -> None:
    data = submit(client, max_tokens=6, seed=3)
    events = read_events(client, data["sse_url"])
    status = client.get(data["status_url"]).json()
    assert status["state"] == "succeeded"
    assert status["tokens_out"] == 6
    assert status["text"] == "".join(e.data["t"] for e in events if e.event == "token")
    assert status["created_at"].endswith("Z") and status["finished_at"].endswith("Z")


def test_messages_are_accepted_instead_of_prompt(client: httpx.Client) -> None:
    response = client.post(
        "/v1/tasks",
        json={"model_ref": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
    )
    assert response.status_code == 202
    events = read_events(client, response.json()["sse_url"])
    assert events[-1].event == "end" and events[-1].data["tokens_out"] == 3


def test_stop_sequence_ends_with_stop_reason(client: httpx.Client) -> None:
    first = read_events(client, submit(client, max_tokens=30, seed=11)["sse_url"])
    words = [e.data["t"] for e in first if e.event == "token"]
    stop = words[4].strip()
    events = read_events(client, submit(client, max_tokens=30, seed=11, stop=[stop])["sse_url"])
    assert events[-1].data["stop_reason"] == "stop_sequence"
    assert events[-1].data["tokens_out"] <= 5


def test_every_response_carries_the_correlation_id(client: httpx.Client) -> None:
    echoed = client.post(
        "/v1/tasks",
        json={"model_ref": "mock", "prompt": "x", "max_tokens": 1},
        headers={"X-Correlation-Id": "abc-123"},
    )
    assert echoed.headers["x-correlation-id"] == "abc-123"
    error = client.get(f"/v1/tasks/{uuid.uuid4()}", headers={"X-Correlation-Id": "err-1"})
    assert error.status_code == 404 and error.headers["x-correlation-id"] == "err-1"
    generated = client.get("/healthz")
    assert uuid.UUID(generated.headers["x-correlation-id"])
    with client.stream("GET", echoed.json()["sse_url"], headers={"X-Correlation-Id": "sse-9"}) as stream:
        assert stream.headers["x-correlation-id"] == "sse-9"
    events = read_events(client, echoed.json()["sse_url"])
    assert events[0].data["correlation_id"] == "abc-123"


def test_the_stored_spec_is_the_request_as_the_dispatcher_reads_it(
    server: LoopbackServer, client: httpx.Client
) -> None:
    request = {
        "model_ref": "mock", "messages": [{"role": "user", "content": "hi ä"}], "max_tokens": 3,
        "stop": ["x"], "seed": 2**63 - 1, "temperature": 0.5, "session_id": "s-1",
        "placement": {"mode": "prefer", "prefer_pools": ["default"]}, "cancel_on_disconnect": False,
    }  # fmt: skip
    response = client.post("/v1/tasks", json=request)
    assert response.status_code == 202, response.text
    record = server.call(server.app.state.services.store.get(response.json()["job_id"]))
    stored = orjson.loads(record.spec)
    spec = spec_from_dict(stored)  # what the dispatcher runs
    assert record.spec == spec_json(spec)
    # Only what is set: a replica that does not know a field added since reads the job (an upgrade)
    assert (
        "presence_penalty" not in stored
        and "instructed" not in stored
        and "name" not in stored["messages"][0]
    )
    assert spec.messages == (Message("user", "hi ä"),) and spec.stop == ("x",) and spec.seed == 2**63 - 1
    assert spec.placement.prefer_pools == ("default",) and spec.session_id == "s-1"


def test_a_spec_from_a_newer_replica_runs_here_unless_it_asks_for_what_this_one_does_not_know(
    make_server: Callable[..., LoopbackServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rolling upgrade: a newer replica admits jobs whose stored spec holds fields this replica's
    dispatcher does not know. Empty ones (a new optional field the job does not use) are dropped and the
    job runs; one that holds a value fails the job with a retriable error that names it."""
    server = make_server()
    original = Admission._record

    def newer(self: Admission, spec: TaskSpec, now: float) -> JobRecord:
        record = original(self, spec, now)
        stored = orjson.loads(record.spec)
        stored |= {"future_null": None, "future_flag": False}
        stored["placement"] |= {"future_list": []}
        for message in stored["messages"] or ():
            message |= {"future_name": ""}
        if "[[ask]]" in spec.prompt_text:
            stored["messages"][0]["future_name"] = "alice"
            stored["future_count"] = 0  # 0 is a value, as much as "alice"
        return dataclasses.replace(record, spec=orjson.dumps(stored).decode())

    monkeypatch.setattr(Admission, "_record", newer)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        runs = submit(client, prompt=None, messages=[{"role": "user", "content": "hi"}])
        asks = submit(client, prompt=None, messages=[{"role": "user", "content": "[[ask]] hi"}])
        ran, failed = (read_events(client, job["sse_url"])[-1] for job in (runs, asks))
    assert ran.event == "end", ran
    assert failed.event == "error" and failed.data["retriable"] is True, failed
    assert "'future_count'" in failed.data["message"] and "'future_name'" not in failed.data["message"]


def test_a_message_field_from_a_newer_replica_is_named_when_it_holds_a_value() -> None:
    stored = orjson.loads(spec_json(TaskSpec("j", "t", "m", 4, messages=(Message("user", "hi"),))))
    stored["messages"][0]["future_name"] = "alice"
    with pytest.raises(Internal, match=r"its message 0 sets 'future_name'") as raised:
        spec_from_dict(stored)
    assert raised.value.retriable
    stored["messages"][0]["future_name"] = None
    assert spec_from_dict(stored).messages == (Message("user", "hi"),)


def test_the_caller_is_authenticated_once_per_request(
    make_server: Callable[..., LoopbackServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The role guard and the handler both need the caller; its key is checked once."""
    server = make_server(auth={"keys": [{"key": KEY, "tenant": "acme", "role": "client"}]})
    keys = server.app.state.services.control.keys
    seen: list[str] = []
    authenticate = keys.authenticate
    monkeypatch.setattr(keys, "authenticate", lambda key: seen.append(key) or authenticate(key))
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        job = submit(c)
        assert c.get(job["status_url"]).json()["job_id"] == job["job_id"]
    assert seen == [KEY, KEY]


def test_a_prompt_of_token_ids_and_a_suffix_survive_the_stored_spec() -> None:
    """What a Redis deployment's other replicas read back: the ids as a tuple of ints, the suffix."""
    spec = TaskSpec("j", "t", "m", 4, prompt_ids=(1, 2**31 - 1), suffix="after")
    back = spec_from_dict(orjson.loads(spec_json(spec)))
    assert back == spec and back.prompt_ids == (1, 2**31 - 1) and back.tokens_in_estimate == 2
