"""What a state backend shared by several orchestrator replicas adds to `StateStore`.

The embedded backend lives in one process and needs none of it; `redis.RedisStore` implements it.
The dispatcher and admission use it when the store offers it (`isinstance(store, SharedState)`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from orchestratord.core.queue import QueueEntry
    from orchestratord.core.route import Route
    from orchestratord.state.base import Pending

ReapAction = Literal["requeued", "reset", "gone"]
PoolAction = Literal["drain", "undrain", "reload"]
CatalogOp = Literal["add", "put", "del", "seed"]


@dataclass(frozen=True, slots=True)
class PoolChange:
    """An operator's change to a pool, made through one replica and applied by every replica."""

    pool_id: str
    action: PoolAction
    deadline_at: float | None = None  # drain: when (wall-clock seconds) its running jobs end
    model: str | None = None  # reload: the model the pool serves now


@dataclass(frozen=True, slots=True)
class Reaped:
    """A job whose owner stopped renewing its claim, and what was done with it ('gone': it had
    already ended). `engine` is where it last ran, if it started."""

    job_id: str
    action: ReapAction
    engine: str | None = None


@dataclass(frozen=True, slots=True)
class Abandoned:
    """A job to be canceled on disconnect that nobody read for its grace: none attached in time
    (`attached` False), or its last reader left and none came back."""

    job_id: str
    attached: bool


@runtime_checkable
class SharedState(Protocol):
    def wake_signals(self) -> AsyncIterator[bool]:
        """Yields whenever another replica may have made work available, and after a reconnect to the
        backend: True when a job was queued (or queued again) or after a reconnect, False when every
        wake-up since the last only said that a slot or a tenant's concurrency came free."""
        ...

    async def reap(self, now: float) -> list[Reaped]:
        """Handle jobs whose owner stopped renewing its claim (it died): release their leases; queue a
        job again if it sent no token yet (once), else end it with a retriable WORKER_RESET error."""
        ...

    async def take_several(
        self,
        count: int,
        budget: Callable[[Route], Sequence[tuple[str, int, int]]],
        tenant_ok: Callable[[str], bool],
        pending: Pending | None = None,
    ) -> list[QueueEntry]:
        """Up to `count` queued jobs in one round trip, each the one `JobQueue.take` would give next:
        `budget(route)` gives the pools serving a route as (pool id, free slots, slots kept for
        interactive work, `core.capacity.slot_budget`), and each job taken spends a slot of them."""
        ...

    async def requeue(self, job_id: str) -> bool:
        """Give back a job this replica took but could not lease a slot for; it keeps its place."""
        ...

    async def lead(self, role: str, ttl_s: float) -> bool:
        """True if this replica holds `role` (renewed by calling again within `ttl_s`)."""
        ...

    async def announce(self, change: PoolChange) -> None:
        """Record `change` as the pool's state (for replicas that start later) and tell the others."""
        ...

    def pool_changes(self) -> AsyncIterator[PoolChange]:
        """The changes other replicas announce, as they come; first, and again after a reconnect to
        the backend, the recorded state of every pool (its drain, if any, and its model)."""
        ...

    async def exchange_outlook(self, mine: str, max_age_s: float) -> list[str]:
        """Publish this replica's outlook (what it measured and what it runs, as JSON) and return every
        replica's that is younger than `max_age_s`, this one's included: each replica predicts from
        the same measurements and sees the others' running jobs."""
        ...

    async def take_rate(self, tenant: str, rate: float, burst: int) -> float:
        """One request of `tenant`'s token bucket, shared by all replicas: 0 if granted, else the
        seconds until one would be."""
        ...

    async def leave(self, job_id: str, grace_s: float) -> int:
        """Count one of this replica's readers out (as `Readers.detach`); if it was the job's last and
        the job is to be canceled on disconnect, it becomes due for cancellation after `grace_s`
        (unless a reader attaches, on any replica). Returns the readers left."""
        ...

    async def abandoned(self, grace_s: float) -> list[Abandoned]:
        """Count out the readers of replicas that stopped renewing (they died; a job left unread by
        them is due `grace_s` later), and take the jobs due for cancellation, each by one replica."""
        ...

    async def cache_key_place(self, tenant: str, key: str) -> tuple[str, str] | None:
        """The (pool, replica) the last job of the tenant's prompt cache key was placed on, by any
        replica, unless the key went unused for its time to live."""
        ...

    async def cache_key_placed(
        self, tenant: str, key: str, pool_id: str, replica_id: str, ttl_s: float
    ) -> None:
        """Remember where a job of the key was placed, for `ttl_s` from now."""
        ...

    async def catalog_change(self, op: CatalogOp, *args: str) -> bool:
        """Change the shared model catalog (id -> entry JSON): `add` an entry (False if its id
        exists), `put` a changed one (False if it is gone), `del` one (False if there was none), or
        `seed` the entries kept before (id, JSON, ...; only if the deployment never had a catalog)."""
        ...

    async def catalog_version(self) -> int:
        """A number every change of the catalog increments: read the entries again when it moves."""
        ...

    async def catalog_entries(self) -> tuple[int, dict[str, str]]:
        """The catalog's version and its entries (id -> entry JSON)."""
        ...
