"""Periodic work of the dispatcher: dead replicas' jobs, deadlines, unservable jobs, queue positions
and gauges, retention. Runs from the dispatch loop every tick."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestratord.core.queue import QueueEntry
from orchestratord.core.tasks import JobState
from orchestratord.errors import StateUnavailable
from orchestratord.logs import get_logger
from orchestratord.metrics import NONE
from orchestratord.state.shared import SharedState

if TYPE_CHECKING:
    from orchestratord.dispatch import Dispatcher

log = get_logger(__name__)


@dataclass(slots=True)
class _Published:
    position: int | None = None
    predicted: int | None = None
    at: float = 0.0


class Housekeeper:
    """Owned by one Dispatcher; reads and moves its state, never dispatches."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._d = dispatcher
        self._clock = clock
        self._wall = wall
        self._published: dict[str, _Published] = {}

    def forget(self, job_id: str) -> None:
        """The job left the queue: stop tracking what was published for it."""
        self._published.pop(job_id, None)

    async def _reap(self, shared: SharedState) -> None:
        """End (or queue again) the jobs of replicas that stopped renewing their leases."""
        for reaped in await shared.reap(self._wall()):
            if reaped.action != "gone":
                log.warning("task_reaped", job_id=reaped.job_id, action=reaped.action, engine=reaped.engine)
            if reaped.action == "reset":
                self._d.metrics.tasks_rejected.labels(
                    engine=reaped.engine or NONE, reason="WORKER_RESET"
                ).inc()

    async def run_once(self) -> None:
        try:
            if self._d.shared is not None:
                await self._reap(self._d.shared)
            await self.expire()
            await self._d.end_unservable()  # a safety net: drains and reloads end these at once
            await self._publish_positions()
            await self._d.store.purge(self._wall())
        except StateUnavailable:
            self._d.state_reachable(False)
        except Exception:  # task root
            log.error("housekeeping_error", exc_info=True)

    def _gauge_queue(self, queued: list[QueueEntry]) -> None:
        """queue_depth per pool and class; a waiting job counts toward the first pool that serves it."""
        self._d.queue_depth = len(queued)
        counts: dict[tuple[str, str, str, str], int] = {}
        for snap in self._d.snapshots:
            for priority in ("interactive", "batch"):
                counts[(snap.engine, snap.engine_version, snap.pool_id, priority)] = 0
        for entry in queued:
            key = (*self._d.pool_labels(entry.model), entry.priority)
            counts[key] = counts.get(key, 0) + 1
        for (engine, version, pool_id, priority), n in counts.items():
            self._d.metrics.queue_depth.labels(
                engine=engine, engine_version=version, pool_id=pool_id, priority=priority
            ).set(n)

    async def expire(self) -> None:
        for entry in await self._d.store.expire(self._wall()):
            record = await self._d.store.get(entry.job_id)
            done = await self._d.store.finish(
                entry.job_id,
                JobState.FAILED,
                "error",
                {
                    "code": "DEADLINE_UNMET",
                    "message": "the job's deadline passed before a slot could start it",
                    "retriable": False,
                },
            )
            if done is None or record is None:
                continue
            engine, version, pool_id = self._d.pool_labels(entry.model)
            self._d.metrics.tasks_rejected.labels(engine=engine, reason="DEADLINE_UNMET").inc()
            self._d.metrics.deadline_missed(entry.priority)
            log.warning(
                "task_failed", code="DEADLINE_UNMET", job_id=entry.job_id, tenant=entry.tenant,
                priority=entry.priority, session_id=record.session_id, model_ref=record.model_ref,
                correlation_id=record.correlation_id, engine=engine, engine_version=version, pool_id=pool_id,
                tokens_out=0, queue_time_ms=round((self._wall() - record.created_at) * 1000),
            )  # fmt: skip

    async def _publish_positions(self) -> None:
        """A `metrics` event for each waiting job whose position or prediction changed (≤ 1/s)."""
        now = self._clock()
        queued = await self._d.store.queued()
        await self._d.refresh()
        self._gauge_queue(queued)
        if self._d.shared is not None and not await self._d.shared.lead("positions", ttl_s=2.0):
            return  # one replica publishes positions for the shared queue
        for entry in queued:
            seen = self._published.setdefault(entry.job_id, _Published(at=now))
            if now - seen.at < 1.0:
                continue
            position = await self._d.store.position(entry.job_id)
            if position is None:
                continue
            predicted = self._d.predict(entry.model, position)
            if (position, predicted) != (seen.position, seen.predicted):
                seen.position, seen.predicted, seen.at = position, predicted, now
                await self._d.store.append(
                    entry.job_id,
                    "metrics",
                    {"queue_position": position, "predicted_start_ms": predicted, "queue_depth": len(queued)},
                )
        live = {e.job_id for e in queued}
        for job_id in [j for j in self._published if j not in live]:
            del self._published[job_id]
