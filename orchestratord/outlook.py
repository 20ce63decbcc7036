"""What this replica knows of its pools' capacity, and what it predicts from it.

The latest pool snapshots, the measured service times, the queue's depth; from them the capacity
serving a route, a queued job's predicted start, and the pool a waiting job is counted under. The
dispatcher refreshes and feeds it; admission, idempotency, housekeeping and metrics read it.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from orchestratord.core.capacity import can_serve, capacity_for, serving_pools
from orchestratord.core.prediction import (
    Capacity,
    DispatchRate,
    ServiceTimes,
    dispatch_wait_ms,
    predict_start_ms,
)
from orchestratord.core.queue import Place, QueueEntry, QueuePolicy, QueueShape
from orchestratord.core.route import Route
from orchestratord.core.tasks import TaskSpec
from orchestratord.core.work import Work, WorkRates
from orchestratord.runs import Runs
from pool_manager.registry import PoolRegistry
from pool_manager.snapshot import PoolSnapshot

ERROR_SAMPLES = 256  # the most recent jobs whose predicted and measured waits are compared
MIN_SAMPLES = 10  # fewer say too little for a probability
# below this (s) a prediction's error is measured by its lateness alone: a start predicted in 2 ms that
# came in 60 ms is 30 times late, but that ratio says nothing about a start predicted in 2 s
SCALES_FROM_S = 0.1


class Outlook:
    def __init__(
        self,
        registry: PoolRegistry,
        runs: Runs,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        releases_age_s: float = 0.0,
        releases_exact: bool = False,
    ) -> None:
        self._registry = registry
        # How long the release times of a route's busy slots, once worked out, are reused (taken down
        # by the time passed since): they walk every job running in the deployment, and admission asks
        # for them with every request. 0: worked out at every call. `releases_exact` (this replica's
        # runs are all there are: the embedded backend): reused only while no run started, moved or
        # ended and nothing was learned meanwhile, so that what a prediction reads stays current.
        self._releases_age = releases_age_s
        self._releases_exact = releases_exact
        self._learned = 0  # counts what changes release times besides the runs: measures, the queue
        # route -> (when, the runs' version and `_learned` then, its capacity then)
        self._releases: dict[Route, tuple[float, tuple[int, int], Capacity]] = {}
        self._runs = runs
        self._clock = clock
        self._times = ServiceTimes()
        self._own = WorkRates()  # what this replica measured
        self._rates = self._own  # what it predicts from: with shared state, every replica's (`absorb`)
        self._remote: dict[str, list[float]] = {}  # pool_id -> when other replicas' runs end (wall s)
        self._wall = wall
        self._id = uuid.uuid4().hex
        self._queued_s: dict[Route, float] = {}  # the mean expected service of each route's queued jobs
        self._snapshots: list[PoolSnapshot] = []
        self._refreshed = 0.0  # when (clock) `_snapshots` were taken
        self._queue_depth = 0
        self._queued: Collection[QueueEntry] = ()  # the queue as housekeeping last read it
        self._since: list[QueueEntry] = []  # the jobs this replica admitted since
        self._taken: list[QueueEntry] = []  # the jobs this replica's dispatcher took since
        self._shape: QueueShape | None = None  # of both, built when first asked for
        self._dispatch = DispatchRate()  # how fast this replica starts queued jobs while the queue has any
        self._starts = 0  # the runs this replica started, ever
        # (clock, starts, the jobs free slots could take) at the last read that found any
        self._read: tuple[float, int, set[str]] | None = None
        self._unstarted: set[str] = set()  # taken from the queue here, not started yet
        self._others_dispatch = 0.0  # the other replicas' paces, summed (shared state: `absorb`)
        self._others_unstarted = 0  # the jobs the others took and have not started
        self._promised: dict[str, float] = {}  # job id -> the wait (s) predicted at its admission
        self._ratios: deque[float] = deque(maxlen=ERROR_SAMPLES)  # measured wait / predicted wait
        self._late: deque[float] = deque(maxlen=ERROR_SAMPLES)  # measured wait - predicted wait (s)
        self._predicted: deque[float] = deque(maxlen=ERROR_SAMPLES)  # the predicted waits (s)
        self._stretch: tuple[float, float] | None = None  # `assured`'s lateness and ratio, until a start

    async def refresh(self, max_age_s: float = 0.0) -> list[PoolSnapshot]:
        """The pools now; or as the last refresh saw them, if that was at most `max_age_s` ago."""
        if max_age_s > 0 and self._snapshots and self._clock() - self._refreshed <= max_age_s:
            return self._snapshots
        self._snapshots = await self._registry.snapshot()
        self._refreshed = self._clock()
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

    def served(
        self,
        pool_id: str,
        seconds: float,
        *,
        prompt_tokens: int,
        first_token_s: float | None,
        tokens: int,
        decode_s: float,
    ) -> None:
        """A run on `pool_id` held its slot `seconds` and ended well: a service time, and the rates of
        its work (`core.work`), to learn from."""
        self._learned += 1
        self._times.observe(pool_id, seconds)
        self._own.observe(
            pool_id,
            prompt_tokens=prompt_tokens,
            first_token_s=first_token_s,
            tokens=tokens,
            decode_s=decode_s,
        )

    def stopped(self, model: str, tenant: str, tokens: int) -> None:
        """A job stopped on its own (not at its limit) after `tokens`: a length to expect of the next."""
        self._own.observe_length(model, tenant, tokens)

    def expected_tokens(self, spec: TaskSpec) -> int:
        return self._rates.expected_tokens(spec.model_ref, spec.tenant, spec.max_tokens, spec.expected_tokens)

    def work(self, spec: TaskSpec, entry: QueueEntry) -> Work:
        return Work(spec.tokens_in_estimate, entry.tokens_out or spec.max_tokens, spec.max_tokens)

    def queue_work(self, queued: Collection[QueueEntry]) -> None:
        """The queued jobs, as housekeeping last read them: each route's mean expected service (over
        the pools serving it whose rates are known) is what a job behind them waits per job ahead."""
        self._queued, self._since, self._taken, self._shape = queued, [], [], None
        self._learned += 1
        servable = {route for route in {e.route for e in queued} if can_serve(route, self._snapshots)}
        self._pace({e.job_id for e in queued if e.route in servable})
        totals: dict[Route, list[float]] = {}
        serving: dict[Route, list[PoolSnapshot]] = {}  # looked up once per route, not per job
        shapes = Counter((e.route, e.tokens_in, e.tokens_out) for e in queued if e.tokens_out)
        for (route, tokens_in, tokens_out), count in shapes.items():  # once per kind of job
            pools = serving.get(route)
            if pools is None:
                pools = serving[route] = serving_pools(route, self._snapshots)
            service = self._service(pools, Work(tokens_in, tokens_out, tokens_out))
            if service is not None:
                total = totals.setdefault(route, [0.0, 0.0])
                total[0] += service * count
                total[1] += count
        self._queued_s = {route: total / n for route, (total, n) in totals.items()}

    def place_if_admitted(self, entry: QueueEntry, policy: QueuePolicy) -> Place:
        """The place `entry` would take were it admitted now, in the queue as housekeeping last read
        it (at most a tick ago) with the jobs this replica admitted and took since: no walk of the
        queue per admission (`core.queue.QueueShape`). What other replicas did since shows at the
        next read."""
        if self._shape is None:
            self._shape = QueueShape([*self._queued, *self._since])
            for gone in self._taken:
                self._shape.remove(gone)
        return self._shape.place(entry, policy)

    def admitted(self, entry: QueueEntry) -> None:
        """This replica queued `entry`: count it in `place_if_admitted` until the next read."""
        self._since.append(entry)
        if self._shape is not None:
            self._shape.add(entry)

    def taken(self, entry: QueueEntry) -> None:
        """This replica's dispatcher took `entry` from the queue: no longer queued, but still ahead of
        every queued job until its run starts."""
        self._taken.append(entry)
        self._unstarted.add(entry.job_id)
        if self._shape is not None:
            self._shape.remove(entry)

    # -- the dispatchers' pace -----------------------------------------------------------------------
    def _pace(self, waiting: set[str]) -> None:
        """At each read of the queue, given the queued jobs that free slots could take: the runs this
        replica started since the last read, over the time since, if one of those jobs was already
        waiting then (`core.prediction.DispatchRate`). Such a job waited through the interval, so the
        starts were all the deployment could do: a queue that ran dry meanwhile (a job admitted just
        before a read and taken just after it) would give the arrival rate, and a queue waiting for
        slots says nothing of the pace (the slots' prediction covers it). Measured where a queued job's
        wait ends, so that whatever delays a start counts: the dispatch rounds, a busy event loop, the
        shared backend's round trips. Jobs taken and not started yet are pruned to the runs alive."""
        now = self._clock()
        if self._read is not None:
            since, starts, before = self._read
            if not before.isdisjoint(waiting):
                self._dispatch.observe(now, self._starts - starts, now - since)
        self._read = (now, self._starts, waiting) if waiting else None
        self._unstarted &= set(self._runs.job_ids())

    def dispatch_per_s(self) -> float | None:
        """How many queued jobs a second the deployment's replicas start between them while jobs that
        free slots could take wait (this replica's measurement, plus the others' as they last shared
        them); None before any has been measured."""
        total = (self._dispatch.per_s(self._clock()) or 0.0) + self._others_dispatch
        return total or None

    def unstarted(self) -> int:
        """The jobs the deployment's dispatchers took from the queue and have not started yet: a queued
        job waits for them too (this replica's now, the others' as they last shared them)."""
        return len(self._unstarted) + self._others_unstarted

    def _service(self, pools: Sequence[PoolSnapshot], work: Work) -> float | None:
        """The expected service of `work` on the pools that serve it (the mean over those whose rates
        are known), or None."""
        known = [s for p in pools if (s := self._rates.service(p.pool_id, work)) is not None]
        return sum(known) / len(known) if known else None

    def capacity(self, route: Route) -> Capacity:
        """The capacity of the pools serving `route`: their slots as the last `refresh` saw them; the
        release times of the busy ones as worked out at most `releases_age_s` ago (shared state: a
        tick, as stale as the slots it may predict from; the embedded backend: while they hold), less the
        time since."""
        now = self._clock()
        kept = self._releases.get(route)
        state = (self._runs.version, self._learned)
        if (
            kept is not None
            and now - kept[0] <= self._releases_age
            and (not self._releases_exact or kept[1] == state)
        ):
            at, _, cap = kept
            serving = serving_pools(route, self._snapshots)
            if sum(p.slots_total for p in serving) == cap.slots_total:  # else the pools changed
                free = sum(p.slots_free for p in serving)
                return dataclasses.replace(cap, slots_free=free, releases_s=_less(cap.releases_s, now - at))
        cap = capacity_for(
            route,
            self._snapshots,
            self._times,
            {},
            progress=self._runs.progress(now),
            rates=self._rates,
            queued_s=self._queued_s.get(route),
            remote=self._remote_left(),
        )
        # (before anything is measured the oldest run's age stands in for the mean, which time changes)
        if self._releases_age > 0 and (cap.measured or not self._releases_exact):
            self._releases[route] = (now, state, cap)
        return cap

    # -- shared by replicas ------------------------------------------------------------------------
    def export(self, wall: float) -> dict[str, object]:
        """What this replica measured and the remaining time of each job it runs, for the others."""
        running: dict[str, list[float]] = {}
        for pool_id, jobs in self._runs.progress(self._clock()).items():
            for job in jobs:
                left = self._rates.remaining(pool_id, job)
                if left is None:
                    left = self._times.remaining(pool_id, job.age_s, self._times.mean(pool_id) or job.age_s)
                running.setdefault(pool_id, []).append(round(left, 4))
        dispatch = self._dispatch.per_s(self._clock())
        return {
            "id": self._id, "at": wall, "rates": self._own.export(), "running": running,
            "dispatch_per_s": None if dispatch is None else round(dispatch, 3),
            "unstarted": len(self._unstarted),
        }  # fmt: skip

    def absorb(self, parts: Sequence[Mapping[str, Any]], wall: float) -> None:
        """Every replica's `export` (this one's included): predict from all their measurements, and
        count the jobs the others run as releases of the slots they hold."""
        self._rates = WorkRates.merged([part.get("rates") or {} for part in parts]) if parts else self._own
        remote: dict[str, list[float]] = {}
        others_dispatch, others_unstarted = 0.0, 0
        for part in parts:
            if part.get("id") == self._id:
                continue
            others_dispatch += float(part.get("dispatch_per_s") or 0.0)
            others_unstarted += int(part.get("unstarted") or 0)
            at = float(part.get("at") or wall)
            for pool_id, lefts in (part.get("running") or {}).items():
                remote.setdefault(pool_id, []).extend(at + left for left in lefts)
        self._remote = remote
        self._others_dispatch, self._others_unstarted = others_dispatch, others_unstarted

    def _remote_left(self) -> dict[str, list[float]]:
        """The other replicas' runs' remaining seconds, now (they published when each would end)."""
        now = self._wall()
        return {pool_id: [max(0.0, end - now) for end in ends] for pool_id, ends in self._remote.items()}

    def predict(self, route: Route, place: Place, cap: Capacity | None = None) -> int | None:
        """The predicted start (ms) of a job queued at `place`: the jobs ahead of it hold the slots for
        their own mean expected service, from their work, where the rates are known; and it starts no
        sooner than the dispatchers, at their measured pace, have started the jobs ahead of it. `cap`:
        the route's `capacity`, when the caller already has it (one per pass over many jobs).

        A job that a free slot takes needs no release times: its slots' part is 0 without working
        out the capacity, which walks every running job (each admission while streams open, with a
        start before each: `capacity` cannot reuse what it worked out)."""
        if cap is None and place.ahead < sum(p.slots_free for p in serving_pools(route, self._snapshots)):
            return self._paced(place, 0)
        cap = self.capacity(route) if cap is None else cap
        if place.ahead > 0 and place.tokens_out > 0 and cap.mean_service_s is not None:
            n = place.ahead
            work = Work(round(place.tokens_in / n), max(1, round(place.tokens_out / n)), 0)
            ahead_s = self._service(serving_pools(route, self._snapshots), work)
            if ahead_s is not None:
                cap = dataclasses.replace(cap, ahead_s=ahead_s)
        slots = predict_start_ms(place.ahead, cap)
        return None if slots is None else self._paced(place, slots)

    def _paced(self, place: Place, slots_ms: int) -> int:
        """A start predicted at `slots_ms` by the slots, no sooner than the dispatchers, at their
        measured pace, start the jobs ahead."""
        if not place.ahead:
            return slots_ms
        return max(slots_ms, dispatch_wait_ms(place.ahead + self.unstarted(), self.dispatch_per_s()))

    def backoff(self, route: Route, predicted_ms: int | None, tokens_in: int) -> int:
        """How long a client that polls the job's status (rather than reading its stream) should wait
        before its first poll: the predicted start plus the expected time to its first token on the
        pools serving it (their measured rates); 0 while neither is known."""
        pools = serving_pools(route, self._snapshots)
        first = self._service(pools, Work(tokens_in, 1, 1))
        first_ms = 0 if first is None else round(first * 1000)
        return (predicted_ms or 0) + first_ms

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
        """A job left the queue after `waited_s`: one more start, and one more measured error of the
        predictions."""
        self._starts += 1
        self._unstarted.discard(job_id)
        self._measured(job_id, waited_s)

    def missed(self, job_id: str, waited_s: float) -> None:
        """A job's wait ended after `waited_s` without a start: it outwaited its class's limit
        (`queue.max_wait_s`) or its deadline in the queue. One more measured error of the predictions,
        the largest they make: were such jobs left out (forgotten as canceled ones are), the stretch
        would learn only from the jobs that made it, and go on admitting jobs the dispatchers will not
        reach in time just when their pace falls. Its true wait is at least `waited_s`, so it counts as
        no later than that."""
        self._measured(job_id, waited_s)

    def _measured(self, job_id: str, waited_s: float) -> None:
        """Compare the wait promised to `job_id` at its admission here, if any, with the measured one.
        Each replica compares only the jobs it admitted and whose wait it saw end (it started or
        failed them): with several replicas, a sample of starts and misses alike."""
        predicted = self._promised.pop(job_id, None)
        if predicted is not None:
            self._ratios.append(waited_s / predicted)
            self._late.append(waited_s - predicted)
            self._predicted.append(predicted)
            self._stretch = None

    def assured(self, wait_ms: int) -> int:
        """`wait_ms` stretched by how late the measured starts came against their predictions, so
        that a client told to come back then finds what it was promised about 9 times in 10: the
        90th percentile of the lateness added, or of the ratio (over predictions of 100 ms and more,
        at most 3) applied, whichever is more."""
        late, ratio = self._stretched()
        return max(wait_ms + math.ceil(late * 1000), math.ceil(wait_ms * ratio))

    def most_ahead(self, limit_ms: int) -> int | None:
        """The most jobs that may be ahead of a job for it still to start within `limit_ms`, at the
        dispatchers' measured pace, stretched as `assured` stretches a wait (the inverse of the pace's
        part of `predict`); None while the pace is unknown. A shared queue checks it where the job is
        queued, against the queue as it is then (other replicas admit between this one's reads)."""
        pace = self.dispatch_per_s()
        if pace is None:
            return None
        late, ratio = self._stretched()
        wait_s = min(limit_ms / 1000 - late, limit_ms / 1000 / ratio)
        return max(0, math.floor(wait_s * pace) - self.unstarted())

    def _stretched(self) -> tuple[float, float]:
        """How late the measured starts came against their predictions: the 90th percentile of the
        lateness (s), and of the ratio (over predictions of 100 ms and more, at most 3); no stretch
        (0, 1) until enough have started."""
        if len(self._late) < MIN_SAMPLES:
            return 0.0, 1.0
        if self._stretch is None:  # worked out once per new sample, not per admission
            ratios = [r for r, p in zip(self._ratios, self._predicted, strict=True) if p >= SCALES_FROM_S]
            self._stretch = (
                max(0.0, _p90(self._late)),
                min(3.0, max(1.0, _p90(ratios))) if len(ratios) >= MIN_SAMPLES else 1.0,
            )
        return self._stretch

    def keep_promises(self, queued: Collection[str]) -> None:
        """Forget the predictions of jobs that left the queue without starting here (canceled, failed,
        or started or failed by another replica) and not counted by `missed`."""
        for job_id in [j for j in self._promised if j not in queued]:
            del self._promised[job_id]

    def on_time(self, predicted_ms: int | None, remaining_s: float) -> float | None:
        """The probability that a job predicted to start in `predicted_ms` starts within `remaining_s`
        (its deadline), from how the last measured waits compared with their predictions: the share of
        them that, carried over to this prediction, fall within the deadline. A wait predicted at
        100 ms or more carries over as its ratio to its prediction, a shorter one as its lateness
        (as `assured` stretches a wait). None until enough jobs with a prediction have started."""
        if remaining_s < 0:
            return 0.0
        if predicted_ms == 0:
            return 1.0
        if predicted_ms is None or len(self._ratios) < MIN_SAMPLES:
            return None
        predicted = predicted_ms / 1000
        samples = zip(self._ratios, self._late, self._predicted, strict=True)
        within = sum(
            1 for ratio, late, then in samples
            if (predicted * ratio if then >= SCALES_FROM_S else predicted + late) <= remaining_s
        )  # fmt: skip
        return round(within / len(self._ratios), 3)

    def labels(self, route: Route) -> tuple[str, str, str]:
        """(engine, engine_version, pool_id) a waiting job is counted under: the first pool serving it."""
        for pool in sorted(self._registry.pools.values(), key=lambda p: p.spec.id):
            if route.model in pool.spec.models and route.admits(pool.spec.id):
                return pool.spec.engine, pool.engine_version, pool.spec.id
        return "none", "unknown", "none"


def _less(releases: tuple[float, ...], since: float) -> tuple[float, ...]:
    """Ascending release times `since` seconds on (none below 0); in C, not a Python loop: a thousand
    running jobs are a thousand releases, taken down at every admission."""
    if since <= 0:
        return releases
    due = bisect.bisect_right(releases, since)
    return (0.0,) * due + tuple(map(since.__rsub__, releases[due:]))


def _p90(values: Collection[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.9 * (len(ordered) - 1))]
