"""Every SSE event of real jobs, in every way a job can end, against its schema in the contract.

schemathesis validates the streams it reads itself (data.yaml declares each frame with `contentSchema`);
this check covers the streams it cannot produce on its own: queued jobs with position updates, evicted,
canceled, failing and refused jobs, stop sequences, and a reader resuming with Last-Event-ID.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from orchestratord.api.openapi import contract_document
from tests.api.helpers import state_of, submit, wait_for
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import Event, read_events

DATA_SCHEMAS = {
    "started": "StartedEvent",
    "token": "TokenEvent",
    "reasoning": "ReasoningEvent",
    "tool_call": "ToolCallEvent",
    "embedding": "EmbeddingEvent",
    "prompt": "PromptEvent",
    "metrics": "MetricsEvent",
    "end": "EndEvent",
    "error": "ErrorEvent",
}
TERMINAL = {"end", "error"}


def _validator(name: str) -> jsonschema.protocols.Validator:
    return validator_for(f"/components/schemas/{name}")


def validator_for(pointer: str) -> jsonschema.protocols.Validator:
    """A validator of the schema at `pointer` (a JSON pointer) in the served contract."""
    registry: Registry[Any] = Registry().with_resource(
        "urn:contract", Resource.from_contents(contract_document(), default_specification=DRAFT202012)
    )
    return jsonschema.Draft202012Validator({"$ref": f"urn:contract#{pointer}"}, registry=registry)


FRAME = _validator("StreamEvent")
DATA = {event: _validator(schema) for event, schema in DATA_SCHEMAS.items()}


def validate_stream(events: list[Event]) -> None:
    """Every frame and its data match the contract; one terminal event, last; ids unique."""
    for event in events:
        FRAME.validate({"event": event.event, "id": event.id, "data": event.raw})
        DATA[event.event].validate(event.data)
    assert events and events[-1].event in TERMINAL
    assert not [e for e in events[:-1] if e.event in TERMINAL]
    assert len({e.id for e in events}) == len(events)


def test_the_validator_rejects_what_the_contract_forbids() -> None:
    with pytest.raises(jsonschema.ValidationError):
        DATA["token"].validate({"t": "x", "i": -1})
    with pytest.raises(jsonschema.ValidationError):
        DATA["end"].validate({"tokens_out": 1, "decode_time_ms": 1, "decode_ms": 1, "stop_reason": "tired"})
    with pytest.raises(jsonschema.ValidationError):
        DATA["error"].validate({"code": "OOPS", "message": "m", "retriable": True})
    with pytest.raises(jsonschema.ValidationError):
        FRAME.validate({"event": "tick", "id": "3", "data": "{}"})


def _pool(**options: Any) -> dict[str, Any]:
    return {
        "id": "default",
        "engine": "mock",
        "models": ["mock"],
        "replicas": [{"id": "r0"}],
        "slots": 1,
        "options": {"tokens_per_s": 1000, **options},
    }


class Readers:
    """Read streams in threads, as separate clients would, and keep what each one got."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.streams: dict[str, list[Event]] = {}
        self._threads: list[threading.Thread] = []

    def read(self, job: dict[str, Any], **kwargs: Any) -> None:
        def run() -> None:
            with httpx.Client(base_url=self.base_url, timeout=60) as client:
                self.streams[job["job_id"]] = read_events(client, job["sse_url"], **kwargs)

        thread = threading.Thread(target=run)
        thread.start()
        self._threads.append(thread)

    def join(self) -> dict[str, list[Event]]:
        for thread in self._threads:
            thread.join(60)
        return self.streams


def test_issue_7_every_event_of_every_kind_of_job_matches_its_schema(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(pools=[_pool()], queue={"capacity": 2, "full_policy": "drop-lru"})
    readers = Readers(server.base_url)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        hang = submit(client, prompt="[[mock hang]]", max_tokens=5)
        readers.read(hang)
        wait_for(lambda: state_of(client, hang["job_id"]) == "running")
        evicted = submit(client, priority="batch", max_tokens=3)
        waiting = submit(client, priority="batch", max_tokens=3)
        for job in (evicted, waiting):
            readers.read(job)
        time.sleep(1.5)  # waiting jobs get `metrics` with their position at most once a second
        newcomer = submit(client, max_tokens=3)
        readers.read(newcomer)
        wait_for(lambda: state_of(client, evicted["job_id"]) == "failed")
        assert client.post(f"/v1/tasks/{hang['job_id']}/cancel").status_code == 204
        wait_for(lambda: state_of(client, newcomer["job_id"]) == "succeeded")
        streams = readers.join()
        endings = [
            {"max_tokens": 8, "prompt": "[[mock eos_after=3]]"},
            {"max_tokens": 50, "stop": ["the", "a", "model", "token"], "seed": 3},
            {"max_tokens": 8, "prompt": "[[mock fail_after=2]]"},
            {"max_tokens": 8, "prompt": "[[mock refuse]]"},
            {"max_tokens": 12, "seed": 11},
        ]
        for body in endings:  # one at a time: the queue holds only two
            job = submit(client, **body)
            streams[job["job_id"]] = full = read_events(client, job["sse_url"])
        resumed = read_events(client, job["sse_url"], headers={"Last-Event-ID": full[3].id or ""})
    assert [e.id for e in full[:4] + resumed] == [e.id for e in full]
    for events in [*streams.values(), resumed]:
        validate_stream(events)
    seen = {(e.event, e.data.get("stop_reason") or e.data.get("code")) for s in streams.values() for e in s}
    assert {("end", reason) for reason in ("max_tokens", "eos", "stop_sequence", "canceled")} <= seen
    assert {("error", "QUEUE_FULL_DROP_LRU"), ("error", "WORKER_RESET")} <= seen
    assert {"started", "token", "metrics"} <= {event for event, _ in seen}
    assert any("queue_position" in e.data for e in streams[waiting["job_id"]] if e.event == "metrics")
    refused = [s for s in streams.values() if s[-1].data.get("message", "").endswith("refused the request")]
    assert refused and refused[0][-1].event == "error" and refused[0][-1].data["retriable"] is True
