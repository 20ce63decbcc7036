"""The Responses API over a WebSocket (OpenAI's WebSocket mode), with the official SDK's
`responses.connect()` and a plain WebSocket client: the same events as the HTTP stream, carrying on
from a lane's latest response even unstored, lanes side by side, error frames that leave the socket
open, and the handshake, frame limit, connection caps and shutdown as a server's."""

from __future__ import annotations

import asyncio
import contextlib
import socket as stdsocket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import agents
import httpx
import openai
import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.api.helpers import HANG, wait_for
from tests.fakes.engines.vllm import VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import last_post, served, vllm_and_mock
from tests.openai.test_responses import stored_turns
from tests.openai.test_responses_tools import ASK, CALLS

ENDS = ("response.completed", "response.incomplete", "response.failed")


def sdk(server: LoopbackServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)


def socket(server: LoopbackServer, key: str | None = None) -> ClientConnection:
    url = server.base_url.replace("http://", "ws://") + "/v1/responses"
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return connect(url, additional_headers=headers, open_timeout=10)


def until_end(events: Iterator[Any]) -> list[Any]:
    """A response's events, to its last (or an error frame)."""
    got = []
    for event in events:
        got.append(event)
        if event.type in ENDS or event.type == "error":
            return got
    raise AssertionError("the socket closed before the response ended")


def frames(ws: ClientConnection, *, until: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while not until(got):
        got.append(orjson.loads(ws.recv(timeout=20)))
    return got


def ended(stream_id: str | None = None) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda got: any(f["type"] in (*ENDS, "error") and f.get("stream_id") == stream_id for f in got)


def test_a_socket_gives_the_events_the_http_stream_gives(server: LoopbackServer) -> None:
    client = sdk(server)
    with client.responses.connect() as conn:
        conn.response.create(model="mock", input="tell me a story", max_output_tokens=6)
        events = until_end(iter(conn))
    over_http = list(client.responses.create(model="mock", input="tell me a story", max_output_tokens=6,
                                             stream=True))  # fmt: skip
    assert [e.type for e in events] == [e.type for e in over_http]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert done.status == "incomplete" and done.output_text == text and done.usage.output_tokens == 6
    assert "stream_id" not in events[0].model_dump(exclude_none=True)  # the default lane names none
    # a stored response is a response like any other: read back over HTTP
    assert client.responses.retrieve(done.id).output_text == text


def test_an_unstored_response_is_carried_on_from_the_lanes_latest(server: LoopbackServer) -> None:
    """`store: false`: HTTP cannot carry such a response on, the socket can (its lane keeps it)."""
    client = sdk(server)
    with client.responses.connect() as conn:
        conn.response.create(model="mock", input="hello", instructions="be brief", store=False,
                             max_output_tokens=4)  # fmt: skip
        first = until_end(iter(conn))[-1].response
        conn.response.create(model="mock", input="and then?", store=False, previous_response_id=first.id,
                             max_output_tokens=4)  # fmt: skip
        second = until_end(iter(conn))[-1].response
    assert second.status == "incomplete"
    assert stored_turns(server, second.id) == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "and then?"},
    ]
    with pytest.raises(openai.NotFoundError):  # over HTTP it is not given back, nor carried on
        client.responses.create(model="mock", input="x", previous_response_id=first.id)


def test_only_the_lanes_latest_or_a_stored_response_is_carried_on(server: LoopbackServer) -> None:
    client = sdk(server)
    stored = client.responses.create(model="mock", input="kept", max_output_tokens=2)  # over HTTP
    with client.responses.connect() as conn:
        conn.response.create(model="mock", input="one", store=False, max_output_tokens=2)
        one = until_end(iter(conn))[-1].response
        conn.response.create(model="mock", input="two", store=False, max_output_tokens=2)
        until_end(iter(conn))
        # `one` is no longer the lane's latest, and unstored: OpenAI's error, the socket open
        conn.response.create(model="mock", input="x", store=False, previous_response_id=one.id)
        (error,) = until_end(iter(conn))
        assert error.type == "error" and error.status == 400
        assert error.error.code == "previous_response_not_found"
        assert error.error.param == "previous_response_id"
        # a stored response is carried on from anywhere, as over HTTP
        conn.response.create(model="mock", input="on", previous_response_id=stored.id, max_output_tokens=2)
        carried = until_end(iter(conn))[-1].response
        assert stored_turns(server, carried.id)[:2] == [
            {"role": "user", "content": "kept"}, {"role": "assistant", "content": stored.output_text}
        ]  # fmt: skip
        # a turn that fails forgets the response it carried on (OpenAI's rule)
        conn.response.create(model="nope", input="x", previous_response_id=carried.id)
        assert until_end(iter(conn))[-1].type == "error"
        conn.response.create(model="mock", input="y", store=False, previous_response_id=carried.id,
                             max_output_tokens=2)  # fmt: skip
        again = until_end(iter(conn))[-1]
        assert again.type == "response.incomplete"  # stored: looked up again, not from the lane


