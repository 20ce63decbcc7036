"""httpx transports that wrap the real one: they record what the server saw and answered (to count
attempts and read the retry hints), and can lose an answer after the server has acted on it."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx


@dataclass
class Seen:
    """One request as sent, and the status and headers of the answer (None when it was lost)."""

    method: str
    path: str
    headers: httpx.Headers
    status: int | None = None
    answer_headers: httpx.Headers = field(default_factory=httpx.Headers)
    body: bytes = b""


class RecordingTransport(httpx.BaseTransport):
    """The real HTTP transport, recording every exchange. `lose_first` paths: the first answer to a
    request for each is read (the server has acted) and then replaced by a dropped connection."""

    def __init__(self, *, lose_first: tuple[str, ...] = ()) -> None:
        self._inner = httpx.HTTPTransport()
        self._lose = set(lose_first)
        self.seen: list[Seen] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        seen = Seen(request.method, request.url.path, request.headers)
        self.seen.append(seen)
        response = self._inner.handle_request(request)
        seen.status, seen.answer_headers = response.status_code, response.headers
        if request.url.path in self._lose:
            self._lose.discard(request.url.path)
            seen.body, seen.status = response.read(), None
            response.close()
            raise httpx.ReadError("connection lost before the answer arrived", request=request)
        return response

    def close(self) -> None:
        self._inner.close()

    def to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]


class AsyncRecordingTransport(httpx.AsyncBaseTransport):
    """`RecordingTransport` for `httpx.AsyncClient` (recording only)."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.seen: list[Seen] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        seen = Seen(request.method, request.url.path, request.headers)
        self.seen.append(seen)
        response = await self._inner.handle_async_request(request)
        seen.status, seen.answer_headers = response.status_code, response.headers
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()

    def to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]
