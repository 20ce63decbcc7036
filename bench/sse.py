"""Sinks that read SSE bodies as they arrive and record when things happened, cheaply.

Token events are counted with `bytes.count` over the complete events of each chunk rather than parsed
one by one: at 100,000 tokens/s a per-event Python loop in the load generator would take CPU from the
process being measured. Every other event (few per job) is decoded with orjson.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_OTHER = re.compile(rb"\nevent: (started|metrics|end|error)\ndata: ([^\n]*)")
_MARKS = (b"\nevent: s", b"\nevent: m", b"\nevent: e")


class _Framed:
    """Splits the body into complete events (ending in a blank line) and keeps the rest."""

    def __init__(self) -> None:
        self._rest = b""

    def complete(self, chunk: bytes) -> bytes:
        data = self._rest + chunk if self._rest else chunk
        if b"\r" in data:  # SSE lines may end in CRLF, LF or CR: read them all as LF
            held = b"\r" if data.endswith(b"\r") else b""  # its LF may start the next chunk
            data = data[: len(data) - len(held)].replace(b"\r\n", b"\n").replace(b"\r", b"\n") + held
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self._rest = data
            return b""
        self._rest = data[cut + 2 :]
        return data[: cut + 2]


class TaskStream(_Framed):
    """An orchestratord job stream (`GET /v1/tasks/{id}/stream`)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = 0
        self.first_token_at: float | None = None
        self.dispatched_at: float | None = None
        self.ended_at: float | None = None
        self.started: dict[str, Any] = {}
        self.dispatch: dict[str, Any] = {}
        self.terminal: str | None = None
        self.final: dict[str, Any] = {}

    def feed(self, chunk: bytes, now: float) -> None:
        region = self.complete(chunk)
        if not region:
            return
        tokens = region.count(b"\nevent: token\n")
        if tokens and self.first_token_at is None:
            self.first_token_at = now
        self.tokens += tokens
        if not any(mark in region for mark in _MARKS):
            return  # nothing but tokens (and maybe keep-alives) in this chunk
        for match in _OTHER.finditer(region):
            self._other(match.group(1), match.group(2), now)

    def _other(self, name: bytes, data: bytes, now: float) -> None:
        payload = orjson.loads(data)
        if name == b"started":
            self.started = payload
        elif name == b"metrics":
            if self.dispatched_at is None and "pool_id" in payload:
                self.dispatched_at = now
                self.dispatch = payload
        else:
            self.terminal = name.decode()
            self.final = payload
            self.ended_at = now


class EngineStream(_Framed):
    """An OpenAI-compatible ``/v1/completions`` stream, read directly (the baseline)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = 0
        self.first_token_at: float | None = None
        self.ended_at: float | None = None
        self.done = False

    def feed(self, chunk: bytes, now: float) -> None:
        region = self.complete(chunk)
        if not region:
            return
        tokens = region.count(b'"text":')
        if tokens and self.first_token_at is None:
            self.first_token_at = now
        self.tokens += tokens
        if b"data: [DONE]" in region:
            self.done = True
            self.ended_at = now
