"""The logs of the jobs this instance runs, kept in the process and written to Redis behind the run.

A job's run starts with what its log holds in Redis (`started` and the queue's `metrics`, read by
the `start` script); from then on every event the run produces (tokens, progress, tool calls) gets its
id here, `<ms>-<seq>` after the newest id of the log, and goes into the local log at once. The same
events, with the same ids, reach Redis behind the run (`append_events.lua`), in order, each batch
taking everything that arrived while the previous one was on its way, and stored as one stream entry
(the batch's records under its last event's id: state/redis_tail.py `events_of` reads them back), so
Redis does one `XADD` per batch, not per token. The batches of all the jobs this instance runs that
are ready together go in one script call (`_Writer`), so at a few hundred paced tokens a second the
calls are counted by the round trips, not by the tokens. Readers on this
instance are served from the local log, never through Redis: each event as soon as Redis holds it
(one batch's round trip later), so that they read exactly what a reader on another replica, or a
reconnect with `Last-Event-ID` on any, reads, even when the job is canceled elsewhere meanwhile.

The terminal event is the one thing written to Redis first: whoever ends the job (this run, a cancel
on any replica, a reaper) does it there, in one step with the state, and the local log takes the
event Redis answered (or closes without it, and its readers go on reading from Redis). A run that ends
well does not wait for a batch of its last events before its end: once the batch on its way (if any)
is written, what is still pending goes with the end, in the same script call (`last_batch`).

Redis away: a batch that cannot be written is held and tried again as it was (its reply may have
been lost after Redis wrote it: the script then finds its last id written and skips it), while the
run goes on streaming to its local readers, who then get each event at once, for as long as the job's
claim lives (`lease_ttl_s` from the last time this instance reached Redis); past that another
replica may have reaped the job, and the run gets `StateUnavailable` with its next event. The job
gone from Redis (restarted empty, keys evicted): the local log ends with a retriable `STATE_LOST`
error, and the run learns it with its next event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

from redis.exceptions import RedisError

from orchestratord.core.tasks import RS, US, LogEvent
from orchestratord.errors import StateUnavailable
from orchestratord.logs import get_logger
from orchestratord.state.redis_client import Scripts
from orchestratord.state.redis_tail import past, stream_order

log = get_logger(__name__)

MAX_PENDING = 8192  # events of one job waiting for Redis; past that the run waits for its batch
RETRY_S = (0.05, 0.1, 0.2, 0.5, 1.0)  # between attempts to write to Redis while it is away

Status = Literal["open", "closed", "lost"]


@dataclass(frozen=True, slots=True)
class Batch:
    """Events of one job on their way to Redis, as one stream entry: `records` (each event's id,
    name and data joined by US, the events joined by RS), under `last`, the newest event's id;
    `text`, the text their tokens add; `tokens`, the job's tokens with them."""

    last: str
    count: int
    records: str
    text: str
    tokens: int


