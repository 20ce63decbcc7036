"""Periodic work beside dispatch: dead replicas' jobs, deadlines, queued jobs no pool can take any
more, queue positions and gauges, retention (and giving back the memory it held). The dispatch loop
runs it every tick; it is handed the state it needs (the store's roles, the outlook, the way jobs
end), never the dispatcher."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from orchestratord.core.capacity import can_serve, unservable
from orchestratord.core.prediction import Capacity
from orchestratord.core.queue import Place, QueueEntry
from orchestratord.core.route import Route
from orchestratord.endings import Endings
from orchestratord.errors import DEFAULT_RETRY_AFTER_MS, DeadlineUnmet, PoolUnavailable, StateUnavailable
from orchestratord.logs import get_logger
from orchestratord.memory import HeapTrim
from orchestratord.metrics import Metrics
from orchestratord.outlook import Outlook
from orchestratord.presence import Presence
from orchestratord.reachability import Reachability
from orchestratord.state.base import EventLog, JobQueue, JobRegistry
from orchestratord.state.shared import SharedState

log = get_logger(__name__)
OUTLOOK_EVERY_S = 1.0  # how often a replica shares its measurements and runs (shared state)


class _Store(JobRegistry, EventLog, JobQueue, Protocol):
    """The roles housekeeping uses."""


@dataclass(slots=True)
class _Published:
    position: int | None = None
    predicted: int | None = None
    on_time: float | None = None
    at: float = 0.0


class Housekeeper:
    def __init__(
        self,
        store: _Store,
        outlook: Outlook,
        endings: Endings,
        metrics: Metrics,
        reachability: Reachability,
        *,
        shared: SharedState | None = None,
        presence: Presence | None = None,
        max_wait_s: Mapping[str, float] | None = None,
        unready_limit_s: float | None = None,
        heap: HeapTrim | None = None,
        holdback: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._max_wait = dict(max_wait_s or {})
        self._unready_limit = unready_limit_s
        self._store = store
        self._outlook = outlook
        self._endings = endings
        self._metrics = metrics
        self._reachability = reachability
        self._shared = shared
        self._presence = presence
        self._heap = heap
        self._holdback = holdback  # queue.holdback: the slots a batch job may not take
        self._clock = clock
        self._wall = wall
        self._published: dict[str, _Published] = {}
        self._shared_at = -math.inf  # when this replica last exchanged its outlook

    def forget(self, job_id: str) -> None:
        """The job left the queue: stop tracking what was published for it."""
        self._published.pop(job_id, None)

    async def run_once(self) -> None:
        try:
            if self._shared is not None:
                for reaped in await self._shared.reap(self._wall()):
                    self._endings.reaped(reaped)
                await self._share_outlook()
                await self._sweep_unread()
            await self.expire()
            await self.end_unservable()  # a safety net: drains and reloads end these at once
            # One read of the queue a pass serves both: with a thousand queued, each read is a
            # thousand entries decoded on every replica four times a second.
            queued = await self._store.queued()
            ended = await self.end_stuck(queued)
            await self._publish_positions([e for e in queued if e.job_id not in ended] if ended else queued)
            purged = await self._store.purge(self._wall())
            if self._heap is not None:
                self._heap.purged(purged)
        except StateUnavailable:
            self._reachability.report(False)
        except Exception:  # task root
            log.error("housekeeping_error", exc_info=True)

    async def _share_outlook(self) -> None:
        """Once a second: publish what this replica measured and runs, and predict from every
        replica's (`Outlook.absorb`)."""
        assert self._shared is not None
        if self._clock() - self._shared_at < OUTLOOK_EVERY_S:
            return
        self._shared_at = self._clock()
        mine = orjson.dumps(self._outlook.export(self._wall())).decode()
        parts = await self._shared.exchange_outlook(mine, max_age_s=10 * OUTLOOK_EVERY_S)
        self._outlook.absorb([orjson.loads(part) for part in parts], self._wall())

    async def _sweep_unread(self) -> None:
        """Shared state: cancel-on-disconnect is the deployment's (`Presence.sweep`)."""
        if self._presence is not None:
            await self._presence.sweep()

    async def expire(self) -> None:
        """End the queued jobs whose deadline passed before a slot could start them."""
        now = self._wall()
        for entry in await self._store.expire(now):
            missed = DeadlineUnmet("the job's deadline passed before a slot could start it")
            if await self._endings.fail(entry.job_id, missed, pool_id=self._outlook.labels(entry.route)[2]):
                self._metrics.deadline_missed(entry.priority)
                self._outlook.missed(entry.job_id, now - entry.enqueued_at)

    async def end_unservable(self, cause: str | None = None, *, everywhere: bool = False) -> int:
        """End every queued job that no pool can ever take any more (each pool that fits it drains, or
        no longer serves its model) with a retriable POOL_UNAVAILABLE; `cause` names the pool whose
        drain or reload made it so. Returns how many ended.

        With a shared backend, only for an operator's change (`everywhere`: it applies to every
        replica, and the replica it reached ends the shared queue's jobs); the periodic pass leaves the
        shared queue alone, since another replica's pools may differ for a moment."""
        if self._shared is not None and not everywhere:
            return 0
        snapshots = await self._outlook.refresh()
        ended = 0
        routes = (await self._store.depths()).by_route
        verdicts = {route: verdict for route in routes if (verdict := unservable(route, snapshots, cause))}
        if not verdicts:
            return 0  # every route with queued jobs has a pool: no walk of the queue
        for entry in await self._store.queued():
            verdict = verdicts.get(entry.route)
            if verdict is None:
                continue
            pool_id, message = verdict
            gone = PoolUnavailable(message, retry_after_ms=DEFAULT_RETRY_AFTER_MS, pool_id=pool_id)
            if await self._endings.fail(entry.job_id, gone, queued_only=True):
                ended += 1
        return ended

    async def end_stuck(self, queued: Sequence[QueueEntry] | None = None) -> set[str]:
        """End the queued jobs that waited longer than their class may (`queue.max_wait_s`), or whose
        model no replica could serve for `queue.unready_limit_s` (all down, unready, or their breakers
        open), with a retriable POOL_UNAVAILABLE naming why. `queued`: the queue as the caller just
        read it (else read here). Returns the jobs that ended."""
        ended: set[str] = set()
        if not self._max_wait and self._unready_limit is None:
            return ended
        now = self._wall()
        if queued is None:
            queued = await self._store.queued()
        down = {route: self._outlook.down_for(route) for route in {e.route for e in queued}}
        unready = math.inf if self._unready_limit is None else self._unready_limit
        if not self._max_wait and all(seconds <= unready for seconds, _ in down.values()):
            return ended  # no limit reached: no walk of the queue
        for entry in queued:
            model = entry.route.model
            limit = self._max_wait.get(entry.priority)
            outwaited = limit is not None and now - entry.enqueued_at > limit
            if outwaited:
                why = (
                    f"the job waited {limit:g} s in the queue, the most its class ({entry.priority}) may "
                    f"(queue.max_wait_s), {self._held_up(entry)}; retry later"
                )
            else:
                seconds, errors = down[entry.route]
                if self._unready_limit is None or seconds <= self._unready_limit:
                    continue
                why = (
                    f"no replica serving {model!r} has been able to take a job for {seconds:.0f} s "
                    f"(queue.unready_limit_s is {self._unready_limit:g}): {errors}; retry later"
                )
            gone = PoolUnavailable(why, retry_after_ms=DEFAULT_RETRY_AFTER_MS)
            pool_id = self._outlook.labels(entry.route)[2]
            if await self._endings.fail(entry.job_id, gone, pool_id=pool_id, queued_only=True):
                ended.add(entry.job_id)
                if outwaited:  # its promise missed (a job ended for its pools being down did not)
                    self._outlook.missed(entry.job_id, now - entry.enqueued_at)
        return ended

    def _held_up(self, entry: QueueEntry) -> str:
        """What kept a job in the queue past its class's limit: no slot it may take came free (a batch
        job may not take those held back for interactive work), or slots were free and the dispatchers
        had not reached it (more jobs admitted than they could start in time)."""
        route = entry.route
        holdback = self._holdback if entry.priority == "batch" else 0.0
        if not can_serve(route, self._outlook.snapshots, holdback):
            return f"without a slot serving {route.model!r} coming free"
        pace = self._outlook.dispatch_per_s()
        paced = "" if pace is None else f", starting {pace:.0f} jobs a second,"
        return f"with slots serving {route.model!r} free, but the dispatchers{paced} had not reached it"

    def _gauge_queue(self, queued: list[QueueEntry]) -> None:
        """queue_depth per pool and class; a waiting job counts toward the first pool that serves it."""
        self._outlook.queued(len(queued))
        self._outlook.queue_work(queued)
        counts: dict[tuple[str, str, str, str], int] = {}
        for snap in self._outlook.snapshots:
            for priority in ("interactive", "batch"):
                counts[(snap.engine, snap.engine_version, snap.pool_id, priority)] = 0
        for (route, priority), n in Counter((e.route, e.priority) for e in queued).items():
            key = (*self._outlook.labels(route), priority)  # the labels once per route, not per job
            counts[key] = counts.get(key, 0) + n
        for (engine, version, pool_id, priority), n in counts.items():
            self._metrics.queue_depth.labels(
                engine=engine, engine_version=version, pool_id=pool_id, priority=priority
            ).set(n)

    async def _publish_positions(self, queued: list[QueueEntry]) -> None:
        """The queue's gauges, and a `metrics` event for each waiting job whose position or prediction
        changed (≤ 1/s); `queued`, the queue as this pass read it."""
        now = self._clock()
        await self._outlook.refresh()
        self._gauge_queue(queued)
        self._metrics.places_held.set(await self._store.places_held())
        if queued and (self._shared is None or await self._shared.lead("positions", ttl_s=2.0)):
            await self._publish(queued, now)  # one replica publishes positions for the shared queue
        live = {e.job_id for e in queued}
        self._outlook.keep_promises(live)
        for job_id in [j for j in self._published if j not in live]:
            del self._published[job_id]

    async def _publish(self, queued: list[QueueEntry], now: float) -> None:
        """The events go in one call (`append_each`): in a queue of a thousand, most jobs' places move
        every second, and a call each held a loaded replica's pass (and its dispatcher) up for seconds."""
        places: Mapping[str, Place] | None = None  # read once per pass, for every job, when one is due
        events: list[tuple[str, str, Mapping[str, object]]] = []
        caps: dict[Route, Capacity] = {}  # the same for every job of a route in one pass
        for entry in queued:
            seen = self._published.setdefault(entry.job_id, _Published(at=now))
            if now - seen.at < 1.0:
                continue
            if places is None:
                places = await self._store.places()
            place = places.get(entry.job_id)
            if place is None:
                continue
            position = place.ahead
            cap = caps.get(entry.route)
            if cap is None:
                cap = caps[entry.route] = self._outlook.capacity(entry.route)
            predicted = self._outlook.predict(entry.route, place, cap)
            on_time = None
            if entry.deadline is not None:
                on_time = self._outlook.on_time(predicted, entry.deadline - self._wall())
            if (position, predicted, on_time) != (seen.position, seen.predicted, seen.on_time):
                seen.position, seen.predicted, seen.on_time, seen.at = position, predicted, on_time, now
                data: dict[str, object] = {
                    "queue_position": position, "predicted_start_ms": predicted, "queue_depth": len(queued),
                }  # fmt: skip
                if on_time is not None:
                    data["on_time_probability"] = on_time
                events.append((entry.job_id, "metrics", data))
        if events:
            await self._store.append_each(events)
