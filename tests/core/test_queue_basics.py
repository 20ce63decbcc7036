"""The fair queue's core behaviour, data in and data out."""

from __future__ import annotations

from orchestratord.core.queue import (
    Admitted,
    FairQueue,
    Place,
    QueueEntry,
    QueuePolicy,
    Rejected,
    prospective_place,
)
from orchestratord.core.route import Route


def entry(
    job: str, tenant: str = "t", priority: str = "interactive", model: str = "m", **kw: object
) -> QueueEntry:
    return QueueEntry(job_id=job, tenant=tenant, priority=priority, route=Route(model), **kw)  # type: ignore[arg-type]


def test_fifo_within_a_flow() -> None:
    q = FairQueue()
    for i in range(5):
        q.enqueue(entry(f"j{i}"))
    assert [q.take(lambda _: True).job_id for _ in range(5)] == [f"j{i}" for i in range(5)]  # type: ignore[union-attr]


def test_reject_when_full() -> None:
    q = FairQueue(QueuePolicy(capacity=2))
    assert isinstance(q.enqueue(entry("a")), Admitted)
    assert isinstance(q.enqueue(entry("b")), Admitted)
    outcome = q.enqueue(entry("c"))
    assert isinstance(outcome, Rejected) and outcome.policy == "reject"
    assert len(q) == 2


def test_remove_takes_a_job_out_once() -> None:
    q = FairQueue()
    q.enqueue(entry("a"))
    q.enqueue(entry("b"))
    assert q.remove("a") is not None
    assert q.remove("a") is None
    assert q.take(lambda _: True).job_id == "b"  # type: ignore[union-attr]
    assert q.take(lambda _: True) is None


def test_busy_model_does_not_block_another() -> None:
    q = FairQueue()
    q.enqueue(entry("busy", model="big"))
    q.enqueue(entry("free", model="small"))
    taken = q.take(lambda route: route.model == "small")
    assert taken is not None and taken.job_id == "free"
    assert "busy" in q


def test_earlier_deadline_first_within_a_flow() -> None:
    q = FairQueue()
    q.enqueue(entry("late", deadline=100.0))
    q.enqueue(entry("none"))
    q.enqueue(entry("soon", deadline=10.0))
    assert [q.take(lambda _: True).job_id for _ in range(3)] == ["soon", "late", "none"]  # type: ignore[union-attr]


def test_expire_removes_jobs_past_their_deadline() -> None:
    q = FairQueue()
    q.enqueue(entry("a", deadline=5.0))
    q.enqueue(entry("b", deadline=50.0))
    assert [e.job_id for e in q.expire(10.0)] == ["a"]
    assert len(q) == 1


def take_all(q: FairQueue) -> list[str]:
    out = []
    while (e := q.take(lambda _: True)) is not None:
        out.append(e.job_id)
    return out


def test_cancel_removes_at_once_and_the_places_close_up() -> None:
    q = FairQueue()
    for i in range(20):
        q.enqueue(entry(f"j{i}", tenant=f"t{i % 3}", model=f"m{i % 2}"))
    assert q.remove("j7") is not None
    assert "j7" not in q and len(q) == 19 and q.get("j7") is None
    assert q.lane_items() == 19
    assert sorted(q.position(f"j{i}") for i in range(20) if i % 2 == 1 and i != 7) == list(range(9))
    assert "j7" not in take_all(q)


def test_removal_keeps_memory_bounded() -> None:
    q = FairQueue(QueuePolicy(capacity=20_000))
    flow_of = {}
    for i in range(10_000):
        e = entry(f"j{i}", tenant=f"t{i % 4}", priority="batch" if i % 5 else "interactive")
        q.enqueue(e)
        flow_of[e.job_id] = (e.tenant, e.priority)
    for i in range(10_000):
        if i % 10:
            q.remove(f"j{i}")
    assert len(q) == 1000
    assert q.lane_items() == len(q)  # nothing of a job that left is kept
    drained = take_all(q)
    assert sorted(drained) == sorted(f"j{i}" for i in range(0, 10_000, 10))
    for flow in set(flow_of.values()):
        mine = [int(j[1:]) for j in drained if flow_of[j] == flow]
        assert mine == sorted(mine), f"flow {flow} did not come out in arrival order"


def test_drop_lru_evicts_the_oldest_batch_job_else_the_oldest() -> None:
    q = FairQueue(QueuePolicy(capacity=3, full_policy="drop-lru"))
    q.enqueue(entry("i1"))
    q.enqueue(entry("b1", priority="batch"))
    q.enqueue(entry("b2", priority="batch"))
    first = q.enqueue(entry("i2"))
    assert isinstance(first, Admitted) and first.evicted is not None and first.evicted.job_id == "b1"
    second = q.enqueue(entry("i3"))
    assert isinstance(second, Admitted) and second.evicted is not None and second.evicted.job_id == "b2"
    third = q.enqueue(entry("b3", priority="batch"))
    assert isinstance(third, Admitted) and third.evicted is not None and third.evicted.job_id == "i1"
    assert len(q) == 3


