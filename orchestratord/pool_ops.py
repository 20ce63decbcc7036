"""Operator actions on pools: drain (refuse new work, end stragglers at a deadline), undrain, and atomic
reload. A drain or a reload also ends the queued jobs no pool can take any more (retriable
POOL_UNAVAILABLE), instead of leaving them to wait for ever.

With shared state the actions are deployment-wide: the replica an operator's request reaches records
and announces the change (`SharedState.announce`), every other replica applies it as it comes
(`follow`), and a replica that starts or reconnects later applies the recorded state. Each replica
enforces a drain's deadline on the jobs it runs itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from orchestratord.endings import Endings
from orchestratord.errors import DEFAULT_RETRY_AFTER_MS, Conflict, NotFound, PoolUnavailable, StateUnavailable
from orchestratord.housekeeping import Housekeeper
from orchestratord.logs import get_logger
from orchestratord.runs import Runs
from orchestratord.state.shared import PoolChange, SharedState
from pool_manager.registry import PoolRegistry
from worker_adapters.base import AdapterConfig, AdapterError, WorkerAdapter
from worker_adapters.host import AdapterHost
from worker_adapters.registry import load_adapter

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class DrainStarted:
    pool_id: str
    deadline_ms: int
    running: int


class PoolOps:
    def __init__(
        self,
        registry: PoolRegistry,
        adapters: AdapterHost,
        *,
        runs: Runs,
        endings: Endings,
        housekeeper: Housekeeper,
        wake: Callable[[], None],
        loader: Callable[[AdapterConfig], WorkerAdapter] = load_adapter,
        shared: SharedState | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._shared = shared
        self._wall = wall
        self._registry = registry
        self._runs = runs
        self._endings = endings
        self._housekeeper = housekeeper
        self._wake = wake
        self._adapters = adapters
        self._loader = loader
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._enforcing: dict[str, asyncio.Task[None]] = {}  # pool_id -> its drain's deadline
        self._reloading: set[str] = set()

    def _pool(self, pool_id: str) -> None:
        if self._registry.get(pool_id) is None:
            known = ", ".join(self._registry.pools)
            raise NotFound(f"no pool {pool_id!r}; pools: {known}")

    # -- drain -----------------------------------------------------------------------------------
    async def drain(self, pool_id: str, deadline_ms: int) -> DrainStarted:
        """Stop placing work on the pool now; jobs still running at the deadline end, retriable.
        Queued jobs only this pool could take end at once. `running` counts this replica's."""
        self._pool(pool_id)
        if self._shared is not None:
            deadline_at = self._wall() + deadline_ms / 1000
            await self._shared.announce(PoolChange(pool_id, "drain", deadline_at=deadline_at))
        return await self._drain_here(pool_id, deadline_ms, everywhere=True)

    async def _drain_here(self, pool_id: str, deadline_ms: int, *, everywhere: bool) -> DrainStarted:
        self._registry.drain(pool_id, self._clock() + deadline_ms / 1000)
        previous = self._enforcing.pop(pool_id, None)
        if previous is not None:  # drained again: the new deadline replaces the old one
            previous.cancel()
        self._enforcing[pool_id] = self._spawn(self._enforce(pool_id, deadline_ms / 1000))
        running = len(await self._running_on(pool_id))
        queued = await self._housekeeper.end_unservable(pool_id, everywhere=everywhere)
        log.info(
            "pool_draining", pool_id=pool_id, deadline_ms=deadline_ms, running=running, queued_ended=queued
        )
        return DrainStarted(pool_id, deadline_ms, running)

    async def _enforce(self, pool_id: str, seconds: float) -> None:
        await self._runs.wait(seconds, await self._running_on(pool_id))
        drained = PoolUnavailable(
            f"pool {pool_id!r} was drained before the job finished; retry",
            retry_after_ms=DEFAULT_RETRY_AFTER_MS,
            pool_id=pool_id,
        )
        for job_id in await self._running_on(pool_id):
            await self._endings.fail(job_id, drained)
        if self._enforcing.get(pool_id) is asyncio.current_task():
            del self._enforcing[pool_id]
        log.info("pool_drained", pool_id=pool_id)

    async def _running_on(self, pool_id: str) -> list[str]:
        """The jobs this replica runs on the pool: those holding a slot lease there, which includes a
        job placed there a moment ago whose run has not started its attempt yet."""
        leased = {lease.job_id for lease in await self._registry.leases.all() if lease.pool_id == pool_id}
        return [job_id for job_id in self._runs.job_ids() if job_id in leased]

    async def undrain(self, pool_id: str) -> None:
        """Take work on the pool again; a pending drain deadline no longer ends anything."""
        self._pool(pool_id)
        if self._shared is not None:
            await self._shared.announce(PoolChange(pool_id, "undrain"))
        self._undrain_here(pool_id)

    def _undrain_here(self, pool_id: str) -> None:
        enforcing = self._enforcing.pop(pool_id, None)
        if enforcing is not None:
            enforcing.cancel()
        self._registry.undrain(pool_id)
        self._wake()
        log.info("pool_undrained", pool_id=pool_id)

    # -- reload ----------------------------------------------------------------------------------
    async def reload(self, pool_id: str, new_model_ref: str) -> None:
        """Point every replica of the pool at `new_model_ref`, all or nothing.

        New adapters are built and health-checked first; if any replica cannot serve the model, they
        are closed and the pool keeps its old model (Conflict). Old adapters close once idle. With
        shared state, announced once this replica's pool serves the new model.
        """
        await self._reload_here(pool_id, new_model_ref, everywhere=True)
        if self._shared is not None:
            await self._shared.announce(PoolChange(pool_id, "reload", model=new_model_ref))

    async def _reload_here(self, pool_id: str, new_model_ref: str, *, everywhere: bool) -> None:
        self._pool(pool_id)
        if pool_id in self._reloading:
            raise Conflict(f"pool {pool_id!r} is already reloading")
        self._reloading.add(pool_id)
        try:
            fresh = await self._prepare(pool_id, new_model_ref)
        finally:
            self._reloading.discard(pool_id)
        old = [self._adapters.rebind(key, adapter, config) for key, (adapter, config) in fresh.items()]
        self._registry.set_models(pool_id, (new_model_ref,))
        self._spawn(self._close_when_idle(old))
        queued = await self._housekeeper.end_unservable(pool_id, everywhere=everywhere)
        self._wake()
        log.info("pool_reloaded", pool_id=pool_id, model_ref=new_model_ref, queued_ended=queued)

    async def _prepare(
        self, pool_id: str, model: str
    ) -> dict[tuple[str, str], tuple[WorkerAdapter, AdapterConfig]]:
        fresh: dict[tuple[str, str], tuple[WorkerAdapter, AdapterConfig]] = {}
        try:
            for key in [k for k in self._adapters if k[0] == pool_id]:
                config = replace(self._adapters.config(key), model=model, models=(model,))
                adapter = self._loader(config)
                fresh[key] = (adapter, config)
                await self._verify(adapter, key, model)
        except Conflict:
            await asyncio.gather(*(a.aclose() for a, _ in fresh.values()))
            raise
        return fresh

    async def _verify(self, adapter: WorkerAdapter, key: tuple[str, str], model: str) -> None:
        try:
            health = await adapter.health()
            props = await adapter.props()
        except AdapterError as exc:
            raise Conflict(
                f"replica {key[1]} cannot load {model!r}: {exc.message}; the old model stays"
            ) from None
        if not health.ready or (props.models and model not in props.models):
            detail = health.detail or f"it serves {', '.join(props.models)}"
            raise Conflict(f"replica {key[1]} cannot serve {model!r} ({detail}); the old model stays")

    async def _close_when_idle(self, old: list[WorkerAdapter]) -> None:
        """Close the replaced adapters once no run uses them (runs keep the adapter they started on)."""
        tasks = self._runs.using(old)
        if tasks:
            await asyncio.wait(tasks)
        await asyncio.gather(*(a.aclose() for a in old), return_exceptions=True)

    # -- the other replicas' changes -------------------------------------------------------------
    def start(self) -> None:
        """With shared state, apply the pool changes made through other replicas from now on."""
        if self._shared is not None:
            self._spawn(self._follow(self._shared))

    async def _follow(self, shared: SharedState) -> None:
        while True:  # task root: a lost backend ends one subscription, never the following
            try:
                async for change in shared.pool_changes():
                    await self._apply(change)
            except StateUnavailable:
                await asyncio.sleep(1.0)
            except Exception:
                log.error("pool_change_error", exc_info=True)
                await asyncio.sleep(1.0)

    async def _apply(self, change: PoolChange) -> None:
        """Apply a change made through another replica (or recorded before this one started)."""
        pool = self._registry.get(change.pool_id)
        if pool is None:
            log.warning("pool_change_unknown_pool", pool_id=change.pool_id, action=change.action)
            return
        if change.action == "drain" and change.deadline_at is not None:
            left_ms = max(0, round((change.deadline_at - self._wall()) * 1000))
            await self._drain_here(change.pool_id, left_ms, everywhere=False)
        elif change.action == "undrain" and pool.draining:
            self._undrain_here(change.pool_id)
        elif change.action == "reload" and change.model and tuple(pool.spec.models) != (change.model,):
            try:
                await self._reload_here(change.pool_id, change.model, everywhere=False)
            except Conflict as exc:
                log.warning("pool_reload_not_applied", pool_id=change.pool_id, reason=exc.message)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
