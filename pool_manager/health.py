"""HealthProber: polls every replica's health and props, with backoff while it fails."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import structlog

from pool_manager.registry import PoolRegistry
from worker_adapters.base import AdapterError, WorkerAdapter

log = structlog.get_logger(__name__)


class HealthProber:
    """One task per replica. A replica is Ready only after a passing check; failures back off."""

    def __init__(
        self,
        registry: PoolRegistry,
        adapters: Mapping[tuple[str, str], WorkerAdapter],
        *,
        interval_s: float = 2.0,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._registry = registry
        self._adapters = adapters
        self._interval = interval_s
        self._max_backoff = max_backoff_s
        self._sleep = sleep  # injected, so tests can check the backoff without waiting for it
        self._tasks: list[asyncio.Task[None]] = []

    async def probe_all(self) -> None:
        """One round of probes, awaited: start-up uses it so the embedded default is ready at once."""
        await asyncio.gather(*(self.probe(pool, rep) for pool, rep in self._adapters))

    async def probe(self, pool_id: str, replica_id: str) -> bool:
        adapter = self._adapters[(pool_id, replica_id)]
        try:
            health = await adapter.health()
            props = await adapter.props() if health.live else None
        except AdapterError as exc:
            self._registry.apply_probe_error(pool_id, replica_id, f"{exc.code}: {exc.message}")
            return False
        except Exception as exc:  # task root: an adapter bug must not kill the prober
            log.error("health_probe_crashed", pool_id=pool_id, replica_id=replica_id, exc_info=True)
            self._registry.apply_probe_error(pool_id, replica_id, f"INTERNAL: {exc!r}")
            return False
        if props is None:
            self._registry.apply_probe_error(pool_id, replica_id, health.detail or "engine not live")
            return False
        self._registry.apply_health(pool_id, replica_id, health, props)
        return health.ready

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(p, r)) for p, r in self._adapters]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _loop(self, pool_id: str, replica_id: str) -> None:
        delay = self._interval
        while True:
            await self._sleep(delay)
            if self._adapters[(pool_id, replica_id)].streaming(self._interval):
                delay = self._interval  # generating: its stream shows it is healthy (WorkerAdapter.streaming)
                continue
            ok = await self.probe(pool_id, replica_id)
            delay = self._interval if ok else min(self._max_backoff, delay * 2)
