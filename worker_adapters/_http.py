"""The one place that speaks HTTP to engines (httpx2, pydantic's maintained fork of httpx): the engine
client, the translation of its errors, in-flight streams.

Foreign exceptions are translated once, here (`map_http_errors`, `raise_for_status`), into the
`worker_adapters.base` error tree, as httpx's own ``map_httpcore_exceptions()`` does for httpcore.
Engine modules build request bodies and map decoded events to tokens; they never touch httpx2 errors.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from contextlib import aclosing, contextmanager, suppress
from typing import Any, Protocol, TypeVar

import httpx2

from worker_adapters._inflight import Canceled, Flights
from worker_adapters._ndjson import NDJSONDecoder
from worker_adapters._sse import SSEDecoder, SSEEvent
from worker_adapters._transport import ShardedTransport
from worker_adapters._wire import body_message, clip, error_class, load_object, option_float, option_str
from worker_adapters.base import (
    AdapterConfig,
    AdapterError,
    EngineInternal,
    EngineReset,
    EngineTimeout,
    EngineUnavailable,
    SubmitRequest,
    TokenEvent,
    WorkerHealth,
    WorkerProps,
)

_ERROR_BODY_LIMIT = 64 * 1024
_DRAIN_TIMEOUT_S = 0.5  # how long the terminal events may wait for the body's end (see `_drain`)
_T = TypeVar("_T")
_F = TypeVar("_F", contravariant=True)


class StreamMapper(Protocol[_F]):
    """An engine dialect's state machine: frames in, tokens out; `done` once the terminal mark was seen."""

    @property
    def done(self) -> bool: ...

    def feed(self, frame: _F) -> list[TokenEvent]: ...


def build_client(config: AdapterConfig) -> httpx2.AsyncClient:
    """The adapter's client. Its read timeout bounds JSON reads; streams are timed by their flights."""
    timeout = httpx2.Timeout(
        connect=config.connect_timeout_s,
        read=config.read_timeout_s,
        write=config.connect_timeout_s,
        pool=config.connect_timeout_s,
    )
    max_connections = int(option_float(config.options, "max_connections", 256))
    # Every connection stays alive between jobs (reused if the job's response was read to its end, see
    # `_drain`); they are split among small pools to keep the pool's per-request work short.
    limits = httpx2.Limits(max_connections=max_connections, keepalive_expiry=15)
    return httpx2.AsyncClient(timeout=timeout, transport=ShardedTransport(limits), follow_redirects=False)


@contextmanager
def map_http_errors(engine: str, url: str) -> Iterator[None]:
    """Translate httpx2's errors into the adapter error tree, naming the engine and the URL."""
    try:
        yield
    except (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout) as exc:
        raise EngineUnavailable(
            f"{engine} at {url}: cannot connect ({_describe(exc)})", engine=engine
        ) from exc
    except httpx2.TimeoutException as exc:
        raise EngineTimeout(
            f"{engine} at {url}: no data within the timeout ({_describe(exc)})", engine=engine
        ) from exc
    except (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.WriteError) as exc:
        raise EngineReset(f"{engine} at {url}: connection broke ({_describe(exc)})", engine=engine) from exc
    except httpx2.HTTPError as exc:
        raise EngineInternal(f"{engine} at {url}: HTTP failure ({_describe(exc)})", engine=engine) from exc


def _body_chunks(response: httpx2.Response) -> AsyncGenerator[bytes, None]:
    """The body's chunks as read. Without a Content-Encoding (we ask for ``identity``) these are the raw
    chunks, which spares the decoding layer of ``aiter_bytes`` (a no-op then) on every chunk."""
    return response.aiter_bytes() if "content-encoding" in response.headers else response.aiter_raw()


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def raise_for_status(response: httpx2.Response, engine: str) -> None:
    """Raise the adapter error for a non-2xx answer, with the engine's own message in it."""
    status = response.status_code
    if 200 <= status < 300:
        return
    body = bytearray()
    async with aclosing(response.aiter_bytes()) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) >= _ERROR_BODY_LIMIT:
                break
    cls = error_class(status)
    message = f"{engine} at {response.request.url} answered HTTP {status}: {body_message(bytes(body))}"
    raise cls(message, engine=engine)


