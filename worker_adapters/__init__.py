"""Worker adapters: one small Protocol, one module per engine."""

from worker_adapters.base import (
    AdapterConfig,
    AdapterError,
    Finished,
    SubmitRequest,
    Token,
    TokenEvent,
    TokenLogprob,
    WorkerAdapter,
    WorkerHealth,
    WorkerProps,
)
from worker_adapters.registry import load_adapter

__all__ = [
    "AdapterConfig",
    "AdapterError",
    "Finished",
    "SubmitRequest",
    "Token",
    "TokenEvent",
    "TokenLogprob",
    "WorkerAdapter",
    "WorkerHealth",
    "WorkerProps",
    "load_adapter",
]
