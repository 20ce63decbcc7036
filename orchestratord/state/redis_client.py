"""The Redis connection of one orchestrator instance: clients (one Redis, or a Redis Cluster), the key
prefix with its hash tag, Lua scripts, and one translation of "Redis is unreachable" into
`StateUnavailable` (503 with Retry-After), so no caller sees a raw redis-py error and nothing waits
longer than `timeout_s`.

Every key of one deployment carries one hash tag (`tagged`), so all of them live in one hash slot:
on a Redis Cluster (or a managed Redis/Valkey in cluster mode) a deployment lives on one shard, and
every script, transaction, pipeline and multi-stream read touches keys of that slot only."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, NoReturn, TypeAlias, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestratord.errors import StateUnavailable
from orchestratord.logs import get_logger
from orchestratord.state.redis_line import Line

SEP = "\x1f"  # joins the parts of composite names (flows, replicas) inside keys and script arguments
RETRY_AFTER_MS = 1000
SCRIPTS = (
    "create", "take", "start", "append", "append_each", "append_events", "finish", "dequeue", "expire",
    "settle", "position", "reap", "requeue", "readers", "purge", "lease_acquire", "lease_release",
    "lease_held", "renew", "rate", "lead", "idem_remember", "idem_forget", "held", "places", "depths",
    "abandoned", "catalog", "open", "forget",
)  # fmt: skip
# OSError: TimeoutError too. On a cluster: no node answers (RedisClusterException), a shard is down or
# its slots are moving (CLUSTERDOWN, TRYAGAIN).
UNREACHABLE = (
    RedisConnectionError, RedisTimeoutError, OSError, RedisClusterException, ClusterDownError, TryAgainError,
)  # fmt: skip
Client: TypeAlias = "aioredis.Redis | RedisCluster"


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel a task root that talks to Redis and wait until it has ended, asking again while it runs on:
    redis-py retries a read whose timeout fired together with the cancel, and the cancel is lost (seen:
    the pub/sub poll on a cluster, so that closing the store hung)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        log.error("task_failed", task=task.get_name(), exc_info=task.exception())


def stopping() -> bool:
    """Whether the running task was asked to stop. A task root that retries on UNREACHABLE checks it:
    a cancel that lands as a library's own timeout fires can come out as TimeoutError, an OSError, and
    would otherwise be retried."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


ANCHOR = "epoch"  # the key every script declares (KEYS[1]): one key of the deployment's slot
log = get_logger(__name__)


def tagged(prefix: str) -> str:
    """The key prefix of a deployment, with a hash tag: `prefix` itself if it has one (a non-empty
    `{...}`, as Redis Cluster reads it: from the first `{` to the next `}`), else `prefix` in braces
    (`orchd:` -> `{orchd:}`). Every key and channel starts with it, so all of them hash to one slot."""
    start = prefix.find("{")
    end = prefix.find("}", start + 1) if start >= 0 else -1
    return prefix if end > start + 1 else f"{{{prefix}}}"


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """How one instance talks to Redis (from the `redis:` settings)."""

    key_prefix: str = "orchd:"  # as configured; keys begin with `tagged(key_prefix)`
    cluster: bool = False  # the URL names a node of a Redis Cluster (redis.asyncio.cluster.RedisCluster)
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


def misconfigured(exc: BaseException) -> StateUnavailable | None:
    """The error that says what to change when `redis.cluster` does not match the Redis it reaches:
    a standalone client redirected by a cluster node (MOVED, ASK, CROSSSLOT), or a cluster client that
    found no cluster. None for any other error."""
    if isinstance(exc, AskError | ClusterCrossSlotError):  # MovedError is an AskError
        fix = "the Redis at state_url is a Redis Cluster node: set redis.cluster: true"
    elif isinstance(exc, RedisClusterException) and "Cluster mode is not enabled" in str(exc):
        fix = (
            "redis.cluster is true but the Redis at state_url is not a cluster node: set redis.cluster: false"
        )
    else:
        return None
    log.error("state_backend_misconfigured", fix=fix, error=str(exc))
    return StateUnavailable(
        f"the shared state backend (Redis) is misconfigured: {fix}", retry_after_ms=RETRY_AFTER_MS
    )


