"""Hypothesis properties of the fair queue, checked against a plain model of what must hold.

Random sequences of enqueue, take (with a random set of servable keys and tenants allowed to run),
remove (cancel), expire, settle and policy changes. After every step:

- the queue never holds more than `capacity` jobs, nor more than `tenant_capacity` of one tenant;
- every admitted job leaves exactly once, as taken, removed, evicted or expired, and at the end the
  rest drain out through `take`;
- a take never passes over a servable job of the same flow that is earlier in (deadline, arrival)
  order, hence FIFO within the same tenant, class and deadline;
- one job's place (bisection in the flows' lanes) equals the whole queue's projection, sorted;
- a full queue follows its policy: drop-lru evicts the oldest batch job, else the oldest job;
  shed-low-priority evicts the newest lower-priority job or rejects; reject rejects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from orchestratord.core.queue import (
    Admitted,
    FairQueue,
    FullPolicy,
    QueueEntry,
    QueuePolicy,
    Rejected,
)
from orchestratord.core.route import Route
from orchestratord.core.tasks import Priority

TENANTS = ("t1", "t2", "t3")
MODELS = ("m1", "m2", "m3")
CLASSES: tuple[Priority, ...] = ("interactive", "batch")
POLICIES: tuple[FullPolicy, ...] = ("reject", "drop-lru", "shed-low-priority")

policies = st.builds(
    QueuePolicy,
    capacity=st.integers(1, 12),
    tenant_capacity=st.none() | st.integers(1, 6),
    full_policy=st.sampled_from(POLICIES),
    class_weights=st.fixed_dictionaries(
        {"interactive": st.sampled_from([1.0, 4.0, 8.0]), "batch": st.sampled_from([1.0, 2.0])}
    ),
    tenant_weights=st.fixed_dictionaries({t: st.sampled_from([0.5, 1.0, 3.0]) for t in TENANTS}),
    unit=st.sampled_from(["requests", "tokens"]),
)


@dataclass(frozen=True)
class Job:
    entry: QueueEntry
    arrival: int

    @property
    def order(self) -> tuple[float, int]:
        deadline = self.entry.deadline
        return (math.inf if deadline is None else deadline, self.arrival)


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.queue = FairQueue()
        self.live: dict[str, Job] = {}
        self.exits: dict[str, list[str]] = {}
        self.admitted: set[str] = set()
        self.arrivals = 0
        self.now = 0.0

    @initialize(policy=policies)
    def start(self, policy: QueuePolicy) -> None:
        self.queue = FairQueue(policy)

    # -- helpers ----------------------------------------------------------------------------------
    def _leave(self, job_id: str, how: str) -> None:
        assert job_id in self.live, f"{job_id} left ({how}) but was not queued"
        del self.live[job_id]
        self.exits.setdefault(job_id, []).append(how)

    def _scope(self, tenant: str | None) -> list[Job]:
        return [j for j in self.live.values() if tenant is None or j.entry.tenant == tenant]

    def _expected_victim(self, newcomer: QueueEntry, tenant: str | None) -> Job | None:
        scope = self._scope(tenant)
        policy = self.queue.policy.full_policy
        if policy == "drop-lru":
            batch = [j for j in scope if j.entry.priority == "batch"]
            return min(batch or scope, key=lambda j: j.arrival, default=None)
        if policy == "shed-low-priority" and newcomer.priority == "interactive":
            return max(
                (j for j in scope if j.entry.priority == "batch"), key=lambda j: j.arrival, default=None
            )
        return None

    # -- rules ------------------------------------------------------------------------------------
    @rule(
        tenant=st.sampled_from(TENANTS),
        priority=st.sampled_from(CLASSES),
        model=st.sampled_from(MODELS),
        deadline=st.none() | st.sampled_from([5.0, 10.0, 20.0]),
        tokens=st.integers(1, 500),
    )
    def enqueue(
        self, tenant: str, priority: Priority, model: str, deadline: float | None, tokens: int
    ) -> None:
        self.arrivals += 1
        job_id = f"j{self.arrivals}"
        policy = self.queue.policy
        entry = QueueEntry(
            job_id, tenant, priority, Route(model),
            cost=1.0 if policy.unit == "requests" else float(tokens),
            deadline=None if deadline is None else self.now + deadline,
            unit=policy.unit, tokens_in=tokens // 3, tokens_out=tokens,
        )  # fmt: skip
        cap = policy.tenant_capacity
        tenant_full = cap is not None and len(self._scope(tenant)) >= cap
        full = tenant_full or len(self.live) >= policy.capacity
        expected = self._expected_victim(entry, tenant if tenant_full else None) if full else None
        outcome = self.queue.enqueue(entry)
        if isinstance(outcome, Rejected):
            assert full and expected is None
            assert outcome.reason == ("tenant_capacity" if tenant_full else "capacity")
            return
        assert isinstance(outcome, Admitted)
        if full:
            assert expected is not None and outcome.evicted is not None
            assert outcome.evicted.job_id == expected.entry.job_id
            self._leave(outcome.evicted.job_id, "evicted")
        else:
            assert outcome.evicted is None
        self.live[job_id] = Job(outcome.entry, self.arrivals)
        self.admitted.add(job_id)

    @rule(
        servable=st.frozensets(st.sampled_from(MODELS)),
        blocked=st.frozensets(st.sampled_from(TENANTS), max_size=2),
    )
    def take(self, servable: frozenset[str], blocked: frozenset[str]) -> None:
        taken = self.queue.take(lambda r: r.model in servable, lambda t: t not in blocked)
        eligible = [
            j for j in self.live.values() if j.entry.route.model in servable and j.entry.tenant not in blocked
        ]
        if taken is None:
            assert not eligible
            return
        job = self.live[taken.job_id]
        assert taken.route.model in servable and taken.tenant not in blocked
        flow = (taken.tenant, taken.priority)
        passed_over = [
            j for j in eligible if (j.entry.tenant, j.entry.priority) == flow and j.order < job.order
        ]
        assert not passed_over, "a take passed over an earlier servable job of the same flow"
        self._leave(taken.job_id, "taken")

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def cancel_queued(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.live)))
        removed = self.queue.remove(job_id)
        assert removed is not None and removed.job_id == job_id
        assert job_id not in self.queue
        self._leave(job_id, "removed")

    @rule(job=st.integers(1, 60))
    def cancel_unknown_or_gone(self, job: int) -> None:
        job_id = f"j{job}"
        if job_id not in self.live:
            assert self.queue.remove(job_id) is None

    @rule(dt=st.sampled_from([0.0, 1.0, 5.0, 12.0]))
    def expire(self, dt: float) -> None:
        self.now += dt
        expired = self.queue.expire(self.now)
        due = {
            j.entry.job_id
            for j in self.live.values()
            if j.entry.deadline is not None and j.entry.deadline <= self.now
        }
        assert {e.job_id for e in expired} == due
        for entry in expired:
            self._leave(entry.job_id, "expired")

    @rule(
        tenant=st.sampled_from(TENANTS),
        priority=st.sampled_from(CLASSES),
        estimated=st.integers(1, 500),
        actual=st.integers(0, 500),
    )
    def settle(self, tenant: str, priority: Priority, estimated: int, actual: int) -> None:
        self.queue.settle(tenant, priority, float(estimated), float(actual))
        tag = self.queue.flow_tag(tenant, priority)
        assert tag is None or tag >= 0

    @rule(policy=policies)
    def change_policy(self, policy: QueuePolicy) -> None:
        for entry in self.queue.set_policy(policy):
            self._leave(entry.job_id, "evicted")

    # -- invariants -------------------------------------------------------------------------------
    @invariant()
    def bounded(self) -> None:
        policy = self.queue.policy
        assert len(self.queue) <= policy.capacity
        if policy.tenant_capacity is not None:
            for tenant in TENANTS:
                assert self.queue.tenant_size(tenant) <= policy.tenant_capacity

    @invariant()
    def model_agrees(self) -> None:
        assert len(self.queue) == len(self.live)
        assert {e.job_id for e in self.queue.entries()} == set(self.live)

    @invariant()
    def positions_are_a_permutation_per_key(self) -> None:
        for model in MODELS:
            ids = [j for j, job in self.live.items() if job.entry.route.model == model]
            assert sorted(self.queue.position(j) for j in ids) == list(range(len(ids)))

    @invariant()
    def one_place_agrees_with_the_whole_projection(self) -> None:
        # Each job's place is found by bisection in the flows' lanes; the whole queue's projection,
        # sorted, is the reference (computed second: `place` would read it once cached).
        self.queue._positions = None  # the cache of the last projection: bisect afresh
        singles = {j: self.queue.place(j) for j in self.live}
        assert singles == dict(self.queue.places())
        depths: dict[Route, int] = {}
        for job in self.live.values():
            depths[job.entry.route] = depths.get(job.entry.route, 0) + 1
        assert dict(self.queue.depths().by_route) == depths
        for tenant in TENANTS:
            first: dict[Route, int] = {}
            for j, job in self.live.items():
                if job.entry.tenant == tenant:
                    ahead = singles[j].ahead
                    first[job.entry.route] = min(ahead, first.get(job.entry.route, ahead))
            assert dict(self.queue.depths(tenant).first) == first

    def teardown(self) -> None:
        while (taken := self.queue.take(lambda _: True)) is not None:
            self._leave(taken.job_id, "taken")
        assert not self.live and len(self.queue) == 0
        assert set(self.exits) == self.admitted
        assert all(len(ways) == 1 for ways in self.exits.values()), "a job left more than once"


QueueMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestQueueProperties = QueueMachine.TestCase
