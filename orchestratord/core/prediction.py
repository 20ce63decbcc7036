"""Start-time predictions from measured service times (documented in docs/admission.md).

Each pool keeps an exponentially weighted moving average (EWMA) of how long its jobs hold a slot.
For the pools serving a route, with `S` usable slots of which `f` are free now and a mean
service time `m`:

- a job with fewer than `f` jobs ahead of it starts now (0);
- otherwise the jobs ahead take the slots as they free, in order: a free slot at once, a busy slot
  after its running job's expected remaining time (`core.work` from the job's remaining work, or
  `ServiceTimes.remaining` from the pool's recent holding times longer than the job's age; `m / 2`
  when nothing is known of it), and each holds its slot for the mean expected service of the jobs
  ahead of it (`a`: from their work, `core.queue.Place`), else one mean service `m` (the mean
  expected service of the route's queued work, or the pools' mean holding time). The job starts at
  the release after theirs (`predict_start_s`: a heap of the S release times, the first 256 jobs
  ahead placed one by one, `a / S` for each further one).

Before a pool has finished a job, the age of its oldest running job stands in for the mean (a low but
real measurement). Nothing is predicted (None) when no usable slot serves the key or nothing has been
measured at all.

Free slots are not the only bound: queued jobs start at a measured pace while there is a backlog
(`DispatchRate`, summed over the replicas), so a job with `n` jobs ahead starts no sooner than
`n / pace` from now (`dispatch_wait_ms`) however many slots are free. `Outlook.predict` takes the
later of the two.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the pools that serve one route offer right now."""

    slots_total: int
    slots_free: int
    mean_service_s: float | None
    releases_s: tuple[float, ...] = ()  # first-round release times of the busy slots we know, ascending
    measured: bool = True  # False while the mean is only the oldest running job's age (a lower bound)
    ahead_s: float | None = None  # the mean expected service of the jobs ahead of the one predicted
    typical_s: float | None = None  # the pools' mean holding time over their recent jobs: of a job
    # not queued yet (a place held for a refused client), whose work is not known

    def first_round(self) -> list[float]:
        """When each of the S slots frees in its first round, ascending (see the module docstring)."""
        assert self.mean_service_s is not None
        return sorted(self.busy_releases() + [self.mean_service_s] * self.slots_free)

    def busy_releases(self) -> list[float]:
        """When each busy slot frees: its running job's expected remaining time where known, half a
        mean service where not (a job whose age is unknown here)."""
        assert self.mean_service_s is not None
        busy = max(0, self.slots_total - self.slots_free)
        known = list(self.releases_s[:busy])
        return known + [self.mean_service_s / 2] * (busy - len(known))


class ServiceTimes:
    """EWMA of slot holding time per pool, and the last `keep` holding times themselves, from which a
    running job's expected remaining time is read (`remaining`)."""

    def __init__(self, alpha: float = 0.2, keep: int = 128) -> None:
        self._alpha = alpha
        self._keep = keep
        self._mean: dict[str, float] = {}
        self._count: dict[str, int] = {}
        self._recent: dict[str, deque[float]] = {}
        self._sorted: dict[str, tuple[list[float], list[float]]] = {}  # samples ascending, suffix sums

    def observe(self, pool_id: str, seconds: float) -> None:
        previous = self._mean.get(pool_id)
        self._mean[pool_id] = seconds if previous is None else previous + self._alpha * (seconds - previous)
        self._count[pool_id] = self._count.get(pool_id, 0) + 1
        recent = self._recent.setdefault(pool_id, deque(maxlen=self._keep))
        recent.append(seconds)
        ascending = sorted(recent)
        suffix = [0.0] * (len(ascending) + 1)
        for i in range(len(ascending) - 1, -1, -1):
            suffix[i] = suffix[i + 1] + ascending[i]
        self._sorted[pool_id] = (ascending, suffix)

    def remaining(self, pool_id: str, age: float, mean: float) -> float:
        """Expected seconds until a job that has held its slot `age` seconds frees it: the mean excess
        over `age` of the recent holding times longer than it (a conditional expectation, so a job past
        the mean is not expected to end at once); half its age again when it outlived every one of
        them; before the pool has any, `mean - age` or half its age, whichever is longer (while
        nothing has been measured the mean is the oldest running job's age, and a job queued behind a
        long one must not be told it starts in 1 ms for as long as it waits)."""
        known = self._sorted.get(pool_id)
        if known is None:
            return max(mean - age, age / 2)
        ascending, suffix = known
        first = bisect.bisect_right(ascending, age)
        longer = len(ascending) - first
        if longer == 0:
            return age / 2
        return (suffix[first] - age * longer) / longer

    def mean(self, pool_id: str) -> float | None:
        return self._mean.get(pool_id)

    def count(self, pool_id: str) -> int:
        return self._count.get(pool_id, 0)

    def typical(self, pool_slots: dict[str, int]) -> float | None:
        """Slot-weighted mean over several pools of their recent holding times (the last `keep`: a
        steadier figure than the moving average, for jobs whose work is not known yet)."""
        known = [(sum(r) / len(r), n) for p, n in pool_slots.items() if (r := self._recent.get(p)) and n > 0]
        total = sum(n for _, n in known)
        return None if not total else sum(m * n for m, n in known) / total

    def combined(self, pool_slots: dict[str, int]) -> float | None:
        """Slot-weighted mean over several pools, ignoring pools with no measurement yet."""
        known = [(self._mean[p], n) for p, n in pool_slots.items() if p in self._mean and n > 0]
        total = sum(n for _, n in known)
        return None if not total else sum(m * n for m, n in known) / total


