"""Slot leases: a job holds one slot of one replica from dispatch until it ends, on every path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Lease:
    job_id: str
    pool_id: str
    replica_id: str
    # the engine the job runs on there: a backend that starts the job with its lease (Redis) records it
    engine: str = field(default="", compare=False)


class LeaseStore(Protocol):
    """Where leases are counted. In-memory here; the Redis backend shares them across orchestrators.

    `acquire` is atomic: it never grants more than `limit` leases on one replica.
    """

    async def acquire(self, lease: Lease, limit: int) -> bool: ...

    async def release(self, job_id: str) -> Lease | None: ...

    async def held(self, pool_id: str, replica_id: str) -> int: ...

    async def held_each(self, slots: Sequence[tuple[str, str]]) -> list[int]:
        """`held` for each (pool, replica) of `slots`, in one look (one round trip on Redis)."""
        ...

    async def all(self) -> list[Lease]: ...

    async def renew(self, job_ids: list[str]) -> None: ...


class MemoryLeases:
    """Leases for one process."""

    def __init__(self) -> None:
        self._by_job: dict[str, Lease] = {}
        self._counts: dict[tuple[str, str], int] = {}

    async def acquire(self, lease: Lease, limit: int) -> bool:
        key = (lease.pool_id, lease.replica_id)
        if lease.job_id in self._by_job or self._counts.get(key, 0) >= limit:
            return False
        self._by_job[lease.job_id] = lease
        self._counts[key] = self._counts.get(key, 0) + 1
        return True

    async def release(self, job_id: str) -> Lease | None:
        lease = self._by_job.pop(job_id, None)
        if lease is not None:
            key = (lease.pool_id, lease.replica_id)
            self._counts[key] = max(0, self._counts[key] - 1)
        return lease

    async def held(self, pool_id: str, replica_id: str) -> int:
        return self._counts.get((pool_id, replica_id), 0)

    async def held_each(self, slots: Sequence[tuple[str, str]]) -> list[int]:
        return [self._counts.get(slot, 0) for slot in slots]

    async def all(self) -> list[Lease]:
        return list(self._by_job.values())

    async def renew(self, job_ids: list[str]) -> None:
        """In one process a lease cannot outlive its holder, so there is nothing to renew."""
        return None
