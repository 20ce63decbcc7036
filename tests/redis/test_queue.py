"""The fair queue in Redis (Lua) behaves exactly as the reference `core.queue.FairQueue`, and its
bounds hold when several instances admit and take at once."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestratord.core.queue import Admitted, FairQueue, FullPolicy, QueueEntry, QueuePolicy, Rejected
from orchestratord.core.route import Route
from orchestratord.core.tasks import JobState
from orchestratord.state.redis import RedisStore
from orchestratord.state.redis_client import RedisOptions
from tests.redis.conftest import RedisServer, prefix
from tests.redis.test_store import entry, record

pytestmark = pytest.mark.redis
MakeStore = Callable[..., RedisStore]
T = TypeVar("T")
TENANTS = ("acme", "beta", "gamma")
# Model names may hold any character a pool can list; a route restricted to pools is a value.
ROUTES = (Route("m1"), Route.to("m2", ["pool-a"]), Route.to("org/m@v1:q4,x", ["pool,a", "b@c"]))

arrival = st.fixed_dictionaries(
    {
        "tenant": st.sampled_from(TENANTS),
        "priority": st.sampled_from(("interactive", "batch")),
        "route": st.sampled_from(ROUTES),
        "cost": st.sampled_from((1.0, 2.5, 40.0)),
        "deadline": st.one_of(st.none(), st.sampled_from((100.0, 200.0, 300.0))),
        "tokens_in": st.sampled_from((0, 7, 300)),
        "tokens_out": st.sampled_from((1, 10, 150)),
    }
)


def some_or_all(values: tuple[T, ...]) -> st.SearchStrategy[set[T]]:
    return st.one_of(st.just(set(values)), st.sets(st.sampled_from(values)))


operation = st.one_of(
    st.tuples(st.just("enqueue"), arrival),
    st.tuples(st.just("enqueue"), arrival),
    st.tuples(st.just("enqueue"), arrival),
    st.tuples(st.just("take"), some_or_all(ROUTES), some_or_all(TENANTS)),
    st.tuples(st.just("take"), some_or_all(ROUTES), some_or_all(TENANTS)),
    st.tuples(st.just("remove"), st.integers(0, 30)),
    st.tuples(st.just("expire"), st.sampled_from((150.0, 250.0))),
    st.tuples(st.just("settle"), st.sampled_from(TENANTS), st.sampled_from((0.0, 7.0, 90.0))),
)
policies = st.builds(
    QueuePolicy,
    capacity=st.integers(1, 8),
    tenant_capacity=st.one_of(st.none(), st.integers(1, 4)),
    full_policy=st.sampled_from(("reject", "drop-lru", "shed-low-priority")),
    tenant_weights=st.sampled_from(({}, {"acme": 3.0, "beta": 0.5})),
)


async def replay(url: str, policy: QueuePolicy, ops: list[tuple[object, ...]]) -> None:
    """Apply `ops` to the Redis queue and the reference queue; every outcome and place (position and
    the work ahead), and the depths per route with each tenant's first place, must match."""
    store = RedisStore(url, policy, options=RedisOptions(key_prefix=prefix()))
    reference = FairQueue(policy)
    ids = (f"job-{i}" for i in itertools.count())
    try:
        for op in ops:
            await apply(store, reference, op, ids)
            for job in reference.entries():
                assert await store.place(job.job_id) == reference.place(job.job_id), op
            assert await store.places() == reference.places(), op  # all at once, the same
            for tenant in (None, *{job.tenant for job in reference.entries()}):
                assert await store.depths(tenant) == reference.depths(tenant), op  # the 429 hints' view
            assert [e.job_id for e in await store.queued()] == [e.job_id for e in reference.entries()]
    finally:
        await store.aclose()


