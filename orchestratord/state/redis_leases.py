"""Slot leases in Redis, shared by every orchestrator replica: a slot of an engine replica is held by
at most one job across all of them. A lease lives `lease_ttl_s` unless its holder's heartbeat renews
it, so the slots of a replica that died come free by themselves."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from orchestratord.state.redis_client import SEP, Scripts
from pool_manager.leases import Lease


class RedisLeases:
    """LeaseStore on Redis (see `pool_manager.leases.LeaseStore`)."""

    def __init__(
        self,
        scripts: Scripts,
        ttl_s: float,
        owner: str,
        started: Callable[[Lease, Any], None] | None = None,
    ) -> None:
        self._scripts = scripts
        self._owner = owner
        # A lease that names its engine starts the job with it, in the same call (lease_acquire.lua):
        # `started` is handed what the start returned, for the job's run (RedisStore.start).
        self._started = started
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self.renewed = 0.0  # monotonic: when the heartbeat last renewed this instance's claims
        self._given_back: dict[str, Lease] = {}  # leases the jobs' good ends released (`finish`)

    async def acquire(self, lease: Lease, limit: int) -> bool:
        where = f"{lease.pool_id}{SEP}{lease.replica_id}"
        args: tuple[str | int, ...] = (lease.job_id, where, limit, self._ttl_ms)
        if self._started is None or not lease.engine:
            return bool(await self._scripts.run("lease_acquire", *args))
        start = (self._owner, lease.pool_id, lease.replica_id, lease.engine)
        reply = await self._scripts.run("lease_acquire", *args, *start)
        if not isinstance(reply, list):
            return False  # not granted
        self._started(lease, reply[1])
        return True

    def given_back(self, job_id: str, where: str) -> None:
        """The job's good end (the `finish` script) released its lease already: `release` says so
        without asking Redis again."""
        self._given_back[job_id] = _lease(job_id, where)

    async def release(self, job_id: str) -> Lease | None:
        given = self._given_back.pop(job_id, None)
        if given is not None:
            return given
        where = await self._scripts.run("lease_release", job_id)
        return None if where is None else _lease(job_id, where)

    async def held(self, pool_id: str, replica_id: str) -> int:
        return (await self.held_each([(pool_id, replica_id)]))[0]

    async def held_each(self, slots: Sequence[tuple[str, str]]) -> list[int]:
        if not slots:
            return []
        counts = await self._scripts.run("lease_held", *(f"{pool}{SEP}{replica}" for pool, replica in slots))
        return [int(n) for n in counts]

    async def all(self) -> list[Lease]:
        held = await self._scripts.call("HGETALL", self._scripts.key("leases"))
        pairs = held.items() if isinstance(held, dict) else zip(held[::2], held[1::2], strict=True)
        return [_lease(job_id, where) for job_id, where in pairs]

    async def renew(self, job_ids: list[str]) -> None:
        """The heartbeat: this instance lives (which keeps its readers counted), and so do the claims
        and leases of the jobs it runs."""
        await self._scripts.run("renew", self._ttl_ms, self._owner, *job_ids)
        self.renewed = time.monotonic()
        running = set(job_ids)  # a run that stopped before its release (Redis away) leaves no entry here
        for job_id in [job for job in self._given_back if job not in running]:
            del self._given_back[job_id]


def _lease(job_id: str, where: str) -> Lease:
    pool_id, _, replica_id = where.partition(SEP)
    return Lease(job_id, pool_id, replica_id)
