"""The embedded backend: everything in this process's memory, nothing to install."""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Any

import orjson

from orchestratord.core.budget import Ledger
from orchestratord.core.queue import Admitted, Depths, FairQueue, Place, QueueEntry, QueuePolicy, Rejected
from orchestratord.core.route import Route
from orchestratord.core.tasks import JobState, LogEvent, Priority
from orchestratord.state.base import IdempotencyRecord, JobRecord, Pending, SessionRecord
from orchestratord.state.shared import SharedState
from pool_manager.leases import LeaseStore, MemoryLeases


@dataclass(slots=True)
class _Job:
    """One job's record and log. On the per-token path nothing is copied or allocated beyond the
    event itself: the token count lives here (folded into the frozen record at each state change and
    when the record is read), and readers that caught up wait on futures woken by the next push."""

    record: JobRecord
    events: list[LogEvent] | _CompactLog = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    tokens_out: int = 0
    ended: bool = False  # the record's state is terminal (set once, by `finish`)

    def push(self, name: str, data: bytes) -> LogEvent:
        assert isinstance(self.events, list), "a finished job's log is closed"
        event = LogEvent(str(len(self.events) + 1), name, data.decode())
        self.events.append(event)
        if self.waiters:
            self.wake()
        return event

    def compact(self) -> None:
        """The log is complete: keep it for replay in a fraction of the memory (see `_CompactLog`)."""
        if isinstance(self.events, list):
            self.events = _CompactLog(self.events)
        self.pieces = ["".join(self.pieces)]

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def synced(self) -> JobRecord:
        """The record, with the live token count folded in."""
        if self.record.tokens_out != self.tokens_out:
            self.record = replace(self.record, tokens_out=self.tokens_out)
        return self.record


READ_BATCH = 1024  # events a reader is given at most at once (a finished log's are built as it reads)


class _CompactLog:
    """A finished job's events, kept for `retention_s` for late readers and resumes.

    An event object per token costs about 200 bytes (a tuple, its id string and its data string);
    here an event costs its data's characters plus 12 bytes (a name pointer and an end offset), so
    retention under sustained load holds about a sixth of the memory. Readers index it like the list
    it replaces, with the same ids (1-based positions), and see equal events."""

    __slots__ = ("_data", "_ends", "_names")

    def __init__(self, events: list[LogEvent]) -> None:
        self._names = tuple(event.name for event in events)
        self._data = "".join(event.data for event in events)
        self._ends = array("L", accumulate(len(event.data) for event in events))

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, index: int) -> LogEvent:
        start = self._ends[index - 1] if index > 0 else 0
        return LogEvent(str(index + 1), self._names[index], self._data[start : self._ends[index]])

    def between(self, start: int, stop: int) -> list[LogEvent]:
        return [self[index] for index in range(start, stop)]