class EngineHTTP:
    """One engine replica's HTTP side: JSON reads, streamed POSTs, and cancel by task id.

    Takes ownership of `client` when given one (tests inject ``AsyncClient(transport=…)``); `aclose`
    cancels every in-flight stream, then closes the client.
    """

    def __init__(
        self,
        config: AdapterConfig,
        engine: str,
        client: httpx2.AsyncClient | None = None,
        *,
        request_ids: bool = False,
    ) -> None:
        self.engine = engine
        # `X-Request-Id: <job id>-<n>` for the engines that take it as their own request id (vLLM), so
        # that their logs and traces name the job; `-<n>` keeps a retried job's id unique there.
        self._request_ids = itertools.count(1) if request_ids else None
        self.base_url = config.base_url.rstrip("/")
        self._client = client if client is not None else build_client(config)
        api_key = option_str(config.options, "api_key")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        probe_s = option_float(config.options, "probe_timeout_s", min(5.0, config.read_timeout_s))
        self._probe_timeout = httpx2.Timeout(probe_s, connect=config.connect_timeout_s)
        # A stream's reads are timed by its flight's watchdog (first event, then between reads), not by
        # httpx's per-read timeout, which cannot tell a long prefill from a silent engine mid-stream.
        self._first_event_s = config.first_token_timeout_s
        self._between_reads_s = config.read_timeout_s
        self._stream_timeout = httpx2.Timeout(
            connect=config.connect_timeout_s,
            read=None,
            write=config.connect_timeout_s,
            pool=config.connect_timeout_s,
        )
        self._flights = Flights()
        self._closed = False

    def streaming(self, within_s: float) -> bool:
        """Whether one of this engine's streams received data within `within_s` seconds."""
        return self._flights.streaming(within_s)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineUnavailable(
                f"{self.engine} adapter for {self.base_url} is closed", engine=self.engine
            )

    async def get_json(self, path: str, body: Mapping[str, object] | None = None) -> Any:
        """GET `path` (POST `body` when given: Ollama's /api/show); the decoded JSON body, or an
        AdapterError (non-2xx, connect failure, bad JSON)."""
        self._check_open()
        url = self.base_url + path
        with map_http_errors(self.engine, url):
            if body is None:
                response = await self._client.get(url, headers=self._headers, timeout=self._probe_timeout)
            else:
                response = await self._client.post(
                    url, json=body, headers=self._headers, timeout=self._probe_timeout
                )
            await raise_for_status(response, self.engine)
        try:
            return response.json()
        except ValueError:
            text = clip(response.text)
            raise EngineInternal(
                f"{self.engine} at {url} sent invalid JSON: {text!r}", engine=self.engine
            ) from None

    async def get_text(self, path: str) -> str:
        """GET `path`; the body as text (Prometheus metrics), or an AdapterError."""
        self._check_open()
        url = self.base_url + path
        with map_http_errors(self.engine, url):
            response = await self._client.get(url, headers=self._headers, timeout=self._probe_timeout)
            await raise_for_status(response, self.engine)
        return response.text

    async def probe(self, path: str, check: Callable[[bytes], str | None] | None = None) -> WorkerHealth:
        """Health from GET `path`: 2xx is ready (unless `check(body)` names a problem), another status
        is live but not ready (llama.cpp's 503 while loading), no answer is not live."""
        url = self.base_url + path
        try:
            self._check_open()
            with map_http_errors(self.engine, url):
                response = await self._client.get(url, headers=self._headers, timeout=self._probe_timeout)
        except AdapterError as exc:
            return WorkerHealth(live=False, ready=False, detail=exc.message)
        if not 200 <= response.status_code < 300:
            detail = f"HTTP {response.status_code}: {body_message(response.content)}"
            return WorkerHealth(live=True, ready=False, detail=detail)
        problem = check(response.content) if check is not None else None
        return WorkerHealth(live=True, ready=problem is None, detail=problem or "")

    async def stream(
        self, req: SubmitRequest, path: str, body: Mapping[str, object], accept: str
    ) -> AsyncGenerator[bytes, None]:
        """POST `body` and yield the answer's bytes as they arrive. Raises `Canceled` after `cancel()`."""
        self._check_open()
        url = self.base_url + path
        headers = {**self._headers, "Accept": accept, "Accept-Encoding": "identity"}
        if req.correlation_id:
            headers["X-Correlation-Id"] = req.correlation_id
        if req.traceparent:
            headers["traceparent"] = req.traceparent
        if self._request_ids is not None:
            headers["X-Request-Id"] = f"{req.task_id}-{next(self._request_ids)}"
        with self._flights.track(req.task_id) as flight, map_http_errors(self.engine, url):
            request = self._client.build_request(
                "POST", url, json=body, headers=headers, timeout=self._stream_timeout
            )
            flight.watch(self._first_event_s, self._between_reads_s)
            try:
                with flight.awaiting():
                    response = await self._client.send(request, stream=True)
                flight.closer = response.aclose
                try:
                    with flight.awaiting():
                        await raise_for_status(response, self.engine)
                    chunks = _body_chunks(response)
                    async with aclosing(chunks):
                        while True:
                            with flight.awaiting():
                                chunk = await anext(chunks, None)
                            if chunk is None:
                                return
                            yield chunk
                finally:
                    flight.closer = None
                    await response.aclose()
            except Canceled:
                if flight.timed_out is None:
                    raise
                message = f"{self.engine} at {url}: {flight.timed_out}"
                raise EngineTimeout(message, engine=self.engine) from None

    async def sse(
        self, req: SubmitRequest, path: str, body: Mapping[str, object]
    ) -> AsyncGenerator[SSEEvent, None]:
        decoder = SSEDecoder()
        started = False
        async with aclosing(self.stream(req, path, body, "text/event-stream")) as chunks:
            async for chunk in chunks:
                events = self._decoded(decoder.feed, chunk)
                if events and not started:  # keep-alive comments decode to no event
                    started = True
                    self._flights.started(req.task_id)
                for event in events:
                    yield event

    async def ndjson(
        self, req: SubmitRequest, path: str, body: Mapping[str, object]
    ) -> AsyncGenerator[str, None]:
        decoder = NDJSONDecoder()
        started = False
        async with aclosing(self.stream(req, path, body, "application/x-ndjson")) as chunks:
            async for chunk in chunks:
                lines = self._decoded(decoder.feed, chunk)
                if lines and not started:
                    started = True
                    self._flights.started(req.task_id)
                for line in lines:
                    yield line

    async def post_json(self, req: SubmitRequest, path: str, body: Mapping[str, object]) -> dict[str, Any]:
        """POST `body` and decode the whole answer, a JSON object (an embeddings request): cancel and
        timeouts as for a stream (the first bytes within the first-token timeout)."""
        answer = bytearray()
        async with aclosing(self.stream(req, path, body, "application/json")) as chunks:
            async for chunk in chunks:
                answer += chunk
        try:
            text = answer.decode()
        except UnicodeDecodeError:
            raise EngineInternal(
                f"{self.engine} at {path} answered bytes that are not UTF-8", engine=self.engine
            ) from None
        return load_object(text, self.engine)

    def _decoded(self, feed: Callable[[bytes], list[_T]], chunk: bytes) -> list[_T]:
        try:
            return feed(chunk)
        except ValueError as exc:  # the decoders' size bounds
            raise EngineInternal(f"{self.engine}: {exc}", engine=self.engine) from exc

    async def cancel(self, task_id: str) -> None:
        await self._flights.cancel(task_id)

    def ended_early(self, terminal: str) -> EngineReset:
        """The error for a stream that reached EOF without the engine's terminal mark."""
        return EngineReset(
            f"{self.engine} at {self.base_url}: stream ended without {terminal}", engine=self.engine
        )

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def aclose(self) -> None:
        self._closed = True
        await self._flights.cancel_all()
        await self._client.aclose()