async def apply(store: RedisStore, reference: FairQueue, op: tuple[object, ...], ids: object) -> None:
    kind = op[0]
    if kind == "enqueue":
        job_id = next(ids)  # type: ignore[call-overload]
        new = QueueEntry(job_id=job_id, **op[1])  # type: ignore[arg-type]
        got, want = await store.create(record(job_id), new), reference.enqueue(new)
        assert type(got) is type(want)
        if isinstance(got, Admitted) and isinstance(want, Admitted):
            assert got.entry == want.entry and got.evicted == want.evicted
            if got.place is not None:  # the place create.lua found in the same step
                assert got.place == reference.place(job_id), op
        else:
            assert isinstance(got, Rejected) and got == want
    elif kind == "take":
        models, tenants = op[1], op[2]
        got_entry = await store.take(models.__contains__, tenants.__contains__)  # type: ignore[attr-defined]
        assert got_entry == reference.take(models.__contains__, tenants.__contains__)  # type: ignore[attr-defined]
        if got_entry is not None:  # end it, so tenant concurrency counts stay honest
            await store.finish(got_entry.job_id, JobState.CANCELED, "end", {"stop_reason": "canceled"})
    elif kind == "remove":
        queued = reference.entries()
        if queued:
            job_id = queued[int(op[1]) % len(queued)].job_id  # type: ignore[call-overload]
            assert await store.dequeue(job_id) == reference.remove(job_id)
    elif kind == "expire":
        assert await store.expire(float(op[1])) == reference.expire(float(op[1]))  # type: ignore[arg-type]
    else:
        tenant, actual = str(op[1]), float(op[2])  # type: ignore[arg-type]
        if reference.flow_tag(tenant, "batch") is not None:
            await store.settle(tenant, "batch", 1.0, actual)
            reference.settle(tenant, "batch", 1.0, actual)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=policies, ops=st.lists(operation, min_size=1, max_size=40))
def test_the_redis_queue_matches_the_reference_queue(
    redis_server: RedisServer, policy: QueuePolicy, ops: list[tuple[object, ...]]
) -> None:
    asyncio.run(replay(redis_server.url, policy, ops))


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_long_random_runs_match_the_reference_queue(redis_server: RedisServer, seed: int) -> None:
    """Long seeded runs with many arrivals and takes reach the states short examples rarely do
    (weights that differ after many takes, full queues of mixed classes)."""
    rng = random.Random(seed)
    policy = QueuePolicy(
        capacity=rng.choice((6, 12)),
        tenant_capacity=rng.choice((None, 5)),
        full_policy=rng.choice(("reject", "drop-lru", "shed-low-priority")),
        tenant_weights={"acme": 2.0},
    )
    ops: list[tuple[object, ...]] = []
    for _ in range(150):
        if rng.random() < 0.55:
            ops.append(("enqueue", random_arrival(rng)))
        elif rng.random() < 0.85:
            ops.append(("take", set(ROUTES), set(TENANTS) if rng.random() < 0.8 else {"acme"}))
        else:
            ops.append(("remove", rng.randrange(30)))
    await replay(redis_server.url, policy, ops)


def random_arrival(rng: random.Random) -> dict[str, object]:
    return {
        "tenant": rng.choice(TENANTS),
        "priority": rng.choice(("interactive", "batch")),
        "route": rng.choice(ROUTES),
        "cost": rng.choice((1.0, 2.5)),
        "deadline": rng.choice((None, None, 100.0)),
    }


async def test_fair_shares_between_two_instances_taking_in_turn(make_store: MakeStore) -> None:
    """Weighted fairness is a property of the shared queue, not of whichever instance takes."""
    policy = QueuePolicy(capacity=100, tenant_weights={"acme": 3.0, "beta": 1.0})
    a, b = make_store(policy), make_store(policy)
    for i in range(20):
        for tenant, store in (("acme", a), ("beta", b)):
            job_id = f"{tenant}-{i}"
            await store.create(record(job_id, tenant=tenant), entry(job_id, tenant=tenant))
    order = []
    for store in itertools.islice(itertools.cycle((a, b)), 16):
        taken = await store.take(lambda key: True, lambda tenant: True)
        assert taken is not None
        order.append(taken.tenant)
    assert order.count("acme") == 12 and order.count("beta") == 4, order


@pytest.mark.parametrize("policy", ["reject", "drop-lru"])
async def test_concurrent_admissions_on_many_instances_never_pass_capacity(
    make_store: MakeStore, policy: FullPolicy
) -> None:
    rng = random.Random(8)
    for capacity, tenant_capacity in ((5, None), (9, 4), (3, 3)):
        bounds = QueuePolicy(capacity=capacity, tenant_capacity=tenant_capacity, full_policy=policy)
        deployment = prefix()  # a fresh queue for each round, shared by four instances
        stores = [make_store(bounds, key_prefix=deployment) for _ in range(4)]
        arrivals = [(f"j{i}", rng.choice(TENANTS)) for i in range(40)]
        outcomes = await asyncio.gather(
            *(rng.choice(stores).create(record(j, tenant=t), entry(j, tenant=t)) for j, t in arrivals)
        )
        queued = await stores[0].queued()
        assert len(queued) == min(capacity, len(arrivals))
        if tenant_capacity is not None:
            assert max(sum(e.tenant == t for e in queued) for t in TENANTS) <= tenant_capacity
        admitted = [o for o in outcomes if isinstance(o, Admitted)]
        evicted = [o.evicted for o in admitted if o.evicted is not None]
        assert len(admitted) - len(evicted) == len(queued), "every admitted job is queued or was evicted"
        assert all(isinstance(o, Rejected) for o in outcomes if not isinstance(o, Admitted))