@dataclass(slots=True, eq=False)
class LocalLog:
    """One running job's log in this process. `events` is the whole log as this instance knows it;
    `status`: open (the run writes to it), closed (it takes no more from this instance: ended, or the
    claim is gone) or lost (Redis no longer holds the job)."""

    job_id: str
    events: list[LogEvent]
    ms: int  # the newest id, as the pair it orders by
    seq: int
    tokens: int  # the next token event's index
    reached: float  # monotonic: when Redis last took this log's writes (or started the job)
    pending: list[str] = field(default_factory=list)  # the record of each event not yet batched
    texts: list[str] = field(default_factory=list)  # the text they add
    retry: Batch | None = None  # a batch Redis did not take (it is away): sent again, as it is
    written: str = "0-0"  # the newest id Redis holds
    sent: int = 0  # events[:sent] are in Redis (the rest are pending)
    visible: int = 0  # the events readers are given: those Redis holds, or all while Redis is away
    held: bool = False  # Redis is away: the batch is held, and readers get every event at once
    ending: bool = False  # the run has ended: what is pending goes with its end (`LocalLogs.last_batch`)
    flushing: asyncio.Task[None] | None = None
    status: Status = "open"
    error: BaseException | None = None  # Redis was away for longer than the claim lives
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def next_id(self, now_ms: int) -> str:
        if now_ms > self.ms:
            self.ms, self.seq = now_ms, 0
        else:
            self.seq += 1
        return f"{self.ms}-{self.seq}"

    def push(self, event: LogEvent, *, show: bool = True) -> None:
        self.events.append(event)
        if show:
            self.show(len(self.events))

    def show(self, upto: int) -> None:
        if upto > self.visible:
            self.visible = upto
            self.wake()

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def changed(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    async def read(self, after: str | None) -> AsyncIterator[list[LogEvent]]:
        """The events after `after`, then those that come, as lists (what is visible each time the
        reader looks; never empty), until the log closes (then the reader goes on from Redis:
        `resume_from`). The reader stops at the terminal event: nothing follows it in a log."""
        # `after` may lie past what is visible here yet (a reader that read Redis before the batch's
        # reply reached this instance, then came here): skipped by id, whenever it becomes visible.
        i = 0
        mark = None if after is None else stream_order(after)
        while True:
            if i < self.visible:
                batch, i = self.events[i : self.visible], self.visible
                if mark is not None:
                    batch = past(batch, mark)
                    if batch:
                        mark = None
                if batch:
                    yield batch
                continue
            if self.status != "open":
                return
            await self.changed()

    def resume_from(self, cursor: str | None) -> str | None:
        """Where a reader of this (closed) log goes on in Redis: at most the newest id Redis took from
        this instance, so the event that ended the job elsewhere is read whatever its id."""
        if cursor is None or stream_order(cursor) <= stream_order(self.written):
            return cursor
        return self.written


class _Writer:
    """One `append_events` call at a time for every job of this instance: the batches handed over
    while a call is on its way go together in the next one. Each batch's caller gets its job's reply
    (1, 0 or -1), or the call's error."""

    def __init__(self, scripts: Scripts, owner: str) -> None:
        self._scripts = scripts
        self._owner = owner
        self._waiting: list[tuple[str, Batch, asyncio.Future[int]]] = []
        self._task: asyncio.Task[None] | None = None

    async def append(self, job_id: str, batch: Batch) -> int:
        reply = asyncio.get_running_loop().create_future()
        self._waiting.append((job_id, batch, reply))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        answer: int = await reply
        return answer

    async def _run(self) -> None:
        while self._waiting:
            calls, self._waiting = self._waiting, []
            args: list[str | int] = []
            for job_id, batch, _ in calls:
                args += [job_id, batch.tokens, batch.last, batch.records, batch.text]
            try:
                replies = await self._scripts.run("append_events", self._owner, *args)
            except BaseException as exc:  # each caller holds its batch and tries again (or stops)
                for *_, reply in calls:
                    if not reply.done():
                        reply.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (*_, reply), answer in zip(calls, replies, strict=True):
                if not reply.done():
                    reply.set_result(int(answer))


class LocalLogs:
    """The local logs of the jobs this instance runs, and the writer that takes them to Redis."""

    def __init__(
        self,
        scripts: Scripts,
        owner: str,
        *,
        claim_ttl_s: float,
        renewed: Callable[[], float],
        lost: Callable[[str, str], LogEvent],
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scripts = scripts
        self._owner = owner
        # Less a margin: the claim's time in Redis counts from a little before its reply came here.
        self._claim_ttl_s = claim_ttl_s * 0.9
        self._renewed = renewed  # monotonic: the heartbeat's last renewal of this instance's claims
        self._lost = lost  # the STATE_LOST `error` event with a given id
        self._wall = wall
        self._clock = clock
        self._logs: dict[str, LocalLog] = {}
        self._writer = _Writer(scripts, owner)

    def get(self, job_id: str) -> LocalLog | None:
        return self._logs.get(job_id)

    def open(self, job_id: str, events: list[LogEvent]) -> None:
        """The job's run starts here, with what its log holds in Redis (a failover keeps its log)."""
        if job_id in self._logs:
            return
        ms, seq = stream_order(events[-1].id)
        tokens = sum(1 for event in events if event.name == "token")
        self._logs[job_id] = LocalLog(
            job_id,
            events,
            ms,
            seq,
            tokens,
            self._clock(),
            written=events[-1].id,
            sent=len(events),
            visible=len(events),
        )

    def add(self, job_id: str, name: str, data: str, text: str = "") -> LogEvent | None:
        """Append one event of the run: its id now, Redis later. None if the job takes no more from
        this instance (the log is then forgotten); raises StateUnavailable once Redis has been away
        for longer than the job's claim lives."""
        local = self._logs.get(job_id)
        return None if local is None else self._add(local, name, data, text)

    def _add(self, local: LocalLog, name: str, data: str, text: str) -> LogEvent | None:
        job_id = local.job_id
        if local.status != "open" or local.error is not None:
            self.end(job_id, None)
            if local.error is not None:
                raise local.error
            return None
        event = LogEvent(local.next_id(int(self._wall() * 1000)), name, data)
        local.pending.append(f"{event.id}{US}{name}{US}{data}")
        if text:
            local.texts.append(text)
        local.events.append(event)  # `push`, a call less a token
        if local.held:
            local.show(len(local.events))
        if local.flushing is None:
            local.flushing = asyncio.create_task(self._flush(local))
        return event

    def token(self, job_id: str, text_json: str, text: str, logprobs_json: str) -> bool | None:
        """A `token` event with the next index (the run's only writer of tokens is this instance).
        None if the job takes no more from this instance; else whether Redis is behind the run
        (`backlog`), told here so that a token costs one lookup of its log."""
        local = self._logs.get(job_id)
        if local is None:
            return None
        data = f'{{"t":{text_json},"i":{local.tokens}'
        data += f',"logprobs":{logprobs_json}}}' if logprobs_json else "}"
        if self._add(local, "token", data, text) is None:
            return None
        local.tokens += 1
        return len(local.pending) >= MAX_PENDING

    def backlog(self, job_id: str) -> bool:
        """Redis is slower than the run (or away): its run should wait for the batch on its way."""
        local = self._logs.get(job_id)
        return local is not None and len(local.pending) >= MAX_PENDING

    async def _flush(self, local: LocalLog) -> None:
        """Write what is pending, batch after batch; a batch Redis cannot take now is held and tried
        again until the claim would have expired."""
        failures = 0
        while local.status == "open" and (local.retry is not None or (local.pending and not local.ending)):
            batch = local.retry or _batch(local)
            try:
                reply = await self._writer.append(local.job_id, batch)
            except (StateUnavailable, RedisError) as exc:
                local.retry = batch  # held, ahead of what comes meanwhile
                _hold(local)
                if self._clock() >= self.alive_until(local):
                    local.error = exc if isinstance(exc, StateUnavailable) else StateUnavailable(str(exc))
                    log.warning("task_state_backend_gone", job_id=local.job_id, held=batch.count)
                    break
                if failures == 0:
                    log.warning("task_events_held", job_id=local.job_id, error=type(exc).__name__)
                await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S) - 1)])
                failures += 1
                continue
            local.retry = None
            if failures:
                log.info("task_events_written", job_id=local.job_id, after_attempts=failures + 1)
                failures = 0
            self._written(local, batch, int(reply))
        local.flushing = None
        local.wake()

    def written(self, job_id: str, batch: Batch, answer: int) -> None:
        """Redis answered the run's last batch (with its end: finish.lua)."""
        local = self._logs.get(job_id)
        if local is not None:
            self._written(local, batch, answer)

    def hold(self, job_id: str) -> None:
        """Redis did not take the run's last batch (it is away): the local readers stream on without it."""
        local = self._logs.get(job_id)
        if local is not None:
            _hold(local)

    def _written(self, local: LocalLog, batch: Batch, answer: int) -> None:
        """Redis answered `batch` (`append_batch` in common.lua): 1, it holds the events, and the readers
        get them; 0, the job takes no more from this instance; -1, Redis does not hold the job."""
        local.reached = self._clock()
        if answer > 0:
            local.held = False
            local.written = batch.last
            local.sent += batch.count
            local.show(local.sent)
        elif answer < 0:
            self.lose(local.job_id)
        else:
            local.status = "closed"

    def alive_until(self, local: LocalLog) -> float:
        """Monotonic time until which this instance's claim on the job lives without Redis."""
        return max(local.reached, self._renewed()) + self._claim_ttl_s

    async def last_batch(self, job_id: str) -> Batch | None:
        """The run ended well: once the batch on its way (or held) is written, what is still pending,
        as the batch that goes with the job's end in one call (finish.lua); None when nothing is
        pending, or the log takes no more from this instance."""
        local = self._logs.get(job_id)
        if local is None:
            return None
        local.ending = True
        await self.settle(job_id)
        if local.status != "open" or local.error is not None or not local.pending:
            return None
        return _batch(local)

    async def settle(self, job_id: str) -> None:
        """Wait until what the run handed over is written (held while Redis is away, within the claim)."""
        local = self._logs.get(job_id)
        while local is not None and local.flushing is not None:
            await asyncio.shield(local.flushing)

    def end(self, job_id: str, terminal: LogEvent | None) -> None:
        """The job ended: its terminal event (as Redis wrote it) goes to the local readers; without one
        (it ended elsewhere, or is gone) they go on from Redis."""
        local = self._logs.pop(job_id, None)
        if local is None:
            return
        if terminal is not None:  # Redis holds everything before it (`finish` settles first)
            local.written = terminal.id
            local.push(terminal)
        if local.status == "open":
            local.status = "closed"
        local.wake()

    def lose(self, job_id: str) -> None:
        """Redis no longer holds the job: its local readers get a STATE_LOST `error`, and the run
        learns with its next event that the job takes no more (it stops, and its slot comes free)."""
        local = self._logs.get(job_id)
        if local is None or local.status == "lost":
            return
        local.status = "lost"
        local.pending.clear()
        local.retry = None
        log.warning("task_state_lost", job_id=job_id)
        local.push(self._lost(job_id, local.next_id(int(self._wall() * 1000))))

    async def aclose(self) -> None:
        """Write what is still waiting (a stopping instance's last events)."""
        for job_id in list(self._logs):
            await self.settle(job_id)
        self._logs.clear()


def _hold(local: LocalLog) -> None:
    """Redis did not take a batch of `local` (it is away): its readers stream on without Redis."""
    local.held = True
    local.show(len(local.events))


def _batch(local: LocalLog) -> Batch:
    """What is pending of `local`, as the next batch (the newest id given is its last event's)."""
    records, local.pending = local.pending, []
    texts, local.texts = local.texts, []
    return Batch(f"{local.ms}-{local.seq}", len(records), RS.join(records), "".join(texts), local.tokens)
