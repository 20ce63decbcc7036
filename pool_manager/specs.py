"""What an operator declares about a pool: its engine, replicas, models and capacity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    id: str
    url: str = ""
    options: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PoolSpec:
    id: str
    engine: str
    models: tuple[str, ...]
    replicas: tuple[ReplicaSpec, ...]
    slots: int = 4
    ctx_max: int = 4096
    max_tokens_out: int = 4096
    engine_version: str | None = None
    device_mask: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, object] = field(default_factory=dict)
    engine_model: str | None = None  # the engine's name for the pool's only model, when it differs
    api: str = "auto"
    read_timeout_s: float = 60.0
    first_token_timeout_s: float = 600.0
    max_seed: int | None = None  # the largest seed the engine takes as given (None: the engine kind's)

    def engine_name(self, model: str) -> str:
        """What the engine calls `model` (the name a request's `model` field carries to it)."""
        return self.engine_model or model
