"""The shared backend: several orchestrator replicas behind a load balancer keep one job registry, one
event log per job (a Redis Stream, kept `retention_s` after the job ends), one fair queue, slot
leases and idempotency keys in Redis. Every step that must be atomic across replicas is one Lua
script (orchestratord/state/lua); key layout in lua/common.lua.

Each instance has an `owner` id. Taking a job records it as the job's claim; only the claimant may
start the job or append its tokens, and its heartbeat (`leases.renew`) keeps the claim and the slot
lease alive. When the heartbeat stops (the replica died), any replica's `reap` ends the job with a
retriable WORKER_RESET, or queues it again if it had sent no token yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, cast

import orjson
from redis.exceptions import RedisError

from orchestratord.core.budget import Ledger
from orchestratord.core.queue import Admitted, Depths, Place, QueueEntry, QueuePolicy, Rejected
from orchestratord.core.route import Route
from orchestratord.core.tasks import EventRun, JobState, LogEvent, Priority
from orchestratord.errors import StateLost, StateUnavailable, error_event
from orchestratord.logs import get_logger
from orchestratord.state.base import IdempotencyRecord, JobRecord, Pending, SessionRecord
from orchestratord.state.redis_client import SEP, RedisOptions, Scripts, SlotNode, connect, tagged
from orchestratord.state.redis_documents import Documents
from orchestratord.state.redis_leases import RedisLeases
from orchestratord.state.redis_local import RETRY_S, LocalLogs
from orchestratord.state.redis_signals import Signals
from orchestratord.state.redis_tail import COUNT, Entry, Tail, Waiter, events_of, runs_of, stream_order
from orchestratord.state.shared import Abandoned, CatalogOp, PoolChange, ReapAction, Reaped, SharedState
from pool_manager.leases import Lease, LeaseStore

_EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}")
_END_FIELDS = ("decode_time_ms", "decode_ms")  # the store fills these in `end` events
_RECORD_SKIP = ("job_id", "text")
_PAGE = 500  # job hashes read per pipeline when listing jobs
# How long a reader waits for a queued job admitted here to start here before it waits in the shared
# read instead (which a start here interrupts too). It is let go at once when the job starts or ends
# here, and when another replica takes or ends it (the `elsewhere` signal): this bounds only a wait
# whose word was lost (pub/sub delivers at most once) or a job that stays queued this long.
_EXPECTED_S = 1.0
_EXPECTED_MAX = 4096  # jobs admitted here and not yet started or ended, remembered at most
# How long (ms, Redis's clock) a job that an instance admitted to run itself is left to that instance's
# dispatcher, so that its tokens reach its readers from the process that admitted it rather than
# through Redis. Another instance woken meanwhile (every finish with jobs queued wakes them all) takes
# the jobs behind it where their route has slots to spare; while it is the fair next job where it has
# not, only a job on another route with slots to spare (lua/take.lua), so shares stay fair. Past it
# (that instance is slow, or gone), any instance takes the job.
RESERVED_MS = 250
LOST_MESSAGE = (
    "the state backend (Redis) lost this job's data (it restarted empty, or evicted the job's keys); "
    "its events and status are gone: submit it again"
)
log = get_logger(__name__)
RESET_MESSAGE = (
    "the orchestrator replica running this job stopped renewing its lease (it died or lost Redis); retry"
)


class RedisStore:
    """StateStore (and SharedState) on Redis. Event ids are Redis Stream ids (`<ms>-<seq>`)."""

    def __init__(
        self,
        url: str,
        policy: QueuePolicy | None = None,
        *,
        retention_s: float = 600.0,
        options: RedisOptions | None = None,
        tenant_max_concurrent: Mapping[str, int] | None = None,
        wall: Callable[[], float] = time.time,
        owner: str | None = None,
        unread_within_s: float = 30.0,
    ) -> None:
        self.options = options or RedisOptions()
        # A `cancel_on_disconnect` job is due for cancellation this long after its admission unless a
        # reader attaches first, on any replica (`stream.attach_timeout_s`; recorded by `create`).
        self._unread_ms = round(unread_within_s * 1000)
        self.policy = policy or QueuePolicy()
        self.owner = owner or uuid.uuid4().hex
        self._retention_ms = round(retention_s * 1000)
        self._wall = wall
        self._limits = _json(dict(tenant_max_concurrent or {}))
        self._weights = _json(
            {"classes": dict(self.policy.class_weights), "tenants": dict(self.policy.tenant_weights)}
        )
        self._client = connect(url, self.options)
        self._reader = connect(url, self.options, blocking=True)
        prefix = tagged(self.options.key_prefix)  # one hash slot per deployment (redis_client.tagged)
        self._node = SlotNode.of(self._client, url, self.options, prefix)  # a cluster's slot node
        # Scripts and the request path's commands share one pipelined connection (redis_line).
        line_url = url if self._node is None else None
        self._scripts = Scripts(line_url, prefix, self.options.timeout_s, node=self._node)
        self._signals = Signals(self._reader, prefix, self.owner, self._elsewhere)
        self._leases = RedisLeases(
            self._scripts, self.options.lease_ttl_s, self.owner, started=self._started_with_lease
        )
        self.leases: LeaseStore = self._leases
        self._logs = LocalLogs(
            self._scripts,
            self.owner,
            claim_ttl_s=self.options.lease_ttl_s,
            renewed=lambda: self._leases.renewed,
            lost=_lost_event,
            wall=wall,
        )
        self._epoch: str | None = None  # the id of Redis's data as this instance last saw it
        self._tail = Tail(self._scripts, prefix, round(self.options.block_s * 1000))
        self._documents = Documents(self._client, prefix, self._node)
        # Jobs this instance admitted to run itself (`create` with wake_all=False), until their run
        # starts here or they end: a reader here waits for the local log rather than read Redis.
        self._expected: dict[str, asyncio.Event] = {}
        # The `started` event this instance wrote for such a job (as Redis holds it): its first reader
        # here is given it without reading Redis, then waits for the run.
        self._started: dict[str, LogEvent] = {}
        # The records of the jobs the last `take` or `take_several` took, read in the same script, for
        # the dispatcher's `get` of each that follows. Its `get` takes each away, and so does any change
        # of the job's state here (a change made elsewhere meanwhile is found by start.lua, which starts
        # only a job still queued and claimed by this instance).
        self._taken: dict[str, JobRecord] = {}
        # What starting a job with its slot's lease returned (lease_acquire.lua), for its run's `start`:
        # job -> (pool, replica, the start's reply, None if it did not start the job).
        self._leased: dict[str, tuple[str, str, Any]] = {}

    @property
    def shared(self) -> SharedState:
        """Other orchestrator replicas share this state: this store is also their `SharedState`."""
        return self

    def _key(self, name: str) -> str:
        return self._scripts.key(name)

    # -- job registry and admission -------------------------------------------------------------
    async def create(
        self,
        record: JobRecord,
        entry: QueueEntry,
        ticket: Callable[[], str] | None = None,
        *,
        wake_all: bool = True,
        most_ahead: int | None = None,
    ) -> Admitted | Rejected:
        if self._epoch is None:  # the data's epoch exists before this replica's first job
            await self.lost_since()
        p = self.policy
        # lua/common.lua expected_elsewhere, reserved_for_other
        expected = () if wake_all else ("expected_by", self.owner, "expected_until", RESERVED_MS)
        if not wake_all:
            self._signals.start()  # so that this instance hears if another takes it
        reply = await self._scripts.run(
            "create",
            _entry_json(entry),
            p.capacity,
            -1 if p.tenant_capacity is None else p.tenant_capacity,
            p.full_policy,
            "" if ticket is None else ticket(),  # asked always: whether places are held is known in Redis
            self._weights,
            "1" if wake_all else "0",
            self._unread_ms,
            -1 if most_ahead is None else most_ahead,
            *_record_fields(record),
            *expected,
        )
        if reply[0] == "rejected":
            place = Place(*(int(x) for x in reply[2])) if len(reply) > 2 else None
            return Rejected(cast(Any, reply[1]), p.full_policy, place)
        _, stored, evicted, (ahead, tokens_in, tokens_out) = reply
        if not wake_all:
            self._expect(record.job_id)
        return Admitted(
            _entry(stored),
            evicted=_entry(evicted) if evicted else None,
            place=Place(int(ahead), int(tokens_in), int(tokens_out)),
        )

    def _expect(self, job_id: str) -> None:
        if len(self._expected) >= _EXPECTED_MAX:  # taken elsewhere and never ended here: forgotten
            self._forget(next(iter(self._expected)))
        self._expected[job_id] = asyncio.Event()

    def _forget(self, job_id: str) -> asyncio.Event | None:
        self._started.pop(job_id, None)
        return self._expected.pop(job_id, None)

    def _arrived(self, job_id: str) -> None:
        """The job admitted here started here, or ended: its readers here stop waiting for it."""
        expected = self._forget(job_id)
        if expected is not None:
            expected.set()

    def _elsewhere(self, job_id: str | None) -> None:
        """Another instance took or ended a job admitted here to run here (None: perhaps some, while
        the signals were away): its readers here read it from Redis now."""
        if job_id is not None:
            self._arrived(job_id)
            return
        for expected in self._expected.values():
            expected.set()

    async def get(self, job_id: str) -> JobRecord | None:
        taken = self._taken.pop(job_id, None)
        if taken is not None:
            return taken
        fields, text = await self._scripts.pipeline(
            [("HGETALL", self._key(f"job:{job_id}")), ("GET", self._key(f"text:{job_id}"))]
        )
        return _record(job_id, fields, text or "") if fields else None

    async def jobs(self, states: frozenset[JobState], *, ended_after: float | None = None) -> list[JobRecord]:
        # Where each state's ids are indexed: the queue's entries, the claims of taken jobs (a taken job
        # is still `queued` until its run starts it) and the finished jobs awaiting their purge.
        wanted: list[Sequence[str | int]] = []
        if JobState.QUEUED in states or JobState.RUNNING in states:
            wanted += [("HKEYS", self._key("q:entries")), ("ZRANGE", self._key("alive"), 0, -1)]
        if any(state.terminal for state in states):  # `ended` is scored by the time each job ended
            since = "-inf" if ended_after is None else f"({ended_after!r}"
            wanted.append(("ZRANGEBYSCORE", self._key("ended"), since, "+inf"))
        ids = list(dict.fromkeys(job for found in await self._scripts.pipeline(wanted) for job in found))
        records: list[JobRecord] = []
        for start in range(0, len(ids), _PAGE):
            chunk = ids[start : start + _PAGE]
            stored = await self._scripts.pipeline([("HGETALL", self._key(f"job:{job}")) for job in chunk])
            found = (_record(job, fields, "") for job, fields in zip(chunk, stored, strict=True) if fields)
            records += [record for record in found if record.state in states]
        return records

    def _started_with_lease(self, lease: Lease, reply: Any) -> None:
        self._leased[lease.job_id] = (lease.pool_id, lease.replica_id, reply)

    async def start(self, job_id: str, *, pool_id: str, replica_id: str, engine: str) -> JobRecord | None:
        """The job's run starts here: mostly already done by its slot's lease, in the same call
        (`_started_with_lease`); else one call of its own (start.lua)."""
        self._taken.pop(job_id, None)
        leased = self._leased.pop(job_id, None)
        if leased is not None and leased[:2] == (pool_id, replica_id):
            reply = leased[2]
        else:
            reply = await self._scripts.run("start", job_id, self.owner, pool_id, replica_id, engine)
        if reply is None:
            return None
        entries, record, text = reply
        self._logs.open(job_id, events_of((event_id, _fields(flat)) for event_id, flat in entries))
        self._tail.nudge(self._key(f"log:{job_id}"))  # its readers here go on from the local log
        self._arrived(job_id)
        return _record(job_id, _fields(record), text)

    async def finish(
        self, job_id: str, state: JobState, name: str, data: Mapping[str, Any]
    ) -> LogEvent | None:
        self._taken.pop(job_id, None)
        self._leased.pop(job_id, None)
        payload = dict(data)
        counted = ""  # the engine's tokens_out, which wins over the token events counted
        if name == "end":
            for field in _END_FIELDS:
                payload.pop(field, None)
            tokens_out = payload.pop("tokens_out", None)
            counted = str(tokens_out) if isinstance(tokens_out, int) else ""
        self._arrived(job_id)
        running_here = self._logs.get(job_id) is not None
        # Only the replica running a job ends it successfully; anyone may cancel or fail it.
        owner = self.owner if state is JobState.SUCCEEDED else ""
        args: tuple[str | int, ...] = (
            job_id, state.value, name, _json(payload), self._retention_ms, owner,
            _text(payload.get("stop_reason")), _text(payload.get("code")), _text(payload.get("message")),
            counted,
        )  # fmt: skip
        batch = None  # the run's events first, then its end: a good end takes its last batch along
        if running_here and state is JobState.SUCCEEDED:
            batch = await self._logs.last_batch(job_id)
            if batch is not None:
                args += (batch.tokens, batch.last, batch.records, batch.text)
            reply = await self._finish_held(job_id, args, batch is not None)
        else:
            await self._logs.settle(job_id)
            reply = await self._scripts.run("finish", *args)
        if batch is not None:
            self._logs.written(job_id, batch, int(reply[3]))
        ended = LogEvent(reply[0], name, reply[1]) if reply[0] else None
        if reply[2]:  # the run's good end gave its slot back with it
            self._leases.given_back(job_id, reply[2])
        if running_here:
            if ended is None and not await self._scripts.call("EXISTS", self._key(f"job:{job_id}")):
                self._logs.lose(job_id)
            self._logs.end(job_id, ended)
        return ended

    async def _finish_held(self, job_id: str, args: tuple[str | int, ...], with_batch: bool) -> Any:
        """A run's good end (with its last batch), tried again while Redis is away, for as long as the
        job's claim lives; the local readers get the batch's events meanwhile."""
        failures = 0
        while True:
            try:
                return await self._scripts.run("finish", *args)
            except StateUnavailable:
                local = self._logs.get(job_id)
                if local is None or time.monotonic() >= self._logs.alive_until(local):
                    raise
                if with_batch:
                    self._logs.hold(job_id)
                if failures == 0:
                    log.warning("task_end_held", job_id=job_id)
                await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S) - 1)])
                failures += 1

    # -- idempotency keys ------------------------------------------------------------------------
    async def remember_idempotency(
        self, key: str, tenant: str, fingerprint: str, job_id: str, ttl_s: float
    ) -> IdempotencyRecord | None:
        ttl_ms = max(1, round(ttl_s * 1000))
        first = await self._scripts.run("idem_remember", f"{tenant}{SEP}{key}", job_id, fingerprint, ttl_ms)
        return None if first is None else IdempotencyRecord(first[0], first[1])

    async def forget_idempotency(self, key: str, tenant: str, job_id: str) -> None:
        await self._scripts.run("idem_forget", f"{tenant}{SEP}{key}", job_id)

    # -- sessions and budget ledgers -------------------------------------------------------------
    async def session_get(self, key: str) -> SessionRecord | None:
        record = await self._documents.get(f"sess:{key}", SessionRecord)
        return record if record is not None and record.expires_at > self._wall() else None

    async def session_update(
        self, key: str, change: Callable[[SessionRecord | None], SessionRecord | None]
    ) -> SessionRecord | None:
        def unexpired(current: SessionRecord | None) -> SessionRecord | None:
            return change(current if current is not None and current.expires_at > self._wall() else None)

        return await self._documents.update(f"sess:{key}", SessionRecord, unexpired, self._until)

    async def session_delete(self, key: str) -> bool:
        return await self.session_get(key) is not None and await self._documents.delete(f"sess:{key}")

    async def ledger_get(self, key: str) -> Ledger | None:
        return await self._documents.get(f"ledger:{key}", Ledger)

    async def ledger_update(self, key: str, change: Callable[[Ledger | None], Ledger]) -> Ledger:
        return cast(Ledger, await self._documents.update(f"ledger:{key}", Ledger, change))

    def _until(self, session: SessionRecord) -> int:
        return math.ceil((session.expires_at - self._wall()) * 1000)

    # -- the event log ---------------------------------------------------------------------------
    async def flush(self, job_id: str) -> None:
        """Wait until the events this instance's run handed over for `job_id` are written (or refused)."""
        await self._logs.settle(job_id)

    async def append(self, job_id: str, name: str, data: Mapping[str, Any]) -> LogEvent | None:
        body = _json(data)
        if self._logs.get(job_id) is not None:  # a job this instance runs: its local log (redis_local)
            if name == "started":  # dispatched before its admission announced it: `start` wrote it
                return None
            event = self._logs.add(job_id, name, body)
            if event is not None and self._logs.backlog(job_id):
                await self._logs.settle(job_id)
            return event
        event_id = await self._scripts.run("append", job_id, name, body)
        if event_id is None:
            return None
        event = LogEvent(event_id, name, body)
        if name == "started" and job_id in self._expected:
            self._started[job_id] = event
        return event

    async def append_each(self, events: Sequence[tuple[str, str, Mapping[str, Any]]]) -> int:
        """The queued jobs' events in one script call (append_each.lua); a job this instance runs takes
        its event into its local log, and a `started` event goes as `append` writes it."""
        appended = 0
        queued: list[str] = []  # job, name, data: append_each.lua's arguments
        for job_id, name, data in events:
            if name == "started" or self._logs.get(job_id) is not None:
                appended += await self.append(job_id, name, data) is not None
            else:
                queued += (job_id, name, _json(data))
        if queued:
            ids = await self._scripts.run("append_each", *queued)
            appended += sum(1 for event_id in ids if event_id is not None)
        return appended

    async def append_token(
        self, job_id: str, text: str, logprobs: Sequence[Mapping[str, Any]] | None = None
    ) -> bool:
        """Into the run's local log at once, to Redis behind it (`redis_local`): True while the job
        takes tokens from this instance, as far as it knows; a refusal comes with the next token."""
        extra = "" if logprobs is None else _json(logprobs)
        behind = self._logs.token(job_id, _json(text), text, extra)
        if behind is None:
            return False
        if behind:  # Redis is slower than the engine, or away: wait for it
            await self._logs.settle(job_id)
        return True

    async def read(self, job_id: str, after: str | None = None) -> AsyncIterator[LogEvent]:
        """The log after `after`, then each event as it comes, to the terminal event. A job this
        instance runs is read from its local log (`redis_local`), in the process; any other from Redis,
        and caught up, the reader waits in this instance's one shared blocking read (`redis_tail`), not
        on a connection of its own. Ends after the terminal event, or when the job has ended and
        everything after `after` has been read; a job Redis no longer holds ends with a STATE_LOST
        `error`."""
        async for batch in self._batches(job_id, after, runs=False):
            for event in cast(list[LogEvent], batch):
                yield event

    def read_batches(
        self, job_id: str, after: str | None = None
    ) -> AsyncIterator[Sequence[LogEvent | EventRun]]:
        """As `read`, a batch at a time: what the local log shows each time the reader looks, or one
        read from Redis, where each batch of a run comes whole, as it is stored (a reader that relays
        a job running elsewhere splits no batch into events)."""
        return self._batches(job_id, after, runs=True)

    async def _batches(
        self, job_id: str, after: str | None, *, runs: bool
    ) -> AsyncIterator[list[LogEvent | EventRun]]:
        # Never an empty list; the terminal event, if any, last (nothing follows it in a log).
        local = self._logs.get(job_id)
        started = self._started.get(job_id) if local is None and after is None else None
        if started is not None:  # admitted here to run here, and still queued: no need to read Redis
            yield [started]
            after = started.id
        if local is None:  # queued, or running elsewhere: from Redis, until its run starts here
            async for batch in self._read_shared(
                job_id, after, runs=runs, until_here=True, queued=started is not None
            ):
                yield batch
                if batch[-1].terminal:
                    return
                after = batch[-1].id
            local = self._logs.get(job_id)
            if local is None:  # it ended (or Redis lost it) without running here
                return
        async for events in local.read(after):
            yield cast(list[LogEvent | EventRun], events)
            if events[-1].terminal:
                return
            after = events[-1].id
        after = local.resume_from(after)  # it ended elsewhere: its end is in Redis
        async for batch in self._read_shared(job_id, after, runs=runs):
            yield batch

    async def run_over(self, job_id: str) -> None:
        await self._logs.settle(job_id)
        # Ended here, `finish` already closed the log with its end; ended elsewhere (or lost), this
        # closes it without one and its readers go on from Redis.
        self._logs.end(job_id, None)

    async def _read_shared(
        self,
        job_id: str,
        after: str | None,
        *,
        runs: bool,
        until_here: bool = False,
        queued: bool | None = None,
    ) -> AsyncIterator[list[LogEvent | EventRun]]:
        """The log from Redis, as lists of events (never empty; `runs`: a run's batch whole, as
        `redis_tail.runs_of` gives it), to the list that holds the terminal event; `until_here`: only
        until the job's run starts on this instance (the reader then goes on from the local log,
        which holds the same events with the same ids).
        `queued`: the reader was given the job's `started` from this instance, which wrote it (so it
        waits for the run here before it reads Redis)."""
        key = self._key(f"log:{job_id}")
        cursor = after or "0-0"
        waiter: Waiter | None = None
        # After the first read: whether the log holds nothing but `started` (the job is still queued, so
        # the reader may wait for its run to start here). A run elsewhere has written more.
        try:
            while True:
                if until_here and (
                    self._logs.get(job_id) is not None or (queued and await self._here_soon(job_id))
                ):
                    return
                batch = (
                    await self._xread(key, cursor, runs)
                    if waiter is None
                    else await self._next(waiter, key, cursor, runs)
                )
                if batch is None or (not batch and waiter is None):
                    # Nothing came (for a while, or on the first read): is the job still running?
                    state = await self._state(job_id)
                    if state != "live":  # its terminal event is written with its state
                        batch = await self._xread(key, cursor, runs)
                        if not batch:
                            if state == "gone" and cursor != "0-0":  # it had a log; now it has none
                                yield [_lost_event(job_id, _after(cursor))]
                            return
                    elif waiter is None:
                        waiter = self._tail.join(key, cursor)
                        batch = await self._xread(key, cursor, runs)  # what came before it joined
                    else:
                        continue
                if queued is None:
                    queued = bool(batch) and all(_is_started(event) for event in batch)
                else:
                    queued = False  # waited for it once already
                if batch:
                    cursor = batch[-1].id
                    yield batch
                    if batch[-1].terminal:  # nothing follows the terminal event in a log
                        return
        finally:
            if waiter is not None:
                self._tail.leave(key, waiter)

    async def _here_soon(self, job_id: str) -> bool:
        """Whether the run of a job admitted here to run here has started here, waiting up to
        `_EXPECTED_S` for it."""
        expected = self._expected.get(job_id)
        if expected is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_EXPECTED_S):
                    await expected.wait()
            self._forget(job_id)  # not started in time (taken elsewhere?): read Redis
        return self._logs.get(job_id) is not None

    async def _next(
        self, waiter: Waiter, key: str, cursor: str, runs: bool
    ) -> list[LogEvent | EventRun] | None:
        """The events after `cursor` that the shared read brings; None if none came in `block_s`."""
        if waiter.behind or waiter.paging:
            # It fell behind the shared read, which dropped batches for it: from now on the shared read
            # queues batches for it again, and it reads the log itself from where it is, page by page,
            # until a page is not full (then the queue holds the rest, and what it read twice is skipped).
            if waiter.behind:
                waiter.behind = False
                while not waiter.got.empty():
                    waiter.got.get_nowait()
            page = await self._xread_entries(key, cursor)
            waiter.paging = len(page) == COUNT
            return runs_of(page, cursor, whole=runs)
        if waiter.got.empty():
            try:
                entries = await asyncio.wait_for(waiter.got.get(), self.options.block_s)
            except TimeoutError:
                return None
        else:  # a batch came while the reader wrote the last: no wait to bound
            entries = waiter.got.get_nowait()
        return runs_of(entries, cursor, whole=runs)

    async def _xread(self, key: str, cursor: str, runs: bool) -> list[LogEvent | EventRun]:
        return runs_of(await self._xread_entries(key, cursor), cursor, whole=runs)

    async def _xread_entries(self, key: str, cursor: str) -> list[Entry]:
        reply: Any = await self._scripts.call("XREAD", "COUNT", COUNT, "STREAMS", key, cursor)
        return cast(list[Entry], reply[0][1]) if reply else []

    async def _state(self, job_id: str) -> str:
        """live, ended, or gone (Redis does not hold the job: restarted empty, or evicted it)."""
        state = await self._scripts.call("HGET", self._key(f"job:{job_id}"), "state")
        if state is None:
            return "gone"
        return "ended" if JobState(state).terminal else "live"

    def valid_event_id(self, event_id: str) -> bool:
        return _EVENT_ID.fullmatch(event_id) is not None

    async def beyond(self, job_id: str, event_id: str) -> bool:
        local = self._logs.get(job_id)
        if local is not None:
            return stream_order(event_id) > stream_order(local.events[-1].id)
        newest: Any = await self._scripts.call("XREVRANGE", self._key(f"log:{job_id}"), "+", "-", "COUNT", 1)
        if not newest:
            return True  # an empty log: no id is one of its events
        return stream_order(event_id) > stream_order(str(newest[0][0]))

    # -- the queue -------------------------------------------------------------------------------
    async def pending(self, now: float) -> Pending:
        keys, tenants, due = await self._scripts.pipeline(
            [
                ("HKEYS", self._key("q:keys")),
                ("HKEYS", self._key("q:tenants")),
                ("ZRANGEBYSCORE", self._key("q:deadlines"), "-inf", repr(now), "LIMIT", 0, 1),
            ]
        )
        return Pending(bool(keys), bool(due), tuple(keys), tuple(tenants))

    async def take(
        self,
        can_serve: Callable[[Route], bool],
        tenant_ok: Callable[[str], bool],
        batch_can_serve: Callable[[Route], bool] | None = None,
        pending: Pending | None = None,
        spare: Callable[[Route], bool] | None = None,
    ) -> QueueEntry | None:
        keys, tenants = await self._routes_and_tenants(pending)
        servable = [k for k in keys if can_serve(Route.decode(k))]
        batch = (
            servable if batch_can_serve is None else [k for k in servable if batch_can_serve(Route.decode(k))]
        )
        roomy = [] if spare is None else [k for k in servable if spare(Route.decode(k))]
        taken = await self._take(servable, [t for t in tenants if tenant_ok(t)], batch, roomy, 1, {})
        return taken[0] if taken else None

    async def take_several(
        self,
        count: int,
        budget: Callable[[Route], Sequence[tuple[str, int, int]]],
        tenant_ok: Callable[[str], bool],
        pending: Pending | None = None,
    ) -> list[QueueEntry]:
        keys, tenants = await self._routes_and_tenants(pending)
        slots = {k: budget(Route.decode(k)) for k in keys}
        servable = [k for k in keys if any(free > 0 for _, free, _ in slots[k])]
        batch = [k for k in servable if any(free > held for _, free, held in slots[k])]
        roomy = [k for k in servable if sum(free for _, free, _ in slots[k]) >= 2]
        budgets = {k: slots[k] for k in servable}
        return await self._take(servable, [t for t in tenants if tenant_ok(t)], batch, roomy, count, budgets)

    async def _routes_and_tenants(self, pending: Pending | None) -> tuple[list[str], list[str]]:
        """The routes and the tenants with queued jobs: as this round's first look saw them, if given."""
        if pending is not None:
            return list(pending.routes), list(pending.tenants)
        keys, tenants = await self._scripts.pipeline(
            [("HKEYS", self._key("q:keys")), ("HKEYS", self._key("q:tenants"))]
        )
        return keys, tenants

    async def _take(
        self,
        servable: list[str],
        allowed: list[str],
        batch: list[str],
        roomy: list[str],
        count: int,
        budgets: Mapping[str, Sequence[tuple[str, int, int]]],
    ) -> list[QueueEntry]:
        if not servable or not allowed:
            return []
        taken = await self._scripts.run(
            "take", self.owner, self._ttl_ms, self._weights, _json(servable), _json(allowed), self._limits,
            _json(batch), _json(roomy), count, _json(budgets),
        )  # fmt: skip
        self._taken.clear()  # only a round cut short (Redis went away: those jobs are reaped) leaves any
        entries = []
        for stored, fields, text in taken or ():
            entry = _entry(stored)
            self._taken[entry.job_id] = _record(entry.job_id, _fields(fields), text)  # for `get`, next
            entries.append(entry)
        return entries

    async def dequeue(self, job_id: str) -> QueueEntry | None:
        stored = await self._scripts.run("dequeue", job_id)
        return None if stored is None else _entry(stored)

    async def expire(self, now: float) -> list[QueueEntry]:
        """The expired entries in deadline order, then admission order (as the embedded queue gives
        them: Redis orders equal deadlines by job id)."""
        expired = [_entry(stored) for stored in await self._scripts.run("expire", repr(now))]
        return sorted(expired, key=lambda entry: (entry.deadline or 0.0, entry.seq))

    async def settle(self, tenant: str, priority: Priority, estimated: float, actual: float) -> None:
        delta = (actual - estimated) / self.policy.weight(tenant, priority)
        await self._scripts.run("settle", f"{tenant}{SEP}{priority}", repr(delta))

    async def queued(self) -> list[QueueEntry]:
        stored = await self._scripts.call("HVALS", self._key("q:entries"))
        return sorted((_entry(s) for s in stored), key=lambda e: e.seq)

    async def places(self) -> Mapping[str, Place]:
        flat = await self._scripts.run("places", self._weights)
        return {
            str(flat[i]): Place(int(flat[i + 1]), int(flat[i + 2]), int(flat[i + 3]))
            for i in range(0, len(flat), 4)
        }

    async def depths(self, tenant: str | None = None) -> Depths:
        flat = await self._scripts.run("depths", tenant or "")
        by_route: dict[Route, int] = {}
        first: dict[Route, int] = {}
        for i in range(0, len(flat), 3):
            route = Route.decode(_text(flat[i]))
            by_route[route] = int(flat[i + 1])
            for head in filter(None, _text(flat[i + 2]).split(SEP)):
                place = await self.place(head)
                if place is not None:
                    first[route] = min(place.ahead, first.get(route, place.ahead))
        return Depths(by_route, first)

    async def places_held(self) -> int:
        return int(await self._scripts.run("held", "", 0, 0))

    async def hold_place(self, ticket: str, due_in_s: float, hold_s: float) -> float:
        due_in = await self._scripts.run("held", ticket, round(due_in_s * 1000), round(hold_s * 1000))
        return float(due_in) / 1000

    async def place(self, job_id: str) -> Place | None:
        ahead, tokens_in, tokens_out = await self._scripts.run("position", job_id, self._weights)
        return None if int(ahead) < 0 else Place(int(ahead), int(tokens_in), int(tokens_out))

    # -- readers and cancel signals --------------------------------------------------------------
    async def attach(self, job_id: str) -> int:
        return int(await self._scripts.run("readers", job_id, 1, self.owner, self._ttl_ms, -1))

    async def open(self, job_id: str, tenant: str | None) -> JobRecord | None:
        flat = await self._scripts.run("open", job_id, tenant or "", self.owner, self._ttl_ms)
        return _record(job_id, _fields(flat), "") if flat else None

    async def detach(self, job_id: str) -> int:
        return int(await self._scripts.run("readers", job_id, -1, self.owner, self._ttl_ms, -1))

    async def leave(self, job_id: str, grace_s: float) -> int:
        ms = round(grace_s * 1000)
        return int(await self._scripts.run("readers", job_id, -1, self.owner, self._ttl_ms, ms))

    async def abandoned(self, grace_s: float) -> list[Abandoned]:
        dead, due = await self._scripts.run("abandoned", round(grace_s * 1000))
        for owner in dead:
            log.warning("replica_readers_dropped", replica=owner)
        pairs = zip(due[::2], due[1::2], strict=True)
        return [Abandoned(job_id, attached == "1") for job_id, attached in pairs]

    async def publish_cancel(self, job_id: str) -> None:
        await self._scripts.call("PUBLISH", self._signals.cancel_channel, job_id)

    def cancel_signals(self) -> AsyncIterator[str]:
        return self._signals.cancels()

    # -- shared by replicas (state.shared.SharedState) -------------------------------------------
    def wake_signals(self) -> AsyncIterator[bool]:
        return self._signals.wakes()

    async def reap(self, now: float) -> list[Reaped]:
        # (`now` is not sent: claims lapse, and a lost job ends, by Redis's clock, lua/reap.lua)
        await self.lost_since()  # every replica reaps: each sees it at once if Redis lost its data
        flat = await self._scripts.run("reap", self._retention_ms, self._weights, RESET_MESSAGE)
        triples = zip(flat[::3], flat[1::3], flat[2::3], strict=True)
        return [
            Reaped(job_id, cast(ReapAction, action), engine or None) for job_id, action, engine in triples
        ]

    async def requeue(self, job_id: str) -> bool:
        return await self._scripts.run("requeue", job_id, self.owner, self._weights) is not None

    async def lead(self, role: str, ttl_s: float) -> bool:
        return bool(await self._scripts.run("lead", role, self.owner, max(1, round(ttl_s * 1000))))

    async def announce(self, change: PoolChange) -> None:
        drains, models = self._key("pools:drain"), self._key("pools:model")
        record: list[Sequence[str | int | float]] = []
        if change.action == "drain":
            record.append(("HSET", drains, change.pool_id, repr(change.deadline_at)))
        elif change.action == "undrain":
            record.append(("HDEL", drains, change.pool_id))
        else:
            record.append(("HSET", models, change.pool_id, change.model or ""))
        message = _json({**dataclasses.asdict(change), "origin": self.owner})
        await self._scripts.pipeline([*record, ("PUBLISH", self._signals.pools_channel, message)])

    async def pool_changes(self) -> AsyncIterator[PoolChange]:
        async for message in self._signals.pool_changes():
            if message is None:  # (re)subscribed: what was recorded, missed or not
                for change in await self._recorded_pool_changes():
                    yield change
                continue
            fields = orjson.loads(message)
            if fields.pop("origin", None) != self.owner:
                yield PoolChange(**fields)

    async def _recorded_pool_changes(self) -> list[PoolChange]:
        try:
            drains, models = await self._scripts.pipeline(
                [("HGETALL", self._key("pools:drain")), ("HGETALL", self._key("pools:model"))]
            )
        except StateUnavailable:
            return []  # the subscription reconnects, and reads them then
        return [
            *(PoolChange(pool, "drain", deadline_at=float(at)) for pool, at in drains.items()),
            *(PoolChange(pool, "reload", model=model) for pool, model in models.items()),
        ]

    async def exchange_outlook(self, mine: str, max_age_s: float) -> list[str]:
        key = self._key("outlook")
        _, every = await self._scripts.pipeline(
            [("HSET", key, self.owner, f"{self._wall()!r} {mine}"), ("HGETALL", key)]
        )
        now = self._wall()
        fresh: list[str] = []
        stale: list[str] = []
        for owner, stamped in every.items():
            at, _, data = stamped.partition(" ")
            if now - float(at) <= max_age_s:
                fresh.append(data)
            else:
                stale.append(owner)
        if stale:  # replicas gone for a while: their entries go
            await self._scripts.call("HDEL", key, *stale)
        return fresh

    # -- prompt cache keys -----------------------------------------------------------------------
    def _cache_key(self, tenant: str, key: str) -> str:
        return self._key(f"ck:{len(tenant)}:{tenant}:{key}")  # the tenant's length: no two pairs meet

    async def cache_key_place(self, tenant: str, key: str) -> tuple[str, str] | None:
        placed = await self._scripts.call("GET", self._cache_key(tenant, key))
        if not placed:
            return None
        pool_id, _, replica_id = str(placed).partition("\n")
        return pool_id, replica_id

    async def cache_key_placed(
        self, tenant: str, key: str, pool_id: str, replica_id: str, ttl_s: float
    ) -> None:
        placed = f"{pool_id}\n{replica_id}"
        await self._scripts.call(
            "SET", self._cache_key(tenant, key), placed, "PX", max(1, round(ttl_s * 1000))
        )

    async def catalog_change(self, op: CatalogOp, *args: str) -> bool:
        return bool(await self._scripts.run("catalog", op, *args))

    async def catalog_version(self) -> int:
        return int(await self._scripts.call("GET", self._key("catalog:v")) or 0)

    async def catalog_entries(self) -> tuple[int, dict[str, str]]:
        version, entries = await self._scripts.pipeline(
            [("GET", self._key("catalog:v")), ("HGETALL", self._key("catalog"))]
        )
        return int(version or 0), dict(entries)

    async def take_rate(self, tenant: str, rate: float, burst: int) -> float:
        return float(await self._scripts.run("rate", tenant, repr(rate), burst))

    # -- housekeeping ----------------------------------------------------------------------------
    async def purge(self, now: float) -> int:
        return int(await self._scripts.run("purge", repr(now - self._retention_ms / 1000)))

    async def forget(self, job_id: str) -> bool:
        return bool(await self._scripts.run("forget", job_id))

    async def ping(self) -> bool:
        try:
            return bool(await self._scripts.call("PING"))
        except (StateUnavailable, RedisError):  # a health probe reports, it never raises
            return False

    async def lost_since(self) -> float | None:
        """Redis's data carry an id and the time they began (the `epoch` hash, made by the first replica
        to find none, before it admits any job): a job issued before that time and not found was
        held by data Redis has lost (restarted empty, or flushed). Whichever replica sees the id change
        says so in its log."""
        _, _, (epoch, since) = await self._scripts.pipeline(
            [
                ("HSETNX", self._key("epoch"), "id", uuid.uuid4().hex),
                ("HSETNX", self._key("epoch"), "since", repr(self._wall())),
                ("HMGET", self._key("epoch"), "id", "since"),
            ]
        )
        if self._epoch is not None and epoch != self._epoch:
            log.warning("state_backend_lost_data", since=float(since))
        self._epoch = epoch
        return float(since)

    async def aclose(self) -> None:
        await self._logs.aclose()
        await self._tail.aclose()
        await self._signals.aclose()
        await self._scripts.aclose()
        await self._client.aclose()
        await self._reader.aclose()
        if self._node is not None:
            await self._node.aclose()

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.options.lease_ttl_s * 1000))


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _fields(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _is_started(event: LogEvent | EventRun) -> bool:
    return type(event) is LogEvent and event.name == "started"


def _after(event_id: str) -> str:
    ms, seq = stream_order(event_id)
    return f"{ms}-{seq + 1}"


def _lost_event(job_id: str, event_id: str) -> LogEvent:
    """The `error` that ends the stream of a job Redis no longer holds."""
    return LogEvent(event_id, "error", _json(error_event(StateLost(LOST_MESSAGE))))


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _entry_json(entry: QueueEntry) -> str:
    """The entry as the queue's scripts store it: its fields but `seq` (stamped by the queue), the
    route encoded (the scripts key by it). Read off the fields directly: `dataclasses.asdict` deep-
    copies every value, 13 recursive calls for one entry."""
    fields = {name: getattr(entry, name) for name in _ENTRY_FIELDS}
    fields["route"] = entry.route.encode()
    return _json(fields)


def _entry(stored: str) -> QueueEntry:
    fields = orjson.loads(stored)
    return QueueEntry(**{**fields, "route": Route.decode(fields["route"])})


def _record_fields(record: JobRecord) -> list[str]:
    out: list[str] = []
    for name, _ in _STORED:
        value = getattr(record, name)
        if value is not None:
            out += [name, ("1" if value else "0") if isinstance(value, bool) else str(value)]
    return out


def _record(job_id: str, stored: Mapping[str, str], text: str) -> JobRecord:
    """A JobRecord from its hash. Values are converted by the field's declared type."""
    values: dict[str, Any] = {}
    for name, convert in _STORED:
        raw = stored.get(name)
        if raw:  # neither absent nor ""
            values[name] = convert(raw)
    return JobRecord(job_id=job_id, text=text, **values)


def _converter(declared: str) -> Callable[[str], Any]:
    if declared == "JobState":
        return JobState
    if declared.startswith("bool"):
        return "1".__eq__
    if declared.startswith("int"):
        return int
    if declared.startswith("float"):
        return float
    return str


# Each stored field of a JobRecord and how its hash value is read back (worked out once: a record
# is read a few times a job).
_STORED = tuple(
    (field.name, _converter(str(field.type)))
    for field in dataclasses.fields(JobRecord)
    if field.name not in _RECORD_SKIP
)
# A queue entry's stored fields (`_entry_json`).
_ENTRY_FIELDS = tuple(field.name for field in dataclasses.fields(QueueEntry) if field.name != "seq")
