"""Fairness under saturation, simulated: 10,000 dispatches through the real FairQueue.

A discrete-event simulation with S slots. Every flow is kept backlogged (saturation); a slot takes
the next job as soon as it frees, and with `unit: tokens` each job is settled with its real token
count when it ends. The measured share of dispatches (requests) or of tokens (tokens) per flow, per
tenant and per class must be within ±5 % (relative) of the share its weight gives it.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestratord.core.queue import FairnessUnit, FairQueue, QueueEntry, QueuePolicy
from orchestratord.core.route import Route
from orchestratord.core.tasks import Priority

Flow = tuple[str, Priority]
TENANT_WEIGHTS = {"alpha": 1.0, "beta": 2.0, "gamma": 1.0}
CLASS_WEIGHTS = {"interactive": 8.0, "batch": 1.0}
FLOWS: list[Flow] = [(t, c) for t in TENANT_WEIGHTS for c in ("interactive", "batch")]  # type: ignore[misc]


@dataclass
class Job:
    estimate: int
    actual: int


@dataclass
class Simulation:
    unit: FairnessUnit
    sizes: Callable[[random.Random, Flow], Job]
    slots: int = 8
    backlog: int = 4
    seed: int = 7
    queue: FairQueue = field(init=False)
    jobs: dict[str, Job] = field(default_factory=dict)
    dispatched: list[tuple[Flow, Job]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.queue = FairQueue(
            QueuePolicy(
                capacity=10_000, class_weights=CLASS_WEIGHTS, tenant_weights=TENANT_WEIGHTS, unit=self.unit
            )
        )
        self.rng = random.Random(self.seed)
        self.count = 0

    def submit(self, flow: Flow) -> str:
        self.count += 1
        job = self.sizes(self.rng, flow)
        job_id = f"{flow[0]}-{flow[1]}-{self.count}"
        self.jobs[job_id] = job
        cost = 1.0 if self.unit == "requests" else float(job.estimate)
        self.queue.enqueue(QueueEntry(job_id, flow[0], flow[1], Route("m"), cost=cost, unit=self.unit))
        return job_id

    def run(self, dispatches: int) -> None:
        for flow in FLOWS:
            for _ in range(self.backlog):
                self.submit(flow)
        running: list[tuple[float, int, str, QueueEntry]] = []
        now = 0.0
        for _ in range(self.slots):
            self._start(running, now)
        while len(self.dispatched) < dispatches:
            now, _, job_id, entry = heapq.heappop(running)
            if self.unit == "tokens":
                self.queue.settle(entry.tenant, entry.priority, entry.cost, float(self.jobs[job_id].actual))
            self._start(running, now)

    def _start(self, running: list[tuple[float, int, str, QueueEntry]], now: float) -> None:
        entry = self.queue.take(lambda _: True)
        assert entry is not None, "saturation: every flow stays backlogged"
        flow = (entry.tenant, entry.priority)
        job = self.jobs[entry.job_id]
        self.dispatched.append((flow, job))
        self.submit(flow)  # keep the flow backlogged
        heapq.heappush(running, (now + job.actual / 100, len(self.dispatched), entry.job_id, entry))

    def shares(self, key: Callable[[Flow], object], unit: FairnessUnit | None = None) -> dict[object, float]:
        """Each key's share of the dispatches (requests) or of the real tokens (tokens)."""
        amount: Counter[object] = Counter()
        for flow, job in self.dispatched:
            amount[key(flow)] += 1 if (unit or self.unit) == "requests" else job.actual
        total = sum(amount.values())
        return {k: v / total for k, v in amount.items()}


def weight_shares(key: Callable[[Flow], object]) -> dict[object, float]:
    weights: Counter[object] = Counter()
    for tenant, priority in FLOWS:
        weights[key((tenant, priority))] += TENANT_WEIGHTS[tenant] * CLASS_WEIGHTS[priority]
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


