"""What a deployment keeps when Redis restarts (docs/scaling.md, "What survives a Redis restart"):
with persistence on (`--appendonly yes`), everything; restarted empty, nothing, and the replicas can
tell (the data's epoch changes, so a job issued before it answers STATE_LOST). Running jobs through
the restart are in test_outages.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestratord.core.budget import Ledger
from orchestratord.core.tasks import JobState
from orchestratord.errors import StateUnavailable
from orchestratord.state.base import IdempotencyRecord, SessionRecord
from orchestratord.state.redis import RedisStore
from orchestratord.state.redis_client import RedisOptions
from orchestratord.state.shared import PoolChange
from pool_manager.leases import Lease
from tests.redis.conftest import RedisServer, prefix, running_redis
from tests.redis.test_store import admit, events, run_on

pytestmark = pytest.mark.redis
AOF = ["--appendonly", "yes", "--appendfsync", "always"]


@pytest.fixture(params=["appendonly", "empty"])
def restarted(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RedisServer, bool]]:
    """A redis-server of its own, with persistence on (AOF, fsync on every write) or off."""
    kept = request.param == "appendonly"
    with running_redis() as server:
        server.extra = [*(AOF if kept else []), "--dir", str(tmp_path)]
        server.stop()
        server.start()
        yield server, kept


async def until_back(store: RedisStore) -> None:
    """The old connections of `store` fail once Redis is back; its next call reconnects."""
    deadline = time.monotonic() + 10
    while True:
        try:
            await store.queued()
            return
        except StateUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def session(now: float) -> SessionRecord:
    return SessionRecord("s1", "acme", "mock", created_at=now, expires_at=now + 600, turns=2)


async def test_what_survives_a_redis_restart(restarted: tuple[RedisServer, bool]) -> None:
    server, kept = restarted
    options = RedisOptions(key_prefix=prefix(), lease_ttl_s=30.0, timeout_s=1.0)
    before = RedisStore(server.url, options=options)
    now = time.time()
    try:
        since = await before.lost_since()
        # A finished job, a running one (taken, started, its slot leased), two queued ones.
        await admit(before, "done")
        await before.append("done", "started", {"job_id": "done"})
        await before.finish("done", JobState.CANCELED, "end", {"stop_reason": "canceled"})
        done_log = [(e.id, e.name) for e in await events(before, "done")]
        await admit(before, "running")
        await run_on(before, "running")
        await before.flush("running")
        assert await before.leases.acquire(Lease("running", "p", "r"), 1)
        for job_id in ("q1", "q2"):
            await admit(before, job_id)
        assert await before.remember_idempotency("k", "acme", "fp", "q1", 600) is None
        await before.session_update("acme/s1", lambda _: session(now))
        await before.ledger_update("tenant:acme", lambda _: Ledger(window_start=100.0))
        await before.announce(PoolChange("default", "drain", deadline_at=now + 60))
        await before.announce(PoolChange("solo", "reload", model="other"))
        assert await before.take_rate("gamma", 0.01, 1) == 0.0  # its one request per 100 s: spent

        server.stop()  # SIGKILL: no shutdown save; only what the AOF holds comes back
        server.start()
        await until_back(before)
        after = RedisStore(server.url, options=options)  # a replica that starts after the restart
        try:
            if kept:
                await assert_kept(after, done_log, since, now)
            else:
                await assert_lost(after, since)
        finally:
            await after.aclose()
    finally:
        await before.aclose()


async def assert_kept(after: RedisStore, done_log: list[tuple[str, str]], since: float, now: float) -> None:
    assert await after.lost_since() == since, "the same data: no job reads as lost"
    finished = await after.get("done")
    assert finished is not None and finished.state is JobState.CANCELED
    assert [(e.id, e.name) for e in await events(after, "done")] == done_log, "the log, with its ids"
    running = await after.get("running")
    assert running is not None and running.state is JobState.RUNNING
    assert await after.leases.held("p", "r") == 1, "its slot stays leased until its claim expires"
    assert [e.job_id for e in await after.queued()] == ["q1", "q2"], "the queue, in its order"
    place = await after.place("q2")
    assert place is not None and place.ahead == 1
    assert await after.remember_idempotency("k", "acme", "fp", "q-retry", 600) == IdempotencyRecord(
        "q1", "fp"
    )
    stored = await after.session_get("acme/s1")
    assert stored is not None and stored.turns == 2
    ledger = await after.ledger_get("tenant:acme")
    assert ledger is not None and ledger.window_start == 100.0
    assert sorted(await after._recorded_pool_changes(), key=lambda c: c.pool_id) == [
        PoolChange("default", "drain", deadline_at=now + 60),
        PoolChange("solo", "reload", model="other"),
    ]
    assert await after.take_rate("gamma", 0.01, 1) > 0, "a rate limit's bucket stays spent"
    taken = await after.take(lambda _: True, lambda _: True)
    assert taken is not None and taken.job_id == "q1", "the queue serves on from where it was"


async def assert_lost(after: RedisStore, since: float) -> None:
    assert await after.lost_since() > since, "new data: jobs issued before it answer STATE_LOST"
    for job_id in ("done", "running", "q1", "q2"):
        assert await after.get(job_id) is None
    assert await events(after, "done") == []
    assert await after.leases.held("p", "r") == 0
    assert await after.queued() == []
    assert await after.remember_idempotency("k", "acme", "fp", "q-retry", 600) is None, "a retry runs again"
    assert await after.session_get("acme/s1") is None
    assert await after.ledger_get("tenant:acme") is None
    assert await after._recorded_pool_changes() == [], "drains and reloads are forgotten"
    assert await after.take_rate("gamma", 0.01, 1) == 0.0, "rate limits start with full buckets"
