"""The embedded backend forgets a finished job `retention_s` after it ended, and finding those jobs
costs O(expired): purge (every 0.25 s) never walks the jobs still retained."""

from __future__ import annotations

from typing import Any

from orchestratord.core.queue import QueueEntry, QueuePolicy
from orchestratord.core.route import Route
from orchestratord.core.tasks import JobState
from orchestratord.state.base import JobRecord
from orchestratord.state.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class NoScan(dict[str, Any]):
    """The store's job table, refusing to be walked: lookups and deletions only."""

    def _walked(self, *_: object) -> Any:
        raise AssertionError("purge walked every retained job")

    __iter__ = items = values = keys = _walked


async def _finished_store(clock: Clock, jobs: int, *, every_s: float) -> MemoryStore:
    store = MemoryStore(QueuePolicy(capacity=jobs), retention_s=60.0, wall=clock)
    for i in range(jobs):
        job_id = f"job-{i}"
        record = JobRecord(job_id, "t", "mock", "interactive", JobState.QUEUED, clock.now, "{}")
        await store.create(record, QueueEntry(job_id, "t", "interactive", Route("mock")))
        await store.finish(job_id, JobState.SUCCEEDED, "end", {"stop_reason": "eos"})
        clock.now += every_s
    return store


async def test_purge_drops_exactly_the_jobs_past_retention_oldest_first() -> None:
    clock = Clock()
    t0 = clock.now
    store = await _finished_store(clock, 100, every_s=1.0)  # job-i finished at t0 + i; retention 60 s
    assert await store.purge(t0 + 60) == 0
    assert await store.purge(t0 + 60.5) == 1  # job-0 ended 60.5 s before
    assert await store.get("job-0") is None and await store.get("job-1") is not None
    assert await store.purge(t0 + 70.5) == 10
    assert store.job_count() == 89
    assert await store.get("job-10") is None and await store.get("job-11") is not None
    assert await store.purge(t0 + 1000) == 89 and store.job_count() == 0


async def test_purge_does_not_walk_the_retained_jobs() -> None:
    clock = Clock()
    t0 = clock.now
    store = await _finished_store(clock, 5_000, every_s=0.001)  # job-i finished at t0 + i ms
    queued = JobRecord("waiting", "t", "mock", "interactive", JobState.QUEUED, clock.now, "{}")
    await store.create(queued, QueueEntry("waiting", "t", "interactive", Route("mock")))
    store._jobs = NoScan(store._jobs)  # type: ignore[assignment]
    assert await store.purge(t0 + 60) == 0  # nothing has been finished for more than a minute yet
    assert await store.purge(t0 + 60.9995) == 1_000  # the first second's jobs only
    assert store.job_count() == 4_001
    assert await store.purge(t0 + 3600) == 4_000
    assert await store.get("waiting") is not None  # a job that never finished is never purged


async def test_an_ended_job_is_forgotten_at_once_and_its_purge_finds_nothing() -> None:
    """`forget` (the Responses API's delete) drops an ended job before its retention; a live one stays;
    the purge that comes for the forgotten one later counts nothing."""
    clock = Clock()
    store = await _finished_store(clock, 2, every_s=1.0)
    live = JobRecord("live", "t", "mock", "interactive", JobState.QUEUED, clock.now, "{}")
    await store.create(live, QueueEntry("live", "t", "interactive", Route("mock")))
    assert not await store.forget("live") and await store.get("live") is not None
    assert await store.forget("job-0") and await store.get("job-0") is None
    assert not await store.forget("job-0")
    assert await store.purge(clock.now + 1000) == 1  # job-1 only