@asynccontextmanager
async def reachable() -> AsyncIterator[None]:
    """Run Redis calls; a lost or timed-out connection becomes StateUnavailable, and so does a
    cluster setting that does not match the Redis it reaches (with the fix in its message)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 (_reraise raises it again, or what it means)
        _reraise(exc)


def _reraise(exc: Exception) -> NoReturn:
    """Raise the StateUnavailable a redis-py error means, or `exc` itself if it means none."""
    translated = _translated(exc)
    if translated is None:
        raise exc
    raise translated from exc


def _translated(exc: Exception) -> StateUnavailable | None:
    """The StateUnavailable that a redis-py error means (None: not one of Redis's reachability)."""
    if isinstance(exc, AskError | ClusterCrossSlotError | RedisClusterException):
        return misconfigured(exc) or unavailable(exc)
    if isinstance(exc, UNREACHABLE):
        return unavailable(exc)
    # uvloop reports a write on a connection Redis already closed as a RuntimeError
    # ("unable to perform operation on <TCPTransport closed=True ...>; the handler is closed").
    if isinstance(exc, RuntimeError) and "handler is closed" in str(exc):
        return unavailable(exc)
    return None


def connect(url: str, options: RedisOptions, *, blocking: bool = False) -> Client:
    """A redis-py client that fails fast: one quick reconnect attempt (a restarted Redis drops pooled
    connections), then an error. Scripts and commands go on the line (redis_line, see `Scripts`); this
    client takes WATCH transactions (redis_documents) and, on a cluster, learns the slot map. Its
    pool holds at most `max_connections`; a request that finds none free waits for one, up to
    `timeout_s`, then gets StateUnavailable like any other wait for Redis. The `blocking` client
    holds the instance's two long-lived connections
    (the shared stream read and the pub/sub subscription) and waits up to `block_s` longer on reads.
    With `cluster`, a RedisCluster that learns the other nodes from the one `url` names; each node's
    pool holds at most `max_connections`, and a request that finds none free gets StateUnavailable
    at once (redis-py's cluster client does not wait for one)."""
    read_timeout = options.timeout_s + (options.block_s if blocking else 0.0)
    if options.cluster:
        return RedisCluster.from_url(
            url,
            max_connections=4 if blocking else options.max_connections,
            decode_responses=True,
            protocol=2,
            socket_timeout=read_timeout,
            socket_connect_timeout=options.timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
            health_check_interval=30,
        )
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


async def subscriber(client: Client) -> Any:
    """A pub/sub of `client`. A cluster's subscribes where the channel's slot is (the deployment's
    node; PUBLISH reaches every node anyway), so it needs the slot map first."""
    if isinstance(client, RedisCluster):
        await client.initialize()  # at once when the map is known
    return client.pubsub(ignore_subscribe_messages=True)


class SlotNode:
    """On a Redis Cluster, a plain client of the node that holds the deployment's hash slot, for
    transactions (MULTI/EXEC, WATCH): redis-py's cluster client runs a transaction's commands through a
    thread and an event loop of its own. Found from the cluster's slot map when first needed; after the
    slot moved, the node the MOVED reply names (the cluster client's own map may refresh later: redis-py
    spaces its refreshes out)."""

    def __init__(self, cluster: RedisCluster, url: str, options: RedisOptions, prefix: str) -> None:
        self._cluster = cluster
        self._url = url
        self._options = replace(options, cluster=False)
        self._anchor = f"{prefix}{ANCHOR}"
        self._client: aioredis.Redis | None = None
        self._line: Line | None = None
        self._blocking: Line | None = None
        self._moved_to: tuple[str, int] | None = None  # the node a MOVED reply named

    @classmethod
    def of(cls, client: Client, url: str, options: RedisOptions, prefix: str) -> SlotNode | None:
        """The deployment's node on a cluster; None on one Redis (its client takes transactions)."""
        return cls(client, url, options, prefix) if isinstance(client, RedisCluster) else None

    async def client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = cast(aioredis.Redis, connect(await self._node_url(), self._options))
        return self._client

    async def line(self, *, blocking: bool = False) -> Line:
        """The shared, pipelined connection to the slot's node (redis_line), for scripts and commands;
        `blocking`: the one for the blocking read, which waits `block_s` longer."""
        if blocking:
            if self._blocking is None:
                wait = self._options.timeout_s + self._options.block_s
                self._blocking = Line(await self._node_url(), timeout_s=wait)
            return self._blocking
        if self._line is None:
            self._line = Line(await self._node_url(), timeout_s=self._options.timeout_s)
        return self._line

    async def _node_url(self) -> str:
        if self._moved_to is not None:
            host, port = self._moved_to
        else:
            await self._cluster.initialize()  # the slot map; at once when it is known
            node = self._cluster.get_node_from_key(self._anchor)
            if node is None:
                raise RedisClusterException(f"no node of the cluster holds the slot of {self._anchor}")
            host, port = node.host, int(node.port)
        parts = urlsplit(self._url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
        return parts._replace(netloc=netloc).geturl()

    async def moved(self, reply: MovedError) -> None:
        """The slot is elsewhere now, on the node `reply` names: the next call goes there."""
        stale, self._client = self._client, None
        lines = [line for line in (self._line, self._blocking) if line is not None]
        self._line = self._blocking = None
        self._moved_to = (reply.host, int(reply.port))
        if stale is not None:
            await stale.aclose()
        for line in lines:
            await line.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        for line in (self._line, self._blocking):
            if line is not None:
                await line.aclose()


class Scripts:
    """The Lua scripts (orchestratord/state/lua), each prefixed with common.lua, called by name, and
    the commands of the request path, all sent on one shared, pipelined connection (redis_line.Line):
    on one Redis, the `line` given; on a cluster, the one to the node that holds the deployment's slot."""

    def __init__(
        self, url: str | None, prefix: str, timeout_s: float = 2.0, *, node: SlotNode | None = None
    ) -> None:
        if (url is None) == (node is None):
            raise ValueError("Scripts needs a URL (one Redis) or a slot node (a cluster), not both")
        common = _parts(_source("common"))
        self._url = url or ""
        self.line = Line(url, timeout_s=timeout_s) if url is not None else None
        self._blocking: Line | None = None  # for `blocking_read`, opened when first needed
        self.node = node  # on a cluster: where scripts, commands and transactions go
        self.prefix = prefix  # tagged: every key the scripts build from it is in one slot
        # The one key each script declares (KEYS[1]): the slot's node runs the script, and Redis
        # refuses any key the script touches outside it.
        self.anchor = self.key(ANCHOR)
        # Each call's whole budget, its connect included: an unreachable Redis is answered
        # (StateUnavailable, 503) within `redis.timeout_s`, as documented.
        self.timeout_s = timeout_s
        self._scripts = {name: _Script(_assembled(common, _source(name))) for name in SCRIPTS}

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def run(self, name: str, *args: str | int | float) -> Any:
        script = self._scripts[name]
        keys, argv = (self.anchor,), (self.prefix, *args)
        return await self._on_line(lambda line: line.evalsha(script.sha, script.source, keys, argv))

    async def call(self, *command: str | int | float) -> Any:
        return _shaped(command, await self._on_line(lambda line: line.execute(*command)))

    async def pipeline(self, commands: Sequence[Sequence[str | int | float]]) -> list[Any]:
        """Several commands in one round trip, as one transaction."""
        replies = await self._on_line(lambda line: line.transaction(commands))
        return [_shaped(command, reply) for command, reply in zip(commands, replies, strict=True)]

    async def blocking_read(self, block_ms: int, *command: str | int | float) -> Any:
        """A blocking read (`XREAD ... BLOCK block_ms ...`) on a line of its own: on the shared line it
        would hold back every call behind it. One caller at a time."""
        try:
            async with asyncio.timeout(self.timeout_s + block_ms / 1000):
                if self.node is None:
                    if self._blocking is None:
                        self._blocking = Line(self._url, timeout_s=self.timeout_s + block_ms / 1000)
                    line = self._blocking
                else:
                    line = await self.node.line(blocking=True)
                return _shaped(command, await line.execute(*command))
        except MovedError as exc:
            if self.node is not None:
                await self.node.moved(exc)
            raise
        except Exception as exc:  # noqa: BLE001 (_reraise raises it again, or what it means)
            _reraise(exc)

    async def _on_line(self, send: Callable[[Line], Awaitable[Any]]) -> Any:
        # Inline rather than `reachable()`: this is every call's path, and a generator-based context
        # manager costs more than the call's own work on the line. On one Redis the line keeps each
        # call's deadline itself (redis_line); a cluster's node lookup is bounded here.
        try:
            if self.node is None:
                return await send(cast(Line, self.line))
            async with asyncio.timeout(self.timeout_s):
                try:
                    return await send(await self.node.line())
                except MovedError as exc:  # the cluster moved the deployment's slot: to its node now
                    await self.node.moved(exc)
                try:
                    return await send(await self.node.line())
                except MovedError as exc:  # still moving: not a misconfiguration, a retry later
                    raise unavailable(exc) from exc
        except StateUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 (_reraise raises it again, or what it means)
            _reraise(exc)

    async def aclose(self) -> None:
        for line in (self.line, self._blocking):
            if line is not None:
                await line.aclose()


@dataclass(frozen=True, slots=True)
class _Script:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


def _shaped(command: Sequence[str | int | float], reply: Any) -> Any:
    """A raw reply in the shape the callers read (as redis-py's client shapes it): a hash as a dict,
    stream entries as (id, fields) pairs."""
    name = str(command[0]).upper()
    if name == "HGETALL":
        return dict(zip(reply[::2], reply[1::2], strict=True))
    if name in ("XRANGE", "XREVRANGE"):
        return _entries(reply)
    if name == "XREAD":
        return [[stream, _entries(entries)] for stream, entries in reply or ()]
    return reply


def _entries(raw: Any) -> list[tuple[str, dict[str, str]]]:
    return [(entry_id, dict(zip(fields[::2], fields[1::2], strict=True))) for entry_id, fields in raw or ()]


def _source(name: str) -> str:
    return resources.files("orchestratord.state").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


_DEFINED = re.compile(r"^local (?:function )?(\w+)", re.MULTILINE)  # common.lua's top level: only these
_COMMENT = re.compile(r"--[^\n]*")  # (tests/state/test_lua_scripts.py checks what this reading misses)


def _parts(common: str) -> dict[str, str]:
    """common.lua's top-level definitions by name, in its order."""
    starts = list(_DEFINED.finditer(common))
    ends = [m.start() for m in starts[1:]] + [len(common)]
    return {m[1]: common[m.start() : end] for m, end in zip(starts, ends, strict=True)}


def _assembled(common: dict[str, str], body: str) -> str:
    """`body` after the parts of common.lua that it names, directly or through another part, in
    common.lua's order (so each is defined before the parts that use it). Redis runs a script's whole
    text at every call, making each function it defines anew: a script that defines only what it may
    use costs Redis less at every call (the whole of common.lua cost about 5 µs a call)."""
    wanted: set[str] = set()
    pending = [body]
    while pending:
        code = _COMMENT.sub("", pending.pop())
        for name, part in common.items():
            if name not in wanted and re.search(rf"\b{name}\b", code):
                wanted.add(name)
                pending.append(part)
    return "".join(part for name, part in common.items() if name in wanted) + body
