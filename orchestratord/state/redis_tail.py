"""One blocking stream read per orchestrator instance for every reader that waits on a job's log.

A reader that has caught up with a job's log (Redis Stream `log:<id>`) waits here instead of holding
a blocking `XREAD` of its own, which would hold a Redis connection for as long as it waits: a few
hundred open streams would take every connection the client allows. Here one task runs one
`XREAD BLOCK` over the streams of every job that has a waiting reader on this instance, from the
newest entry it has seen of each, and hands each batch to that job's readers. A job joins the read
when its first reader arrives (a write to this instance's own wake stream interrupts the read in
flight so that the next one includes it) and leaves when its last reader has gone.

Connections per instance: this read, the pub/sub subscription (redis_signals), and the request
pool's, whatever the number of open streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from orchestratord.errors import StateUnavailable
from orchestratord.logs import get_logger
from orchestratord.state.redis_client import UNREACHABLE, Client, Scripts

log = get_logger(__name__)
Entry = tuple[str, dict[str, str]]  # (stream id, fields)
COUNT = 256  # entries per stream per read
_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)


def stream_order(event_id: str) -> tuple[int, int]:
    """A Redis stream id (`<ms>-<seq>`) as the pair it orders by."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


WAKE_TTL_S = 3600
MAX_PENDING = 8  # batches held for a reader that is not taking them; past that it reads the log itself


@dataclass(eq=False, slots=True)
class Waiter:
    """One reader's place in the shared read: the batches for it, or word that it fell behind."""

    got: asyncio.Queue[list[Entry]] = field(default_factory=asyncio.Queue)
    behind: bool = False  # batches were dropped: read the log from your own cursor
    paging: bool = False  # reading the log itself, a full page at a time, until a page is not full


@dataclass(slots=True)
class _Job:
    cursor: str  # the newest entry the shared read has delivered (or the first reader's position)
    readers: set[Waiter] = field(default_factory=set)


class Tail:
    def __init__(self, blocking: Client, requests: Scripts, wake_key: str, block_ms: int) -> None:
        self._blocking = blocking  # the shared read holds one of its connections
        self._requests = requests  # the wake-up is written through the shared line
        self._wake_key = wake_key
        # From the start of the wake stream (it holds a few entries at most): a wake-up written just
        # before a read is sent is still seen by it, which "$" would miss.
        self._wake_cursor = "0-0"
        self._block_ms = block_ms
        self._jobs: dict[str, _Job] = {}
        self._task: asyncio.Task[None] | None = None
        self._pokes: set[asyncio.Task[None]] = set()
        self._woken = False

    @property
    def waiting(self) -> int:
        """Jobs with a reader waiting on this instance (for tests and metrics)."""
        return len(self._jobs)

    def join(self, key: str, after: str) -> Waiter:
        """Wait for the entries of stream `key`. A job new to the shared read is read from `after`;
        one already in it from where it stands: a reader that joins behind it reads the gap itself,
        after joining, and skips what it then gets twice."""
        reader = Waiter()
        job = self._jobs.get(key)
        if job is None:
            self._jobs[key] = job = _Job(after)
            self._wake()
        job.readers.add(reader)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return reader

    def leave(self, key: str, reader: Waiter) -> None:
        job = self._jobs.get(key)
        if job is None:
            return
        job.readers.discard(reader)
        if not job.readers:
            del self._jobs[key]

    def nudge(self, key: str) -> None:
        """Hand the readers of stream `key` an empty batch, so that each looks at its job again now
        (its run just started on this instance) instead of after the next entry or `block_s`."""
        job = self._jobs.get(key)
        for reader in job.readers if job is not None else ():
            if not reader.behind:
                reader.got.put_nowait([])

    def _wake(self) -> None:
        """Make the read in flight return, so that the next one covers a job that just joined."""
        if self._woken or self._task is None or self._task.done():
            return
        self._woken = True
        self._pokes.add(poke := asyncio.create_task(self._poke()))
        poke.add_done_callback(self._pokes.discard)

    async def _poke(self) -> None:
        with contextlib.suppress(StateUnavailable, RedisError):
            await self._requests.pipeline(
                [
                    ("XADD", self._wake_key, "MAXLEN", 8, "*", "w", "1"),
                    ("EXPIRE", self._wake_key, WAKE_TTL_S),  # gone a while after its instance is
                ]
            )

    async def _run(self) -> None:
        failures = 0
        while self._jobs:
            self._woken = False
            streams: dict[Any, Any] = {key: job.cursor for key, job in self._jobs.items()}
            streams[self._wake_key] = self._wake_cursor
            try:
                reply: Any = await self._blocking.xread(streams, count=COUNT, block=self._block_ms)
                failures = 0
            except (*UNREACHABLE, RedisError) as exc:  # task root: the readers' own checks report it
                if failures == 0:
                    log.warning("state_backend_unreachable", channel="tail", error=type(exc).__name__)
                await asyncio.sleep(_BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)])
                failures += 1
                continue
            for key, entries in reply or ():
                self._deliver(key, entries)

    def _deliver(self, key: str, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        if key == self._wake_key:
            self._wake_cursor = entries[-1][0]
            return
        job = self._jobs.get(key)
        if job is None:
            return
        job.cursor = entries[-1][0]
        batch = list(entries)
        for reader in job.readers:
            if reader.got.qsize() >= MAX_PENDING:
                reader.behind = True  # a slow client: the log itself is its buffer, not this process
            elif not reader.behind:
                reader.got.put_nowait(batch)

    async def aclose(self) -> None:
        self._jobs.clear()
        tasks = [*self._pokes, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
