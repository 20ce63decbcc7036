"""AdapterHost: the adapters of every (pool, replica), built from configs, closed together."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping

from worker_adapters.base import AdapterConfig, WorkerAdapter
from worker_adapters.registry import load_adapter


class AdapterHost(Mapping[tuple[str, str], WorkerAdapter]):
    """A read-only mapping (pool_id, replica_id) → adapter, with rebind for reloads."""

    def __init__(self, configs: Mapping[tuple[str, str], AdapterConfig]) -> None:
        self._adapters: dict[tuple[str, str], WorkerAdapter] = {
            key: load_adapter(config) for key, config in configs.items()
        }
        self._configs = dict(configs)

    def __getitem__(self, key: tuple[str, str]) -> WorkerAdapter:
        return self._adapters[key]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._adapters)

    def __len__(self) -> int:
        return len(self._adapters)

    def config(self, key: tuple[str, str]) -> AdapterConfig:
        return self._configs[key]

    def rebind(self, key: tuple[str, str], adapter: WorkerAdapter, config: AdapterConfig) -> WorkerAdapter:
        """Swap in a new adapter for a replica; returns the old one for the caller to close."""
        old = self._adapters[key]
        self._adapters[key] = adapter
        self._configs[key] = config
        return old

    async def aclose(self) -> None:
        await asyncio.gather(*(a.aclose() for a in self._adapters.values()), return_exceptions=True)
