"""RedisStore keeps the StateStore contract: one registry and one event log per job, shared by every
instance (replica) that talks to the same Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

import orjson
import pytest
from prometheus_client import CollectorRegistry

from orchestratord.api.stream import encode, encode_run
from orchestratord.core.budget import Hold, Ledger, Usage
from orchestratord.core.queue import Admitted, QueueEntry, QueuePolicy
from orchestratord.core.route import Route
from orchestratord.core.tasks import RS, US, EventRun, JobState, LogEvent
from orchestratord.endings import Endings
from orchestratord.errors import PoolUnavailable, StateUnavailable
from orchestratord.metrics import Metrics
from orchestratord.state.base import JobRecord, SessionRecord
from orchestratord.state.memory import MemoryStore
from orchestratord.state.redis import RedisStore
from orchestratord.state.redis_client import tagged
from orchestratord.state.redis_tail import events_of
from pool_manager.leases import Lease
from pool_manager.registry import PoolRegistry
from tests.fakes.servers import free_port
from tests.redis.conftest import RedisTarget, standalone_and_cluster

pytestmark = pytest.mark.redis
MakeStore = Callable[..., RedisStore]


@pytest.fixture(params=["standalone", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    """Every test here runs on one Redis and on a three-node Redis Cluster."""
    return standalone_and_cluster(request)


def record(job_id: str, **overrides: object) -> JobRecord:
    fields: dict[str, object] = {
        "job_id": job_id, "tenant": "acme", "model_ref": "mock", "priority": "interactive",
        "state": JobState.QUEUED, "created_at": time.time(), "spec": '{"job_id": "x"}',
    }  # fmt: skip
    fields.update(overrides)
    return JobRecord(**fields)  # type: ignore[arg-type]


def entry(job_id: str, **overrides: object) -> QueueEntry:
    fields: dict[str, object] = {"job_id": job_id, "tenant": "acme", "priority": "interactive"}
    fields["route"] = Route("mock")
    fields.update(overrides)
    return QueueEntry(**fields)  # type: ignore[arg-type]


async def admit(store: RedisStore, job_id: str, **record_fields: object) -> None:
    outcome = await store.create(record(job_id, **record_fields), entry(job_id))
    assert isinstance(outcome, Admitted)


async def run_on(store: RedisStore, job_id: str) -> None:
    """Take `job_id` from the queue on `store` and start it there."""
    taken = await store.take(lambda key: True, lambda tenant: True)
    assert taken is not None and taken.job_id == job_id
    assert await store.start(job_id, pool_id="p", replica_id="r", engine="mock") is not None


def script_calls(store: RedisStore) -> list[str]:
    """The names of the scripts `store` runs from now on, in order."""
    calls: list[str] = []
    run = store._scripts.run

    async def counted(name: str, *args: object) -> object:
        calls.append(name)
        return await run(name, *args)

    store._scripts.run = counted  # type: ignore[method-assign]
    return calls


async def events(store: RedisStore, job_id: str, after: str | None = None) -> list[LogEvent]:
    return [e async for e in store.read(job_id, after)]


async def test_a_record_written_by_one_instance_reads_the_same_on_another(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    original = record("j1", session_id="s-1", correlation_id="c-9", cancel_on_disconnect=False)
    assert isinstance(await a.create(original, entry("j1")), Admitted)
    read = await b.get("j1")
    assert read is not None and abs(read.created_at - original.created_at) < 5  # stamped by Redis
    assert read == replace(original, created_at=read.created_at)
    assert await b.get("nope") is None


async def test_a_jobs_times_are_redis_clock_whatever_the_replicas_clocks_say(make_store: MakeStore) -> None:
    """Replicas on several hosts have clocks that differ. A job admitted through one, run on another
    and canceled through a third is stamped by Redis's one clock, when each change happens there, so
    its queue and decode times hold, and so does every "ended since" read that compares the stamps."""
    hour = 3600.0
    ahead = make_store(wall=lambda: time.time() + hour)
    behind = make_store(wall=lambda: time.time() - hour)
    other = make_store()
    before = time.time()  # Redis runs on this host: its clock is this one
    await admit(ahead, "j1", created_at=time.time() + hour)  # as the admission on `ahead` stamps it
    await asyncio.sleep(0.05)
    await run_on(behind, "j1")
    await asyncio.sleep(0.05)
    end = await other.finish("j1", JobState.CANCELED, "end", {"stop_reason": "canceled"})
    after = time.time()
    read = await other.get("j1")
    assert end is not None and read is not None and read.started_at and read.finished_at
    assert before - 1 <= read.created_at <= read.started_at <= read.finished_at <= after + 1
    assert read.started_at - read.created_at >= 0.04 and read.finished_at - read.started_at >= 0.04
    assert 40 <= orjson.loads(end.data)["decode_ms"] <= round((after - before) * 1000) + 1000
    ended = await other.jobs(frozenset({JobState.CANCELED}), ended_after=before - 1)
    assert [r.job_id for r in ended] == ["j1"]


async def test_the_event_log_is_shared_ordered_and_ends_once(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    await admit(a, "j1")
    assert (await a.append("j1", "started", {"job_id": "j1", "queue_position": 0})) is not None
    await run_on(a, "j1")
    for text in ("Hel", "", "lo ä 🙂"):
        assert await a.append_token("j1", text) is True
    await a.flush("j1")  # written behind the calls, in batches
    end = await b.finish("j1", JobState.CANCELED, "end", {"stop_reason": "canceled"})
    assert end is not None
    assert await b.finish("j1", JobState.FAILED, "error", {"code": "INTERNAL"}) is None, "ends once"
    # the owner learns it with the event after the refused batch; nothing is written after the end
    assert await a.append_token("j1", "late") is True
    await a.flush("j1")
    assert await a.append("j1", "metrics", {}) is None
    assert await a.append_token("j1", "later") is False
    log = await events(b, "j1")
    assert [e.name for e in log] == ["started", "token", "token", "token", "end"]
    assert [orjson.loads(e.data)["i"] for e in log if e.name == "token"] == [0, 1, 2]
    ids = [e.id for e in log]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) and len(set(ids)) == 5
    end_data = orjson.loads(end.data)
    assert end_data["stop_reason"] == "canceled" and end_data["tokens_out"] == 3
    assert end_data["decode_time_ms"] == end_data["decode_ms"] >= 0
    assert log[-1] == end
    final = await a.get("j1")
    assert final is not None and final.state is JobState.CANCELED and final.text == "Hello ä 🙂"
    assert final.tokens_out == 3 and final.stop_reason == "canceled"
    assert await events(a, "j1", after=ids[2]) == log[3:], "Last-Event-ID resumes on any instance"
    assert all(a.valid_event_id(i) for i in ids)
    assert not a.valid_event_id("12") and not a.valid_event_id("1-x")


async def test_started_is_always_first_even_when_another_replica_writes_first(make_store: MakeStore) -> None:
    admitting, dispatching = make_store(), make_store()
    await admit(admitting, "j1", correlation_id="c-1")
    await run_on(dispatching, "j1")  # dispatched before the admitting replica announced it
    await dispatching.append("j1", "metrics", {"pool_id": "p"})
    assert await admitting.append("j1", "started", {"job_id": "j1", "queue_position": 3}) is None
    await dispatching.finish("j1", JobState.CANCELED, "end", {"stop_reason": "canceled"})
    log = await events(admitting, "j1")
    assert [e.name for e in log] == ["started", "metrics", "end"]
    started = orjson.loads(log[0].data)
    assert started["job_id"] == "j1" and started["correlation_id"] == "c-1" and started["queue_position"] == 0


async def test_only_the_claimant_runs_a_job(make_store: MakeStore) -> None:
    owner, other = make_store(), make_store()
    await admit(owner, "j1")
    assert await other.start("j1", pool_id="p", replica_id="r", engine="mock") is None, "not taken yet"
    await run_on(owner, "j1")
    await other.append_token("j1", "x")
    await other.flush("j1")
    assert await other.append_token("j1", "y") is False, "its batch was refused"
    assert await other.finish("j1", JobState.SUCCEEDED, "end", {"stop_reason": "eos"}) is None
    assert await owner.append_token("j1", "x") is True
    assert await owner.finish("j1", JobState.SUCCEEDED, "end", {"stop_reason": "eos"}) is not None


async def test_the_claimant_starts_a_running_job_again_on_another_replica_for_a_failover(
    make_store: MakeStore,
) -> None:
    owner, other = make_store(), make_store()
    await admit(owner, "j1")
    await run_on(owner, "j1")
    again = await owner.start("j1", pool_id="p2", replica_id="r2", engine="mock")
    assert again is not None and again.state is JobState.RUNNING
    assert (again.pool_id, again.replica_id) == ("p2", "r2"), "the record names the replica that runs it now"
    assert await other.start("j1", pool_id="p", replica_id="r3", engine="mock") is None, "not its claim"
    assert (await owner.get("j1")).replica_id == "r2"  # type: ignore[union-attr]
    await other.finish("j1", JobState.CANCELED, "end", {"stop_reason": "canceled"})
    assert await owner.start("j1", pool_id="p", replica_id="r", engine="mock") is None, "it has ended"
    final = await owner.get("j1")
    assert final is not None and final.state is JobState.CANCELED


async def test_a_reader_waits_for_events_written_by_another_instance(make_store: MakeStore) -> None:
    writer, reader = make_store(), make_store()
    await admit(writer, "j1")
    await run_on(writer, "j1")
    seen: list[str] = []

    async def tail() -> None:
        async for event in reader.read("j1"):
            seen.append(event.name)

    task = asyncio.create_task(tail())
    for _ in range(250):  # the first event, however slow the machine (a cluster takes more round trips)
        if seen:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert seen == ["started"] and not task.done()
    await writer.append_token("j1", "a")
    await writer.finish("j1", JobState.SUCCEEDED, "end", {"stop_reason": "eos"})
    await asyncio.wait_for(task, 5)
    assert seen == ["started", "token", "end"]


async def test_a_finished_job_expires_after_its_retention(
    make_store: MakeStore, redis_target: RedisTarget
) -> None:
    store = make_store(retention_s=30)
    await admit(store, "j1")
    await store.finish("j1", JobState.CANCELED, "end", {"stop_reason": "canceled"})
    client = redis_target.client()
    ttls = [client.pttl(f"{tagged(store.options.key_prefix)}{k}:j1") for k in ("job", "log")]
    assert all(0 < ttl <= 30_000 for ttl in ttls), ttls
    assert await store.purge(time.time()) == 0
    assert await store.purge(time.time() + 31) == 1
    assert await store.get("j1") is None and await events(store, "j1") == []


async def test_a_purged_job_leaves_no_reader_count_behind(make_store: MakeStore) -> None:
    """A reader that read its job to the end is not counted out (api/stream.py); the purge of the job
    drops its count from every live instance's readers."""
    store, other = make_store(retention_s=30), make_store(retention_s=30)
    await admit(store, "j1")
    assert await store.attach("j1") == 1 and await other.attach("j1") == 2
    await store.finish("j1", JobState.CANCELED, "end", {"stop_reason": "canceled"})
    counts = [store._key(f"readers:{s.owner}") for s in (store, other)]
    assert [await store._scripts.call("HGET", key, "j1") for key in counts] == ["1", "1"]
    assert await store.purge(time.time() + 31) == 1
    assert [await store._scripts.call("HGET", key, "j1") for key in counts] == [None, None]


