"""How far behind this process's event loop runs, so that admission refuses new work (429) before the
work already admitted starves.

A timer asked to fire every `interval_s` fires late by however long the loop was busy with other work:
that lateness is the wait every callback, reply and token of the process sees. One late tick is a
pause (a large response, a collection); `overloaded` needs `ticks` late ones in a row, so it says the
loop has been behind for a while and is still behind. Past that point every call to Redis (a
replica's replies wait their turn in the same loop) and every token relayed comes later, and an
admitted job risks its timeouts; refusing the next job with a Retry-After is what keeps the admitted
ones ending."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

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
    ) -> None:
        self.limit_s = limit_s  # None: never overloaded (the lag is still measured)
        self._interval = interval_s
        self._clock = clock
        self._recent: deque[float] = deque([0.0] * ticks, maxlen=ticks)
        self._task: asyncio.Task[None] | None = None

    @property
    def behind_s(self) -> float:
        """The lateness of the last tick."""
        return self._recent[-1]

    @property
    def overloaded(self) -> bool:
        return self.limit_s is not None and min(self._recent) > self.limit_s

    def tick(self, late_s: float) -> None:
        self._recent.append(max(0.0, late_s))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def _run(self) -> None:
        while True:
            asked = self._clock()
            await asyncio.sleep(self._interval)
            self.tick(self._clock() - asked - self._interval)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
