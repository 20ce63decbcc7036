"""Small JSON documents in Redis changed by pure functions (sessions, budget ledgers): read, apply
the change, write back in a WATCH/MULTI transaction, and apply it again if another replica changed
the document in between, so concurrent changes on several replicas never lose one another."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import MovedError, WatchError

from orchestratord.state.redis_client import Client, SlotNode, reachable, unavailable

T = TypeVar("T")


class Documents:
    def __init__(self, client: Client, prefix: str, node: SlotNode | None = None) -> None:
        self._client = client
        self._prefix = prefix
        self._node = node  # on a cluster, transactions go to the deployment's node

    async def get(self, name: str, cls: type[T]) -> T | None:
        async with reachable():
            raw = await self._client.get(self._prefix + name)
        return None if raw is None else decode(cls, orjson.loads(raw))

    async def update(
        self,
        name: str,
        cls: type[T],
        change: Callable[[T | None], T | None],
        ttl_ms: Callable[[T], int | None] = lambda _: None,
    ) -> T | None:
        """Replace the document with `change(current)` (None deletes it), atomically. `ttl_ms` says how
        long the new document lives (None: for ever; 0 or less: it is deleted)."""
        key = self._prefix + name
        async with reachable():
            if self._node is None:
                return await _update(cast(aioredis.Redis, self._client), key, cls, change, ttl_ms)
            try:
                return await _update(await self._node.client(), key, cls, change, ttl_ms)
            except MovedError as exc:  # the cluster moved the deployment's slot: to its node now
                await self._node.moved(exc)
            try:
                return await _update(await self._node.client(), key, cls, change, ttl_ms)
            except MovedError as exc:  # still moving: not a misconfiguration, a retry later
                raise unavailable(exc) from exc

    async def delete(self, name: str) -> bool:
        async with reachable():
            return bool(await self._client.delete(self._prefix + name))


async def _update(
    client: aioredis.Redis,
    key: str,
    cls: type[T],
    change: Callable[[T | None], T | None],
    ttl_ms: Callable[[Any], int | None],
) -> T | None:
    async with cast(Any, client.pipeline(transaction=True)) as pipe:
        while True:
            try:
                await pipe.watch(key)
                raw = await pipe.get(key)
                updated = change(None if raw is None else decode(cls, orjson.loads(raw)))
                pipe.multi()
                keep = None if updated is None else ttl_ms(updated)
                if updated is None or (keep is not None and keep <= 0):
                    pipe.delete(key)
                else:
                    pipe.set(key, orjson.dumps(dataclasses.asdict(cast(Any, updated))), px=keep)
                await pipe.execute()
                return updated
            except WatchError:
                continue  # another replica changed it first: apply the change to its version


def decode(cls: type[T], data: Any) -> T:
    """Rebuild a (possibly nested) frozen dataclass from its `asdict` JSON."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cast(Any, cls)) if f.name in data]
    values = {f.name: _value(hints[f.name], data[f.name]) for f in fields}
    return cls(**values)


def _value(declared: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(declared)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(declared) if a is not type(None)]
        return _value(kinds[0], value) if len(kinds) == 1 else value
    if origin is tuple:
        item = typing.get_args(declared)[0]
        return tuple(_value(item, v) for v in value)
    if dataclasses.is_dataclass(declared) and isinstance(declared, type):
        return decode(declared, value)
    return value
