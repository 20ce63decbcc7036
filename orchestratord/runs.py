"""The jobs this orchestrator replica runs now: for each, the slot it was placed on, its task, and the
adapter its current attempt goes through. The dispatcher adds and drops runs; pool operations and
shutdown read them (which runs use a pool, or an adapter) and wait for them."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from orchestratord.core.work import Progress, Work
from worker_adapters.base import WorkerAdapter


@dataclass(slots=True)
class Running:
    job_id: str
    tenant: str
    pool_id: str  # of the current attempt; "" until the first attempt starts (the lease says where)
    replica_id: str
    started: float
    task: asyncio.Task[None] | None = None
    adapter: WorkerAdapter | None = None  # the adapter the current attempt runs through
    traceparent: str | None = None  # the job span's, for its engine requests (orchestratord.tracing)
    work: Work | None = None  # what it asks of its slot (core.work), for the predictions
    tokens: int = 0  # token events its current attempt relayed so far


class Runs:
    def __init__(self) -> None:
        self._by_job: dict[str, Running] = {}
        # Counts every run that started, moved to another slot or ended: predictions worked out from the
        # runs hold, but for the time passed, while it stays the same (`Outlook.capacity`).
        self.version = 0

    def add(self, run: Running) -> None:
        self._by_job[run.job_id] = run
        self.version += 1

    def drop(self, job_id: str) -> None:
        if self._by_job.pop(job_id, None) is not None:
            self.version += 1

    def attempt(self, run: Running, pool_id: str, replica_id: str, started: float) -> None:
        """The run's attempt on `replica_id` of `pool_id` starts now (`started`)."""
        run.pool_id, run.replica_id, run.started = pool_id, replica_id, started
        self.version += 1

    def get(self, job_id: str) -> Running | None:
        return self._by_job.get(job_id)

    def __len__(self) -> int:
        return len(self._by_job)

    def __iter__(self) -> Iterator[Running]:
        return iter(list(self._by_job.values()))

    def job_ids(self) -> list[str]:
        return list(self._by_job)

    def tasks(self, job_ids: Collection[str] | None = None) -> list[asyncio.Task[None]]:
        """The run tasks (of `job_ids` only, if given)."""
        return [
            r.task
            for r in self._by_job.values()
            if r.task is not None and (job_ids is None or r.job_id in job_ids)
        ]

    def using(self, adapters: Collection[WorkerAdapter]) -> list[asyncio.Task[None]]:
        """The run tasks whose attempt goes through one of `adapters`."""
        return [
            r.task
            for r in self._by_job.values()
            if r.task is not None and any(r.adapter is a for a in adapters)
        ]

    def of_tenant(self, tenant: str) -> int:
        return sum(1 for r in self._by_job.values() if r.tenant == tenant)

    def progress(self, now: float) -> dict[str, list[Progress]]:
        """pool_id -> each run there: its work, how long it has run (seconds), its tokens so far."""
        out: dict[str, list[Progress]] = {}
        for run in self._by_job.values():
            out.setdefault(run.pool_id, []).append(Progress(run.work, now - run.started, run.tokens))
        return out

    async def wait(self, within_s: float, job_ids: Collection[str] | None = None) -> bool:
        """Wait for the runs (of `job_ids`, if given) to end; True if all did within `within_s`."""
        tasks = self.tasks(job_ids)
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=within_s)
        return not pending
