"""Prompt cache keys: where the last job of each key was placed.

An OpenAI client names a `prompt_cache_key` to say which requests share a long prefix (a system
prompt, an agent's tools, a conversation), so that the service sends them where that prefix may
still sit in a KV cache. orchestratord remembers, per tenant and key, the (pool, replica) the key's
last job was placed on, and placement prefers it as it prefers a session's last (`core.placement`).

The embedded backend remembers in this process: bounded (the key used least recently is forgotten
first), lost on restart. A Redis deployment remembers in Redis, for all its replicas (a key's next job
goes back to its replica whichever orchestratord replica places it, and a replica started later knows
it), each key until it goes unused for `SHARED_TTL_S`. It is a hint, as OpenAI's is: a busy, draining
or unready replica is passed over as for any job.
"""

from __future__ import annotations

from collections import OrderedDict

from orchestratord.state.shared import SharedState

KEPT = 10_000  # keys remembered by one process; an entry is two short tuples
SHARED_TTL_S = 3600.0  # a key unused this long is forgotten by a Redis deployment (an engine's KV
# cache keeps a prefix minutes to an hour under load, as OpenAI's prompt caches do)


class CacheKeys:
    def __init__(self, kept: int = KEPT, *, shared: SharedState | None = None) -> None:
        self._placed: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()
        self._kept = kept
        self._shared = shared

    def __len__(self) -> int:
        return len(self._placed)

    async def last(self, tenant: str, key: str) -> tuple[str, str] | None:
        """The (pool, replica) the key's last job was placed on, if it is remembered."""
        if self._shared is not None:
            return await self._shared.cache_key_place(tenant, key)
        return self._placed.get((tenant, key))

    async def placed(self, tenant: str, key: str, pool_id: str, replica_id: str) -> None:
        if self._shared is not None:
            await self._shared.cache_key_placed(tenant, key, pool_id, replica_id, SHARED_TTL_S)
            return
        entry = (tenant, key)
        self._placed[entry] = (pool_id, replica_id)
        self._placed.move_to_end(entry)
        if len(self._placed) > self._kept:
            self._placed.popitem(last=False)