async def relay(
    http: EngineHTTP, frames: AsyncGenerator[_T, None], mapper: StreamMapper[_T], terminal: str
) -> AsyncGenerator[TokenEvent, None]:
    """Map `frames` to tokens as they arrive. The engine's response is read to its end (`_drain`) or
    closed before the terminal events are yielded, so a consumer that stops at `Finished` leaves no
    request open; EOF before the mapper saw the engine's terminal mark is `EngineReset` ("stream ended
    without <terminal>")."""
    last: list[TokenEvent] = []
    async with aclosing(frames):
        async for frame in frames:
            events = mapper.feed(frame)
            if mapper.done:
                last = events
                await _drain(frames)
                break
            for event in events:
                yield event
    if not mapper.done:
        raise http.ended_early(terminal)
    for event in last:
        yield event


async def _drain(frames: AsyncGenerator[object, None]) -> None:
    """Wait a moment for the body's end after the terminal mark. Every engine ends the body right after
    it (often in the same read), and only a response read to its end gives its connection back to the
    pool: closed earlier, each job would open a new one. Whatever else happens (more data, a broken
    connection, a cancel, no end within `_DRAIN_TIMEOUT_S`) leaves the response to be closed."""
    with suppress(AdapterError, Canceled, TimeoutError):
        async with asyncio.timeout(_DRAIN_TIMEOUT_S):
            await anext(frames, None)


class HttpAdapter(abc.ABC):
    """The `WorkerAdapter` shape shared by the HTTP engines: a subclass supplies `_events`, `health`
    and `props`. `client` is injected for tests; the adapter owns and closes it."""

    engine: str = "http"
    request_ids = False  # send X-Request-Id (see `EngineHTTP`)

    def __init__(self, config: AdapterConfig, *, client: httpx2.AsyncClient | None = None) -> None:
        self.config = config
        self.http = EngineHTTP(config, self.engine, client, request_ids=self.request_ids)

    def submit(self, req: SubmitRequest) -> AsyncIterator[TokenEvent]:
        return self._submit(req)

    async def _submit(self, req: SubmitRequest) -> AsyncGenerator[TokenEvent, None]:
        async with aclosing(self._events(req)) as events:
            try:
                async for event in events:
                    yield event
            except Canceled:
                return

    @abc.abstractmethod
    def _events(self, req: SubmitRequest) -> AsyncGenerator[TokenEvent, None]:
        """The engine's stream for `req`, as tokens ending in one `Finished`, or an AdapterError."""

    @abc.abstractmethod
    async def health(self) -> WorkerHealth: ...

    @abc.abstractmethod
    async def props(self) -> WorkerProps: ...

    async def cancel(self, task_id: str) -> None:
        """Close `task_id`'s request to the engine now; its submit iterator then ends without `Finished`."""
        await self.http.cancel(task_id)

    def streaming(self, within_s: float) -> bool:
        return self.http.streaming(within_s)

    async def aclose(self) -> None:
        await self.http.aclose()
