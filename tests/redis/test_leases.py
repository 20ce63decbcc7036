"""Slot leases and claims in Redis: never more than a replica's slots across all instances; a dead
instance's leases expire, and its jobs are queued again (no token sent) or end retriably."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import pytest

from orchestratord.core.tasks import JobState
from orchestratord.state.redis import RedisStore
from pool_manager.leases import Lease
from tests.redis.conftest import RedisServer
from tests.redis.test_store import admit, events, run_on

pytestmark = pytest.mark.redis
MakeStore = Callable[..., RedisStore]
TTL_S = 0.4


async def test_concurrent_leases_from_many_instances_never_pass_the_slots(make_store: MakeStore) -> None:
    stores = [make_store() for _ in range(4)]
    grants = await asyncio.gather(
        *(s.leases.acquire(Lease(f"j{i}", "pool", "r0"), 3) for i, s in enumerate(stores * 5))
    )
    assert sum(grants) == 3
    assert await stores[0].leases.held("pool", "r0") == 3 and len(await stores[1].leases.all()) == 3
    holder = (await stores[0].leases.all())[0]
    assert not await stores[2].leases.acquire(Lease(holder.job_id, "pool", "r1"), 3), "one lease per job"
    assert await stores[3].leases.release(holder.job_id) == holder
    assert await stores[3].leases.release(holder.job_id) is None
    assert await stores[2].leases.acquire(Lease("late", "pool", "r0"), 3)


async def test_an_unrenewed_lease_frees_its_slot(make_store: MakeStore) -> None:
    dead, alive = make_store(lease_ttl_s=TTL_S), make_store(lease_ttl_s=TTL_S)
    assert await dead.leases.acquire(Lease("a", "pool", "r0"), 1)
    assert await alive.leases.acquire(Lease("b", "pool", "r1"), 1)
    for _ in range(4):
        await asyncio.sleep(TTL_S / 2)
        await alive.leases.renew(["b"])
    assert await alive.leases.held("pool", "r0") == 0, "the dead holder's slot is free"
    assert await alive.leases.held("pool", "r1") == 1, "a renewed lease lives on"
    assert await alive.leases.acquire(Lease("c", "pool", "r0"), 1)


async def test_a_dead_instances_job_with_tokens_ends_with_a_retriable_worker_reset(
    make_store: MakeStore,
) -> None:
    dead, survivor = make_store(lease_ttl_s=TTL_S), make_store(lease_ttl_s=TTL_S)
    await admit(dead, "j1")
    await run_on(dead, "j1")
    assert await dead.leases.acquire(Lease("j1", "pool", "r0"), 1)
    await dead.append_token("j1", "partial")
    assert await survivor.reap(time.time()) == [], "not before the lease expires"
    await asyncio.sleep(TTL_S + 0.2)
    reaped = await survivor.reap(time.time())
    assert [(r.job_id, r.action, r.engine) for r in reaped] == [("j1", "reset", "mock")]
    log = await events(survivor, "j1")
    assert [e.name for e in log] == ["started", "token", "error"]
    error = orjson.loads(log[-1].data)
    assert error["code"] == "WORKER_RESET" and error["retriable"] is True and error["pool_id"] == "p"
    record = await survivor.get("j1")
    assert record is not None and record.state is JobState.FAILED and record.error_code == "WORKER_RESET"
    assert await survivor.leases.all() == [], "its slot is released"
    assert await survivor.reap(time.time()) == []


async def test_a_dead_instances_job_without_tokens_runs_again_once(make_store: MakeStore) -> None:
    dead, survivor = make_store(lease_ttl_s=TTL_S), make_store(lease_ttl_s=TTL_S)
    await admit(dead, "j1")
    await run_on(dead, "j1")
    await asyncio.sleep(TTL_S + 0.2)
    assert [(r.job_id, r.action) for r in await survivor.reap(time.time())] == [("j1", "requeued")]
    record = await survivor.get("j1")
    assert record is not None and record.state is JobState.QUEUED and record.pool_id is None
    await dead.append_token("j1", "too late")
    await dead.flush("j1")
    assert await dead.append_token("j1", "later") is False, "the old owner can no longer write"
    again = await survivor.get("j1")
    assert again is not None and again.tokens_out == 0 and again.text == "", "nothing was written"
    await run_on(survivor, "j1")
    await asyncio.sleep(TTL_S + 0.2)  # the survivor dies too: no second chance
    assert [(r.job_id, r.action) for r in await dead.reap(time.time())] == [("j1", "reset")]


async def test_a_live_instances_heartbeat_keeps_its_jobs(make_store: MakeStore) -> None:
    owner, other = make_store(lease_ttl_s=TTL_S), make_store(lease_ttl_s=TTL_S)
    await admit(owner, "j1")
    await run_on(owner, "j1")
    for _ in range(4):
        await asyncio.sleep(TTL_S / 2)
        await owner.leases.renew(["j1"])
        assert await other.reap(time.time()) == []
    assert await owner.append_token("j1", "still mine") is True
    await owner.flush("j1")
    assert await owner.append_token("j1", "and mine") is True, "its batch was written"


async def test_a_lease_whose_release_was_lost_is_swept(make_store: MakeStore) -> None:
    store = make_store(lease_ttl_s=TTL_S)
    await admit(store, "j1")
    await run_on(store, "j1")
    assert await store.leases.acquire(Lease("j1", "pool", "r0"), 1)
    await store.finish("j1", JobState.CANCELED, "end", {"stop_reason": "canceled"})  # released never
    await asyncio.sleep(TTL_S + 0.2)
    assert await store.reap(time.time()) == []
    assert await store.leases.all() == [] and await store.leases.held("pool", "r0") == 0


async def test_a_lapsed_lease_is_released_whole_by_the_next_lease_on_its_replica(
    make_store: MakeStore,
) -> None:
    """The next lease on the replica drops a lapsed one from the lease table too, not only from the
    replica's count: nothing is left for a sweep to find."""
    dead, alive = make_store(lease_ttl_s=TTL_S), make_store(lease_ttl_s=TTL_S)
    assert await dead.leases.acquire(Lease("a", "pool", "r0"), 1)
    await asyncio.sleep(TTL_S + 0.2)
    assert await alive.leases.acquire(Lease("b", "pool", "r0"), 1)
    assert await alive.leases.all() == [Lease("b", "pool", "r0")]


