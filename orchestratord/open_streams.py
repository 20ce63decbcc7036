"""The streams this process is writing, so that a shutdown can close those that would not end by
themselves: with shared state, the readers of jobs that go on in another replica. Their clients see
the response end without a terminal event and resume from their last event id, through another
replica. (The response itself is `orchestratord.api.sse.EventStream`.)"""

from __future__ import annotations

import asyncio
from typing import Protocol

CLOSE_AFTER_S = 0.5  # at shutdown, how long the streams have to write the terminal events


class Stream(Protocol):
    def cut_off(self, why: str) -> None: ...


class OpenStreams:
    def __init__(self) -> None:
        self._open: set[Stream] = set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, stream: Stream) -> None:
        self._open.add(stream)

    def discard(self, stream: Stream) -> None:
        self._open.discard(stream)

    def close(self) -> int:
        """End every open stream now; returns how many."""
        streams = list(self._open)
        for stream in streams:
            stream.cut_off("closed")
        return len(streams)

    def close_soon(self, delay_s: float = CLOSE_AFTER_S) -> None:
        """`close` after `delay_s`, so that what is already in the logs (terminal events) is written
        first."""
        asyncio.get_running_loop().call_later(delay_s, self.close)