def test_a_prepared_response_runs_nothing_and_is_carried_on(server: LoopbackServer) -> None:
    """`generate: false` (a warm-up): `response.created` and `response.completed` with no output, and
    the next response carries on its input."""
    client = sdk(server)
    with client.responses.connect() as conn:
        conn.response.create(model="mock", input="the context", store=False, generate=False)
        created, completed = until_end(iter(conn))
        assert (created.type, completed.type) == ("response.created", "response.completed")
        assert completed.response.output == [] and completed.response.id == created.response.id
        conn.response.create(model="mock", input="now answer", store=False, max_output_tokens=2,
                             previous_response_id=completed.response.id)  # fmt: skip
        answer = until_end(iter(conn))[-1].response
        # a warm-up is checked as its job would be: a model not served here is refused
        conn.response.create(model="nope", input="x", generate=False)
        assert until_end(iter(conn))[-1].type == "error"
    assert stored_turns(server, answer.id) == [
        {"role": "user", "content": "the context"}, {"role": "user", "content": "now answer"}
    ]  # fmt: skip
    jobs = httpx.get(f"{server.base_url}/v1/tasks", timeout=10).json()["tasks"]
    assert len(jobs) == 1  # the answer's: the warm-up ran nothing


def test_lanes_run_side_by_side_and_a_client_that_leaves_cancels_its_responses(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(stream={"reconnect_grace_s": 0.2})
    with socket(server) as ws:
        ws.send(orjson.dumps({"type": "response.create", "model": "mock", "input": HANG, "stream_id": "slow",
                              "max_output_tokens": 4}).decode())  # fmt: skip
        got = frames(ws, until=lambda g: any(f["type"] == "response.in_progress" for f in g))
        slow_id = got[0]["response"]["id"]
        # the default lane is free while "slow" runs (the mock has slots to spare)
        ws.send(orjson.dumps({"type": "response.create", "model": "mock", "input": "hi",
                              "max_output_tokens": 3}).decode())  # fmt: skip
        quick = frames(ws, until=ended(None))
        assert quick[-1]["type"] == "response.incomplete"
        assert all("stream_id" not in f for f in quick)
        assert all(f["stream_id"] == "slow" for f in got)
    job_id = uuid.UUID(slow_id.removeprefix("resp_"))
    state = lambda: httpx.get(f"{server.base_url}/v1/tasks/{job_id}", timeout=10).json()["state"]  # noqa: E731
    wait_for(lambda: state() == "canceled")


def test_what_a_socket_cannot_take_is_an_error_frame_and_the_socket_stays_open(
    server: LoopbackServer,
) -> None:
    def create(**fields: Any) -> str:
        return orjson.dumps({"type": "response.create", "model": "mock", "input": "x", **fields}).decode()

    cases = [
        ("{not json", None, "not JSON"),
        ("[1, 2]", None, "not a JSON object"),
        ('{"type": "session.update"}', "type", "session.update"),
        (create(stream_id="a b"), "stream_id", "letters, digits"),
        (create(temprature=1), "temprature", "unknown field"),
        (create(background=True), "background", "never in the background"),
        (create(max_output_tokens=0), "max_output_tokens", "greater than or equal to 1"),
        (create(tools=[{"type": "web_search"}]), "tools.0.type", ""),
    ]
    with socket(server) as ws:
        for frame, param, says in cases:
            ws.send(frame)
            (error,) = frames(ws, until=lambda g: bool(g))
            assert error["type"] == "error" and error["status"] == 400, (frame, error)
            assert error["error"]["param"] == param and says in error["error"]["message"], (frame, error)
            assert (
                error["error"]["type"] == "invalid_request_error"
                and error["headers"]["x-should-retry"] == "false"
            )
        # Codex and the Agents SDK send `stream: true`: it is implied, and taken
        ws.send(create(stream=True, max_output_tokens=2, stream_id="lane-1"))
        done = frames(ws, until=ended("lane-1"))
        assert done[-1]["type"] == "response.incomplete"
        # a socket opens at most 32 named lanes
        for n in range(2, 33):
            ws.send(create(max_output_tokens=1, stream_id=f"lane-{n}"))
        got = frames(ws, until=lambda g: sum(f["type"] == "response.incomplete" for f in g) == 31)
        assert not [f for f in got if f["type"] == "error"]
        ws.send(create(stream_id="lane-33"))
        (error,) = frames(ws, until=lambda g: bool(g))
        assert error["error"]["param"] == "stream_id" and "32 lanes" in error["error"]["message"]


def test_the_handshake_checks_the_key(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(auth={"keys": [{"key": "client-key-0123456789", "tenant": "acme"}]})
    with pytest.raises(InvalidStatus) as refused:
        socket(server, "wrong-key-0123456789").close()
    assert refused.value.response.status_code == 401
    error = orjson.loads(refused.value.response.body)["error"]
    assert error["type"] == "authentication_error" and error["code"] == "unauthorized"
    with sdk(server, "client-key-0123456789").responses.connect() as conn:
        conn.response.create(model="mock", input="hi", max_output_tokens=2)
        done = until_end(iter(conn))[-1].response
    job = httpx.get(f"{server.base_url}/v1/tasks/{uuid.UUID(done.id[5:])}", timeout=10,
                    headers={"Authorization": "Bearer client-key-0123456789"})  # fmt: skip
    assert job.status_code == 200  # the response is the key's tenant's


def test_a_frame_over_the_body_limit_closes_the_socket(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(limits={"max_body_bytes": 4096})
    with socket(server) as ws:
        ws.send(orjson.dumps({"type": "response.create", "model": "mock", "input": "x" * 5000}).decode())
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big


def test_sockets_count_in_the_connection_caps_and_the_gauge_until_they_close(server: LoopbackServer) -> None:
    caps = server.server.config.http.open_connections
    before = len(caps)
    with contextlib.ExitStack() as stack:
        for ws in [stack.enter_context(socket(server)) for _ in range(3)]:  # each served: an answer comes
            ws.send(orjson.dumps({"type": "response.create", "model": "mock", "input": "x",
                                  "max_output_tokens": 1}).decode())  # fmt: skip
            frames(ws, until=ended(None))
        assert len(caps) == before + 3
        assert sockets_open(server) == 3
    wait_for(lambda: len(caps) == before and sockets_open(server) == 0)


def sockets_open(server: LoopbackServer) -> float:
    """`responses_sockets_open`, as /metrics says it."""
    scraped = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    (line,) = [line for line in scraped.splitlines() if line.startswith("responses_sockets_open ")]
    return float(line.split()[1])


def test_a_shutdown_closes_the_socket_as_a_restart(server: LoopbackServer) -> None:
    with socket(server) as ws:
        ws.send(orjson.dumps({"type": "response.create", "model": "mock", "input": "x",
                              "max_output_tokens": 1}).decode())  # fmt: skip
        frames(ws, until=ended(None))
        server.loop.call_soon_threadsafe(server.app.state.services.streams.close)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012  # the SDKs reconnect


def test_a_full_queue_is_a_429_frame_with_its_retry_hint(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(queue={"capacity": 1}, pools=[{"id": "default", "engine": "mock", "models": ["mock"],
                                                        "replicas": [{"id": "r0"}], "slots": 1}])  # fmt: skip
    client = sdk(server)
    running = client.responses.create(model="mock", input=HANG, background=True)
    waiting = client.responses.create(model="mock", input=HANG, background=True)
    with socket(server) as ws:
        ws.send(orjson.dumps({"type": "response.create", "model": "mock", "input": "x"}).decode())
        (error,) = frames(ws, until=lambda g: bool(g))
    assert error["status"] == 429 and error["error"]["type"] == "rate_limit_error", error
    assert error["error"]["code"] == "admission_reject" and error["headers"]["x-should-retry"] == "true"
    assert int(error["headers"]["retry-after-ms"]) > 0 and error["error"]["headers"] == error["headers"]
    for created in (waiting, running):
        client.responses.cancel(created.id)


def test_a_socket_holds_at_most_64_responses_waiting_their_turn(server: LoopbackServer) -> None:
    with socket(server) as ws:
        hang = orjson.dumps({"type": "response.create", "model": "mock", "input": HANG}).decode()
        for _ in range(1 + 64):  # one runs, 64 wait in the default lane
            ws.send(hang)
        ws.send(hang)
        got = frames(ws, until=lambda g: any(f["type"] == "error" for f in g))
    error = got[-1]
    assert error["status"] == 429 and "64 responses waiting" in error["error"]["message"], error
    assert error["headers"]["x-should-retry"] == "true"
    assert sum(f["type"] == "response.created" for f in got) == 1  # the running one; the rest wait


def test_the_agents_sdk_runs_a_tool_loop_over_one_socket(make_server: Callable[..., LoopbackServer]) -> None:
    """OpenAI's Agents SDK with its WebSocket transport (`responses_websocket_session`): the model calls
    two tools, the agent runs them, and the next turn, on the same socket, takes their results to the
    engine as tool turns; the engine's answer is the run's final output."""
    ran: list[tuple[str, str]] = []

    @agents.function_tool
    def get_weather(city: str, unit: str) -> str:
        """The weather in a city."""
        ran.append(("get_weather", city))
        return '{"celsius": 21}'

    @agents.function_tool
    def get_time(zone: str) -> str:
        """The time in a zone."""
        ran.append(("get_time", zone))
        return "09:30"

    agents.set_tracing_disabled(True)  # its traces go to OpenAI's servers, which tests never reach

    async def run(url: str) -> agents.RunResult:
        agent = agents.Agent(name="assistant", model="qwen", tools=[get_weather, get_time])
        async with agents.responses_websocket_session(api_key="unused", base_url=url) as session:
            return await session.run(agent, ASK)

    with served(VllmEngine(tool_calls=CALLS, answers_results=True, eos_after=5)) as engine:
        server = make_server(pools=vllm_and_mock(engine.url))  # type: ignore[attr-defined]
        result = asyncio.run(run(f"{server.base_url}/v1"))
        sent = last_post(engine)["messages"]
    assert sorted(ran) == [("get_time", "JST"), ("get_weather", "Tokyo")]
    assert [turn["role"] for turn in sent] == ["user", "assistant", "tool", "tool"]
    assert {turn["content"] for turn in sent[2:]} == {'{"celsius": 21}', "09:30"}
    assert isinstance(result.final_output, str) and result.final_output
    answers = [item for item in result.raw_responses]
    assert len(answers) == 2  # the calls, then the answer
    jobs = [stored_spec(server, answer.response_id) for answer in answers]
    assert jobs[0]["correlation_id"] == jobs[1]["correlation_id"]  # one socket (each request has its own)
    assert (
        result.final_output
        == httpx.get(
            f"{server.base_url}/v1/tasks/{uuid.UUID(answers[1].response_id[5:])}", timeout=10
        ).json()["text"]
    )


def stored_spec(server: LoopbackServer, response_id: str | None) -> dict[str, Any]:
    assert response_id is not None
    record = server.call(
        server.app.state.services.store.get(str(uuid.UUID(response_id.removeprefix("resp_"))))
    )
    spec: dict[str, Any] = orjson.loads(record.spec)
    return spec


def test_a_client_that_takes_no_frames_is_cut_off_and_its_response_canceled(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """A socket's client that stops reading is cut off after `stream.send_timeout_s` (close code 1008),
    as a stalled stream is, and its response is canceled after the grace: the server holds one frame
    under way, not the answer."""
    tokens = 60_000  # a minute of tokens, about 12 MB of frames: far more than the buffers between the two
    server = make_server(
        pools=[{"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}],
                "ctx_max": tokens * 2, "max_tokens_out": tokens,
                "options": {"ttft_ms": 0, "tokens_per_s": 1_000}}],
        limits={"max_tokens": tokens},
        stream={"send_timeout_s": 0.3, "reconnect_grace_s": 0.2},
    )  # fmt: skip
    # small, fixed socket buffers on both sides: the server's writes block after a few kB
    server.server.servers[0].sockets[0].setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF, 8192)
    raw = stdsocket.socket()
    raw.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, 8192)
    raw.connect(("127.0.0.1", int(server.base_url.rsplit(":", 1)[1])))
    url = server.base_url.replace("http://", "ws://") + "/v1/responses"
    # it stops reading at 4 frames, and sends no pings while the test waits
    with connect(url, sock=raw, max_queue=4, open_timeout=10, ping_interval=None) as ws:
        ws.send(orjson.dumps({"type": "response.create", "model": "mock", "input": "go",
                              "max_output_tokens": tokens}).decode())  # fmt: skip
        jobs = lambda: httpx.get(f"{server.base_url}/v1/tasks", timeout=10).json()["tasks"]  # noqa: E731
        wait_for(lambda: [job["state"] for job in jobs()] == ["canceled"], timeout=60)
        got = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=20)
                got += 1
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008, closed.value
    assert got < tokens  # cut off mid-response


def test_a_handshake_over_the_header_limit_is_refused_with_431(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(limits={"max_header_bytes": 8192})
    url = server.base_url.replace("http://", "ws://") + "/v1/responses"
    with pytest.raises(InvalidStatus) as refused:
        # (three lines of 4 kB: the WebSocket library refuses a single line over 8 kB itself)
        connect(url, additional_headers={f"X-Pad-{i}": "x" * 4000 for i in range(3)}, open_timeout=10).close()
    assert refused.value.response.status_code == 431
    assert orjson.loads(refused.value.response.body)["error"]["code"] == "payload_too_large"
