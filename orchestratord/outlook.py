"""What this replica knows of its pools' capacity, and what it predicts from it.

The latest pool snapshots, the measured service times, the queue's depth; from them the capacity
serving a route, a queued job's predicted start, and the pool a waiting job is counted under. The
dispatcher refreshes and feeds it; admission, idempotency, housekeeping and metrics read it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Sequence

from orchestratord.core.capacity import capacity_for
from orchestratord.core.prediction import Capacity, ServiceTimes, predict_start_ms
from orchestratord.core.route import Route
from orchestratord.runs import Runs
from pool_manager.registry import PoolRegistry
from pool_manager.snapshot import PoolSnapshot

ERROR_SAMPLES = 256  # the most recent jobs whose predicted and measured waits are compared
MIN_SAMPLES = 10  # fewer say too little for a probability


class Outlook:
    def __init__(
        self, registry: PoolRegistry, runs: Runs, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._registry = registry
        self._runs = runs
        self._clock = clock
        self._times = ServiceTimes()
        self._snapshots: list[PoolSnapshot] = []
        self._queue_depth = 0
        self._promised: dict[str, float] = {}  # job id -> the wait (s) predicted at its admission
        self._ratios: deque[float] = deque(maxlen=ERROR_SAMPLES)  # measured wait / predicted wait

    async def refresh(self) -> list[PoolSnapshot]:
        self._snapshots = await self._registry.snapshot()
        return self._snapshots

    @property
    def snapshots(self) -> Sequence[PoolSnapshot]:
        """The pools as the last `refresh` saw them."""
        return self._snapshots

    @property
    def queue_depth(self) -> int:
        return self._queue_depth

    def queued(self, depth: int) -> None:
        """The queue's depth, as housekeeping last counted it."""
        self._queue_depth = depth

    def served(self, pool_id: str, seconds: float) -> None:
        """A run on `pool_id` held its slot `seconds` and ended well: a service time to learn from."""
        self._times.observe(pool_id, seconds)

    def capacity(self, route: Route) -> Capacity:
        return capacity_for(route, self._snapshots, self._times, self._runs.ages(self._clock()))

    def predict(self, route: Route, position: int) -> int | None:
        return predict_start_ms(position, self.capacity(route))

    def down_for(self, route: Route) -> tuple[float, str]:
        """How long no replica of the pools serving `route` (not draining) could take its job, and the
        replicas' last errors; (0, "") while one can."""
        pools = [
            p for p in self._registry.pools.values()
            if route.model in p.spec.models and route.admits(p.spec.id) and not p.draining
        ]  # fmt: skip
        if not pools:
            return 0.0, ""  # no pool serves it at all: `unservable` says so
        down = min(self._registry.down_for(p.spec.id, route.model) for p in pools)
        if down <= 0:
            return 0.0, ""
        errors = [
            f"{p.spec.id}/{r.replica_id}: {r.breaker.reason if r.breaker.state == 'open' else r.last_error}"
            for p in pools
            for r in p.replicas.values()
            if r.down_since is not None
        ]
        return down, "; ".join(errors)

    # -- how good the predictions are --------------------------------------------------------------
    def promised(self, job_id: str, predicted_ms: int | None) -> None:
        """A job was admitted with this predicted start: compare it with its start (`started`)."""
        if predicted_ms:
            self._promised[job_id] = predicted_ms / 1000

    def started(self, job_id: str, waited_s: float) -> None:
        """A job left the queue after `waited_s`: one more measured error of the predictions."""
        predicted = self._promised.pop(job_id, None)
        if predicted is not None:
            self._ratios.append(waited_s / predicted)

    def keep_promises(self, queued: Collection[str]) -> None:
        """Forget the predictions of jobs that left the queue without starting (canceled, failed)."""
        for job_id in [j for j in self._promised if j not in queued]:
            del self._promised[job_id]

    def on_time(self, predicted_ms: int | None, remaining_s: float) -> float | None:
        """The probability that a job predicted to start in `predicted_ms` starts within `remaining_s`
        (its deadline), from how the last measured waits compared with their predictions: the share of
        them that, scaled to this prediction, fall within the deadline. None until enough jobs with a
        prediction have started."""
        if remaining_s < 0:
            return 0.0
        if predicted_ms == 0:
            return 1.0
        if predicted_ms is None or len(self._ratios) < MIN_SAMPLES:
            return None
        predicted = predicted_ms / 1000
        within = sum(1 for ratio in self._ratios if predicted * ratio <= remaining_s)
        return round(within / len(self._ratios), 3)

    def labels(self, route: Route) -> tuple[str, str, str]:
        """(engine, engine_version, pool_id) a waiting job is counted under: the first pool serving it."""
        for pool in sorted(self._registry.pools.values(), key=lambda p: p.spec.id):
            if route.model in pool.spec.models and route.admits(pool.spec.id):
                return pool.spec.engine, pool.engine_version, pool.spec.id
        return "none", "unknown", "none"
