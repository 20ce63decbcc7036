"""The dispatchers' pace as a bound on predictions (docs/admission.md): the measured rate, the wait it
sets, and a newcomer's place read off the queue's shape instead of a walk of the queue."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestratord.core.prediction import DispatchRate, dispatch_wait_ms
from orchestratord.core.queue import Place, QueueEntry, QueuePolicy, QueueShape, prospective_place
from orchestratord.core.route import Route
from orchestratord.core.tasks import Priority
from orchestratord.outlook import Outlook
from orchestratord.runs import Runs
from pool_manager.registry import PoolRegistry
from pool_manager.snapshot import PoolSnapshot, ReplicaSnapshot

TENANTS = ("t1", "t2", "t3")
CLASSES: tuple[Priority, ...] = ("interactive", "batch")


def test_the_rate_is_the_jobs_started_over_the_backlogged_time_of_the_window() -> None:
    rate = DispatchRate(window_s=10.0, min_jobs=8)
    rate.observe(0.0, 4, 0.02)
    assert rate.per_s(0.0) is None  # fewer jobs than it takes to say
    rate.observe(1.0, 8, 0.02)
    assert rate.per_s(1.0) == 12 / 0.04
    rate.observe(2.0, 0, 0.46)  # a backlog during which nothing started: the pace was slow
    assert rate.per_s(2.0) == 12 / 0.5
    rate.observe(10.5, 6, 0.5)  # the first observation (at 0 s) has left the window
    assert rate.per_s(10.5) == 14 / 0.98
    assert rate.per_s(30.0) is None  # nothing seen for a window: unknown again


def test_a_falling_pace_shows_at_once_and_a_rising_one_once_the_window_has_seen_it() -> None:
    rate = DispatchRate(window_s=10.0, min_jobs=8, recent_s=2.0)
    for k in range(24):  # 6 s of reads a quarter second apart, with a backlog between: 48 jobs a second
        rate.observe(k * 0.25, 12, 0.25)
    assert rate.per_s(5.75) == 48.0
    for k in range(24, 32):  # then 2 s at 10 jobs a second
        rate.observe(k * 0.25, 2 + k % 2, 0.25)
    falling = rate.per_s(7.75)
    assert falling is not None and falling < 15.0, "the last 2 s, not the window's 38 a second"
    for k in range(32, 40):  # then 2 s at 100 jobs a second
        rate.observe(k * 0.25, 25, 0.25)
    rising = rate.per_s(9.75)
    assert rising is not None and 45.0 < rising < 55.0, "the window's pace, slower than the last 2 s"


def test_the_dispatch_wait_is_the_jobs_ahead_at_the_measured_pace() -> None:
    assert dispatch_wait_ms(0, 100.0) == 0
    assert dispatch_wait_ms(250, 100.0) == 2500
    assert dispatch_wait_ms(3, 2000.0) == 2  # rounded up: a job behind others never starts in 0 ms
    assert dispatch_wait_ms(250, None) == 0  # not measured: no bound


def test_a_job_behind_thousands_waits_for_the_dispatchers_though_slots_are_free() -> None:
    replica = ReplicaSnapshot("r0", True, 6000, 6000)
    now = [100.0]
    outlook = Outlook(PoolRegistry([]), Runs(), clock=lambda: now[0], wall=lambda: 100.0)
    outlook._snapshots = [PoolSnapshot("p", "mock", "mock-1", ("m",), 4096, 4096, False, (replica,))]
    route = Route("m")
    queued = [_entry(f"q{i}", "t1", "interactive", i) for i in range(3000)]
    assert outlook.predict(route, Place(3000)) == 0  # free slots, no pace measured: starts now
    outlook.queue_work(queued)  # housekeeping's read: jobs that free slots could take
    for i in range(150):
        outlook.started(f"j{i}", 1.0)
    now[0] += 1.5
    outlook.queue_work(queued)
    for i in range(50):
        outlook.started(f"k{i}", 1.0)
    now[0] += 0.5
    outlook.queue_work([])  # the queue is empty: the time from here on says nothing of the pace
    now[0] += 5.0
    outlook.queue_work([])
    assert outlook.dispatch_per_s() == 100.0  # 200 starts over 2 s of backlog
    assert outlook.predict(route, Place(3000)) == 30_000
    assert outlook.predict(route, Place(0)) == 0  # first in line, a slot free: now
    outlook.taken(queued[0])  # taken, not started yet: the jobs behind wait for it too
    assert outlook.predict(route, Place(3000)) == 30_010
    # Another replica's pace and unstarted jobs, as it shared them, join this one's.
    outlook.absorb([{"id": "other", "at": 100.0, "dispatch_per_s": 100.0, "unstarted": 9}], 100.0)
    assert outlook.dispatch_per_s() == 200.0
    assert outlook.predict(route, Place(3000)) == 15_050
    # The most jobs ahead for a start within 20 s at that pace (a shared queue checks it as it queues
    # the job): the last place whose prediction is within the limit.
    most = outlook.most_ahead(20_000)
    assert most is not None
    assert outlook.predict(route, Place(most)) <= 20_000 < (outlook.predict(route, Place(most + 1)) or 0)
    shared = outlook.export(100.0)
    assert shared["dispatch_per_s"] == 100.0 and shared["unstarted"] == 1  # what this one shares


def test_a_queue_waiting_for_slots_says_nothing_of_the_pace() -> None:
    replica = ReplicaSnapshot("r0", True, 2, 0)  # every slot busy
    now = [100.0]
    outlook = Outlook(PoolRegistry([]), Runs(), clock=lambda: now[0], wall=lambda: 100.0)
    outlook._snapshots = [PoolSnapshot("p", "mock", "mock-1", ("m",), 4096, 4096, False, (replica,))]
    queued = [_entry(f"q{i}", "t1", "interactive", i) for i in range(50)]
    for _ in range(5):
        outlook.queue_work(queued)
        for i in range(10):
            outlook.started(f"j{now[0]}-{i}", 1.0)
        now[0] += 1.0
    assert outlook.dispatch_per_s() is None


def test_a_queue_that_ran_dry_between_reads_says_nothing_of_the_pace() -> None:
    """Sparse arrivals: each read finds a job admitted just before it, taken just after. The starts
    between reads are the arrival rate, not what the deployment could do."""
    replica = ReplicaSnapshot("r0", True, 8, 8)
    now = [100.0]
    outlook = Outlook(PoolRegistry([]), Runs(), clock=lambda: now[0], wall=lambda: 100.0)
    outlook._snapshots = [PoolSnapshot("p", "mock", "mock-1", ("m",), 4096, 4096, False, (replica,))]
    for i in range(40):
        outlook.queue_work([_entry(f"q{i}", "t1", "interactive", i)])  # a different job at every read
        outlook.started(f"q{i}", 0.001)
        now[0] += 0.25
    assert outlook.dispatch_per_s() is None


def _entry(job: str, tenant: str, priority: Priority, seq: int, model: str = "m", **kw: object) -> QueueEntry:
    return QueueEntry(job_id=job, tenant=tenant, priority=priority, route=Route(model), seq=seq, **kw)  # type: ignore[arg-type]


jobs = st.lists(
    st.tuples(
        st.sampled_from(TENANTS),
        st.sampled_from(CLASSES),
        st.sampled_from(["m", "x"]),
        st.sampled_from([1.0, 3.0, 40.0]),  # cost (requests or tokens)
        st.none() | st.floats(1.0, 50.0),  # deadline
        st.integers(0, 9),
        st.integers(0, 99),
    ),
    max_size=40,
)


@given(
    queued=jobs,
    tenant=st.sampled_from(TENANTS),
    priority=st.sampled_from(CLASSES),
    weights=st.fixed_dictionaries({t: st.sampled_from([0.5, 1.0, 3.0]) for t in TENANTS}),
)
def test_the_shape_places_a_newcomer_as_a_walk_of_the_queue_does(
    queued: list[tuple[str, Priority, str, float, float | None, int, int]],
    tenant: str,
    priority: Priority,
    weights: dict[str, float],
) -> None:
    entries = [
        _entry(f"j{i}", t, p, i, model, cost=cost, deadline=deadline, tokens_in=tin, tokens_out=tout)
        for i, (t, p, model, cost, deadline, tin, tout) in enumerate(queued)
    ]
    policy = QueuePolicy(tenant_weights=weights)
    newcomer = _entry("new", tenant, priority, len(entries))
    assert QueueShape(entries).place(newcomer, policy) == prospective_place(entries, policy, newcomer)


def test_jobs_queued_and_taken_since_the_read_keep_the_shape_current() -> None:
    policy = QueuePolicy()
    read = [_entry(f"b{i}", "t1", "batch", i) for i in range(6)]
    shape = QueueShape(read)
    later = [_entry(f"i{i}", "t1", "interactive", 10 + i) for i in range(3)]
    for e in later:
        shape.add(e)
    for e in read[:4]:  # the dispatcher took the batch flow's first four
        shape.remove(e)
    left = read[4:] + later
    for newcomer in (_entry("n1", "t1", "interactive", 20), _entry("n2", "t2", "batch", 21)):
        assert shape.place(newcomer, policy) == prospective_place(left, policy, newcomer)
    # a tenant with nothing queued starts level with the flows' heads: behind one job of each
    assert shape.place(_entry("n3", "t3", "batch", 22), policy).ahead == 2