async def test_the_sweep_of_lapsed_leases_reads_none_of_the_live_ones(
    own_redis: RedisServer, make_store: MakeStore
) -> None:
    """Every replica reaps every tick: with thousands of streams open, a walk of every live lease was
    thousands of Redis commands a tick on each. The sweep reads the lapsed leases only."""
    store = make_store(url=own_redis.url, lease_ttl_s=30.0)
    live = [f"j{i}" for i in range(300)]
    for job in live:
        assert await store.leases.acquire(Lease(job, "pool", f"r{len(job) % 3}"), 1000)
    client = own_redis.client()
    try:
        client.config_resetstat()
        assert await store.reap(time.time()) == []
        calls = client.info("commandstats")
    finally:
        client.close()
    inside = {
        name: c["calls"]
        for name, c in calls.items()
        if name not in ("cmdstat_evalsha", "cmdstat_config|resetstat")
    }
    assert sum(inside.values()) < 20, inside
    assert len(await store.leases.all()) == 300, "the live leases stay"


async def test_a_deployments_leases_from_before_the_lease_index_are_swept(make_store: MakeStore) -> None:
    """A deployment upgraded with leases held has no index of the replicas with leases (`lz:keys`) yet:
    the first reap builds it from the lease table, so a lease lost then is still swept."""
    store = make_store(lease_ttl_s=TTL_S)
    assert await store.leases.acquire(Lease("old", "pool", "r0"), 1)
    await store._scripts.call("DEL", store._scripts.key("lz:keys"))
    await asyncio.sleep(TTL_S + 0.2)
    assert await store.reap(time.time()) == []
    assert await store.leases.all() == [] and await store.leases.held("pool", "r0") == 0


async def test_a_snapshot_of_every_pool_counts_their_leases_in_one_call(
    own_redis: RedisServer, make_store: MakeStore
) -> None:
    """The dispatcher snapshots the pools for each job it takes: on Redis, the live leases of every
    replica of every pool come back from one script call, not one call (and round trip) each."""
    from pool_manager.registry import PoolRegistry
    from pool_manager.specs import PoolSpec, ReplicaSpec

    store = make_store(url=own_redis.url)
    replicas = (ReplicaSpec("r0"), ReplicaSpec("r1"))
    specs = [PoolSpec(id=f"p{i}", engine="mock", models=("m",), replicas=replicas, slots=4) for i in range(3)]
    registry = PoolRegistry(specs, leases=store.leases)
    for job, pool, replica in (("a", "p0", "r1"), ("b", "p2", "r0"), ("c", "p2", "r0")):
        assert await store.leases.acquire(Lease(job, pool, replica), 4)
    client = own_redis.client()
    try:
        client.config_resetstat()
        snapshots = await registry.snapshot()
        calls = client.info("commandstats")
    finally:
        client.close()
    free = {(p.pool_id, r.replica_id): r.slots_free for p in snapshots for r in p.replicas}
    assert free == {("p0", "r0"): 4, ("p0", "r1"): 3, ("p1", "r0"): 4, ("p1", "r1"): 4,
                    ("p2", "r0"): 2, ("p2", "r1"): 4}  # fmt: skip
    assert calls["cmdstat_evalsha"]["calls"] == 1, calls
