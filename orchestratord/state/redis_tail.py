"""One shared read per orchestrator instance for every reader that waits on a job's log.

A reader that has caught up with a job's log (Redis Stream `log:<id>`) waits here instead of holding
a blocking `XREAD` of its own, which would hold a Redis connection for as long as it waits. Every
script that appends to a log also names the job in the deployment's `news` stream (lua/common.lua),
in the same script. One task per instance follows `news` with one blocking `XREAD` of that one key,
and when a job with readers here is named, reads that job's log from the newest entry it delivered
(one `XREAD` over every such job at once, on the shared line) and hands the batch to its readers.
What a read costs grows with the logs that grew, not with the streams open: a replica holding
thousands of open streams does not name thousands of keys on every read.

A job joins when its first reader arrives and leaves when its last has gone; the reader reads the gap
from its own cursor after joining, so a join needs no read of its own here. Whenever the task starts,
comes back from an error, or finds that `news` moved on further than one read takes (it is capped), it
reads every log it waits on, so nothing named while it was not looking is missed.

Connections per instance: this read (a line of its own, redis_line), the shared line of every other
call, and the pub/sub subscription, whatever the number of open streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis.exceptions import RedisError

from orchestratord.core.tasks import US, EventRun, LogEvent
from orchestratord.errors import StateUnavailable
from orchestratord.logs import get_logger
from orchestratord.state.redis_client import UNREACHABLE, Scripts, stopping

log = get_logger(__name__)
Entry = tuple[str, dict[str, str]]  # (stream id, fields)
COUNT = 256  # entries per stream per read
_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)


def stream_order(event_id: str) -> tuple[int, int]:
    """A Redis stream id (`<ms>-<seq>`) as the pair it orders by."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


# A log's entries are of two kinds. One event (`started`, what a queued job is given, the terminal
# event): fields `n` (its name) and `d` (its data), under the event's own id. A run's batch
# (append_events.lua, written behind the run by state/redis_local.py): field `e`, the events' records
# joined by RS, each its id, name and data joined by US (core.tasks), under the id of the batch's last
# event; so an entry's id is always the newest event id it holds, and reading after an id returns every
# event past it (the first entry read may also hold some at or before it, which are skipped).


def past(events: list[LogEvent], mark: tuple[int, int]) -> list[LogEvent]:
    """Of `events`, in ascending order, those after `mark` (a `stream_order`): skipped from the front,
    one comparison when none is at or before it."""
    skip = 0
    while skip < len(events) and stream_order(events[skip].id) <= mark:
        skip += 1
    return events[skip:] if skip else events


def events_of(entries: Iterable[Entry], after: str | None = None) -> list[LogEvent]:
    """The events of a log's entries, in order, those after the id `after` only."""
    return cast(list[LogEvent], runs_of(entries, after, whole=False))


def runs_of(
    entries: Iterable[Entry], after: str | None = None, *, whole: bool = True
) -> list[LogEvent | EventRun]:
    """As `events_of`, but (when `whole`) each run's batch wholly after `after` as it is stored: one
    `EventRun`."""
    mark = stream_order(after) if after else None
    out: list[LogEvent | EventRun] = []
    for entry_id, fields in entries:
        if mark is not None and stream_order(entry_id) <= mark:
            continue
        records = fields.get("e")
        if records is None:
            out.append(LogEvent(entry_id, fields["n"], fields["d"]))
        else:
            run = EventRun(entry_id, records)
            # only the first entry past the mark may straddle it: whole if its first event is past it
            if whole and (mark is None or stream_order(records[: records.index(US)]) > mark):
                out.append(run)
            else:
                out += run.events() if mark is None else past(run.events(), mark)
        mark = None
    return out


NEWS_COUNT = 1000  # `news` entries per read (the stream keeps about 10,000: lua/common.lua NEWS_KEEP)
READ_KEYS = 500  # logs per read of the logs that grew
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
    def __init__(self, requests: Scripts, prefix: str, block_ms: int) -> None:
        self._requests = requests  # `news` on a line of its own, the logs that grew on the shared one
        self._news_key = f"{prefix}news"
        self._log_prefix = f"{prefix}log:"
        self._block_ms = block_ms
        self._jobs: dict[str, _Job] = {}
        self._grew: set[str] = set()  # keys of logs named in `news` and not read since
        self._task: asyncio.Task[None] | None = None

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
            self._grew.discard(key)

    def nudge(self, key: str) -> None:
        """Hand the readers of stream `key` an empty batch, so that each looks at its job again now
        (its run just started on this instance) instead of after the next entry or `block_s`."""
        job = self._jobs.get(key)
        for reader in job.readers if job is not None else ():
            if not reader.behind:
                reader.got.put_nowait([])

    async def _run(self) -> None:
        failures = 0
        cursor: str | None = None  # the newest `news` entry seen; None: find it, then read every log
        while self._jobs:
            try:
                if cursor is None:
                    newest = await self._requests.call("XREVRANGE", self._news_key, "+", "-", "COUNT", 1)
                    cursor = newest[0][0] if newest else "0-0"
                    self._grew.update(self._jobs)  # whatever came before `cursor`
                await self._read_grown()
                reply: Any = await self._requests.blocking_read(
                    self._block_ms, "XREAD", "COUNT", NEWS_COUNT, "BLOCK", self._block_ms,
                    "STREAMS", self._news_key, cursor,
                )  # fmt: skip
                failures = 0
            except (*UNREACHABLE, RedisError, StateUnavailable) as exc:  # task root: readers look themselves
                if stopping():
                    return
                if failures == 0:
                    log.warning("state_backend_unreachable", channel="tail", error=type(exc).__name__)
                await asyncio.sleep(_BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)])
                failures += 1
                cursor = None
                continue
            for _, entries in reply or ():
                cursor = entries[-1][0]
                if len(entries) >= NEWS_COUNT:  # perhaps further behind than the cap: read them all
                    self._grew.update(self._jobs)
                    continue
                for _, fields in entries:
                    for job in fields["j"].split():
                        key = self._log_prefix + job
                        if key in self._jobs:
                            self._grew.add(key)

    async def _read_grown(self) -> None:
        """Read every log named since the last read, from where each job's delivery stands, in
        reads of at most READ_KEYS logs; a log with more than a page left is read again next time."""
        while self._grew:
            keys = [key for key in self._grew if key in self._jobs][:READ_KEYS]
            self._grew.difference_update(keys)
            if not keys:
                return
            reply: Any = await self._requests.call(
                "XREAD", "COUNT", COUNT, "STREAMS", *keys, *(self._jobs[key].cursor for key in keys)
            )
            for key, entries in reply or ():
                self._deliver(key, entries)
                if len(entries) == COUNT:
                    self._grew.add(key)
            await asyncio.sleep(0)  # many logs: let the readers take what they were given

    def _deliver(self, key: str, entries: Sequence[Entry]) -> None:
        job = self._jobs.get(key)
        if job is None or not entries:
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
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
