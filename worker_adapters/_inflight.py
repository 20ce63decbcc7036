"""In-flight requests by task id, so that `cancel(task_id)` can stop one from another task.

Pure asyncio, no HTTP. A submit stream wraps each of its awaits on the engine (connect, headers, next
chunk) in `Flight.awaiting()`. `Flight.cancel()` then either interrupts that await, the way
`asyncio.timeout()` does (cancel the awaiting task, and `uncancel()` it when the CancelledError comes
back, so only this stream ends and the consumer's task is not left canceled), or, when the stream is
parked at a ``yield`` between awaits, runs the registered closer (the HTTP response's ``aclose``) at once.
Either way the engine's connection closes now, not when the consumer next asks for a token. The stream
then raises `Canceled`, which the adapter turns into a quiet end of iteration.

A flight may also be watched (`Flight.watch`): one timer per flight, not one per read, ends it the same
way when the engine keeps it waiting too long: `first_s` from the request until the stream's first event
(prefill and the engine's own queue; keep-alive comments do not count), then `between_s` for any one read
after that. Time the stream spends parked at a ``yield`` is the consumer's, not the engine's, and never
counts. The stream then raises `Canceled` with `Flight.timed_out` naming the limit.
"""

from __future__ import annotations

import asyncio
import time
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
        self.started = False  # the engine's first event arrived (see `watch`)
        self.timed_out: str | None = None  # which limit ended the flight, when one did
        self._since = 0.0  # when the current await on the engine began (monotonic)
        self._opened = 0.0
        self._limits = (0.0, 0.0)
        self._timer: asyncio.TimerHandle | None = None

    def awaiting(self) -> Flight:
        """Wrap one await on the engine (``with flight.awaiting(): …``); raises `Canceled` if the flight
        is (or gets) canceled. The flight is its own context manager, not a ``@contextmanager``
        generator: this runs once per chunk read, and the generator costs 0.8 µs more each time."""
        return self

    def __enter__(self) -> None:
        if self.canceled:
            raise Canceled(self.task_id)
        self._waiter = asyncio.current_task()
        self._since = time.monotonic()

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

    def watch(self, first_s: float, between_s: float) -> None:
        """Time the engine's waits out (see the module docstring); `unwatch` when the flight ends."""
        self._opened = time.monotonic()
        self._limits = (first_s, between_s)
        self._timer = asyncio.get_running_loop().call_later(first_s, self._check)

    def mark_started(self) -> None:
        """The engine's first event arrived: from now on each read has `between_s`."""
        self.started = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(self._limits[1], self._check)

    def unwatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        first_s, between_s = self._limits
        now = time.monotonic()
        if self.canceled:
            return
        if not self.started:
            due, limit = self._opened + first_s, f"no first event within {first_s:g} s"
        else:
            due, limit = self._since + between_s, f"no data for {between_s:g} s mid-stream"
        waiting = self._waiter is not None
        if waiting and now >= due:
            self.timed_out = limit
            self.canceled = self._interrupting = True
            self._waiter.cancel(f"task {self.task_id}: {limit}")  # type: ignore[union-attr]
            return
        # Not due yet, or parked at a yield (the consumer's time): look again when it could be due.
        delay = due - now if waiting and due > now else (between_s if self.started else first_s)
        self._timer = asyncio.get_running_loop().call_later(max(delay, 0.001), self._check)


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
            flight.unwatch()
            del self._by_task[task_id]

    async def cancel(self, task_id: str) -> None:
        flight = self._by_task.get(task_id)
        if flight is not None:
            await flight.cancel()

    def started(self, task_id: str) -> None:
        """The engine's first event for `task_id` arrived: from now on its between-reads limit applies."""
        flight = self._by_task.get(task_id)
        if flight is not None:
            flight.mark_started()

    def streaming(self, within_s: float) -> bool:
        """Whether a flight began an await on the engine within `within_s` seconds: its request was
        just sent (the engine may be reading the prompt, before any event) or the engine is visibly
        generating (a read begins as soon as the previous one returned data). A flight that has
        waited longer than that, for its first event or the next, is not."""
        now = time.monotonic()
        return any(now - f._since < within_s for f in self._by_task.values())

    async def cancel_all(self) -> None:
        for flight in list(self._by_task.values()):
            await flight.cancel()

    def __len__(self) -> int:
        return len(self._by_task)
