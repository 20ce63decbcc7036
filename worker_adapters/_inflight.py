"""In-flight requests by task id, so that `cancel(task_id)` can stop one from another task.

Pure asyncio, no HTTP. A submit stream wraps each of its awaits on the engine (connect, headers, next
chunk) in `Flight.awaiting()`. `Flight.cancel()` then either interrupts that await, the way
`asyncio.timeout()` does (cancel the awaiting task, and `uncancel()` it when the CancelledError comes
back, so only this stream ends and the consumer's task is not left canceled), or, when the stream is
parked at a ``yield`` between awaits, runs the registered closer (the HTTP response's ``aclose``) at once.
Either way the engine's connection closes now, not when the consumer next asks for a token. The stream
then raises `Canceled`, which the adapter turns into a quiet end of iteration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any


class Canceled(Exception):
    """The stream's task was canceled with `cancel(task_id)`; the submit iterator ends without `Finished`."""


class Flight:
    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.canceled = False
        self.closer: Callable[[], Awaitable[None]] | None = None
        self._waiter: asyncio.Task[Any] | None = None
        self._interrupting = False

    def awaiting(self) -> Flight:
        """Wrap one await on the engine (``with flight.awaiting(): …``); raises `Canceled` if the flight
        is (or gets) canceled. The flight is its own context manager, not a ``@contextmanager``
        generator: this runs once per chunk read, and the generator costs 0.8 µs more each time."""
        return self

    def __enter__(self) -> None:
        if self.canceled:
            raise Canceled(self.task_id)
        self._waiter = asyncio.current_task()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, self._waiter = self._waiter, None
        if kind is None or not issubclass(kind, asyncio.CancelledError):
            return
        if self._interrupting and task is not None:
            self._interrupting = False
            if task.uncancel() == 0:  # ours was the only cancel request: swallow it
                raise Canceled(self.task_id) from None

    async def cancel(self) -> None:
        if self.canceled:
            return
        self.canceled = True
        if self._waiter is not None:
            self._interrupting = True
            self._waiter.cancel(f"task {self.task_id} canceled")
        elif self.closer is not None:
            await self.closer()


class Flights:
    """The in-flight requests of one adapter."""

    def __init__(self) -> None:
        self._by_task: dict[str, Flight] = {}

    @contextmanager
    def track(self, task_id: str) -> Iterator[Flight]:
        if task_id in self._by_task:
            raise ValueError(f"task {task_id!r} is already in flight on this adapter")
        flight = Flight(task_id)
        self._by_task[task_id] = flight
        try:
            yield flight
        finally:
            del self._by_task[task_id]

    async def cancel(self, task_id: str) -> None:
        flight = self._by_task.get(task_id)
        if flight is not None:
            await flight.cancel()

    async def cancel_all(self) -> None:
        for flight in list(self._by_task.values()):
            await flight.cancel()

    def __len__(self) -> int:
        return len(self._by_task)
