"""Immutable views of pool state, the only input placement reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ReplicaSnapshot:
    replica_id: str
    ready: bool
    slots_total: int
    slots_free: int
    last_error: str | None = None
    kv_cache_usage_ratio: float | None = None
    # The model names the engine answers to now (its own listing); None when it serves one model
    # whatever the request names, or has not said.
    serves: frozenset[str] | None = None

    @property
    def load(self) -> float:
        return 1.0 if self.slots_total <= 0 else 1 - self.slots_free / self.slots_total


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    pool_id: str
    engine: str
    engine_version: str
    models: tuple[str, ...]
    ctx_max: int
    max_tokens_out: int
    draining: bool
    replicas: tuple[ReplicaSnapshot, ...]
    device_mask: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    engine_model: str | None = None

    def engine_name(self, model: str) -> str:
        return self.engine_model or model

    @property
    def ready(self) -> bool:
        return not self.draining and any(r.ready for r in self.replicas)

    @property
    def slots_total(self) -> int:
        return sum(r.slots_total for r in self.replicas if r.ready)

    @property
    def slots_free(self) -> int:
        return sum(r.slots_free for r in self.replicas if r.ready)
