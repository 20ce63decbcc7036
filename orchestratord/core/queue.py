"""The bounded, fair admission queue: start-time fair queuing over (tenant, class) flows.

Fairness (documented in docs/admission.md): each flow (tenant, priority) has a weight, the tenant's
weight times the class weight, and a virtual start tag. When a flow becomes backlogged its tag is
lifted to the queue's virtual time, so idle time is not banked. Dispatch takes, among flows whose head
job a free slot can serve, the flow with the smallest tag; the queue's virtual time moves to that tag,
and the flow's tag advances by cost / weight. A job's cost is 1 (fair by requests) or its estimated
tokens (fair by tokens), settled with the real count when it ends. Tags, not rounds, so the same state
can live in a Redis sorted set.

Within a flow, jobs for one model go by (deadline, arrival). Removal (cancel, eviction) is O(log n):
heaps drop stale entries lazily. No I/O, no asyncio, no logging: callers own time and wake-ups.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from orchestratord.core.tasks import PRIORITIES, Priority

FullPolicy = Literal["reject", "drop-lru", "shed-low-priority"]
FairnessUnit = Literal["requests", "tokens"]
_RANK: dict[Priority, int] = {"interactive": 0, "batch": 1}


@dataclass(frozen=True, slots=True)
class QueueEntry:
    job_id: str
    tenant: str
    priority: Priority
    model: str
    cost: float = 1.0
    deadline: float | None = None
    enqueued_at: float = 0.0
    seq: int = 0


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    capacity: int = 1024
    tenant_capacity: int | None = None
    full_policy: FullPolicy = "reject"
    class_weights: Mapping[str, float] = field(default_factory=lambda: {"interactive": 8.0, "batch": 1.0})
    tenant_weights: Mapping[str, float] = field(default_factory=dict)
    unit: FairnessUnit = "requests"

    def weight(self, tenant: str, priority: Priority) -> float:
        return self.tenant_weights.get(tenant, 1.0) * self.class_weights.get(priority, 1.0)


@dataclass(frozen=True, slots=True)
class Admitted:
    entry: QueueEntry
    evicted: QueueEntry | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Literal["capacity", "tenant_capacity"]
    policy: FullPolicy


@dataclass(slots=True)
class _Flow:
    tag: float = 0.0
    size: int = 0
    heaps: dict[str, list[tuple[float, int, str]]] = field(default_factory=dict)


class FairQueue:
    """State owner of queued jobs. Every admitted job leaves exactly once: taken, removed or expired."""

    def __init__(self, policy: QueuePolicy | None = None) -> None:
        self.policy = policy or QueuePolicy()
        self._entries: OrderedDict[str, QueueEntry] = OrderedDict()
        self._by_class: dict[Priority, OrderedDict[str, None]] = {p: OrderedDict() for p in PRIORITIES}
        self._by_tenant: dict[str, int] = {}
        self._flows: dict[tuple[str, Priority], _Flow] = {}
        self._deadlines: list[tuple[float, int, str]] = []
        self._vtime = 0.0
        self._seq = 0

    # -- admission -------------------------------------------------------------------------------
    def enqueue(self, entry: QueueEntry) -> Admitted | Rejected:
        tenant_full = self._tenant_full(entry.tenant)
        if tenant_full or len(self._entries) >= self.policy.capacity:
            victim = self._victim_for(entry, tenant_only=tenant_full)
            if victim is None:
                return Rejected("tenant_capacity" if tenant_full else "capacity", self.policy.full_policy)
            self.remove(victim.job_id)
            return Admitted(self._insert(entry), evicted=victim)
        return Admitted(self._insert(entry))

    def _tenant_full(self, tenant: str) -> bool:
        cap = self.policy.tenant_capacity
        return cap is not None and self._by_tenant.get(tenant, 0) >= cap

    def _victim_for(self, entry: QueueEntry, *, tenant_only: bool) -> QueueEntry | None:
        def allowed(e: QueueEntry) -> bool:
            return not tenant_only or e.tenant == entry.tenant

        if self.policy.full_policy == "drop-lru":
            return self._first(self._iter_class("batch"), allowed) or self._first(
                iter(self._entries.values()), allowed
            )
        if self.policy.full_policy == "shed-low-priority":
            lower = [p for p in PRIORITIES if _RANK[p] > _RANK[entry.priority]]
            for priority in reversed(lower):
                victim = self._first(self._iter_class(priority, newest_first=True), allowed)
                if victim is not None:
                    return victim
        return None

    @staticmethod
    def _first(entries: Iterator[QueueEntry], allowed: Callable[[QueueEntry], bool]) -> QueueEntry | None:
        return next((e for e in entries if allowed(e)), None)

    def _iter_class(self, priority: Priority, *, newest_first: bool = False) -> Iterator[QueueEntry]:
        ids = reversed(self._by_class[priority]) if newest_first else iter(self._by_class[priority])
        return (self._entries[i] for i in ids)

    def _insert(self, entry: QueueEntry) -> QueueEntry:
        self._seq += 1
        entry = replace(entry, seq=self._seq)
        self._entries[entry.job_id] = entry
        self._by_class[entry.priority][entry.job_id] = None
        self._by_tenant[entry.tenant] = self._by_tenant.get(entry.tenant, 0) + 1
        flow = self._flows.setdefault((entry.tenant, entry.priority), _Flow(tag=self._vtime))
        if flow.size == 0:
            flow.tag = max(flow.tag, self._vtime)
        flow.size += 1
        key = (_deadline_key(entry.deadline), entry.seq, entry.job_id)
        heapq.heappush(flow.heaps.setdefault(entry.model, []), key)
        if entry.deadline is not None:
            heapq.heappush(self._deadlines, (entry.deadline, entry.seq, entry.job_id))
        return entry

    # -- leaving the queue -----------------------------------------------------------------------
    def remove(self, job_id: str) -> QueueEntry | None:
        """Take a job out (cancel, eviction). Returns it, or None if it is not queued."""
        entry = self._entries.pop(job_id, None)
        if entry is None:
            return None
        del self._by_class[entry.priority][job_id]
        self._by_tenant[entry.tenant] -= 1
        if not self._by_tenant[entry.tenant]:
            del self._by_tenant[entry.tenant]
        self._flows[(entry.tenant, entry.priority)].size -= 1
        return entry

    def take(
        self, can_serve: Callable[[str], bool], tenant_ok: Callable[[str], bool] = lambda _: True
    ) -> QueueEntry | None:
        """Dispatch the job with the smallest flow tag among those a free slot can serve."""
        best: tuple[float, float, int, tuple[str, Priority], str] | None = None
        for key, flow in self._flows.items():
            if flow.size == 0 or not tenant_ok(key[0]):
                continue
            head = self._flow_head(flow, can_serve)
            if head is not None and (best is None or (flow.tag, *head[:2]) < best[:3]):
                best = (flow.tag, head[0], head[1], key, head[2])
        if best is None:
            return None
        entry = self._entries[best[4]]
        flow = self._flows[best[3]]
        self.remove(entry.job_id)
        self._vtime = max(self._vtime, flow.tag)
        flow.tag += entry.cost / self.policy.weight(entry.tenant, entry.priority)
        return entry

    def _flow_head(self, flow: _Flow, can_serve: Callable[[str], bool]) -> tuple[float, int, str] | None:
        best: tuple[float, int, str] | None = None
        for model, heap in flow.heaps.items():
            while heap and heap[0][2] not in self._entries:
                heapq.heappop(heap)
            if heap and can_serve(model) and (best is None or heap[0] < best):
                best = heap[0]
        return best

    def expire(self, now: float) -> list[QueueEntry]:
        """Remove and return every queued job whose deadline has passed."""
        expired: list[QueueEntry] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, job_id = heapq.heappop(self._deadlines)
            entry = self.remove(job_id)
            if entry is not None:
                expired.append(entry)
        return expired

    def settle(self, tenant: str, priority: Priority, estimated: float, actual: float) -> None:
        """Correct a flow's tag once a job's real cost is known (fairness by tokens)."""
        flow = self._flows.get((tenant, priority))
        if flow is not None:
            flow.tag = max(0.0, flow.tag + (actual - estimated) / self.policy.weight(tenant, priority))

    # -- reading ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries

    def get(self, job_id: str) -> QueueEntry | None:
        return self._entries.get(job_id)

    def entries(self) -> list[QueueEntry]:
        return list(self._entries.values())

    def depth(self, model: str | None = None, priority: Priority | None = None) -> int:
        return sum(
            1
            for e in self._entries.values()
            if (model is None or e.model == model) and (priority is None or e.priority == priority)
        )

    def position(self, job_id: str) -> int:
        """How many queued jobs for the same model are expected to be dispatched before this one.

        Each flow's jobs are projected onto virtual time (the flow's tag plus cost/weight per job ahead);
        the jobs projected before this job's own tag are counted.
        """
        me = self._entries.get(job_id)
        if me is None:
            return 0
        own = self._flows[(me.tenant, me.priority)]
        mine = self._ahead_in_flow(own, me)
        my_tag = own.tag + sum(e.cost for e in mine) / self.policy.weight(me.tenant, me.priority)
        ahead = len(mine)
        for key, flow in self._flows.items():
            if flow is own or flow.size == 0:
                continue
            ahead += self._projected_before(key, flow, me.model, my_tag)
        return ahead

    def _ahead_in_flow(self, flow: _Flow, me: QueueEntry) -> list[QueueEntry]:
        mine = (_deadline_key(me.deadline), me.seq)
        heap = flow.heaps.get(me.model, [])
        return [
            self._entries[j] for d, s, j in heap if j in self._entries and (d, s) < mine and j != me.job_id
        ]

    def _projected_before(self, key: tuple[str, Priority], flow: _Flow, model: str, tag: float) -> int:
        count = 0
        t = flow.tag
        weight = self.policy.weight(*key)
        for _, _, job_id in sorted(flow.heaps.get(model, [])):
            entry = self._entries.get(job_id)
            if entry is None:
                continue
            if t >= tag:
                break
            count += 1
            t += entry.cost / weight
        return count


def _deadline_key(deadline: float | None) -> float:
    return math.inf if deadline is None else deadline