async def test_tenant_concurrency_is_counted_across_instances(make_store: MakeStore) -> None:
    a, b = make_store(tenant_max_concurrent={"acme": 2}), make_store(tenant_max_concurrent={"acme": 2})
    for i in range(4):
        await a.create(record(f"j{i}"), entry(f"j{i}"))
    everything = (lambda key: True, lambda tenant: True)
    assert await a.take(*everything) is not None and await b.take(*everything) is not None
    assert await a.take(*everything) is None and await b.take(*everything) is None
    await a.finish("j0", JobState.CANCELED, "end", {"stop_reason": "canceled"})
    assert await b.take(*everything) is not None


async def test_a_job_given_back_keeps_its_place(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    for i in range(3):
        await a.create(record(f"j{i}"), entry(f"j{i}"))
    first = await a.take(lambda key: True, lambda tenant: True)
    assert first is not None and first.job_id == "j0"
    assert not await b.requeue("j0"), "only the instance that took it gives it back"
    assert await a.requeue("j0")
    again = await b.take(lambda key: True, lambda tenant: True)
    assert again is not None and again == replace(first)
    assert await a.start("j0", pool_id="p", replica_id="r", engine="mock") is None, "no longer a's job"


async def test_deadlines_expire_on_any_instance(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    now = time.time()
    await a.create(record("late"), entry("late", deadline=now - 1))
    await a.create(record("fine"), entry("fine", deadline=now + 60))
    assert [e.job_id for e in await b.expire(now)] == ["late"]
    assert [e.job_id for e in await a.queued()] == ["fine"]


async def test_a_place_held_on_one_instance_goes_to_the_retry_on_another(make_store: MakeStore) -> None:
    """Rule 7 across replicas: a place held through A is taken by the ticket's retry through B; a
    newcomer is refused meanwhile; a second ticket waits for the first's turn; tickets run out."""
    a, b = make_store(QueuePolicy(capacity=2)), make_store(QueuePolicy(capacity=2))
    for job in ("j1", "j2"):
        assert isinstance(await a.create(record(job), entry(job)), Admitted)
    assert isinstance(await a.create(record("x"), entry("x"), lambda: "t1"), Rejected)
    assert 1.9 <= await a.hold_place("t1", 2.0, 30.0) <= 2.0
    assert 4.9 <= await b.hold_place("t2", 5.0, 30.0) <= 5.0
    assert await b.hold_place("t1", 9.0, 30.0) <= 2.0, "a ticket keeps the place it holds"
    assert await b.places_held() == 2
    assert await b.take(lambda _: True, lambda _: True) is not None  # a place frees
    assert isinstance(await b.create(record("new"), entry("new"), lambda: "stranger"), Rejected)
    assert isinstance(await b.create(record("t2job"), entry("t2job"), lambda: "t2"), Rejected), "t1 first"
    assert isinstance(await b.create(record("t1job"), entry("t1job"), lambda: "t1"), Admitted)
    assert await a.places_held() == 1
    await a.hold_place("t3", 0.0, 0.05)
    await asyncio.sleep(0.1)
    assert await a.places_held() == 1, "t3 ran out; t2 still holds its place"


async def test_a_client_on_time_for_its_place_gets_it_past_the_capacity(make_store: MakeStore) -> None:
    store = make_store(QueuePolicy(capacity=1))
    assert isinstance(await store.create(record("a"), entry("a")), Admitted)
    await store.hold_place("t1", 0.0, 30.0)
    await store.hold_place("t2", 0.0, 30.0)
    assert isinstance(await store.create(record("b"), entry("b"), lambda: "t1"), Admitted)
    assert isinstance(await store.create(record("c"), entry("c"), lambda: "t2"), Rejected), "2 x capacity"
    assert isinstance(await store.create(record("d"), entry("d"), lambda: "stranger"), Rejected)


def hget_calls(client: object) -> int:
    stats = client.info("commandstats")  # type: ignore[attr-defined]
    return int(stats.get("cmdstat_hget", {}).get("calls", 0))


async def test_a_job_admitted_behind_a_long_queue_is_placed_without_walking_it(
    own_redis: RedisServer, make_store: MakeStore
) -> None:
    """`create` gives the new job's place in the same step; behind 600 queued jobs of two tenants it
    counts whole lanes from their sums (common.lua `place_of`) instead of reading each entry ahead.
    Counted in Redis's own command statistics, which count the calls scripts make."""
    store = make_store(QueuePolicy(capacity=10_000, tenant_weights={"acme": 2.0}), url=own_redis.url)
    for i in range(300):
        for tenant in ("acme", "beta"):
            job_id = f"{tenant}-{i}"
            await store.create(record(job_id, tenant=tenant), entry(job_id, tenant=tenant, tokens_in=3))
    client = own_redis.client()
    try:
        client.config_resetstat()
        got = await store.create(record("last", tenant="beta"), entry("last", tenant="beta", tokens_in=3))
        reads = hget_calls(client)
    finally:
        client.close()
    assert isinstance(got, Admitted) and got.place is not None
    # beta's 300 ahead in its own lane, and acme's (weight 2) whole lane projects before it
    assert (got.place.ahead, got.place.tokens_in) == (600, 1800)
    assert reads < 30, f"{reads} HGETs: the place was found by reading the queue entry by entry"


# Pools for the several-take below: each serves some of ROUTES' models (a route restricted to pools is
# served only by those of them that serve its model), with (free slots, slots held back).
SERVES = {"pool-a": {"m1", "m2"}, "b@c": {"m1", "org/m@v1:q4,x"}, "pool,a": {"org/m@v1:q4,x"}}


def serving(route: Route) -> list[str]:
    return [p for p, models in SERVES.items() if route.model in models and route.admits(p)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    arrivals=st.lists(arrival, min_size=1, max_size=24),
    slots=st.fixed_dictionaries({p: st.tuples(st.integers(0, 4), st.integers(0, 2)) for p in SERVES}),
    count=st.integers(1, 8),
    tenants=some_or_all(TENANTS),
)
def test_several_taken_in_one_call_are_the_jobs_taken_one_by_one_each_spending_a_slot(
    redis_server: RedisServer,
    arrivals: list[dict[str, object]],
    slots: dict[str, tuple[int, int]],
    count: int,
    tenants: set[str],
) -> None:
    """`take_several` gives what as many single takes would, one after another, each on the slots the
    jobs before it left: a job spends a free slot of the serving pool with the most it may use (a batch
    job none held back for interactive work), and a route without one is served no more."""
    asyncio.run(several_and_one_by_one(redis_server.url, arrivals, slots, count, tenants))


async def several_and_one_by_one(
    url: str,
    arrivals: list[dict[str, object]],
    slots: dict[str, tuple[int, int]],
    count: int,
    tenants: set[str],
) -> None:
    store = RedisStore(url, QueuePolicy(capacity=64), options=RedisOptions(key_prefix=prefix()))
    reference = FairQueue(QueuePolicy(capacity=64))
    try:
        for i, fields in enumerate(arrivals):
            new = QueueEntry(job_id=f"job-{i}", **fields)  # type: ignore[arg-type]
            await store.create(record(new.job_id), new)
            reference.enqueue(new)
        free = {p: list(held) for p, held in slots.items()}  # pool -> [free, held back]

        def budget(route: Route) -> list[tuple[str, int, int]]:
            return [(p, free[p][0], free[p][1]) for p in serving(route)]

        got = await store.take_several(count, budget, tenants.__contains__)
        want = []
        for _ in range(count):
            taken = reference.take(
                lambda r: any(f > 0 for _, f, _ in budget(r)),
                tenants.__contains__,
                lambda r: any(f > h for _, f, h in budget(r)),
            )
            if taken is None:
                break
            want.append(taken)
            usable = [p for p, f, h in budget(taken.route) if f > (h if taken.priority == "batch" else 0)]
            most = max(usable, key=lambda p: free[p][0], default=None)  # the first of equals, as Lua
            if most is not None:
                free[most][0] -= 1
        assert got == want
    finally:
        await store.aclose()


async def test_several_taken_behind_a_reserved_job_stop_where_no_slot_is_left_to_spare(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b takes the jobs behind a's reserved a1 while a slot is left to spare for it; with one slot left,
    a1 is next and that slot is a1's: b takes nothing more in the same call."""
    monkeypatch.setattr("orchestratord.state.redis.RESERVED_MS", 60_000)
    a, b = make_store(), make_store()
    assert isinstance(await a.create(record("a1"), entry("a1"), wake_all=False), Admitted)
    for job_id in ("open1", "open2", "open3"):
        await b.create(record(job_id), entry(job_id))
    taken = await b.take_several(8, lambda route: [("p", 3, 0)], lambda tenant: True)
    assert [e.job_id for e in taken] == ["open1", "open2"], "3 free: two taken, the last slot is a1's"
    assert [e.job_id for e in await a.take_several(8, lambda route: [("p", 1, 0)], lambda t: True)] == ["a1"]
