"""The fair queue's core behaviour, data in and data out."""

from __future__ import annotations

from orchestratord.core.queue import Admitted, FairQueue, QueueEntry, QueuePolicy, Rejected


def entry(
    job: str, tenant: str = "t", priority: str = "interactive", model: str = "m", **kw: object
) -> QueueEntry:
    return QueueEntry(job_id=job, tenant=tenant, priority=priority, model=model, **kw)  # type: ignore[arg-type]


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
    taken = q.take(lambda model: model == "small")
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
