"""The Redis connection of one orchestrator instance: clients, Lua scripts, and one translation of
"Redis is unreachable" into `StateUnavailable` (503 with Retry-After), so no caller sees a raw
redis-py error and nothing waits longer than `timeout_s`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestratord.errors import StateUnavailable

SEP = "\x1f"  # joins the parts of composite names (flows, replicas) inside keys and script arguments
RETRY_AFTER_MS = 1000
SCRIPTS = (
    "create", "take", "start", "append", "append_events", "finish", "dequeue", "expire", "settle",
    "position", "reap", "requeue", "readers", "purge", "lease_acquire", "lease_release", "lease_held",
    "renew", "rate", "lead", "idem_remember", "idem_forget", "held",
)  # fmt: skip
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)  # OSError: TimeoutError too


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """How one instance talks to Redis (from the `redis:` settings)."""

    key_prefix: str = "orchd:"
    lease_ttl_s: float = 10.0
    timeout_s: float = 2.0
    block_s: float = 5.0  # how long one blocking stream read waits before it looks at the job again
    max_connections: int = 64  # the request pool's; a request waits (up to timeout_s) for a free one


def unavailable(exc: BaseException | None = None) -> StateUnavailable:
    detail = f" ({type(exc).__name__})" if exc is not None else ""
    return StateUnavailable(
        f"the shared state backend (Redis) is unreachable{detail}; retry shortly",
        retry_after_ms=RETRY_AFTER_MS,
    )


@asynccontextmanager
async def reachable() -> AsyncIterator[None]:
    """Run Redis calls; a lost or timed-out connection becomes StateUnavailable."""
    try:
        yield
    except UNREACHABLE as exc:
        raise unavailable(exc) from exc
    except RuntimeError as exc:
        # uvloop reports a write on a connection Redis already closed as a RuntimeError
        # ("unable to perform operation on <TCPTransport closed=True ...>; the handler is closed").
        if "handler is closed" not in str(exc):
            raise
        raise unavailable(exc) from exc


def connect(url: str, options: RedisOptions, *, blocking: bool = False) -> aioredis.Redis:
    """A client that fails fast: one quick reconnect attempt (a restarted Redis drops pooled
    connections), then an error. The request client's pool holds at most `max_connections`; a
    request that finds none free waits for one, up to `timeout_s`, then gets StateUnavailable like
    any other wait for Redis. The `blocking` client holds the instance's two long-lived connections
    (the shared stream read and the pub/sub subscription) and waits up to `block_s` longer on reads."""
    read_timeout = options.timeout_s + (options.block_s if blocking else 0.0)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=4 if blocking else options.max_connections,
        timeout=options.timeout_s,
        decode_responses=True,
        protocol=2,  # reply shapes (streams, hashes) as every supported redis-py version returns them
        socket_timeout=read_timeout,
        socket_connect_timeout=options.timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        health_check_interval=30,
    )
    return aioredis.Redis(connection_pool=pool)


class Scripts:
    """The Lua scripts (orchestratord/state/lua), each prefixed with common.lua, called by name."""

    def __init__(self, client: aioredis.Redis, prefix: str, timeout_s: float = 2.0) -> None:
        common = _source("common")
        self.client = client
        self.prefix = prefix
        # Each call's whole budget, its reconnect attempt included: an unreachable Redis is answered
        # (StateUnavailable, 503) within `redis.timeout_s`, as documented, not after two timeouts.
        self.timeout_s = timeout_s
        self._scripts = {name: client.register_script(f"{common}\n{_source(name)}") for name in SCRIPTS}

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def run(self, name: str, *args: str | int | float) -> Any:
        async with reachable(), asyncio.timeout(self.timeout_s):
            return await self._scripts[name](args=[self.prefix, *args])

    async def call(self, *command: str | int | float) -> Any:
        async with reachable(), asyncio.timeout(self.timeout_s):
            return await cast(Any, self.client).execute_command(*command)

    async def pipeline(self, commands: Sequence[Sequence[str | int | float]]) -> list[Any]:
        """Several commands in one round trip, as one transaction."""
        async with reachable(), asyncio.timeout(self.timeout_s):
            pipe: Any = self.client.pipeline(transaction=True)
            for command in commands:
                pipe.execute_command(*command)
            result: list[Any] = await pipe.execute()
            return result


def _source(name: str) -> str:
    return resources.files("orchestratord.state").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