def assert_within_5_percent(sim: Simulation) -> None:
    for key in (lambda f: f, lambda f: f[0], lambda f: f[1]):
        measured, expected = sim.shares(key), weight_shares(key)
        for k, share in expected.items():
            assert abs(measured[k] - share) <= 0.05 * share, (k, measured[k], share)


def uniform_jobs(rng: random.Random, flow: Flow) -> Job:
    return Job(estimate=1, actual=rng.randint(10, 400))


def long_and_short(rng: random.Random, flow: Flow) -> Job:
    """alpha asks for long generations, gamma for short ones; the real count is at most the estimate."""
    prompt = rng.randint(5, 50)
    max_tokens = {"alpha": 2000, "beta": 300, "gamma": 40}[flow[0]]
    return Job(estimate=prompt + max_tokens, actual=prompt + rng.randint(max_tokens // 4, max_tokens))


def test_share_of_dispatches_follows_the_weights_by_requests() -> None:
    sim = Simulation("requests", uniform_jobs)
    sim.run(10_000)
    assert len(sim.dispatched) == 10_000
    assert_within_5_percent(sim)


def test_share_of_tokens_follows_the_weights_by_tokens() -> None:
    sim = Simulation("tokens", long_and_short)
    sim.run(10_000)
    assert_within_5_percent(sim)
    # Long generations do not crowd out short ones: gamma, with alpha's weight, gets as many tokens,
    # and so far more dispatches.
    by_tenant = Counter(flow[0] for flow, _ in sim.dispatched)
    assert by_tenant["gamma"] > 10 * by_tenant["alpha"]


def test_requests_unit_lets_long_generations_take_the_tokens() -> None:
    """The contrast that shows why the tokens unit exists: by requests, alpha's long jobs win tokens."""
    sim = Simulation("requests", long_and_short)
    sim.run(10_000)
    tokens = sim.shares(lambda f: f[0], unit="tokens")
    assert tokens["alpha"] > 5 * tokens["gamma"]


def test_batch_is_never_starved() -> None:
    sim = Simulation("requests", uniform_jobs)
    sim.run(10_000)
    total_weight = sum(TENANT_WEIGHTS[t] * CLASS_WEIGHTS[c] for t, c in FLOWS)
    for tenant in TENANT_WEIGHTS:
        flow = (tenant, "batch")
        served = [i for i, (f, _) in enumerate(sim.dispatched) if f == flow]
        gaps = [b - a for a, b in zip([-1, *served], served, strict=False)]
        weight = TENANT_WEIGHTS[tenant] * CLASS_WEIGHTS["batch"]
        # One dispatch per total_weight / weight, give or take a round of ties across the flows.
        assert max(gaps) <= total_weight / weight + len(FLOWS), (tenant, max(gaps))


def test_a_flooding_tenant_does_not_delay_another_tenants_interactive_jobs() -> None:
    q = FairQueue(QueuePolicy(capacity=20_000))
    for i in range(5000):
        q.enqueue(QueueEntry(f"flood-i{i}", "flood", "interactive", Route("m")))
        q.enqueue(QueueEntry(f"flood-b{i}", "flood", "batch", Route("m")))
    waits = []
    for n in range(100):
        for _ in range(37):  # the flood keeps being served between the quiet tenant's requests
            taken = q.take(lambda _: True)
            assert taken is not None and taken.tenant == "flood"
        q.enqueue(QueueEntry(f"quiet-{n}", "quiet", "interactive", Route("m")))
        assert q.position(f"quiet-{n}") <= 2
        for waited in range(10):
            taken = q.take(lambda _: True)
            assert taken is not None
            if taken.tenant == "quiet":
                waits.append(waited)
                break
    assert len(waits) == 100
    # The quiet flow (weight 8) starts at the virtual time, which no backlogged flood flow (8 and 1) is
    # behind: only flood jobs tied with it at that virtual time may go first, at most one per flow.
    assert max(waits) <= 2
    assert len(q) > 5000  # the flood is still queued