class MemoryStore:
    """StateStore for one process. Event ids are 1-based decimal counters."""

    shared: SharedState | None = None  # nothing else sees this state

    def __init__(
        self,
        policy: QueuePolicy | None = None,
        *,
        retention_s: float = 600.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.queue = FairQueue(policy)
        self.leases: LeaseStore = MemoryLeases()
        self._jobs: dict[str, _Job] = {}
        self._finished: deque[tuple[float, str]] = deque()  # (finished_at, job_id), in finish order
        self._retention = retention_s
        self._wall = wall
        self._cancels: asyncio.Queue[str] = asyncio.Queue()
        self._closed = False
        self._sessions: dict[str, SessionRecord] = {}
        self._ledgers: dict[str, Ledger] = {}
        # (tenant, key) -> (record, expires_at), in insertion order, which is expiry order for one ttl
        self._idempotency: dict[tuple[str, str], tuple[IdempotencyRecord, float]] = {}

    # -- job registry ----------------------------------------------------------------------------
    async def create(
        self,
        record: JobRecord,
        entry: QueueEntry,
        ticket: Callable[[], str] | None = None,
        *,
        wake_all: bool = True,  # one process: its dispatcher is the only one
        most_ahead: int | None = None,  # one process: admission counted the place already
    ) -> Admitted | Rejected:
        outcome = self.queue.enqueue(entry, ticket=ticket, now=self._wall())
        if isinstance(outcome, Admitted):
            self._jobs[record.job_id] = _Job(record)
        return outcome

    async def run_over(self, job_id: str) -> None:
        return None  # every event is in the one log already

    async def lost_since(self) -> float | None:
        return None  # the process's memory: gone with the process, never in part

    async def get(self, job_id: str) -> JobRecord | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        return replace(job.synced(), text="".join(job.pieces))

    async def jobs(self, states: frozenset[JobState], *, ended_after: float | None = None) -> list[JobRecord]:
        if ended_after is None:
            return [job.synced() for job in self._jobs.values() if job.record.state in states]
        live = [job.synced() for job in self._jobs.values() if not job.ended and job.record.state in states]
        ended: list[JobRecord] = []
        for finished_at, job_id in reversed(self._finished):  # newest first: stop at the first older
            if finished_at <= ended_after:
                break
            job = self._jobs.get(job_id)
            if job is not None and job.record.state in states:
                ended.append(job.synced())
        return live + ended

    async def start(self, job_id: str, *, pool_id: str, replica_id: str, engine: str) -> JobRecord | None:
        job = self._jobs.get(job_id)
        if job is None or job.ended:
            return None
        job.record = replace(
            job.synced(),
            state=JobState.RUNNING,
            started_at=self._wall(),
            pool_id=pool_id,
            replica_id=replica_id,
            engine=engine,
        )
        return job.record

    async def finish(
        self, job_id: str, state: JobState, name: str, data: Mapping[str, Any]
    ) -> LogEvent | None:
        job = self._jobs.get(job_id)
        if job is None or job.ended:
            return None
        self.queue.remove(job_id)
        now = self._wall()
        payload = dict(data)
        if name == "end" and isinstance(payload.get("tokens_out"), int):
            job.tokens_out = payload["tokens_out"]  # the engine's count wins over the events counted
        record = job.synced()
        if name == "end":
            decode_ms = 0 if record.started_at is None else round((now - record.started_at) * 1000)
            payload.update(tokens_out=record.tokens_out, decode_time_ms=decode_ms, decode_ms=decode_ms)
        job.record = replace(
            record,
            state=state,
            finished_at=now,
            stop_reason=payload.get("stop_reason"),
            error_code=payload.get("code"),
            error_message=payload.get("message"),
        )
        job.ended = True
        self._finished.append((now, job_id))
        event = job.push(name, orjson.dumps(payload))
        job.compact()
        return event

    # -- idempotency keys ------------------------------------------------------------------------
    async def remember_idempotency(
        self, key: str, tenant: str, fingerprint: str, job_id: str, ttl_s: float
    ) -> IdempotencyRecord | None:
        now = self._wall()
        held = self._idempotency.get((tenant, key))
        if held is not None and held[1] > now:
            return held[0]
        self._idempotency.pop((tenant, key), None)
        self._idempotency[(tenant, key)] = (IdempotencyRecord(job_id, fingerprint), now + ttl_s)
        return None

    async def forget_idempotency(self, key: str, tenant: str, job_id: str) -> None:
        held = self._idempotency.get((tenant, key))
        if held is not None and held[0].job_id == job_id:
            del self._idempotency[(tenant, key)]

    def _purge_idempotency(self, now: float) -> None:
        while self._idempotency:
            oldest = next(iter(self._idempotency))
            if self._idempotency[oldest][1] > now:
                return
            del self._idempotency[oldest]

    # -- sessions and budget ledgers -------------------------------------------------------------
    async def session_get(self, key: str) -> SessionRecord | None:
        record = self._sessions.get(key)
        if record is not None and record.expires_at <= self._wall():
            del self._sessions[key]
            return None
        return record

    async def session_update(
        self, key: str, change: Callable[[SessionRecord | None], SessionRecord | None]
    ) -> SessionRecord | None:
        updated = change(await self.session_get(key))
        if updated is None:
            self._sessions.pop(key, None)
        else:
            self._sessions[key] = updated
        return updated

    async def session_delete(self, key: str) -> bool:
        return await self.session_get(key) is not None and self._sessions.pop(key, None) is not None

    async def ledger_get(self, key: str) -> Ledger | None:
        return self._ledgers.get(key)

    async def ledger_update(self, key: str, change: Callable[[Ledger | None], Ledger]) -> Ledger:
        self._ledgers[key] = updated = change(self._ledgers.get(key))
        return updated

    def _purge_sessions(self, now: float) -> None:
        for key in [k for k, r in self._sessions.items() if r.expires_at <= now]:
            del self._sessions[key]

    # -- the event log ---------------------------------------------------------------------------
    async def append(self, job_id: str, name: str, data: Mapping[str, Any]) -> LogEvent | None:
        job = self._jobs.get(job_id)
        if job is None or job.ended:
            return None
        return job.push(name, orjson.dumps(data))

    async def append_each(self, events: Sequence[tuple[str, str, Mapping[str, Any]]]) -> int:
        appended = 0
        for job_id, name, data in events:
            appended += await self.append(job_id, name, data) is not None
        return appended

    async def append_token(
        self, job_id: str, text: str, logprobs: Sequence[Mapping[str, Any]] | None = None
    ) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.ended:
            return False
        index = job.tokens_out
        job.tokens_out = index + 1
        job.pieces.append(text)
        if logprobs is None:
            job.push("token", orjson.dumps({"t": text, "i": index}))
        else:
            job.push("token", orjson.dumps({"t": text, "i": index, "logprobs": logprobs}))
        return True

    async def read(self, job_id: str, after: str | None = None) -> AsyncIterator[LogEvent]:
        async for batch in self.read_batches(job_id, after):
            for event in batch:
                yield event

    async def read_batches(self, job_id: str, after: str | None = None) -> AsyncIterator[list[LogEvent]]:
        job = self._jobs.get(job_id)
        if job is None:
            return
        cursor = int(after) if after else 0
        while True:
            events = job.events
            if cursor < len(events):
                end = min(len(events), cursor + READ_BATCH)
                batch = events[cursor:end] if isinstance(events, list) else events.between(cursor, end)
                cursor = end
                yield batch
                if batch[-1].terminal:  # nothing is appended after it
                    return
                continue
            if job.ended:
                return  # `after` lies beyond the terminal event: nothing more will ever come
            if self._closed:
                return
            waiter = asyncio.get_running_loop().create_future()
            job.waiters.append(waiter)  # no await since the last look at the log: no wake-up is lost
            await waiter

    def valid_event_id(self, event_id: str) -> bool:
        return event_id.isascii() and event_id.isdigit() and len(event_id) < 19

    async def beyond(self, job_id: str, event_id: str) -> bool:
        job = self._jobs.get(job_id)
        return job is not None and int(event_id) > len(job.events)

    # -- the queue -------------------------------------------------------------------------------
    async def pending(self, now: float) -> Pending:
        return Pending(queued=len(self.queue) > 0, expired=self.queue.due(now))

    async def take(
        self,
        can_serve: Callable[[Route], bool],
        tenant_ok: Callable[[str], bool],
        batch_can_serve: Callable[[Route], bool] | None = None,
        pending: Pending | None = None,
        spare: Callable[[Route], bool] | None = None,  # one process: no job is another's
    ) -> QueueEntry | None:
        return self.queue.take(can_serve, tenant_ok, batch_can_serve)

    async def dequeue(self, job_id: str) -> QueueEntry | None:
        return self.queue.remove(job_id)

    async def expire(self, now: float) -> list[QueueEntry]:
        return self.queue.expire(now)

    async def settle(self, tenant: str, priority: Priority, estimated: float, actual: float) -> None:
        self.queue.settle(tenant, priority, estimated, actual)

    async def queued(self) -> list[QueueEntry]:
        return self.queue.entries()

    async def place(self, job_id: str) -> Place | None:
        return self.queue.place(job_id) if job_id in self.queue else None

    async def places(self) -> Mapping[str, Place]:
        return self.queue.places()

    async def depths(self, tenant: str | None = None) -> Depths:
        return self.queue.depths(tenant)

    async def places_held(self) -> int:
        self.queue.tickets.purge(self._wall())
        return len(self.queue.tickets)

    async def hold_place(self, ticket: str, due_in_s: float, hold_s: float) -> float:
        now = self._wall()
        return self.queue.tickets.hold(ticket, now + due_in_s, now + due_in_s + hold_s) - now

    # -- readers and cancel signals --------------------------------------------------------------
    async def attach(self, job_id: str) -> int:
        return self._readers(job_id, +1)

    async def open(self, job_id: str, tenant: str | None) -> JobRecord | None:
        job = self._jobs.get(job_id)
        if job is None or (tenant is not None and job.record.tenant != tenant):
            return None
        self._readers(job_id, +1)
        return job.synced()

    async def detach(self, job_id: str) -> int:
        return self._readers(job_id, -1)

    def _readers(self, job_id: str, delta: int) -> int:
        job = self._jobs.get(job_id)
        if job is None:
            return 0
        record = job.synced()
        readers = max(0, record.readers + delta)
        job.record = replace(record, readers=readers, attached=record.attached or delta > 0)
        return readers

    async def publish_cancel(self, job_id: str) -> None:
        self._cancels.put_nowait(job_id)

    async def cancel_signals(self) -> AsyncIterator[str]:
        while True:
            yield await self._cancels.get()

    # -- housekeeping ----------------------------------------------------------------------------
    async def purge(self, now: float) -> int:
        """Drop the jobs that finished more than `retention_s` ago. Jobs finish in time order, so
        this looks only at the oldest finished ones: O(expired), whatever the number retained."""
        expired = 0
        while self._finished and now - self._finished[0][0] > self._retention:
            _, job_id = self._finished.popleft()
            expired += self._jobs.pop(job_id, None) is not None
        self._purge_sessions(now)
        self._purge_idempotency(now)
        return expired

    async def forget(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None or not job.record.state.terminal:
            return False
        del self._jobs[job_id]  # its entry in `_finished` goes when its retention passes, finding none
        return True

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._closed = True
        for job in self._jobs.values():
            job.wake()

    def job_count(self) -> int:
        return len(self._jobs)

    def idempotency_count(self) -> int:
        return len(self._idempotency)
