"""The dispatcher: the one loop that moves jobs from the queue onto free slots and starts their runs.

Wake-ups come from admission, from finished runs, from other replicas (a shared backend's wake
signals) and from a periodic tick, which also runs housekeeping. Each job taken from the queue is
placed and leased (`placing.Placer`) before the next is taken, then run in its own task
(`execution.Execution`); on a shared backend a round takes several on one look at the queue. Cancel
signals arrive through the state store, from this or another replica, and close the engine request of
the run they name. A heartbeat renews the leases of the jobs this replica runs; on a shared backend a
replica that stops renewing them is taken for dead and its jobs are reaped by the others
(housekeeping).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, cast

import orjson

from orchestratord.core.capacity import can_serve, has_spare, slot_budget
from orchestratord.core.queue import QueueEntry
from orchestratord.core.route import Route
from orchestratord.core.tasks import JobState, TaskSpec, spec_from_dict
from orchestratord.endings import Endings, record_fields
from orchestratord.errors import Internal, OrchestratorError, StateUnavailable
from orchestratord.execution import Execution
from orchestratord.housekeeping import Housekeeper
from orchestratord.logs import get_logger
from orchestratord.outlook import Outlook
from orchestratord.placing import Placer
from orchestratord.reachability import Reachability
from orchestratord.runs import Running, Runs
from orchestratord.state.base import EventLog, JobQueue, JobRecord, JobRegistry, Pending, Readers
from orchestratord.state.shared import SharedState
from pool_manager.registry import PoolRegistry
from pool_manager.snapshot import PoolSnapshot
from worker_adapters.base import WorkerAdapter

log = get_logger(__name__)

TAKES_PER_LOOK = 8  # jobs a shared backend's dispatch round takes on one look at the queue


class _Store(JobRegistry, EventLog, JobQueue, Readers, Protocol):
    """The roles dispatch uses."""


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    tick_s: float = 0.25
    tenant_max_concurrent: Mapping[str, int] = field(default_factory=dict)
    heartbeat_s: float = 2.0  # lease renewal; a shared backend's lease TTL is a few heartbeats
    holdback: float = 0.0  # the share of each pool's slots kept for interactive jobs
    cancel_timeout_s: float = 5.0  # longest wait for an engine to take a cancel


class Dispatcher:
    def __init__(
        self,
        store: _Store,
        registry: PoolRegistry,
        *,
        runs: Runs,
        outlook: Outlook,
        endings: Endings,
        placer: Placer,
        execution: Execution,
        housekeeper: Housekeeper,
        reachability: Reachability,
        config: DispatchConfig | None = None,
        shared: SharedState | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._registry = registry
        self._runs = runs
        self._outlook = outlook
        self._endings = endings
        self._housekeeper = housekeeper
        self._reachability = reachability
        self._config = config or DispatchConfig()
        self._shared = shared
        self._clock = clock
        self._wall = wall
        self._placer = placer
        self._execution = execution
        self._wake = asyncio.Event()
        # Whether a slot or a tenant's turn coming free elsewhere may let this replica take a job: its
        # last look left queued jobs and some slot or turn held its take back (`_unbound`).
        self._held_back = True
        self._tasks: list[asyncio.Task[None]] = []
        self._cancels: set[asyncio.Task[None]] = set()
        self._accepting = True

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        loops = [self._loop(), self._cancel_listener(), self._heartbeat()]
        if self._shared is not None:
            loops.append(self._wake_listener(self._shared))
        self._tasks = [asyncio.create_task(loop) for loop in loops]

    def wake(self) -> None:
        self._wake.set()

    def pause(self) -> None:
        """Take no more jobs from the queue (draining); running jobs and cancel signals carry on."""
        self._accepting = False

    async def stop(self) -> None:
        """Stop the loops, every run and every engine cancel still under way, and wait for them: the
        app closes the adapters and the store right after."""
        self._accepting = False
        tasks = [*self._tasks, *self._runs.tasks(), *self._cancels]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []

    # -- the loop --------------------------------------------------------------------------------
    async def _loop(self) -> None:
        last_housekeeping = self._clock()
        while self._accepting:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that arrives as the
            # wake-up completes (stop() right after a run's wake()), and the loop would never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.tick_s):
                    await self._wake.wait()
            woken = self._wake.is_set()
            self._wake.clear()
            if self._clock() - last_housekeeping >= self._config.tick_s:  # even when wake-ups never pause
                last_housekeeping = self._clock()
                await self._housekeeper.run_once()
            try:
                await self._dispatch_ready(woken)
                self._reachability.report(True)
            except StateUnavailable:
                self._held_back = True
                self._reachability.report(False)
            except Exception:  # task root: log loudly, keep dispatching
                self._held_back = True
                log.error("dispatch_loop_error", exc_info=True)

    async def _dispatch_ready(self, woken: bool = True) -> None:
        """Take queued jobs onto free slots until none is left that a free slot serves, or for one tick
        (then the loop runs housekeeping, which a long backlog must not hold off, and comes straight
        back). `woken`: a job was queued, a slot freed or the last round left jobs; else the tick came
        round (an idle replica's look then asks the queue alone)."""
        # On a shared backend each round trip waits for a turn of a busy loop as well: after one look,
        # up to TAKES_PER_LOOK jobs are taken in one call (take.lua spends the free slots the look
        # counted as it takes them), then each is placed and leased on those counts less the slots
        # this round leased (what other replicas leased meanwhile shows at the next look; a slot they
        # took first makes a lease fail, and the job goes back to the queue, as between any look and
        # lease).
        started, until = 0, self._clock() + self._config.tick_s
        while self._accepting:
            if started and self._clock() >= until:
                # Jobs are left: let the runs started and the requests waiting have a turn (an in-memory
                # store answers without one), run housekeeping, then straight back.
                self.wake()
                await asyncio.sleep(0)
                return
            async with self._placer.exclusive():
                # One look first: a round with nothing queued (most wake-ups at light load) ends here.
                # On a shared backend the pools' slot counts are asked in the same round trip.
                pending, snapshots = await self._look(woken or started > 0)
                if not pending.queued:
                    self._held_back = False
                    return
                if pending.expired:
                    await self._housekeeper.expire()  # a job past its deadline is never taken
                if snapshots is None:
                    snapshots = await self._outlook.refresh()
                if self._shared is not None:  # several in one round trip, each spending a slot
                    budget = partial(slot_budget, pools=snapshots, holdback=self._config.holdback)
                    entries = await self._shared.take_several(
                        TAKES_PER_LOOK, budget, self._tenant_ok, pending
                    )
                    self._held_back = not entries and not self._unbound(pending, budget)
                else:
                    entry = await self._store.take(
                        partial(_servable, snapshots, 0.0),
                        self._tenant_ok,
                        self._batch(snapshots),
                        pending,
                        spare=partial(_spare, snapshots),
                    )
                    entries = [] if entry is None else [entry]
                if not entries:
                    return
                # Every job taken is placed and started (or given back), draining or not: it has left
                # the queue. Fewer than asked for, or a lease lost: the next look tells what is left.
                started += await self._dispatch(entries, snapshots)

    def _unbound(self, pending: Pending, budget: Callable[[Route], Sequence[tuple[str, int, int]]]) -> bool:
        """Whether no slot and no tenant's turn held back a take that found nothing: every route with
        queued jobs has two free slots or more, one of them beyond those held back for interactive work
        (so take.lua passed over no job for want of a slot, nor a reserved head for want of a spare
        one), and no tenant with queued jobs has a concurrency limit. What such a take left is reserved
        for the replicas that admitted it; a slot freed elsewhere changes nothing for this one."""
        if any(tenant in self._config.tenant_max_concurrent for tenant in pending.tenants):
            return False
        for key in pending.routes:
            pools = budget(Route.decode(key))
            if sum(free for _, free, _ in pools) < 2 or not any(free > held for _, free, held in pools):
                return False
        return True

    def _batch(self, snapshots: Sequence[PoolSnapshot]) -> Callable[[Route], bool] | None:
        """Which routes a batch job may take: not the slots held back for interactive work."""
        return partial(_servable, snapshots, self._config.holdback) if self._config.holdback else None

    async def _look(self, busy: bool) -> tuple[Pending, Sequence[PoolSnapshot] | None]:
        """The queue's first look; with a shared backend and when `busy`, the pools' snapshots too,
        asked at once (both on the one Redis connection, in one write: a round trip less per job
        taken). A tick's look on an idle replica mostly finds nothing queued: it asks the queue alone
        (housekeeping's pass has just refreshed the snapshots for the gauges)."""
        if self._shared is None or not busy:
            return await self._store.pending(self._wall()), None
        looks = await asyncio.gather(
            self._store.pending(self._wall()), self._outlook.refresh(), return_exceptions=True
        )
        for look in looks:
            if isinstance(look, BaseException):
                raise look
        pending, snapshots = looks
        return cast(Pending, pending), cast(list[PoolSnapshot], snapshots)

    def _tenant_ok(self, tenant: str) -> bool:
        limit = self._config.tenant_max_concurrent.get(tenant)
        return limit is None or self._runs.of_tenant(tenant) < limit

    async def _dispatch(self, entries: Sequence[QueueEntry], snapshots: Sequence[PoolSnapshot]) -> int:
        """Place and lease the jobs just taken from the queue, and start their runs; how many started.
        Whatever goes wrong here ends the job it concerns: it has left the queue, and nothing else
        would ever end it."""
        taken: list[tuple[QueueEntry, TaskSpec, float, JobRecord]] = []
        for entry in entries:
            record: JobRecord | None = None
            try:
                record = await self._store.get(entry.job_id)
                if record is None or record.state is not JobState.QUEUED:
                    continue
                spec = spec_from_dict(orjson.loads(record.spec))
                admitted_mono = self._clock() - max(0.0, self._wall() - record.created_at)
                self._housekeeper.forget(spec.job_id)
                taken.append((entry, spec, admitted_mono, record))
            except StateUnavailable:
                raise  # the shared backend is away: the claims expire and a replica reaps the jobs
            except Exception as exc:  # the job has left the queue: a bug here must still end it, loudly
                log.error(
                    "dispatch_failed", error=type(exc).__name__, exc_info=True, **_entry_fields(entry, record)
                )
                await self._dispatch_failed(entry, exc)
        if not taken:
            return 0
        # Placed on the snapshots the jobs were taken with (the queue saw a free slot there for each,
        # so placement finds it), and leased before the next look, so that it counts these slots.
        try:
            jobs = [(spec, entry.route) for entry, spec, _, _ in taken]
            placed = await self._placer.place_several(jobs, snapshots)
        except StateUnavailable:
            raise
        except Exception as exc:  # as above, for every job of the round
            for entry, _, _, record in taken:
                log.error(
                    "dispatch_failed", error=type(exc).__name__, exc_info=True, **_entry_fields(entry, record)
                )
                await self._dispatch_failed(entry, exc)
            return 0
        started = 0
        for (entry, spec, admitted_mono, record), assigned in zip(taken, placed, strict=True):
            if assigned is None:  # back in the queue (a lease lost) or ended: the next read tells
                continue
            try:
                self._outlook.taken(entry)
                self._execution.start(spec, entry, admitted_mono, assigned, self.wake)
                started += 1
            except Exception as exc:  # as above
                log.error(
                    "dispatch_failed", error=type(exc).__name__, exc_info=True, **_entry_fields(entry, record)
                )
                await self._dispatch_failed(entry, exc)
        return started

    async def _dispatch_failed(self, entry: QueueEntry, exc: Exception) -> None:
        self._runs.drop(entry.job_id)
        with contextlib.suppress(StateUnavailable):  # an unreleased shared lease expires by itself
            await self._registry.release(entry.job_id)
            if entry.unit == "tokens":  # it never ran: its flow is not charged for it
                await self._store.settle(entry.tenant, entry.priority, entry.cost, 0.0)
        failed = (
            exc
            if isinstance(exc, OrchestratorError)  # one that says what went wrong (`spec_from_dict`)
            else Internal(
                "internal error while dispatching the job", retriable=bool(getattr(exc, "retriable", False))
            )
        )
        await self._endings.fail(entry.job_id, failed)

    # -- cancel ----------------------------------------------------------------------------------
    async def _cancel_listener(self) -> None:
        """Close the engine request of each job of this replica that ends from outside its run. Each
        cancel runs in its own task, so a slow or failing engine never holds up the others."""
        async for job_id in self._store.cancel_signals():
            run = self._runs.get(job_id)
            if run is None or run.adapter is None:
                continue  # not running here, or not submitted yet: its start finds the job ended
            task = asyncio.create_task(self._cancel_run(job_id, run, run.adapter))
            self._cancels.add(task)
            task.add_done_callback(self._cancels.discard)

    async def _cancel_run(self, job_id: str, run: Running, adapter: WorkerAdapter) -> None:
        try:
            async with asyncio.timeout(self._config.cancel_timeout_s):
                await adapter.cancel(job_id)
            return
        except TimeoutError:
            log.warning(
                "engine_cancel_failed", job_id=job_id, pool_id=run.pool_id, replica_id=run.replica_id,
                error=f"no answer within {self._config.cancel_timeout_s} s",
            )  # fmt: skip
        except Exception as exc:  # task root: one engine's failure is logged, never spreads
            log.warning(
                "engine_cancel_failed", job_id=job_id, pool_id=run.pool_id, replica_id=run.replica_id,
                error=type(exc).__name__, exc_info=True,
            )  # fmt: skip
        # The engine did not take the cancel: stop the run from this side, which closes its request.
        if run.task is not None and not run.task.done() and self._runs.get(job_id) is run:
            run.task.cancel()

    # -- replicas ----------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """Renew the leases (and a shared backend's claims) of the jobs this replica runs."""
        while True:
            await asyncio.sleep(self._config.heartbeat_s)
            try:
                await self._registry.leases.renew(self._runs.job_ids())
            except StateUnavailable:
                self._reachability.report(False)
            except Exception:  # task root: a heartbeat that stops would get live jobs reaped
                log.error("heartbeat_error", exc_info=True)

    async def _wake_listener(self, shared: SharedState) -> None:
        """Another replica queued a job, or ended one while jobs were queued. A slot or a turn freed
        wakes this dispatcher only when one held its last look back: otherwise every finish anywhere
        would cost each idle replica a round (a look and a take) that finds only jobs reserved for the
        replicas that admitted them (a lapsed reservation waits for the next tick's look)."""
        async for work in shared.wake_signals():
            if work or self._held_back:
                self.wake()


def _entry_fields(entry: QueueEntry, record: JobRecord | None) -> dict[str, Any]:
    """A queued job's log fields, from its record when there is one."""
    if record is not None:
        return record_fields(record, engine_version=None)
    return {"job_id": entry.job_id, "tenant": entry.tenant, "priority": entry.priority, "tokens_out": 0}


def _servable(snapshots: Sequence[PoolSnapshot], holdback: float, route: Route) -> bool:
    return can_serve(route, snapshots, holdback)


def _spare(snapshots: Sequence[PoolSnapshot], route: Route) -> bool:
    return has_spare(route, snapshots)
