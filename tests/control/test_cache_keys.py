"""The memory of where each prompt cache key's last job was placed: per tenant, bounded, the key
used least recently forgotten first."""

from __future__ import annotations

from orchestratord.cache_keys import CacheKeys


async def test_the_last_placement_of_a_key_is_remembered_per_tenant() -> None:
    keys = CacheKeys()
    await keys.placed("acme", "agent", "p", "r0")
    await keys.placed("acme", "agent", "p", "r1")
    assert await keys.last("acme", "agent") == ("p", "r1")
    assert await keys.last("globex", "agent") is None and await keys.last("acme", "other") is None


async def test_the_key_used_least_recently_is_forgotten_first() -> None:
    keys = CacheKeys(kept=2)
    await keys.placed("t", "a", "p", "r0")
    await keys.placed("t", "b", "p", "r0")
    await keys.placed("t", "a", "p", "r1")  # a used again: b is now the oldest
    await keys.placed("t", "c", "p", "r0")
    assert len(keys) == 2
    assert await keys.last("t", "b") is None
    assert await keys.last("t", "a") == ("p", "r1") and await keys.last("t", "c") == ("p", "r0")
