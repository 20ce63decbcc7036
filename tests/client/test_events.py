"""Event-stream edge cases the real server rarely produces, served by `httpx.MockTransport`: framing
per the HTML standard, events this client does not know, a stream that ends without its terminal
event, a reconnect answered 204."""

from __future__ import annotations

import json

import httpx
import pytest
from orchestratord_client import (
    AsyncClient,
    Client,
    End,
    Error,
    Event,
    JobFailed,
    Metrics,
    Reasoning,
    Started,
    Token,
    ToolCall,
    UnknownEvent,
)

JOB_ID = "0b9e6c1e-2f4e-4d8e-9d3c-1a2b3c4d5e6f"
STREAM = f"/v1/tasks/{JOB_ID}/stream"


def frame(event_id: str, name: str, data: dict[str, object]) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data)}\n\n"


STARTED = frame("1", "started", {"job_id": JOB_ID, "queue_position": 0, "predicted_start_ms": 0})
TOKEN_0 = frame("2", "token", {"t": "Hel", "i": 0})
TOKEN_1 = frame("3", "token", {"t": "lo", "i": 1})
END = frame("4", "end", {"stop_reason": "max_tokens", "tokens_out": 2, "tokens_in": 1, "decode_ms": 9})


def serving(*bodies: str | int) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering the stream's requests in turn: a body (200) or a bare status."""
    answers, requests = list(bodies), []

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == STREAM
        requests.append(request)
        answer = answers.pop(0)
        if isinstance(answer, int):
            return httpx.Response(answer)
        return httpx.Response(200, content=answer.encode(), headers={"Content-Type": "text/event-stream"})

    return httpx.MockTransport(handle), requests


def test_frames_decode_to_typed_events_and_unknown_ones_are_kept() -> None:
    body = (
        ": keep-alive\r\n\r\n"
        + STARTED.replace("\n", "\r\n")
        + 'id: 2\nevent: metrics\ndata: {"queue_position": 0, "tokens_out": 0, "new_figure": 7}\n\n'
        + 'id: 25\nevent: reasoning\ndata: {"t": "hm"}\n\n'
        + 'id: 3\nevent: token\ndata: {"t": "a\\nb",\ndata:  "i": 0}\n\n'  # data over two lines
        + 'id: 4\nevent: tool_call\ndata: {"index": 0, "id": "call_1", "name": "f", "arguments": "{}"}\n\n'
        + 'id: 5\nevent: future_thing\ndata: {"x": 1}\n\n'
        + "id: 6\ndata: not json\n\n"
        + 'id: 7\nevent: token\ndata: {"t": "no index"}\n\n'
        + "event: token\n\n"  # no data: nothing is dispatched
        + 'id: 8\nevent: error\ndata: {"code": "DECODE_TIMEOUT", "message": "slow", "retriable": true}\n\n'
        + 'id: 9\nevent: token\ndata: {"t": "after the end", "i": 1}\n\n'
    )
    transport, _ = serving(body)
    with Client("http://orchd.test", transport=transport) as client:
        events = list(client.events(JOB_ID))
    assert events == [
        Started(JOB_ID, 0, 0, id="1"),
        Metrics(queue_position=0, tokens_out=0, id="2"),
        Reasoning("hm", id="25"),
        Token("a\nb", 0, id="3"),
        ToolCall(0, "{}", "call_1", "f", id="4"),
        UnknownEvent("future_thing", {"x": 1}, id="5"),
        UnknownEvent("message", "not json", id="6"),
        UnknownEvent("token", {"t": "no index"}, id="7"),
        Error("DECODE_TIMEOUT", "slow", True, id="8"),
    ]  # and nothing after the terminal event
    metrics = events[1]
    assert isinstance(metrics, Metrics) and metrics.data["new_figure"] == 7


def test_stream_ending_without_terminal_event_resumes_after_the_last_whole_event() -> None:
    """The first connection ends cleanly, its last frame cut short: that frame is dropped and the
    reconnect asks for what follows the last whole event."""
    cut_short = TOKEN_1[: TOKEN_1.index("data: ") + 10]  # its id, its name, part of its data
    transport, requests = serving(STARTED + TOKEN_0 + cut_short, TOKEN_1 + END)
    waits: list[float] = []
    with Client("http://orchd.test", transport=transport, sleep=waits.append) as client:
        events = list(client.events(JOB_ID))
    assert [e.id for e in events] == ["1", "2", "3", "4"]
    assert "".join(e.text for e in events if isinstance(e, Token)) == "Hello"
    assert events[-1] == End("max_tokens", 2, 1, 9, id="4")
    assert "Last-Event-ID" not in requests[0].headers and requests[1].headers["Last-Event-ID"] == "2"
    assert requests[1].headers["Accept"] == "text/event-stream" and waits == [0.0]


async def test_async_resume_and_204_after_the_terminal_event() -> None:
    transport, requests = serving(STARTED + TOKEN_0, TOKEN_1 + END, 204)
    async with AsyncClient("http://orchd.test", transport=transport, sleep=_no_wait) as client:
        events = [e async for e in client.events(JOB_ID)]
        after_end = [e async for e in client.events(JOB_ID, last_event_id="4")]
    assert [e.id for e in events] == ["1", "2", "3", "4"] and after_end == []
    assert [r.headers.get("Last-Event-ID") for r in requests] == [None, "2", "4"]


def test_raise_on_error_turns_the_error_event_into_job_failed() -> None:
    error = 'id: 3\nevent: error\ndata: {"code": "WORKER_RESET", "message": "gone", "retriable": true}\n\n'
    transport, _ = serving(STARTED + TOKEN_0 + error)
    with Client("http://orchd.test", transport=transport) as client:
        seen: list[Event] = []
        with pytest.raises(JobFailed) as caught:
            for event in client.events(JOB_ID, raise_on_error=True):
                seen.append(event)
    assert [type(e) for e in seen] == [Started, Token]  # the error is raised, not yielded
    assert caught.value.job_id == JOB_ID and caught.value.code == "WORKER_RESET"
    assert caught.value.event == Error("WORKER_RESET", "gone", True, id="3")


async def _no_wait(seconds: float) -> None:
    return None
