"""The HTTP boundary: exception and status translation, the client's settings, ownership of an
injected client, and the guards around in-flight streams. Uses httpx2.MockTransport, the seam httpx
was designed with; streaming behaviour over a real socket is in test_conformance.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest

from tests.fakes.engines.harness import collect, request
from tests.fakes.engines.llamacpp import LlamaCppEngine
from worker_adapters import _inflight
from worker_adapters._http import build_client, map_http_errors
from worker_adapters._inflight import Flights
from worker_adapters._wire import body_message, error_class, in_stream_error
from worker_adapters.base import (
    AdapterConfig,
    AdapterError,
    EngineInternal,
    EngineRejected,
    EngineReset,
    EngineTimeout,
    EngineUnavailable,
    Finished,
    Token,
)
from worker_adapters.llamacpp_http import LlamaCppAdapter

MakeAdapter = Any


@pytest.mark.parametrize(
    ("raised", "error"),
    [
        (httpx2.ConnectError("[Errno 111] Connection refused"), EngineUnavailable),
        (httpx2.ConnectTimeout("timed out"), EngineUnavailable),
        (httpx2.PoolTimeout("no connection available"), EngineUnavailable),
        (httpx2.ReadTimeout("timed out"), EngineTimeout),
        (httpx2.WriteTimeout("timed out"), EngineTimeout),
        (
            httpx2.RemoteProtocolError("peer closed connection without sending complete message body"),
            EngineReset,
        ),
        (httpx2.ReadError("connection reset by peer"), EngineReset),
        (httpx2.WriteError("broken pipe"), EngineReset),
        (httpx2.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'"), EngineInternal),
        (httpx2.DecodingError("bad gzip"), EngineInternal),
    ],
)
def test_map_http_errors(raised: httpx2.HTTPError, error: type[AdapterError]) -> None:
    with pytest.raises(AdapterError) as caught, map_http_errors("vllm", "http://gpu-7:8000/v1/completions"):
        raise raised
    assert type(caught.value) is error
    assert caught.value.engine == "vllm"
    assert "vllm at http://gpu-7:8000/v1/completions" in caught.value.message
    assert type(raised).__name__ in caught.value.message
    assert caught.value.__cause__ is raised


def test_map_http_errors_lets_other_exceptions_through() -> None:
    with pytest.raises(KeyError), map_http_errors("vllm", "http://x"):
        raise KeyError("not ours")


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, EngineRejected), (413, EngineRejected), (422, EngineRejected), (429, EngineUnavailable),
     (503, EngineUnavailable), (500, EngineInternal), (502, EngineInternal), (401, EngineInternal),
     (404, EngineInternal), (301, EngineInternal)],
)  # fmt: skip
def test_status_classes(status: int, error: type[AdapterError]) -> None:
    assert error_class(status) is error


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error":{"code":400,"message":"too long","type":"invalid_request_error"}}', "too long"),
        (b'{"object":"error","message":"flat","type":"BadRequestError","code":400}', "flat"),
        (b'{"error":"Model is overloaded","error_type":"overloaded"}', "Model is overloaded"),
        (b"Internal Server Error", "Internal Server Error"),
        (b"", "(empty body)"),
        (b"x" * 2000, "x" * 500 + "…"),
    ],
)
def test_body_message(body: bytes, message: str) -> None:
    assert body_message(body) == message


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({"error": {"code": 400, "message": "m", "type": "server_error"}}, EngineRejected),  # the code wins
        ({"error": {"message": "m", "type": "exceed_context_size_error"}}, EngineRejected),
        ({"error": {"message": "m", "type": "unavailable_error"}}, EngineUnavailable),
        ({"error": "m", "error_type": "validation"}, EngineRejected),
        ({"error": "m"}, EngineInternal),
    ],
)
def test_in_stream_error_classes(event: dict[str, Any], error: type[AdapterError]) -> None:
    found = in_stream_error(event, "e")
    assert type(found) is error
    assert in_stream_error({"error": None, "choices": []}, "e") is None


async def test_client_settings_come_from_the_config() -> None:
    config = AdapterConfig(
        engine="vllm", base_url="http://x", model="m", connect_timeout_s=2.5, read_timeout_s=90
    )
    client = build_client(config)
    async with client:
        assert client.timeout == httpx2.Timeout(connect=2.5, read=90, write=2.5, pool=2.5)
        assert client.follow_redirects is False


async def test_an_injected_client_is_closed_with_the_adapter() -> None:
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(lambda r: httpx2.Response(200)))
    adapter = LlamaCppAdapter(AdapterConfig(engine="llamacpp", base_url="http://x", model="m"), client=client)
    await adapter.aclose()
    assert client.is_closed


def mock_adapter(make_adapter: MakeAdapter, answer: Any) -> LlamaCppAdapter:
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
    return make_adapter(LlamaCppAdapter, "http://engine.invalid:8080/", client=client)  # type: ignore[no-any-return]


async def test_invalid_json_from_a_props_endpoint(make_adapter: MakeAdapter) -> None:
    adapter = mock_adapter(make_adapter, lambda r: httpx2.Response(200, content=b"<html>"))
    with pytest.raises(EngineInternal, match="invalid JSON"):
        await adapter.props()


async def test_base_url_trailing_slash_and_read_timeout_mid_stream(make_adapter: MakeAdapter) -> None:
    seen: list[str] = []

    async def stall() -> AsyncIterator[bytes]:
        yield b'data: {"content":"a","stop":false}\n\n'
        raise httpx2.ReadTimeout("timed out")

    def answer(req: httpx2.Request) -> httpx2.Response:
        seen.append(str(req.url))
        return httpx2.Response(200, content=stall(), headers={"content-type": "text/event-stream"})

    adapter = mock_adapter(make_adapter, answer)
    with pytest.raises(EngineTimeout):
        await collect(adapter, request())
    assert seen == ["http://engine.invalid:8080/completion"]


async def test_a_frame_that_never_ends_is_an_internal_error(make_adapter: MakeAdapter) -> None:
    async def endless() -> AsyncIterator[bytes]:
        yield b"data: "
        for _ in range(20):
            yield b"x" * (1024 * 1024)

    adapter = mock_adapter(make_adapter, lambda r: httpx2.Response(200, content=endless()))
    with pytest.raises(EngineInternal, match="exceeds"):
        await collect(adapter, request())


async def test_a_task_id_can_be_in_flight_once(make_adapter: MakeAdapter) -> None:
    async def slow() -> AsyncIterator[bytes]:
        yield b'data: {"content":"a","stop":false}\n\n'
        yield b'data: {"content":"","stop":true,"stop_type":"eos"}\n\n'

    adapter = mock_adapter(make_adapter, lambda r: httpx2.Response(200, content=slow()))
    first = adapter.submit(request("same"))
    await anext(first)
    with pytest.raises(ValueError, match="already in flight"):
        await collect(adapter, request("same"))
    await first.aclose()  # type: ignore[attr-defined]
    assert len(await collect(adapter, request("same"))) == 2


class _Gate:
    """ASGI in front of a fake engine: holds each request until `width` have arrived, so that they are all
    in flight at once, and records the client port (the connection) that carried each."""

    def __init__(self, app: Any, width: int) -> None:
        self.app = app
        self.width = width
        self.ports: set[int] = set()
        self._arrived = 0
        self._all_in: asyncio.Event | None = None  # made in the fake server's own event loop

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._all_in is None:
            self._all_in = asyncio.Event()
        self.ports.add(scope["client"][1])
        self._arrived += 1
        if self._arrived == self.width:
            self._all_in.set()
        await self._all_in.wait()
        await self.app(scope, receive, send)


async def test_the_next_jobs_reuse_the_connections_of_the_last(
    serve_fake: Any, make_adapter: MakeAdapter
) -> None:
    # 6 streams at once, twice: each response is read to its end, so its connection goes back to the
    # pool, and the second round runs on the first round's connections.
    width, engine = 6, LlamaCppEngine()
    rounds: list[set[int]] = []
    adapter = None
    for n in range(2):
        gate = _Gate(engine, width)
        url = serve_fake(gate)
        adapter = adapter or make_adapter(LlamaCppAdapter, url)
        await asyncio.gather(*(collect(adapter, request(f"{n}-{i}")) for i in range(width)))
        rounds.append(gate.ports)
    assert len(rounds[0]) == width
    assert rounds[1] == rounds[0]


class _Lingering(httpx2.AsyncByteStream):
    """A llama.cpp body that goes on after its terminal event (with one more event, or nothing)."""

    def __init__(self, then: str) -> None:
        self.then = then
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'data: {"content":"a","stop":false}\n\n'
        yield b'data: {"content":"","stop":true,"stop_type":"eos"}\n\n'
        if self.then == "more data":
            yield b'data: {"content":"late","stop":false}\n\n'
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.parametrize("then", ["more data", "nothing"])
async def test_a_body_that_goes_on_after_the_terminal_mark_is_closed(
    make_adapter: MakeAdapter, then: str
) -> None:
    # After the terminal mark the adapter waits a moment for the body's end, to keep the connection; a
    # body that goes on instead is closed (rather than waited for), and its late data is not relayed.
    body = _Lingering(then)
    adapter = mock_adapter(make_adapter, lambda r: httpx2.Response(200, stream=body))
    assert await collect(adapter, request()) == [Token("a"), Finished("eos")]
    assert body.closed


async def test_a_flight_just_sent_or_reading_keeps_the_prober_away(monkeypatch: pytest.MonkeyPatch) -> None:
    """The prober leaves a replica alone while one of its requests was just sent (the engine reads the
    prompt, before any event: a probe then would make llama-cpp-python cut the stream) or is reading
    its stream; not once the flight has waited a probe interval for its next data."""
    clock = [100.0]
    monkeypatch.setattr(_inflight, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    flights = Flights()
    with flights.track("job") as flight:
        assert not flights.streaming(0.5)  # nothing sent yet
        with flight.awaiting():  # the request goes out: no event yet
            clock[0] += 0.3
            assert flights.streaming(0.5)
            clock[0] += 0.3  # 0.6 s without an answer: stalled, probe it
            assert not flights.streaming(0.5)
        flight.mark_started()
        with flight.awaiting():  # the next read, as the stream goes on
            assert flights.streaming(0.5)
    assert not flights.streaming(0.5)  # done
