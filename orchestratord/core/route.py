"""Where a queued job may run: its model, and the pools it is restricted to.

A job waits for its route, not its model, whenever it may not run on every pool serving the model
(it is pinned, may not fall back, avoids pools, or its context or `max_tokens` fits only some of
them), so that the queue offers it only to free slots that placement will accept. Any string a pool
can list as a model works: the route is a value, never parsed out of a joined string.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class Route:
    model: str
    pools: frozenset[str] | None = None  # None: any pool serving `model`

    @classmethod
    def to(cls, model: str, pools: Iterable[str] | None = None) -> Route:
        return cls(model, None if pools is None else frozenset(pools))

    def admits(self, pool_id: str) -> bool:
        return self.pools is None or pool_id in self.pools

    def encode(self) -> str:
        """One string per route, for backends that key by strings (Redis); `decode` reverses it."""
        return orjson.dumps([self.model, None if self.pools is None else sorted(self.pools)]).decode()

    @classmethod
    def decode(cls, text: str) -> Route:
        model, pools = orjson.loads(text)
        return cls.to(model, pools)

    def __str__(self) -> str:
        return self.model if self.pools is None else f"{self.model} on {', '.join(sorted(self.pools))}"
