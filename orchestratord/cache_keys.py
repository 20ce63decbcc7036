"""Prompt cache keys: where the last job of each key was placed.

An OpenAI client names a `prompt_cache_key` to say which requests share a long prefix (a system
prompt, an agent's tools, a conversation), so that the service sends them where that prefix may
still sit in a KV cache. orchestratord remembers, per tenant and key, the (pool, replica) the key's
last job was placed on, and placement prefers it as it prefers a session's last (`core.placement`).

The memory is this process's: bounded (the key used least recently is forgotten first), not shared
between replicas of a Redis deployment, lost on restart. It is a hint, as OpenAI's is: a busy,
draining or unready replica is passed over as for any job.
"""

from __future__ import annotations

from collections import OrderedDict

KEPT = 10_000  # keys remembered per process; an entry is two short tuples


class CacheKeys:
    def __init__(self, kept: int = KEPT) -> None:
        self._placed: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()
        self._kept = kept

    def __len__(self) -> int:
        return len(self._placed)

    def last(self, tenant: str, key: str) -> tuple[str, str] | None:
        """The (pool, replica) the key's last job was placed on, if this process remembers it."""
        return self._placed.get((tenant, key))

    def placed(self, tenant: str, key: str, pool_id: str, replica_id: str) -> None:
        entry = (tenant, key)
        self._placed[entry] = (pool_id, replica_id)
        self._placed.move_to_end(entry)
        if len(self._placed) > self._kept:
            self._placed.popitem(last=False)
