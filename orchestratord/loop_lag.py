"""How far behind this process's event loop runs, and (with a shared state backend) how late Redis
answers, so that admission refuses new work (429) before the work already admitted starves.

A timer asked to fire every `interval_s` fires late by however long the loop was busy with other work:
that lateness is the wait every callback, reply and token of the process sees. One late tick is a
pause (a large response, a collection); `overloaded` needs `ticks` late ones in a row, so it says the
loop has been behind for a while and is still behind. Past that point every call to Redis (a
replica's replies wait their turn in the same loop) and every token relayed comes later, and an
admitted job risks its timeouts; refusing the next job with a Retry-After is what keeps the admitted
ones ending. The same holds for a Redis that answers late (busy with every replica's work): a PING
every `interval_s` on the line all calls share measures it, and two late ones in a row refuse too."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable

INTERVAL_S = 0.1
TICKS = 2


class LoopLag:
    def __init__(
        self,
        limit_s: float | None,
        *,
        interval_s: float = INTERVAL_S,
        ticks: int = TICKS,
        clock: Callable[[], float] = time.monotonic,
        probe: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.limit_s = limit_s  # None: never overloaded (the lag is still measured)
        self._interval = interval_s
        self._clock = clock
        self._recent: deque[float] = deque([0.0] * ticks, maxlen=ticks)
        # The shared state backend's round trips (a PING on the line every call shares): a Redis busy
        # with other replicas' work answers late however idle this loop is.
        self._probe = probe
        self._round_trips: deque[float] = deque([0.0] * ticks, maxlen=ticks)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def behind_s(self) -> float:
        """The lateness of the last tick (the loop's), or of the last round trip to the backend."""
        return max(self._recent[-1], self._round_trips[-1])

    @property
    def overloaded(self) -> bool:
        limit = self.limit_s
        return limit is not None and (min(self._recent) > limit or min(self._round_trips) > limit)

    def tick(self, late_s: float) -> None:
        self._recent.append(max(0.0, late_s))

    def round_trip(self, took_s: float) -> None:
        self._round_trips.append(max(0.0, took_s))

    def start(self) -> None:
        if not self._tasks:
            self._tasks.append(asyncio.create_task(self._run(), name="loop-lag"))
            if self._probe is not None:
                self._tasks.append(asyncio.create_task(self._probing(self._probe), name="backend-lag"))

    async def _run(self) -> None:
        while True:
            asked = self._clock()
            await asyncio.sleep(self._interval)
            self.tick(self._clock() - asked - self._interval)

    async def _probing(self, probe: Callable[[], Awaitable[object]]) -> None:
        while True:
            sent = self._clock()
            answered = await probe()  # never raises (a health probe)
            # A backend that did not answer is unreachable, not overloaded: requests get 503 for it.
            self.round_trip(self._clock() - sent if answered else 0.0)
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