def test_shed_low_priority_evicts_the_newest_batch_job_or_rejects() -> None:
    q = FairQueue(QueuePolicy(capacity=3, full_policy="shed-low-priority"))
    for job in ("b1", "b2"):
        q.enqueue(entry(job, priority="batch"))
    q.enqueue(entry("i1"))
    shed = q.enqueue(entry("i2"))
    assert isinstance(shed, Admitted) and shed.evicted is not None and shed.evicted.job_id == "b2"
    refused = q.enqueue(entry("b3", priority="batch"))
    assert isinstance(refused, Rejected) and refused.policy == "shed-low-priority"
    q.enqueue(entry("i3"))  # evicts b1, the last batch job
    assert isinstance(q.enqueue(entry("i4")), Rejected)  # nothing of a lower class is left
    assert sorted(e.job_id for e in q.entries()) == ["i1", "i2", "i3"]


def test_tenant_capacity_evicts_within_the_tenant() -> None:
    q = FairQueue(QueuePolicy(capacity=10, tenant_capacity=2, full_policy="drop-lru"))
    q.enqueue(entry("a1", tenant="a", priority="batch"))
    q.enqueue(entry("b1", tenant="b", priority="batch"))
    q.enqueue(entry("a2", tenant="a"))
    outcome = q.enqueue(entry("a3", tenant="a"))
    assert isinstance(outcome, Admitted) and outcome.evicted is not None
    assert outcome.evicted.job_id == "a1"  # the tenant's own oldest batch job, not b1
    rejecting = FairQueue(QueuePolicy(capacity=10, tenant_capacity=1))
    rejecting.enqueue(entry("a1", tenant="a"))
    refused = rejecting.enqueue(entry("a2", tenant="a"))
    assert isinstance(refused, Rejected) and refused.reason == "tenant_capacity"
    assert isinstance(rejecting.enqueue(entry("b1", tenant="b")), Admitted)


def test_shrinking_the_capacity_evicts_the_excess_at_once() -> None:
    q = FairQueue(QueuePolicy(capacity=5))
    for job, priority in (("i1", "interactive"), ("b1", "batch"), ("i2", "interactive"), ("b2", "batch")):
        q.enqueue(entry(job, priority=priority))
    evicted = q.set_policy(QueuePolicy(capacity=1))
    assert [e.job_id for e in evicted] == ["b1", "b2", "i1"]
    assert [e.job_id for e in q.entries()] == ["i2"]


def test_duplicate_job_id_is_a_programming_error() -> None:
    q = FairQueue()
    q.enqueue(entry("a"))
    try:
        q.enqueue(entry("a"))
    except ValueError as exc:
        assert "already queued" in str(exc)
    else:
        raise AssertionError("a duplicate job id was admitted")


def test_positions_follow_the_weights() -> None:
    q = FairQueue()  # interactive 8 : batch 1
    for i in range(3):
        q.enqueue(entry(f"b{i}", priority="batch", tokens_in=5, tokens_out=100))
    for i in range(10):
        q.enqueue(entry(f"i{i}", tokens_in=1, tokens_out=10))
    order = take_all_copy(q)
    assert [q.position(j) for j in order] == list(range(13))
    # The place carries the work of the jobs ahead: the tokens of those taken before, in order.
    work = {e.job_id: (e.tokens_in, e.tokens_out) for e in q.entries()}
    for i, job in enumerate(order):
        ahead = [work[j] for j in order[:i]]
        assert q.place(job) == Place(i, sum(a for a, _ in ahead), sum(b for _, b in ahead))
    assert order[:2] == ["b0", "i0"]  # equal tags: arrival breaks the tie
    assert order.index("b1") > order.index("i7")  # after the first batch, 8 interactive go per batch


def take_all_copy(q: FairQueue) -> list[str]:
    clone = FairQueue(q.policy)
    for e in sorted(q.entries(), key=lambda e: e.seq):
        clone.enqueue(e)
    return take_all(clone)


def test_prospective_place_counts_what_would_go_first() -> None:
    policy = QueuePolicy()
    queued = [entry(f"b{i}", priority="batch", seq=i, tokens_in=2, tokens_out=150) for i in range(20)]
    queued += [entry(f"i{i}", seq=20 + i, tokens_in=1, tokens_out=10) for i in range(3)]
    newcomer = entry("new")
    # Its own flow's 3 jobs go first; batch advances 1/1 per job against 1/8 for interactive, so of the
    # batch flow only the jobs projected before the newcomer's tag (3/8) count: one.
    assert prospective_place(queued, policy, newcomer) == Place(4, 3 + 2, 30 + 150)
    assert prospective_place(queued, policy, entry("other", model="x")) == Place(0)
    late_batch = entry("lb", priority="batch")
    assert prospective_place(queued, policy, late_batch) == Place(20 + 3, 40 + 3, 3000 + 30)