class DispatchRate:
    """How fast queued jobs start while the queue holds jobs that free slots could take (a backlog):
    the runs started over the wall time of such a backlog, over the last `window_s` (`Outlook` feeds
    it at each housekeeping read of the queue), or over the last `recent_s` when that is slower and
    covers at least half of it: a pace that falls (the runs it started load the replicas that start
    the next ones) shows within a few reads, one that rises only once the window has seen it. Time
    without a backlog (an empty queue, no free slot) is not counted: it says nothing of the pace.
    Unknown (None) until `min_jobs` have started in the window."""

    def __init__(self, window_s: float = 10.0, min_jobs: int = 8, recent_s: float = 2.0) -> None:
        self._window = window_s
        self._min_jobs = min_jobs
        self._recent = recent_s
        self._seen: deque[tuple[float, int, float]] = deque()  # (when, jobs, seconds), oldest first
        self._jobs = 0
        self._seconds = 0.0

    def observe(self, now: float, jobs: int, seconds: float) -> None:
        if seconds <= 0:
            return
        self._seen.append((now, jobs, seconds))
        self._jobs += jobs
        self._seconds += seconds
        self._trim(now)

    def per_s(self, now: float) -> float | None:
        self._trim(now)
        if self._jobs < self._min_jobs:
            return None
        rate = self._jobs / self._seconds
        jobs, seconds = 0, 0.0
        for when, started, spent in reversed(self._seen):
            if now - when > self._recent:
                break
            jobs, seconds = jobs + started, seconds + spent
        if jobs and seconds >= self._recent / 2:
            rate = min(rate, jobs / seconds)
        return rate

    def _trim(self, now: float) -> None:
        while self._seen and now - self._seen[0][0] > self._window:
            _, jobs, seconds = self._seen.popleft()
            self._jobs -= jobs
            self._seconds -= seconds
        if not self._seen:
            self._jobs, self._seconds = 0, 0.0  # no drift from the subtractions


def dispatch_wait_ms(position: int, per_s: float | None) -> int:
    """The least wait (ms) of a job with `position` jobs ahead of it when the deployment's replicas
    start `per_s` queued jobs a second between them, however many slots are free; 0 when the pace is
    unknown."""
    if not per_s or position <= 0:
        return 0
    return math.ceil(position / per_s * 1000)


SIMULATED = 256  # jobs ahead placed one by one; past them, each further one adds a mean service / S


def predict_start_s(position: int, cap: Capacity, known: int | None = None) -> float | None:
    """Seconds until a job with `position` jobs ahead of it (same route) is expected to start: the
    jobs ahead take the slots as they free, in order, each holding its slot for their mean expected
    service (`ahead_s`, else one mean service), and the job starts at the release after theirs. (A
    job ahead that takes a slot early may free it again before a long-running job frees its own: the
    k-th release is not simply the k-th of the first round.) With `known`, only the first `known`
    jobs ahead are queued ones; the others (places held for clients) hold a slot `typical_s` each."""
    if position < cap.slots_free:
        return 0.0
    if cap.mean_service_s is None or cap.slots_total <= 0:
        return None
    mean = cap.mean_service_s if cap.ahead_s is None else cap.ahead_s
    later = mean if known is None or cap.typical_s is None else cap.typical_s
    known = position if known is None else known
    heap = sorted([0.0] * cap.slots_free + cap.busy_releases())
    if known >= position or later == mean:
        return _cycling(heap, mean, position)
    placed = min(position, SIMULATED)
    for i in range(placed):
        heapq.heapreplace(heap, heap[0] + (mean if i < known else later))
    rest = position - placed
    beyond_known = min(rest, max(0, position - max(known, placed)))
    return heap[0] + ((rest - beyond_known) * mean + beyond_known * later) / len(heap)


def _cycling(heap: list[float], mean: float, position: int) -> float:
    """The start of the job `position` jobs down when every job holds its slot `mean`: the slots'
    release times are placed one by one (a slot freeing far later than the others is skipped until
    its turn) until they lie within one `mean` of each other; from then on the starts repeat a round
    of the slots every `mean`, and the job's is read off its round."""
    latest, placed = heap[-1], 0
    while placed < position and latest - heap[0] > mean:
        if placed == SIMULATED:  # a slot freeing much later: the rest shares the slots evenly
            return heap[0] + (position - placed) * mean / len(heap)
        freed = heapq.heapreplace(heap, heap[0] + mean) + mean
        latest = max(latest, freed)
        placed += 1
    rounds, turn = divmod(position - placed, len(heap))
    return sorted(heap)[turn] + rounds * mean


def predict_start_ms(position: int, cap: Capacity, known: int | None = None) -> int | None:
    """`predict_start_s` in whole milliseconds; at least 1 when the job has to wait at all."""
    seconds = predict_start_s(position, cap, known)
    if seconds is None:
        return None
    if position < cap.slots_free:
        return 0
    return max(1, math.ceil(seconds * 1000))


def retry_hint_ms(wait_ms: int, cap: Capacity) -> int | None:
    """A retry hint for a client refused now: the predicted wait until a queued job leaves the queue
    (its place frees), plus a tenth of a service time so that the retry follows the dispatch rather
    than races it. None until a service time has been measured: a lower bound makes a poor hint."""
    if not cap.measured or cap.mean_service_s is None:
        return None
    return max(1, wait_ms + math.ceil(cap.mean_service_s / 10 * 1000))