async def test_an_ended_job_is_forgotten_at_once_on_every_instance(make_store: MakeStore) -> None:
    """`forget` (the Responses API's delete): a live job is left as it is; an ended one goes, with its
    log, its place among the ended jobs and every instance's reader count, before its retention."""
    store, other = make_store(retention_s=30), make_store(retention_s=30)
    await admit(store, "j1")
    assert await other.attach("j1") == 1
    assert not await other.forget("j1") and await store.get("j1") is not None  # still queued
    await store.finish("j1", JobState.CANCELED, "end", {"stop_reason": "canceled"})
    assert await other.forget("j1")
    assert await store.get("j1") is None and await events(store, "j1") == []
    assert await store._scripts.call("HGET", store._key(f"readers:{other.owner}"), "j1") is None
    assert await store.purge(time.time() + 31) == 0  # nothing left for the purge
    assert not await store.forget("j1")


async def test_readers_are_counted_across_instances(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    await admit(a, "j1")
    assert await a.attach("j1") == 1 and await b.attach("j1") == 2
    assert await a.detach("j1") == 1 and await b.detach("j1") == 0 and await b.detach("j1") == 0
    got = await b.get("j1")
    assert got is not None and got.attached and got.readers == 0
    assert await a.attach("gone") == 0 and await a.get("gone") is None, "no record is created by a reader"


async def test_a_stream_opened_reads_the_record_and_counts_its_reader_in_one_call(
    make_store: MakeStore,
) -> None:
    """`open` (api/stream.py, a reader from the start): the record and the reader counted in, one round
    trip; a tenant that does not own the job, or a job that does not exist, gets nothing and counts
    nobody in."""
    a, b = make_store(), make_store()
    await admit(a, "j1", cancel_on_disconnect=True)
    calls = script_calls(a)
    assert await a._scripts.call("ZSCORE", a._key("unread"), "j1") is not None, "due unless read"
    opened = await a.open("j1", "acme")
    assert calls == ["open"], "one call: no separate read of the record"
    assert opened is not None and opened.tenant == "acme" and opened.state is JobState.QUEUED
    assert opened.readers == 1 and opened.attached
    assert await a._scripts.call("ZSCORE", a._key("unread"), "j1") is None, "no longer due as unread"
    assert await b.open("j1", "other") is None and await b.open("nope", None) is None
    assert await b.open("j1", None) is not None, "any tenant's job, for a caller who may read every one"
    assert await b.detach("j1") == 1 and await a.detach("j1") == 0
    assert await a._scripts.call("HGET", a._key(f"readers:{b.owner}"), "j1") is None, "b counted out"


async def test_queued_jobs_events_go_in_one_call_and_one_news_entry(make_store: MakeStore) -> None:
    """`append_each` (housekeeping's queue positions): one script call however many jobs wait, one
    entry in the news stream for the replicas' shared reads; a job that left the queue (taken by
    another instance) or that Redis does not hold gets nothing; `started` still comes first."""
    a, b = make_store(), make_store()
    for job_id in ("j1", "j2", "j3"):
        await admit(a, job_id)
    await run_on(b, "j1")  # running on b: its events are b's
    calls = script_calls(a)
    news = await a._scripts.call("XLEN", a._key("news"))
    appended = await a.append_each(
        [(job_id, "metrics", {"queue_position": n}) for n, job_id in enumerate(("j1", "j2", "gone", "j3"))]
    )
    assert appended == 2 and calls == ["append_each"]
    assert await a._scripts.call("XLEN", a._key("news")) == news + 1, "one news entry for both"
    for job_id, position in (("j2", 1), ("j3", 3)):
        names = [(e.name, orjson.loads(e.data)) for e in await events_in_redis(a, job_id)]
        assert [n for n, _ in names] == ["started", "metrics"], "started first, as `append` writes it"
        assert names[1][1] == {"queue_position": position}
    assert "metrics" not in [e.name for e in await events_in_redis(a, "j1")], "not queued any more"


async def test_a_lease_that_names_its_engine_starts_the_job_in_the_same_call(make_store: MakeStore) -> None:
    """The dispatcher's lease (the registry names the pool's engine) starts the job taken here in the
    same script; its run's `start` then asks Redis nothing. A job this instance has not taken is not
    started by its lease, and its run hears so; a lease without an engine starts nothing."""
    a, b = make_store(), make_store()
    for job_id in ("j1", "j2", "j3"):
        await admit(a, job_id)
    taken = await a.take(lambda key: True, lambda tenant: True)
    assert taken is not None and taken.job_id == "j1"
    calls = script_calls(a)
    assert await a.leases.acquire(Lease("j1", "p", "r", "mock"), 4)
    assert calls == ["lease_acquire"]
    running = await b.get("j1")
    assert running is not None and running.state is JobState.RUNNING
    assert (running.pool_id, running.replica_id, running.engine) == ("p", "r", "mock")
    record = await a.start("j1", pool_id="p", replica_id="r", engine="mock")
    assert calls == ["lease_acquire"], "the run's start asks Redis nothing more"
    assert record is not None and record.state is JobState.RUNNING
    assert [e.name for e in await events_in_redis(a, "j1")] == ["started"]
    assert await a.append_token("j1", "x"), "its run's log is open here"
    assert await a.leases.acquire(Lease("j2", "p", "r", "mock"), 4), "the slot is granted"
    queued = await b.get("j2")
    assert queued is not None and queued.state is JobState.QUEUED, "not taken here: not started"
    assert await a.start("j2", pool_id="p", replica_id="r", engine="mock") is None
    assert await a.leases.acquire(Lease("j3", "p", "r"), 4)
    still = await b.get("j3")
    assert still is not None and still.state is JobState.QUEUED


async def test_unread_jobs_are_due_once_on_any_instance_and_a_reader_stops_the_clock(
    make_store: MakeStore,
) -> None:
    a, b = make_store(unread_within_s=0.2), make_store()
    for job_id in ("never", "left", "read", "kept"):
        await admit(a, job_id, cancel_on_disconnect=job_id != "kept")  # unread, due in 0.2 s
    assert await b.attach("read") == 1, "a reader attached in time: not due"
    assert await b.attach("left") == 1 and await b.leave("left", 0.0) == 0, "its last reader left"
    await asyncio.sleep(0.3)
    due = await b.abandoned(5.0) + await a.abandoned(5.0)
    assert sorted((d.job_id, d.attached) for d in due) == [("left", True), ("never", False)], "each once"
    assert await a.abandoned(5.0) == [], "taken out when handed over"


async def test_a_dead_instances_readers_are_counted_out_when_its_heartbeat_expires(
    make_store: MakeStore,
) -> None:
    dying, alive = make_store(lease_ttl_s=0.5), make_store(lease_ttl_s=0.5)
    await admit(alive, "cod", cancel_on_disconnect=True)
    await admit(alive, "plain", cancel_on_disconnect=False)
    for job_id in ("cod", "plain"):
        assert await dying.attach(job_id) == 1 and await alive.attach(job_id) == 2
        assert await alive.detach(job_id) == 1
    await dying.leases.renew([])
    await alive.leases.renew([])
    assert await alive.abandoned(0.0) == [], "its heartbeat still holds"
    await asyncio.sleep(0.3)
    await alive.leases.renew([])
    assert await alive.abandoned(0.0) == []
    await asyncio.sleep(0.3)  # `dying` renewed 0.6 s ago, past its 0.5 s
    due = await alive.abandoned(0.0)
    assert [(d.job_id, d.attached) for d in due] == [("cod", True)]
    for job_id in ("cod", "plain"):
        got = await alive.get(job_id)
        assert got is not None and got.readers == 0, "the dead instance's reader is counted out"
        assert await dying.detach(job_id) == 0, "and not counted out twice if it comes back"
    assert await alive.attach("plain") == 1


async def test_cancel_and_wake_signals_reach_the_other_instances(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    cancels, wakes = b.cancel_signals(), b.wake_signals()
    await asyncio.wait_for(anext(wakes), 5)  # the first wake comes with the subscription
    await a.publish_cancel("j9")
    assert await asyncio.wait_for(anext(cancels), 5) == "j9"
    await admit(a, "j1")
    await asyncio.wait_for(anext(wakes), 5)


async def test_idempotency_keys_are_atomic_across_instances(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    results = await asyncio.gather(
        *(s.remember_idempotency("k", "acme", "fp", f"job-{i}", 60) for i, s in enumerate([a, b] * 5))
    )
    winners = [r for r in results if r is None]
    assert len(winners) == 1
    first = {r.job_id for r in results if r is not None}
    assert len(first) == 1 and next(iter(first)).startswith("job-")
    assert await a.remember_idempotency("k", "other-tenant", "fp", "j", 60) is None, "keys are per tenant"
    await b.forget_idempotency("k", "acme", "not-the-job")
    assert await a.remember_idempotency("k", "acme", "fp2", "x", 60) is not None
    await b.forget_idempotency("k", "acme", next(iter(first)))
    assert await a.remember_idempotency("k", "acme", "fp2", "x", 60) is None


async def test_session_updates_from_several_instances_are_never_lost(make_store: MakeStore) -> None:
    stores = [make_store() for _ in range(3)]
    now = time.time()

    def turn(current: SessionRecord | None) -> SessionRecord:
        if current is None:
            return SessionRecord("s1", "acme", "mock", created_at=now, expires_at=now + 60, turns=1)
        return SessionRecord(
            "s1", "acme", "mock", current.created_at, current.expires_at, turns=current.turns + 1,
            last_pool_id="p", ledger=current.ledger,
        )  # fmt: skip

    await asyncio.gather(*(s.session_update("acme/s1", turn) for s in stores * 10))
    got = await stores[1].session_get("acme/s1")
    assert got is not None and got.turns == 30 and got.last_pool_id == "p"
    assert await stores[2].session_delete("acme/s1") and await stores[0].session_get("acme/s1") is None


async def test_an_expired_session_is_gone(make_store: MakeStore) -> None:
    store = make_store()
    now = time.time()
    await store.session_update("k", lambda _: SessionRecord("s", "t", "mock", now - 10, now - 1))
    assert await store.session_get("k") is None
    assert not await store.session_delete("k")


async def test_a_prompt_cache_keys_place_is_every_instances_until_unused(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    await a.cache_key_placed("acme", "agent", "p", "r1", ttl_s=60)
    assert await b.cache_key_place("acme", "agent") == ("p", "r1")
    await b.cache_key_placed("acme", "agent", "p", "r0", ttl_s=60)  # the last placement is the one kept
    assert await a.cache_key_place("acme", "agent") == ("p", "r0")
    # per tenant, and no tenant and key run into another pair (names may hold the separator)
    await a.cache_key_placed("a:b", "c", "p", "r1", ttl_s=60)
    assert await a.cache_key_place("a", "b:c") is None and await a.cache_key_place("globex", "agent") is None
    await a.cache_key_placed("acme", "brief", "p", "r1", ttl_s=0.05)
    await asyncio.sleep(0.2)
    assert await b.cache_key_place("acme", "brief") is None


async def test_unreachable_redis_is_a_quick_state_unavailable(make_store: MakeStore) -> None:
    store = make_store(url=f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    began = time.monotonic()
    with pytest.raises(StateUnavailable) as caught:
        await store.get("j1")
    assert caught.value.http_status == 503 and caught.value.retry_after_ms
    assert not await store.ping()
    assert time.monotonic() - began < 5


async def test_budget_ledgers_round_trip_and_never_lose_a_hold(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()

    def hold(n: int) -> Callable[[Ledger | None], Ledger]:
        def change(current: Ledger | None) -> Ledger:
            base = current or Ledger(window_start=100.0)
            reserved = Usage(tokens=n, time_ms=10 * n, cost=0.5 * n)
            return replace(base, holds=(*base.holds, Hold(f"job-{n}", "mock", n, reserved)))

        return change

    await asyncio.gather(
        *(s.ledger_update("tenant:acme", hold(n)) for n, s in zip(range(1, 21), [a, b] * 10, strict=True))
    )
    ledger = await b.ledger_get("tenant:acme")
    assert ledger is not None and ledger.window_start == 100.0
    assert sorted(h.prompt_tokens for h in ledger.holds) == list(range(1, 21))
    assert ledger.held == Usage(tokens=210, time_ms=2100, cost=105.0)
    assert await a.ledger_get("tenant:nobody") is None


async def test_a_tokens_logprobs_are_written_as_the_memory_store_writes_them(make_store: MakeStore) -> None:
    store = make_store()
    await admit(store, "j1")
    await run_on(store, "j1")
    logprobs = [{"token": "é", "logprob": -0.5, "top_logprobs": [{"token": "e", "logprob": -1.25}]}]
    assert await store.append_token("j1", "é", logprobs) and await store.append_token("j1", "x")
    await store.finish("j1", JobState.CANCELED, "end", {"stop_reason": "canceled"})  # its tokens first
    with_them, without = [e for e in await events(store, "j1") if e.name == "token"]
    assert orjson.loads(with_them.data) == {"t": "é", "i": 0, "logprobs": logprobs}
    assert orjson.loads(without.data) == {"t": "x", "i": 1}

    memory = MemoryStore(QueuePolicy(capacity=4))
    await memory.create(record("j1"), entry("j1"))
    assert await memory.append_token("j1", "é", logprobs)
    await memory.finish("j1", JobState.CANCELED, "end", {"stop_reason": "canceled"})
    first, _ = [e async for e in memory.read("j1")]
    assert first == LogEvent("1", "token", with_them.data)


async def test_the_engines_count_in_an_end_becomes_the_jobs_tokens_out(make_store: MakeStore) -> None:
    store = make_store()
    await admit(store, "j1")
    await run_on(store, "j1")
    for text in ("two tokens", "and two"):
        await store.append_token("j1", text)
    end = await store.finish("j1", JobState.SUCCEEDED, "end", {"stop_reason": "eos", "tokens_out": 4})
    assert end is not None and orjson.loads(end.data)["tokens_out"] == 4
    final = await store.get("j1")
    assert final is not None and final.tokens_out == 4


async def test_a_reader_that_falls_behind_the_shared_read_loses_nothing(make_store: MakeStore) -> None:
    """A reader that takes nothing while many batches arrive is dropped from the shared read's queue and
    reads the log itself, page by page (more than a page behind here), then takes the queue again."""
    writer, reading = make_store(), make_store()
    await admit(writer, "j1")
    await run_on(writer, "j1")
    assert await writer.append_token("j1", "first")
    await writer.flush("j1")
    log = reading.read("j1")
    assert (await anext(log)).name == "started" and (await anext(log)).name == "token"
    waiting = asyncio.ensure_future(anext(log))  # caught up: it joins the shared read and waits
    await asyncio.sleep(0.1)

    async def write(batches: int) -> None:
        for _ in range(batches):  # 20 tokens each, written (and read by the shared read) one by one
            for _ in range(20):
                assert await writer.append_token("j1", "x")
            await writer.flush("j1")
            await asyncio.sleep(0.005)

    await write(40)  # far more batches than the shared read holds for a reader that takes nothing
    await asyncio.sleep(0.3)

    async def rest() -> list[LogEvent]:
        return [await waiting, *[event async for event in log]]

    reader = asyncio.ensure_future(rest())  # it reads the log itself, page by page, while more come
    await write(10)
    await writer.finish("j1", JobState.SUCCEEDED, "end", {"stop_reason": "eos"})
    events_read = await asyncio.wait_for(reader, 10)
    tokens = [orjson.loads(e.data)["i"] for e in events_read if e.name == "token"]
    assert tokens == list(range(1, 1001)) and events_read[-1].name == "end"


async def test_slots_held_back_for_interactive_work_skip_batch_jobs(make_store: MakeStore) -> None:
    """The take script honours `batch_can_serve` as the embedded queue does (`queue.holdback`)."""
    store = make_store()
    batch = record("b1", priority="batch")
    assert isinstance(await store.create(batch, entry("b1", priority="batch")), Admitted)
    everything, only_held_back = (lambda key: True), (lambda key: False)
    assert await store.take(everything, everything, only_held_back) is None, "only held-back slots are free"
    await admit(store, "i1")
    taken = await store.take(everything, everything, only_held_back)
    assert taken is not None and taken.job_id == "i1"
    taken = await store.take(everything, everything, everything)
    assert taken is not None and taken.job_id == "b1"


async def test_a_late_started_from_the_replica_that_runs_the_job_is_dropped(make_store: MakeStore) -> None:
    """Admission announces `started` after `create`; this replica's own dispatcher may have taken and
    started the job in between (its run's log is in the process then): no second `started`."""
    store = make_store()
    await admit(store, "j1")
    await run_on(store, "j1")
    assert await store.append("j1", "started", {"job_id": "j1", "queue_position": 0}) is None
    await store.finish("j1", JobState.CANCELED, "end", {"stop_reason": "canceled"})
    assert [e.name for e in await events(store, "j1")] == ["started", "end"]


async def test_only_work_another_replica_may_take_wakes_the_other_replicas(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    wakes = b.wake_signals()
    assert await asyncio.wait_for(anext(wakes), 5), "the first wake comes with the subscription, as work"
    said: list[bool] = []  # each wake: True if it may bring work, False if it only frees a slot

    async def listen() -> None:
        async for work in wakes:
            said.append(work)

    listener = asyncio.create_task(listen())

    async def woken(work: bool = True) -> bool:
        await asyncio.sleep(0.5)
        seen = bool(said) and all(w is work for w in said)
        said.clear()
        return seen

    mine = await a.create(record("mine"), entry("mine"), wake_all=False)
    assert isinstance(mine, Admitted) and not await woken(), "a job its admitting replica takes itself"
    await run_on(a, "mine")
    await a.finish("mine", JobState.SUCCEEDED, "end", {"stop_reason": "eos"})
    assert not await woken(), "a job ended with nothing queued: no dispatcher has anything to take"
    await admit(a, "anyone")  # wake_all: the admitting replica has no ready pool for it
    assert await woken()
    await admit(a, "waiting")
    assert await woken()
    await run_on(a, "anyone")
    await a.finish("anyone", JobState.SUCCEEDED, "end", {"stop_reason": "eos"})
    assert await woken(work=False), "a slot came free while a job waits: said to be only that"
    listener.cancel()


async def reading_a_job_admitted_to_run_here(a: RedisStore) -> tuple[list[str], asyncio.Task[None]]:
    """Admit j1 on `a` for `a` to run, announce it, and start a reader on `a`; returns the names of the
    events the reader got (its `started` so far) and its task."""
    assert isinstance(await a.create(record("j1"), entry("j1"), wake_all=False), Admitted)
    await a.append("j1", "started", {"job_id": "j1", "queue_position": 0})
    seen: list[str] = []

    async def tail() -> None:
        async for event in a.read("j1"):
            seen.append(event.name)

    task = asyncio.create_task(tail())
    for _ in range(250):
        if seen:
            break
        await asyncio.sleep(0.02)
    assert seen == ["started"]
    return seen, task


async def test_a_reader_of_a_job_admitted_to_run_here_reads_it_from_the_process(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("orchestratord.state.redis._EXPECTED_S", 5.0)  # however slow the machine
    a = make_store()
    seen, task = await reading_a_job_admitted_to_run_here(a)
    await asyncio.sleep(0.3)  # the run starts a while later: the reader waits for it, not in Redis
    await run_on(a, "j1")
    for text in ("a", "b"):
        await a.append_token("j1", text)
    await a.finish("j1", JobState.SUCCEEDED, "end", {"stop_reason": "eos"})
    await asyncio.wait_for(task, 5)
    assert seen == ["started", "token", "token", "end"]
    assert a._tail.waiting == 0 and a._tail._task is None, "it never waited in the shared read"


async def test_a_reader_of_a_job_queued_here_to_run_here_reads_nothing_from_redis(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its `started` is the one this instance wrote (same id, same data), given from the process, and
    the rest comes from the local run: the reader sends Redis no command at all."""
    monkeypatch.setattr("orchestratord.state.redis._EXPECTED_S", 5.0)  # however slow the machine
    a = make_store()
    assert isinstance(await a.create(record("j1"), entry("j1"), wake_all=False), Admitted)
    await a.append("j1", "started", {"job_id": "j1", "queue_position": 0})
    commands: list[object] = []
    call = a._scripts.call

    async def counting(*command: str | int | float) -> object:
        commands.append(command[0])
        return await call(*command)

    monkeypatch.setattr(a._scripts, "call", counting)
    got: list[LogEvent] = []

    async def tail() -> None:
        async for event in a.read("j1"):
            got.append(event)

    task = asyncio.create_task(tail())
    await asyncio.sleep(0.2)
    assert [e.name for e in got] == ["started"] and commands == []
    monkeypatch.setattr(a._scripts, "call", call)
    await run_on(a, "j1")
    await a.append_token("j1", "a")
    await a.finish("j1", JobState.SUCCEEDED, "end", {"stop_reason": "eos"})
    await asyncio.wait_for(task, 5)
    assert [tuple(e) for e in got] == [tuple(e) for e in await events_in_redis(a, "j1")]
    assert [e.name for e in got] == ["started", "token", "end"]


@pytest.mark.parametrize("elsewhere", ["taken", "canceled"])
async def test_a_reader_waiting_for_a_local_run_hears_when_another_instance_takes_or_ends_it(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch, elsewhere: str
) -> None:
    """A reader on A of a job A admitted to run itself waits for the run in the process; when B takes
    the job (or cancels it) instead, B's script tells A on A's own channel, and the reader goes on
    from Redis at once rather than after its wait's bound (an hour here, so only the word can end it)."""
    monkeypatch.setattr("orchestratord.state.redis._EXPECTED_S", 3600.0)
    monkeypatch.setattr("orchestratord.state.redis.RESERVED_MS", 0)  # B may take it at once
    a, b = make_store(), make_store()
    seen, task = await reading_a_job_admitted_to_run_here(a)
    await asyncio.sleep(0.2)  # the reader waits for a run here
    if elsewhere == "taken":
        await run_on(b, "j1")
        await b.append_token("j1", "a")
        await b.finish("j1", JobState.SUCCEEDED, "end", {"stop_reason": "eos"})
    else:
        await b.finish("j1", JobState.CANCELED, "end", {"stop_reason": "canceled"})
    await asyncio.wait_for(task, 10)
    assert seen == (["started", "token", "end"] if elsewhere == "taken" else ["started", "end"])


@pytest.fixture
def long_reservations(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reservation (state/redis.py RESERVED_MS) outlasts any stall of a loaded machine in the test."""
    monkeypatch.setattr("orchestratord.state.redis.RESERVED_MS", 60_000)


async def test_a_job_its_replica_admitted_to_run_itself_is_left_to_it_a_while(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch, long_reservations: None
) -> None:
    """While the fair next job is reserved for the replica that admitted it (state/redis.py
    RESERVED_MS) and its route has no slot to spare, another replica woken meanwhile takes nothing,
    and nothing behind it: the job's tokens reach its readers from the process that admitted it, not
    Redis, and shares stay fair. Once a reservation has run out (that replica is slow, or gone),
    anyone takes the job."""
    a, b = make_store(), make_store()
    assert isinstance(await a.create(record("a1"), entry("a1"), wake_all=False), Admitted)
    await admit(b, "open1")  # wake_all: anyone's
    assert isinstance(await b.create(record("b1"), entry("b1"), wake_all=False), Admitted)
    anything = (lambda key: True, lambda tenant: True)
    assert await b.take(*anything) is None, "a1 is next, and a's for now: nothing is taken ahead of it"
    assert (await a.take(*anything)).job_id == "a1"  # type: ignore[union-attr]
    assert [(await b.take(*anything)).job_id for _ in range(2)] == ["open1", "b1"]  # type: ignore[union-attr]
    monkeypatch.setattr("orchestratord.state.redis.RESERVED_MS", 100)
    assert isinstance(await a.create(record("a2"), entry("a2"), wake_all=False), Admitted)
    await asyncio.sleep(0.3)
    assert (await b.take(*anything)).job_id == "a2", "a did not take it in time: anyone may"  # type: ignore[union-attr]


async def test_with_slots_to_spare_another_replica_takes_the_jobs_behind_a_reserved_one(
    make_store: MakeStore, long_reservations: None
) -> None:
    """Where the route has free slots to spare, b, woken meanwhile, takes the jobs behind a's reserved
    one, in their order: a1 keeps a slot, and its tokens reach its readers from a's process."""
    a, b = make_store(), make_store()
    assert isinstance(await a.create(record("a1"), entry("a1"), wake_all=False), Admitted)
    await admit(b, "open1")  # wake_all: anyone's
    assert isinstance(await b.create(record("b1"), entry("b1"), wake_all=False), Admitted)
    await admit(b, "open2")

    async def take(store: RedisStore) -> str | None:
        taken = await store.take(lambda key: True, lambda tenant: True, spare=lambda key: True)
        return None if taken is None else taken.job_id

    assert [await take(b) for _ in range(4)] == ["open1", "b1", "open2", None], "a1 is a's"
    assert await take(a) == "a1"


async def test_a_reserved_job_holds_back_no_other_flows_turn_but_its_own(
    make_store: MakeStore, long_reservations: None
) -> None:
    """The fair next job is acme's, reserved for a: b, woken, does not serve beta out of turn."""
    a, b = make_store(), make_store()
    assert isinstance(await a.create(record("a1"), entry("a1"), wake_all=False), Admitted)
    await b.create(record("beta1", tenant="beta"), entry("beta1", tenant="beta"))
    anything = (lambda key: True, lambda tenant: True)
    assert await b.take(*anything) is None, "acme's a1 is next"
    assert (await a.take(*anything)).job_id == "a1"  # type: ignore[union-attr]
    assert (await b.take(*anything)).job_id == "beta1"  # type: ignore[union-attr]


async def test_a_reserved_job_holds_back_no_job_on_another_route_with_slots_to_spare(
    make_store: MakeStore, long_reservations: None
) -> None:
    """a1 (model m1, no slot to spare) is next and a's; b1, b's own on model m2 with slots to spare,
    takes nothing from a1's slot: b takes it now rather than at its next tick. open1, behind a1 on m1,
    waits for a1."""
    a, b = make_store(), make_store()
    m1, m2 = {"route": Route("m1")}, {"route": Route("m2")}
    assert isinstance(await a.create(record("a1"), entry("a1", **m1), wake_all=False), Admitted)
    await b.create(record("open1"), entry("open1", **m1))
    assert isinstance(await b.create(record("b1"), entry("b1", **m2), wake_all=False), Admitted)

    async def take(store: RedisStore) -> str | None:
        spare = Route("m2").__eq__  # m2 has slots to spare, m1 has not
        taken = await store.take(lambda key: True, lambda tenant: True, spare=spare)
        return None if taken is None else taken.job_id

    assert await take(b) == "b1"
    assert await take(b) is None, "a1 is next on m1, and a's"
    assert [await take(a), await take(a)] == ["a1", "open1"]


async def test_the_admitting_replica_takes_its_reserved_job_in_its_turn(
    make_store: MakeStore, long_reservations: None
) -> None:
    a, b = make_store(), make_store()
    await admit(b, "open1")
    assert isinstance(await a.create(record("a1"), entry("a1"), wake_all=False), Admitted)
    assert isinstance(await b.create(record("b1"), entry("b1"), wake_all=False), Admitted)
    anything = (lambda key: True, lambda tenant: True)
    assert [(await a.take(*anything)).job_id for _ in range(2)] == ["open1", "a1"]  # type: ignore[union-attr]
    assert await a.take(*anything) is None, "b1 is b's for now"
    assert (await b.take(*anything)).job_id == "b1"  # type: ignore[union-attr]


async def test_the_owners_good_end_gives_its_slot_back_in_the_same_step(make_store: MakeStore) -> None:
    a = make_store()
    await admit(a, "j1")
    await run_on(a, "j1")
    assert await a.leases.acquire(Lease("j1", "p", "r"), 1)
    assert await a.leases.held("p", "r") == 1
    await a.finish("j1", JobState.SUCCEEDED, "end", {"stop_reason": "eos"})
    assert await a.leases.held("p", "r") == 0, "released by finish"
    assert await a.leases.release("j1") == Lease("j1", "p", "r"), "release still names the lease it freed"
    await admit(a, "j2")
    await run_on(a, "j2")
    assert await a.leases.acquire(Lease("j2", "p", "r"), 1)
    await a.finish("j2", JobState.CANCELED, "end", {"stop_reason": "canceled"})
    assert await a.leases.held("p", "r") == 1, "a cancel leaves the run's slot to the run"
    assert await a.leases.release("j2") == Lease("j2", "p", "r")


async def test_a_dispatch_round_looks_at_the_queue_once(make_store: MakeStore) -> None:
    a = make_store()
    empty = await a.pending(time.time())
    assert not empty.queued and not empty.expired
    for job_id, deadline in (("late", time.time() - 1), ("fine", time.time() + 60)):
        assert isinstance(await a.create(record(job_id), entry(job_id, deadline=deadline)), Admitted)
    pending = await a.pending(time.time())
    assert pending.queued and pending.expired and pending.routes == (Route("mock").encode(),)
    assert [e.job_id for e in await a.expire(time.time())] == ["late"]
    pending = await a.pending(time.time())
    assert pending.queued and not pending.expired
    taken = await a.take(lambda _: True, lambda _: True, None, pending)
    assert taken is not None and taken.job_id == "fine"
    got = await a.get("fine")
    assert got is not None and got.job_id == "fine" and got.spec == '{"job_id": "x"}'


async def test_the_events_of_several_running_jobs_go_to_redis_in_one_call(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = make_store(), make_store()
    for job_id in ("j1", "j2", "j3"):
        await admit(a, job_id)
        await run_on(a, job_id)
    calls: list[int] = []
    run = a._scripts.run

    async def counted(name: str, *args: str | int | float) -> object:
        if name == "append_events":
            calls.append(sum(1 for arg in args if arg in ("j1", "j2", "j3")))  # the jobs in this call
        return await run(name, *args)

    monkeypatch.setattr(a._scripts, "run", counted)
    for text in ("x", "y"):
        for job_id in ("j1", "j2", "j3"):
            assert await a.append_token(job_id, text) is True
    for job_id in ("j1", "j2", "j3"):
        await a.flush(job_id)
    assert sum(calls) == 3 and len(calls) <= 2, calls  # one call took every job's first batch
    for job_id in ("j1", "j2", "j3"):
        await a.finish(job_id, JobState.SUCCEEDED, "end", {"stop_reason": "eos"})
        assert [e.name for e in await events(b, job_id)] == ["started", "token", "token", "end"]
        record = await b.get(job_id)
        assert record is not None and record.text == "xy" and record.tokens_out == 2


async def test_a_runs_last_tokens_reach_redis_with_its_end_in_one_call(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that ends well sends what is still pending with its end: one `finish` call, not a batch's
    round trip and then the end's. A batch already on its way is written first; what came after it
    goes with the end. Readers here and on another instance get every event once, the end last."""
    a, b = make_store(), make_store()
    names: list[str] = []
    run = a._scripts.run

    async def counted(name: str, *args: str | int | float) -> object:
        names.append(name)
        return await run(name, *args)

    for job_id, on_its_way in (("j1", ""), ("j2", "ab")):
        await admit(a, job_id)
        await run_on(a, job_id)
        here = asyncio.create_task(events(a, job_id))
        monkeypatch.setattr(a._scripts, "run", counted)
        names.clear()
        for text in on_its_way:
            assert await a.append_token(job_id, text) is True
        await asyncio.sleep(0)  # the first batch (if any) leaves
        for text in "cde":
            assert await a.append_token(job_id, text) is True
        ended = await a.finish(job_id, JobState.SUCCEEDED, "end", {"stop_reason": "eos"})
        monkeypatch.setattr(a._scripts, "run", run)
        assert names == (["append_events", "finish"] if on_its_way else ["finish"])
        assert ended is not None and ended.name == "end"
        texts = [*on_its_way, *"cde"]
        for got in (await asyncio.wait_for(here, 5), await events(b, job_id)):
            assert [e.name for e in got] == ["started", *["token"] * len(texts), "end"]
            assert [orjson.loads(e.data)["t"] for e in got if e.name == "token"] == texts
            assert got[-1] == ended and orjson.loads(ended.data)["tokens_out"] == len(texts)
        stored = await b.get(job_id)
        assert stored is not None and stored.text == "".join(texts) and stored.tokens_out == len(texts)
        assert stored.state is JobState.SUCCEEDED


async def test_a_runs_end_sent_again_after_its_reply_was_lost_writes_its_last_tokens_once(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis ran the end with its last batch, but the reply was lost: the run tries again while its
    claim lives, the batch is recognized by its last id and skipped, and a reader here goes on from
    Redis after it and reads each event once."""
    a = make_store()
    await admit(a, "j1")
    await run_on(a, "j1")
    here = asyncio.create_task(events(a, "j1"))
    run = a._scripts.run
    lost: list[str] = []

    async def reply_lost_once(name: str, *args: str | int | float) -> object:
        reply = await run(name, *args)
        if name == "finish" and not lost:
            lost.append(name)
            raise StateUnavailable("the reply was lost")
        return reply

    monkeypatch.setattr(a._scripts, "run", reply_lost_once)
    for text in "abc":
        assert await a.append_token("j1", text) is True
    await a.finish("j1", JobState.SUCCEEDED, "end", {"stop_reason": "eos"})
    assert lost == ["finish"]
    got = await asyncio.wait_for(here, 5)
    assert [e.name for e in got] == ["started", "token", "token", "token", "end"]
    assert [e.name for e in await events_in_redis(a, "j1")] == ["started", "token", "token", "token", "end"]
    stored = await a.get("j1")
    assert stored is not None and stored.text == "abc" and stored.tokens_out == 3


async def test_a_queue_member_without_its_job_never_blocks_the_queue(make_store: MakeStore) -> None:
    a = make_store()
    await admit(a, "j1")
    await admit(a, "j2")
    # j1's entry gone, its member left behind: the inconsistency a take must survive
    await a._scripts.call("HDEL", a._key("q:entries"), "j1")
    taken = await a.take(lambda _: True, lambda _: True)
    assert taken is not None and taken.job_id == "j2"
    assert await a._scripts.call("HGET", a._key("q:orphans"), "dropped") == "1"
    assert await a.take(lambda _: True, lambda _: True) is None


async def test_a_create_sent_again_admits_the_job_once(make_store: MakeStore) -> None:
    """redis-py sends a command again when its reply is late, and Redis may have run the first."""
    a = make_store()
    first = await a.create(record("j1"), entry("j1"))
    again = await a.create(record("j1"), entry("j1"))
    assert isinstance(first, Admitted) and isinstance(again, Admitted)
    assert again.entry == first.entry and again.place == first.place
    assert await a._scripts.call("ZCARD", a._key("q:class:interactive")) == 1
    lanes = await a._scripts.call("SMEMBERS", a._key("q:pairs"))
    assert [await a._scripts.call("ZCARD", a._key(f"q:z:{lane}")) for lane in lanes] == [1]
    taken = await a.take(lambda _: True, lambda _: True)
    assert taken is not None and taken.job_id == "j1"
    later = await a.create(record("j1"), entry("j1"))
    assert isinstance(later, Admitted) and later.entry.seq == first.entry.seq, "taken since: as admitted"
    assert await a.take(lambda _: True, lambda _: True) is None
    assert await a._scripts.call("HGET", a._key("q:orphans"), "dropped") is None


async def test_a_waiting_reader_gets_each_batch_through_the_news_and_only_its_log_is_read(
    make_store: MakeStore,
) -> None:
    """Readers on one replica wait on 120 jobs running on another. A batch written for one job reaches
    its reader at once (block_s is a minute: no periodic look rescues a batch the shared read missed),
    and the read that fetches it names that job's log alone, not the 120 the replica waits on."""
    writer, reading = make_store(block_s=60.0), make_store(block_s=60.0)
    jobs = [f"n{n}" for n in range(120)]
    for job in jobs:
        await admit(writer, job)
        await run_on(writer, job)
    seen: dict[str, list[str]] = {job: [] for job in jobs}
    got_token = asyncio.Event()

    async def follow(job: str) -> None:
        async for event in reading.read(job):
            seen[job].append(event.name)
            if event.name == "token":
                got_token.set()

    tasks = [asyncio.create_task(follow(job)) for job in jobs]
    for _ in range(500):
        if reading._tail.waiting == len(jobs):
            break
        await asyncio.sleep(0.02)
    assert reading._tail.waiting == len(jobs)
    named: list[int] = []
    call = reading._scripts.call

    async def counting(*command: str | int | float) -> object:
        if command[0] == "XREAD":
            named.append((len(command) - 4) // 2)
        return await call(*command)

    reading._scripts.call = counting  # type: ignore[method-assign]
    assert await writer.append_token("n7", "a")
    await writer.flush("n7")
    await asyncio.wait_for(got_token.wait(), 5)
    assert seen["n7"] == ["started", "token"]
    assert named and max(named) == 1, f"a read named {max(named, default=0)} logs for one that grew"
    for job in jobs:
        await writer.finish(job, JobState.SUCCEEDED, "end", {"stop_reason": "eos"})
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert all(names[-1] == "end" for names in seen.values())


async def test_a_batch_sent_again_after_its_reply_was_lost_is_written_once(make_store: MakeStore) -> None:
    """`append_events` skips a batch whose last id the log already holds (an earlier attempt ran but
    its reply was lost), its text with it; the batch after it is added."""
    a = make_store()
    await admit(a, "j1")
    await run_on(a, "j1")
    newest = (await events_in_redis(a, "j1"))[-1].id
    ms = int(newest.split("-")[0]) + 1

    def batch(*seqs: int) -> list[str | int]:
        records = [f'{ms}-{seq}{US}token{US}{{"t":"{seq}","i":{seq}}}' for seq in seqs]
        return [f"{ms}-{seqs[-1]}", RS.join(records), "".join(str(seq) for seq in seqs)]

    assert await a._scripts.run("append_events", a.owner, "j1", 2, *batch(0, 1)) == [1]
    assert await a._scripts.run("append_events", a.owner, "j1", 2, *batch(0, 1)) == [1]
    assert await a._scripts.run("append_events", a.owner, "j1", 4, *batch(2, 3)) == [1]
    tokens = [event.data for event in await events_in_redis(a, "j1") if event.name == "token"]
    assert tokens == [f'{{"t":"{i}","i":{i}}}' for i in range(4)]
    assert await a._scripts.call("GET", a._key("text:j1")) == "0123"


async def test_a_batch_is_one_stream_entry_and_a_reader_resumes_inside_it(make_store: MakeStore) -> None:
    """The tokens handed over while no batch is on its way go to Redis as one stream entry; a reader
    on another instance resuming from an id inside it gets exactly the events after that id."""
    a, b = make_store(), make_store()
    await admit(a, "j1")
    await run_on(a, "j1")
    before = int(await a._scripts.call("XLEN", a._key("log:j1")))
    for text in "abcde":
        assert await a.append_token("j1", text) is True
    await a.flush("j1")
    assert int(await a._scripts.call("XLEN", a._key("log:j1"))) == before + 1
    tokens = [e for e in await events_in_redis(a, "j1") if e.name == "token"]
    assert [orjson.loads(e.data)["t"] for e in tokens] == list("abcde")
    await a.finish("j1", JobState.SUCCEEDED, "end", {"stop_reason": "eos"})
    rest = await events(b, "j1", after=tokens[2].id)
    assert [(e.id, e.name) for e in rest[:2]] == [(tokens[3].id, "token"), (tokens[4].id, "token")]
    assert [e.name for e in rest] == ["token", "token", "end"]


async def events_in_redis(store: RedisStore, job_id: str) -> list[LogEvent]:
    return events_of(await store._scripts.call("XRANGE", store._key(f"log:{job_id}"), "-", "+"))


async def test_a_reader_elsewhere_relays_a_runs_batch_whole_and_frames_it_as_its_events(
    make_store: MakeStore,
) -> None:
    """A reader that relays the log as stored (the SSE stream) gets a batch of a job running on
    another instance as one `EventRun`, not split into its events; framed, it is byte for byte the
    frames of the events that `read` gives one by one."""
    a, b = make_store(), make_store()
    await admit(a, "j1")
    await run_on(a, "j1")
    for text in ("a", "b\n", 'c"'):
        assert await a.append_token("j1", text) is True
    assert await a.append("j1", "metrics", {"tokens_out": 3}) is not None
    assert await a.append_token("j1", "d") is True
    await a.flush("j1")
    await a.finish("j1", JobState.SUCCEEDED, "end", {"stop_reason": "eos"})
    read = await events(b, "j1")
    relayed = [e async for batch in b.read_batches("j1") for e in batch]
    assert [type(e) for e in relayed] == [LogEvent, EventRun, LogEvent]  # started, the batch, end
    split = [e for item in relayed for e in (item.events() if isinstance(item, EventRun) else [item])]
    assert split == read
    assert [e.name for e in read] == ["started", "token", "token", "token", "metrics", "token", "end"]
    frames = b"".join(encode(e) for e in read)
    assert b"".join(encode_run(e) if isinstance(e, EventRun) else encode(e) for e in relayed) == frames


async def test_a_queued_only_failure_leaves_a_job_another_replica_took_since(make_store: MakeStore) -> None:
    """Housekeeping's limit checks end the jobs of a read of the shared queue one by one: a job another
    replica took since runs on, and one still queued ends (`Endings.fail(queued_only=True)`)."""
    runner, checker = make_store(), make_store()
    await admit(runner, "j1")
    await admit(runner, "j2")
    read = await checker.queued()  # the check's read: both queued
    assert {e.job_id for e in read} == {"j1", "j2"}
    await run_on(runner, "j1")  # then the other replica takes the first and starts it
    endings = Endings(checker, PoolRegistry([]), Metrics(CollectorRegistry()))
    late = PoolUnavailable("waited past its class's limit", retry_after_ms=1000)
    assert await endings.fail("j1", late, queued_only=True) is False
    assert await endings.fail("j2", late, queued_only=True) is True
    running, failed = await checker.get("j1"), await checker.get("j2")
    assert running is not None and running.state == JobState.RUNNING
    assert await runner.finish("j1", JobState.SUCCEEDED, "end", {"stop_reason": "eos"}) is not None
    assert [e.name for e in await events(checker, "j1")] == ["started", "end"]
    assert failed is not None and failed.state == JobState.FAILED
    assert [e.name for e in await events(checker, "j2")][-1] == "error"