def test_with_slots_held_back_batch_flows_are_skipped_and_interactive_ones_taken() -> None:
    q = FairQueue()
    q.enqueue(entry("b1", priority="batch"))
    assert q.take(lambda _: True, batch_can_serve=lambda _: False) is None, "only held-back slots free"
    q.enqueue(entry("i1"))
    taken = q.take(lambda _: True, batch_can_serve=lambda _: False)
    assert taken is not None and taken.job_id == "i1"
    taken = q.take(lambda _: True, batch_can_serve=lambda _: True)
    assert taken is not None and taken.job_id == "b1"


def test_a_place_held_for_a_refused_client_goes_to_its_retry_not_to_new_arrivals() -> None:
    """Rule 7: while tickets are held, new arrivals count them as taken places; a ticket takes the
    place that frees in its turn (by due time), and runs out at its expiry."""
    q = FairQueue(QueuePolicy(capacity=2))
    for job in ("a", "b"):
        assert isinstance(q.enqueue(entry(job)), Admitted)
    assert q.tickets.hold("t1", due=10.0, expires=12.0) == 10.0
    assert q.tickets.hold("t2", due=20.0, expires=22.0) == 20.0
    assert q.tickets.hold("t1", due=30.0, expires=32.0) == 10.0, "a ticket keeps the place it holds"
    q.take(lambda _: True)  # a place frees
    assert isinstance(q.enqueue(entry("new"), ticket=lambda: "stranger", now=5.0), Rejected)
    assert isinstance(q.enqueue(entry("late"), ticket=lambda: "t2", now=5.0), Rejected), "t1's turn first"
    assert isinstance(q.enqueue(entry("c"), ticket=lambda: "t1", now=10.0), Admitted)
    assert q.tickets.rank("t1", 10.0) is None and q.tickets.rank("t2", 10.0) == 0
    q.take(lambda _: True)
    assert isinstance(q.enqueue(entry("d"), ticket=lambda: "t2", now=20.0), Admitted)
    assert len(q.tickets) == 0
    q.take(lambda _: True)
    q.tickets.hold("t3", due=30.0, expires=31.0)
    assert isinstance(q.enqueue(entry("e"), now=30.5), Rejected), "t3's place is still held"
    assert isinstance(q.enqueue(entry("e"), now=31.0), Admitted), "t3 did not come back in time"
    assert len(q.tickets) == 0


def test_tickets_are_asked_for_only_while_places_are_held() -> None:
    q = FairQueue(QueuePolicy(capacity=1))

    def never() -> str:
        raise AssertionError("the ticket was computed with no place held")

    assert isinstance(q.enqueue(entry("a"), ticket=never), Admitted)
    assert isinstance(q.enqueue(entry("b"), ticket=never), Rejected)


def test_a_late_client_does_not_hold_back_one_that_comes_on_time() -> None:
    q = FairQueue(QueuePolicy(capacity=1))
    q.enqueue(entry("a"))
    q.tickets.hold("late", due=10.0, expires=25.0)
    q.tickets.hold("on-time", due=20.0, expires=30.0)
    assert isinstance(q.enqueue(entry("b"), ticket=lambda: "on-time", now=15.0), Rejected), "early, full"
    q.take(lambda _: True)
    assert isinstance(q.enqueue(entry("b"), ticket=lambda: "on-time", now=20.0), Admitted)
    q.take(lambda _: True)
    assert isinstance(q.enqueue(entry("c"), now=21.0), Rejected), "the late client's place is still held"
    assert isinstance(q.enqueue(entry("c"), now=25.0), Admitted), "until its time ran out"


def test_a_client_on_time_for_its_place_gets_it_even_when_the_jobs_ahead_ran_late() -> None:
    """The promise is kept when the prediction was early: an on-time ticket is admitted past the
    capacity, up to twice it; new arrivals still count the capacity."""
    q = FairQueue(QueuePolicy(capacity=1))
    q.enqueue(entry("a"))
    for ticket in ("t1", "t2"):
        q.tickets.hold(ticket, due=10.0, expires=12.0)
    assert isinstance(q.enqueue(entry("b"), ticket=lambda: "t1", now=9.0), Rejected), "early"
    assert isinstance(q.enqueue(entry("b"), ticket=lambda: "t1", now=10.0), Admitted)
    assert len(q) == 2
    assert isinstance(q.enqueue(entry("c"), ticket=lambda: "t2", now=10.5), Rejected), "twice the capacity"
    assert isinstance(q.enqueue(entry("d"), now=13.0), Rejected), "new arrivals count the capacity"
