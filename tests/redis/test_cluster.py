"""Redis Cluster: every key of a deployment carries one hash tag, so a deployment lives in one slot,
on whichever node holds it; a client that is told the wrong topology says what to change."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import pytest
import redis.exceptions

from orchestratord.core.queue import Admitted, QueueEntry
from orchestratord.core.route import Route
from orchestratord.core.tasks import JobState
from orchestratord.errors import StateUnavailable
from orchestratord.state.base import JobRecord, SessionRecord
from orchestratord.state.redis import RedisStore
from orchestratord.state.redis_client import RedisOptions, tagged
from tests.redis.conftest import LocalCluster, RedisServer

pytestmark = pytest.mark.redis


def test_every_prefix_gets_one_hash_tag() -> None:
    assert tagged("orchd:") == "{orchd:}"
    assert tagged("{orchd}:") == "{orchd}:"  # a tag of its own is kept: keys as the operator wrote them
    assert tagged("team-a:{llm}:") == "team-a:{llm}:"
    assert tagged("a{}b:") == "{a{}b:}"  # `{}` is no tag for Redis: the whole prefix becomes one


def prefix_on(cluster: LocalCluster, node: RedisServer) -> str:
    """A fresh deployment prefix whose hash slot `node` holds."""
    while True:
        candidate = f"c{uuid.uuid4().hex[:10]}:"
        if cluster.node_of(f"{tagged(candidate)}epoch") is node:
            return candidate


def store_on(url: str, prefix: str, *, cluster: bool = True) -> RedisStore:
    return RedisStore(url, options=RedisOptions(key_prefix=prefix, cluster=cluster, timeout_s=2.0))


async def run_one_job(admits: RedisStore, runs: RedisStore, job_id: str) -> list[str]:
    """A job's whole life across two instances; the names of the events a third read gives back."""
    record = JobRecord(
        job_id=job_id, tenant="acme", model_ref="mock", priority="interactive", state=JobState.QUEUED,
        created_at=time.time(), spec="{}",
    )  # fmt: skip
    admitted = await admits.create(record, QueueEntry(job_id, "acme", "interactive", route=Route("mock")))
    assert isinstance(admitted, Admitted)
    await admits.append(job_id, "started", {"job_id": job_id})
    taken = await runs.take(lambda _: True, lambda _: True)
    assert taken is not None and taken.job_id == job_id
    assert await runs.start(job_id, pool_id="default", replica_id="r0", engine="mock") is not None
    assert await runs.append_token(job_id, "hi")
    assert await runs.finish(job_id, JobState.SUCCEEDED, "end", {"stop_reason": "length"}) is not None
    return [event.name async for event in admits.read(job_id)]


async def test_a_deployment_works_on_whichever_node_holds_its_slot(redis_cluster: LocalCluster) -> None:
    """Three deployments, one per node; each instance names only the first node (or the last)."""
    first, last = redis_cluster.nodes[0], redis_cluster.nodes[-1]
    for node in redis_cluster.nodes:
        prefix = prefix_on(redis_cluster, node)
        admits, runs = store_on(first.url, prefix), store_on(last.url, prefix)
        try:
            job_id = uuid.uuid4().hex
            assert await run_one_job(admits, runs, job_id) == ["started", "token", "end"]
            # Its keys are on the node that holds the tag's slot; the others send a client there.
            key = f"{tagged(prefix)}job:{job_id}"
            assert node.client().exists(key) == 1
            for other in redis_cluster.nodes:
                if other is not node:
                    with pytest.raises(redis.exceptions.MovedError):
                        other.client().exists(key)
        finally:
            await admits.aclose()
            await runs.aclose()


async def test_a_standalone_client_on_a_cluster_says_to_set_cluster(redis_cluster: LocalCluster) -> None:
    prefix = prefix_on(redis_cluster, redis_cluster.nodes[1])  # not the node the URL names
    store = store_on(redis_cluster.url, prefix, cluster=False)
    try:
        with pytest.raises(StateUnavailable, match=r"is a Redis Cluster node: set redis.cluster: true"):
            await store.get("j1")
    finally:
        await store.aclose()


async def test_a_cluster_client_on_one_redis_says_to_unset_cluster(redis_server: RedisServer) -> None:
    store = store_on(redis_server.url, "c:", cluster=True)
    try:
        with pytest.raises(StateUnavailable, match=r"is not a cluster node: set redis.cluster: false"):
            await store.get("j1")
        assert not await store.ping()
    finally:
        await store.aclose()


def move_slot(cluster: LocalCluster, slot: int, source: RedisServer, target: RedisServer) -> None:
    """Move one hash slot with its keys, as `redis-cli --cluster reshard` does."""
    src, dst = source.client(), target.client()
    src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    for node in cluster.nodes:
        node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


async def test_a_deployment_follows_its_slot_to_another_node(redis_cluster: LocalCluster) -> None:
    source, target = redis_cluster.nodes[1], redis_cluster.nodes[2]
    prefix = prefix_on(redis_cluster, source)
    admits, runs = store_on(redis_cluster.url, prefix), store_on(redis_cluster.url, prefix)
    now = time.time()
    visit = SessionRecord("s1", "acme", "mock", created_at=now, expires_at=now + 600)
    try:
        before = uuid.uuid4().hex
        assert await run_one_job(admits, runs, before) == ["started", "token", "end"]
        await admits.session_update("acme/s1", lambda _: visit)
        slot = int(source.client().execute_command("CLUSTER", "KEYSLOT", f"{tagged(prefix)}epoch"))
        move_slot(redis_cluster, slot, source, target)
        # The same instances go on: reads and transactions find the slot's new node.
        done = await runs.get(before)
        assert done is not None and done.state is JobState.SUCCEEDED
        await runs.session_update("acme/s1", lambda s: replace(s or visit, turns=(s or visit).turns + 1))
        stored = await admits.session_get("acme/s1")
        assert stored is not None and stored.turns == 1
        after = uuid.uuid4().hex
        assert await run_one_job(admits, runs, after) == ["started", "token", "end"]
        assert target.client().exists(f"{tagged(prefix)}job:{after}") == 1
    finally:
        await admits.aclose()
        await runs.aclose()
