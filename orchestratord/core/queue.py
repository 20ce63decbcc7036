"""The bounded, fair admission queue: start-time fair queuing (SFQ) over (tenant, class) flows.

The rules, precise enough to port (the Redis backend runs them as a Lua script over sorted sets):

1. **Flows and weights.** A job belongs to the flow (tenant, priority). The flow's weight is
   `tenant_weights[tenant] (default 1) * class_weights[priority]` (default interactive 8, batch 1).
2. **Tags.** The queue keeps a virtual time `V` (starts at 0, never decreases) and each flow a start
   tag. When a job arrives at an empty flow, the flow's tag becomes `max(tag, V)`: a flow that was
   idle does not bank credit, a flow that was just served does not lose its debt.
3. **Take.** Among the flows whose tenant may run more (`tenant_ok`) and that have a queued job whose
   route a free slot can serve (`can_serve`), take the flow with the smallest
   `(tag, head deadline, head arrival)`; its head is its job with the smallest (deadline, arrival)
   among the servable keys (no deadline sorts last). Then `V = max(V, tag)` and
   `tag += cost / weight`. A busy key never blocks another key (no head-of-line blocking).
4. **Cost and settlement.** `cost` is 1 (`unit: requests`) or the estimated tokens, prompt plus
   `min(expected_tokens, max_tokens)` (`unit: tokens`). When the job ends its flow is settled with the
   real count:
   `tag = max(0, tag + (actual - estimated) / weight)`.
5. **Bounds.** At most `capacity` jobs in all and `tenant_capacity` per tenant. An arrival that finds
   its tenant (or else the queue) full applies `full_policy`, choosing the victim within the tenant
   when the tenant is the bound that is hit:
   - `reject`: refused;
   - `drop-lru`: the oldest batch job is evicted, else the oldest job, and the arrival admitted;
   - `shed-low-priority`: the newest job of the lowest class below the arrival's is evicted, and the
     arrival admitted; refused when there is none.
   A policy change that shrinks a bound evicts the excess at once, in `drop-lru` order.
6. **Deadlines.** `deadline` is absolute (wall-clock seconds). `expire(now)` removes every job whose
   deadline is `<= now`; callers expire before they take, so a job past its deadline is never taken.
7. **Held places.** With `full_policy: reject`, a client refused because the queue is full may be
   promised a place (`Tickets.hold`): its ticket (its tenant and Idempotency-Key) is due when the
   place it is promised frees, and held until `expires`. The places that free go
   to the tickets in order of due time: an arrival with a live ticket of rank `k` (the tickets due
   before it and not yet due now: a client that is late does not hold back one that is on time)
   is admitted while `len < capacity - k`, and takes its ticket out; once its ticket is due, while
   `len < 2 x capacity` (the promise is kept when the jobs ahead ran later than predicted); any
   other arrival while `len + tickets < capacity`. A ticket is never promised twice (a second
   refusal gets the same due time).
8. **Leaving.** A job leaves exactly once: taken, removed (cancel), evicted or expired.

Each flow keeps its queued jobs per route in a lane, in take order ((deadline, arrival)), with the
running sums of their cost and work. Positions project each flow's lane for a key onto virtual time
(the job's projected tag is the flow's tag plus the cost of the jobs ahead of it in the lane over the
flow's weight) and count the jobs projected before a job, ties broken as in rule 3. One job's place is
found by bisection in each flow's lane for its route: O(flows x log n), whatever the queue's length;
arrivals, takes and removals cost O(log n) comparisons plus a memmove of the lane's arrays.

No I/O, no asyncio, no logging: callers own time and wake-ups.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import accumulate
from typing import Literal

from orchestratord.core.route import Route
from orchestratord.core.tasks import PRIORITIES, Priority

FullPolicy = Literal["reject", "drop-lru", "shed-low-priority"]
FairnessUnit = Literal["requests", "tokens"]
FlowKey = tuple[str, Priority]
_RANK: dict[Priority, int] = {p: i for i, p in enumerate(PRIORITIES)}  # 0 is the highest class
_COMPACT_MIN = 32


@dataclass(frozen=True, slots=True)
class QueueEntry:
    job_id: str
    tenant: str
    priority: Priority
    route: Route  # the model, and the pools it is restricted to (core.route)
    cost: float = 1.0  # charged to the flow when taken, in `unit`
    deadline: float | None = None  # absolute, wall-clock seconds
    enqueued_at: float = 0.0
    seq: int = 0  # arrival order, stamped by the queue
    unit: FairnessUnit = "requests"  # the unit `cost` is counted in; settle only `tokens` costs
    tokens_in: int = 0  # the prompt's tokens (estimated) and the output expected (core.work): what a
    tokens_out: int = 0  # slot will spend on it, for the predictions of the jobs behind it


@dataclass(frozen=True, slots=True)
class Place:
    """A queued job's place: how many queued jobs for its route are expected to be taken before it,
    and the work they ask for (their prompts' and expected outputs' tokens, summed), from which the
    predictions tell how long they will hold the slots it waits for."""

    ahead: int
    tokens_in: int = 0
    tokens_out: int = 0


@dataclass(frozen=True, slots=True)
class Depths:
    """How many jobs are queued for each route that has any, and where a tenant's first queued job
    stands on each of its routes (its place's `ahead`): what the 429 hints need, without a walk of
    the queue."""

    by_route: Mapping[Route, int]
    first: Mapping[Route, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    capacity: int = 1024
    tenant_capacity: int | None = None
    full_policy: FullPolicy = "reject"
    class_weights: Mapping[str, float] = field(default_factory=lambda: {"interactive": 8.0, "batch": 1.0})
    tenant_weights: Mapping[str, float] = field(default_factory=dict)
    unit: FairnessUnit = "requests"
    retry_hold_s: float = 1.0  # how long past its due time a held place waits for its client (0: none)

    def weight(self, tenant: str, priority: Priority) -> float:
        return self.tenant_weights.get(tenant, 1.0) * self.class_weights.get(priority, 1.0)


@dataclass(frozen=True, slots=True)
class Admitted:
    entry: QueueEntry
    evicted: QueueEntry | None = None
    place: Place | None = None  # its place when admitted, when the store found it in the same step


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Literal["capacity", "tenant_capacity", "max_wait"]
    policy: FullPolicy
    place: Place | None = None  # max_wait: the place the job would have taken


_HeapItem = tuple[float, int, str]  # (deadline or inf, seq, job_id)


class Tickets:
    """Places held for clients refused from a full queue (rule 7): ticket -> due and expiry times,
    ordered by due time (ties by arrival). O(log n) to hold, take out and expire; O(log n) + a
    memmove of the order to rank."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[float, int, float]] = {}  # ticket -> (due, seq, expires)
        self._order: list[tuple[float, int, str]] = []  # (due, seq, ticket), ascending
        self._expiry: list[tuple[float, int, str]] = []  # heap of (expires, seq, ticket); lazy
        self._seq = 0

    def __len__(self) -> int:
        return len(self._held)

    def purge(self, now: float) -> None:
        """Drop the tickets whose time ran out."""
        while self._expiry and self._expiry[0][0] <= now:
            _, seq, ticket = heapq.heappop(self._expiry)
            held = self._held.get(ticket)
            if held is not None and held[1] == seq:
                self.release(ticket)

    def rank(self, ticket: str, now: float) -> int | None:
        """How many live tickets are due before `ticket` and after `now`; None if it holds no place."""
        held = self._held.get(ticket)
        if held is None:
            return None
        due_now = bisect.bisect_right(self._order, (now, math.inf, ""))
        return max(0, bisect.bisect_left(self._order, (held[0], held[1], ticket)) - due_now)

    def due(self, ticket: str) -> float | None:
        held = self._held.get(ticket)
        return None if held is None else held[0]

    def hold(self, ticket: str, due: float, expires: float) -> float:
        """Promise `ticket` the place due at `due` until `expires`; a ticket already held keeps its
        own. Returns the ticket's due time."""
        held = self._held.get(ticket)
        if held is not None:
            return held[0]
        self._seq += 1
        self._held[ticket] = (due, self._seq, expires)
        bisect.insort(self._order, (due, self._seq, ticket))
        heapq.heappush(self._expiry, (expires, self._seq, ticket))
        return due

    def release(self, ticket: str) -> None:
        held = self._held.pop(ticket, None)
        if held is not None:
            i = bisect.bisect_left(self._order, (held[0], held[1], ticket))
            del self._order[i]
            if len(self._expiry) > max(_COMPACT_MIN, 2 * len(self._held)):
                live = self._held
                self._expiry = [e for e in self._expiry if live.get(e[2], (0.0, -1, 0.0))[1] == e[1]]
                heapq.heapify(self._expiry)


class _Sums:
    """A series of numbers and its running sums, kept for bisection: `upto(k)` is the sum of the first
    `k`. An append or a removal at the front costs O(1) plus a memmove; a change in the middle leaves
    the sums after it stale until they are next read (rebuilt at C speed by `accumulate`)."""

    __slots__ = ("stale", "sums", "values")

    def __init__(self) -> None:
        self.values: list[float] = []
        self.sums: list[float] = [0.0]  # sums[k] - sums[0]: the first k values
        self.stale = 1  # sums[stale:] need rebuilding; len(sums) when none do

    def insert(self, i: int, value: float) -> None:
        if i == len(self.values) and self.stale == len(self.sums):
            self.values.append(value)
            self.sums.append(self.sums[-1] + value)
            self.stale += 1
            return
        self.values.insert(i, value)
        self.sums.insert(i + 1, 0.0)
        self.stale = min(self.stale, i + 1)

    def delete(self, i: int) -> None:
        del self.values[i]
        if i:
            del self.sums[i + 1]
            self.stale = min(self.stale, i + 1)
        else:  # at the front the differences from the new first sum still hold
            del self.sums[0]
            self.stale = max(1, self.stale - 1)

    def upto(self, k: int) -> float:
        if self.stale < len(self.sums):
            s = self.stale
            self.sums[s - 1 :] = accumulate(self.values[s - 1 :], initial=self.sums[s - 1])
            self.stale = len(self.sums)
        return self.sums[k] - self.sums[0]


class _Lane:
    """One flow's queued jobs for one route, in take order ((deadline or inf, arrival)), with the
    running sums of their cost and work."""

    __slots__ = ("cost", "ids", "keys", "tokens_in", "tokens_out")

    def __init__(self) -> None:
        self.keys: list[tuple[float, int]] = []
        self.ids: list[str] = []
        self.cost, self.tokens_in, self.tokens_out = _Sums(), _Sums(), _Sums()

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, entry: QueueEntry) -> None:
        key = _order(entry)
        i = len(self.keys) if not self.keys or self.keys[-1] < key else bisect.bisect_left(self.keys, key)
        self.keys.insert(i, key)
        self.ids.insert(i, entry.job_id)
        self.cost.insert(i, entry.cost)
        self.tokens_in.insert(i, entry.tokens_in)
        self.tokens_out.insert(i, entry.tokens_out)

    def index(self, entry: QueueEntry) -> int:
        return bisect.bisect_left(self.keys, _order(entry))

    def discard(self, entry: QueueEntry) -> None:
        i = self.index(entry)
        del self.keys[i], self.ids[i]
        self.cost.delete(i)
        self.tokens_in.delete(i)
        self.tokens_out.delete(i)

    def tag(self, start: float, weight: float, k: int) -> float:
        """The projected start tag of the lane's `k`-th job, the flow's tag being `start`."""
        return start + self.cost.upto(k) / weight

    def before(self, start: float, weight: float, mark: tuple[float, float, int]) -> int:
        """How many of the lane's jobs project before `mark` ((tag, deadline, arrival))."""
        keys = self.keys
        return bisect.bisect_left(
            range(len(keys)), mark, key=lambda k: (self.tag(start, weight, k), *keys[k])
        )

    def work(self, k: int) -> tuple[int, int]:
        """The tokens of the lane's first `k` jobs: (prompts, expected outputs)."""
        return int(self.tokens_in.upto(k)), int(self.tokens_out.upto(k))


@dataclass(slots=True)
class _Flow:
    tag: float
    order: OrderedDict[str, None] = field(default_factory=OrderedDict)  # queued jobs, by arrival
    lanes: dict[Route, _Lane] = field(default_factory=dict)  # its queued jobs, per route

    @property
    def size(self) -> int:
        return len(self.order)


class FairQueue:
    """State owner of queued jobs; see the module docstring for the rules it keeps."""

    def __init__(self, policy: QueuePolicy | None = None) -> None:
        self.policy = policy or QueuePolicy()
        self._entries: OrderedDict[str, QueueEntry] = OrderedDict()
        self._by_class: dict[Priority, OrderedDict[str, None]] = {p: OrderedDict() for p in PRIORITIES}
        self._by_tenant: dict[str, int] = {}
        self._flows: dict[FlowKey, _Flow] = {}
        self._deadlines: list[_HeapItem] = []
        self._deadline_stale = 0
        self._vtime = 0.0
        self._seq = 0
        self._positions: dict[str, Place] | None = None
        self._lanes: dict[Route, dict[FlowKey, _Lane]] = {}  # each route's lanes, by flow
        self._by_route: dict[Route, int] = {}
        self.tickets = Tickets()

    # -- admission -------------------------------------------------------------------------------
    def enqueue(
        self, entry: QueueEntry, *, ticket: Callable[[], str] | None = None, now: float = 0.0
    ) -> Admitted | Rejected:
        """Admit `entry` or refuse it (rules 5 and 7); `ticket()` names the client's held place, if
        it has one (asked only while places are held)."""
        if entry.job_id in self._entries:
            raise ValueError(f"job {entry.job_id!r} is already queued")
        tenant_full = self._tenant_full(entry.tenant)
        self.tickets.purge(now)
        held, mine, bound = len(self.tickets), None, self.policy.capacity
        if held and ticket is not None:
            mine = ticket()
            rank = self.tickets.rank(mine, now)
            due = self.tickets.due(mine)
            if rank is None or due is None:
                mine = None
            elif due <= now:  # on time: its place is kept even if the jobs ahead ran late
                held, bound = 0, 2 * self.policy.capacity
            else:
                held = rank  # early: the places due before this ticket's are still promised
        if not tenant_full and len(self._entries) + held < bound:
            if mine is not None:
                self.tickets.release(mine)
            return Admitted(self._insert(entry))
        victim = self._victim_for(entry, entry.tenant if tenant_full else None)
        if victim is None:
            return Rejected("tenant_capacity" if tenant_full else "capacity", self.policy.full_policy)
        self.remove(victim.job_id)
        return Admitted(self._insert(entry), evicted=victim)

    def set_policy(self, policy: QueuePolicy) -> list[QueueEntry]:
        """Apply a new policy. Shrunk bounds evict the excess at once (drop-lru order); returns it."""
        self.policy = policy
        self._positions = None
        evicted: list[QueueEntry] = []
        cap = policy.tenant_capacity
        for tenant in list(self._by_tenant):
            while cap is not None and self._by_tenant.get(tenant, 0) > cap:
                evicted.append(self._evict(self._oldest(tenant)))
        while len(self._entries) > policy.capacity:
            evicted.append(self._evict(self._oldest(None)))
        return evicted

    def _evict(self, victim: QueueEntry | None) -> QueueEntry:
        assert victim is not None  # a bound is exceeded, so the scope holds a job
        self.remove(victim.job_id)
        return victim

    def _tenant_full(self, tenant: str) -> bool:
        cap = self.policy.tenant_capacity
        return cap is not None and self._by_tenant.get(tenant, 0) >= cap

    def _victim_for(self, entry: QueueEntry, tenant: str | None) -> QueueEntry | None:
        if self.policy.full_policy == "drop-lru":
            return self._oldest(tenant)
        if self.policy.full_policy == "shed-low-priority":
            lower = [p for p in PRIORITIES if _RANK[p] > _RANK[entry.priority]]
            for priority in reversed(lower):  # the lowest class first
                victim = self._newest(tenant, priority)
                if victim is not None:
                    return victim
        return None

    def _class_order(self, tenant: str | None, priority: Priority) -> OrderedDict[str, None]:
        if tenant is None:
            return self._by_class[priority]
        flow = self._flows.get((tenant, priority))
        return flow.order if flow is not None else OrderedDict()

    def _oldest(self, tenant: str | None) -> QueueEntry | None:
        """The drop-lru victim (of `tenant`, or of all): the oldest batch job, else the oldest job."""
        heads = {p: next(iter(self._class_order(tenant, p)), None) for p in PRIORITIES}
        batch = heads["batch"]
        if batch is not None:
            return self._entries[batch]
        present = [self._entries[h] for h in heads.values() if h is not None]
        return min(present, key=lambda e: e.seq, default=None)

    def _newest(self, tenant: str | None, priority: Priority) -> QueueEntry | None:
        order = self._class_order(tenant, priority)
        return self._entries[next(reversed(order))] if order else None

    def _insert(self, entry: QueueEntry) -> QueueEntry:
        self._seq += 1
        self._positions = None
        entry = replace(entry, seq=self._seq)
        self._by_route[entry.route] = self._by_route.get(entry.route, 0) + 1
        self._entries[entry.job_id] = entry
        self._by_class[entry.priority][entry.job_id] = None
        self._by_tenant[entry.tenant] = self._by_tenant.get(entry.tenant, 0) + 1
        flow = self._flows.setdefault((entry.tenant, entry.priority), _Flow(tag=self._vtime))
        if flow.size == 0:
            flow.tag = max(flow.tag, self._vtime)
        flow.order[entry.job_id] = None
        lane = flow.lanes.get(entry.route)
        if lane is None:
            lane = flow.lanes[entry.route] = _Lane()
            self._lanes.setdefault(entry.route, {})[(entry.tenant, entry.priority)] = lane
        lane.add(entry)
        if entry.deadline is not None:
            heapq.heappush(self._deadlines, (entry.deadline, entry.seq, entry.job_id))
        return entry

    # -- leaving the queue -----------------------------------------------------------------------
    def remove(self, job_id: str) -> QueueEntry | None:
        """Take a job out (cancel, eviction) in O(log n). Returns it, or None if it is not queued."""
        return self._detach(job_id, deadline_popped=False)

    def _detach(self, job_id: str, *, deadline_popped: bool) -> QueueEntry | None:
        entry = self._entries.pop(job_id, None)
        if entry is None:
            return None
        self._positions = None
        del self._by_class[entry.priority][job_id]
        self._by_tenant[entry.tenant] -= 1
        if not self._by_tenant[entry.tenant]:
            del self._by_tenant[entry.tenant]
        self._by_route[entry.route] -= 1
        if not self._by_route[entry.route]:
            del self._by_route[entry.route]
        flow = self._flows[(entry.tenant, entry.priority)]
        del flow.order[job_id]
        lane = flow.lanes[entry.route]
        lane.discard(entry)
        if not lane:
            del flow.lanes[entry.route]
            lanes = self._lanes[entry.route]
            del lanes[(entry.tenant, entry.priority)]
            if not lanes:
                del self._lanes[entry.route]
        if entry.deadline is not None and not deadline_popped:
            self._deadline_stale += 1
            if self._deadline_stale > max(_COMPACT_MIN, len(self._deadlines) - self._deadline_stale):
                self._deadlines = [i for i in self._deadlines if self._live(i)]
                heapq.heapify(self._deadlines)
                self._deadline_stale = 0
        return entry

    def take(
        self,
        can_serve: Callable[[Route], bool],
        tenant_ok: Callable[[str], bool] = lambda _: True,
        batch_can_serve: Callable[[Route], bool] | None = None,
    ) -> QueueEntry | None:
        """Dispatch the job with the smallest flow tag among those a free slot can serve (rule 3); a
        batch job only where `batch_can_serve` (slots held back for interactive work), if given."""
        servable = _memo(can_serve)
        batch = servable if batch_can_serve is None else _memo(batch_can_serve)
        best: tuple[tuple[float, float, int], FlowKey, str] | None = None
        for key, flow in self._flows.items():
            if flow.size == 0 or not tenant_ok(key[0]):
                continue
            head = self._flow_head(flow, batch if key[1] == "batch" else servable)
            if head is not None and (best is None or (flow.tag, head[0], head[1]) < best[0]):
                best = ((flow.tag, head[0], head[1]), key, head[2])
        if best is None:
            return None
        flow = self._flows[best[1]]
        entry = self._entries[best[2]]
        self.remove(entry.job_id)
        self._vtime = max(self._vtime, flow.tag)
        flow.tag += entry.cost / self.policy.weight(entry.tenant, entry.priority)
        return entry

    @staticmethod
    def _flow_head(flow: _Flow, servable: Callable[[Route], bool]) -> tuple[float, int, str] | None:
        best: tuple[float, int, str] | None = None
        for route, lane in flow.lanes.items():
            head = (*lane.keys[0], lane.ids[0])
            if (best is None or head < best) and servable(route):
                best = head
        return best

    def _live(self, item: _HeapItem) -> bool:
        entry = self._entries.get(item[2])
        return entry is not None and entry.seq == item[1]

    def due(self, now: float) -> bool:
        """Whether `expire(now)` may have work: a deadline at or before `now` (perhaps of a job that
        has left the queue since)."""
        return bool(self._deadlines) and self._deadlines[0][0] <= now

    def expire(self, now: float) -> list[QueueEntry]:
        """Remove and return every queued job whose deadline is at or before `now`."""
        expired: list[QueueEntry] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            item = heapq.heappop(self._deadlines)
            if not self._live(item):
                self._deadline_stale -= 1
                continue
            entry = self._detach(item[2], deadline_popped=True)
            assert entry is not None
            expired.append(entry)
        return expired

    def settle(self, tenant: str, priority: Priority, estimated: float, actual: float) -> None:
        """Correct a flow's tag once a job's real cost is known (fairness by tokens, rule 4)."""
        flow = self._flows.get((tenant, priority))
        if flow is not None:
            self._positions = None
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

    def tenant_size(self, tenant: str) -> int:
        return self._by_tenant.get(tenant, 0)

    def lane_items(self) -> int:
        """Jobs held in the flows' lanes: every queued job once, none that left."""
        return sum(len(lane) for flow in self._flows.values() for lane in flow.lanes.values())

    @property
    def vtime(self) -> float:
        return self._vtime

    def flow_tag(self, tenant: str, priority: Priority) -> float | None:
        flow = self._flows.get((tenant, priority))
        return None if flow is None else flow.tag

    def depth(self, route: Route | None = None, priority: Priority | None = None) -> int:
        if priority is None:
            return len(self._entries) if route is None else self._by_route.get(route, 0)
        return sum(
            1
            for e in self._entries.values()
            if (route is None or e.route == route) and (priority is None or e.priority == priority)
        )

    def position(self, job_id: str) -> int:
        """How many queued jobs for the same route are expected to be taken before this one."""
        return self.place(job_id).ahead

    def depths(self, tenant: str | None = None) -> Depths:
        """The jobs queued per route and, with `tenant`, the place of its first job on each of its
        routes: O(routes), plus one `place` per flow of the tenant."""
        first: dict[Route, int] = {}
        flows = [] if tenant is None else [self._flows.get((tenant, p)) for p in PRIORITIES]
        for flow in flows:
            for route, lane in flow.lanes.items() if flow is not None else ():
                ahead = self.place(lane.ids[0]).ahead
                first[route] = min(ahead, first.get(route, ahead))
        return Depths(dict(self._by_route), first)

    def place(self, job_id: str) -> Place:
        """The job's `Place`: the queued jobs for the same route expected to be taken before it, and
        their work. Found by bisection in each flow's lane for the route: O(flows x log n)."""
        entry = self._entries.get(job_id)
        if entry is None:
            return Place(0)
        if self._positions is not None:
            return self._positions[job_id]
        mine = (entry.tenant, entry.priority)
        lane = self._lanes[entry.route][mine]
        k = lane.index(entry)
        mark = (lane.tag(self._flows[mine].tag, self.policy.weight(*mine), k), *_order(entry))
        ahead = k
        tokens_in, tokens_out = lane.work(k)
        for flow_key, other in self._lanes[entry.route].items():
            if flow_key == mine:
                continue
            n = other.before(self._flows[flow_key].tag, self.policy.weight(*flow_key), mark)
            work = other.work(n)
            ahead, tokens_in, tokens_out = ahead + n, tokens_in + work[0], tokens_out + work[1]
        return Place(ahead, tokens_in, tokens_out)

    def places(self) -> Mapping[str, Place]:
        """Every queued job's `Place`, computed together in O(n log n) and kept until the queue
        changes (for views of the whole queue; one job's place is `place`)."""
        if self._positions is None:
            self._positions = self._project()
        return self._positions

    def _project(self) -> dict[str, Place]:
        by_route: dict[Route, list[tuple[float, float, int, str]]] = {}
        for route, lanes in self._lanes.items():
            projected = by_route[route] = []
            for flow_key, lane in lanes.items():
                start, weight = self._flows[flow_key].tag, self.policy.weight(*flow_key)
                for k, (job_id, key) in enumerate(zip(lane.ids, lane.keys, strict=True)):
                    projected.append((lane.tag(start, weight, k), *key, job_id))
        positions: dict[str, Place] = {}
        for projected in by_route.values():
            projected.sort()
            tokens_in = tokens_out = 0
            for i, (_, _, _, job_id) in enumerate(projected):
                positions[job_id] = Place(i, tokens_in, tokens_out)
                entry = self._entries[job_id]
                tokens_in, tokens_out = tokens_in + entry.tokens_in, tokens_out + entry.tokens_out
        return positions


def prospective_place(queued: Iterable[QueueEntry], policy: QueuePolicy, newcomer: QueueEntry) -> Place:
    """The newcomer's `Place` (the queued jobs for its route that would be taken before it, and their
    work), if it were admitted now.

    Used before admission, from the queued entries alone: every backlogged flow is assumed to stand
    at the newcomer's own start tag (the virtual time), so each flow's jobs are projected from 0.
    """
    mine = policy.weight(newcomer.tenant, newcomer.priority)
    flows: dict[FlowKey, list[QueueEntry]] = {}
    for e in queued:
        if e.route == newcomer.route:
            flows.setdefault((e.tenant, e.priority), []).append(e)
    own = sorted(flows.pop((newcomer.tenant, newcomer.priority), []), key=_order)
    ahead_own = [e for e in own if _key(e.deadline) <= _key(newcomer.deadline)]
    my_tag = sum(e.cost for e in ahead_own) / mine
    before = list(ahead_own)
    for (tenant, priority), jobs in flows.items():
        weight, spent = policy.weight(tenant, priority), 0.0
        for e in sorted(jobs, key=_order):
            if (spent / weight, _key(e.deadline)) > (my_tag, _key(newcomer.deadline)):
                break
            before.append(e)
            spent += e.cost
    return Place(len(before), sum(e.tokens_in for e in before), sum(e.tokens_out for e in before))


class QueueShape:
    """The queued jobs as one read found them, grouped by route and flow with running sums, so that a
    newcomer's `prospective_place` is a few bisections rather than a walk and a sort of the queue
    (admission asks it for every job while the queue is deep). The newcomer is taken to have no
    deadline: for one with a deadline it counts at most the jobs `prospective_place` would. Jobs
    queued (`add`) and taken (`remove`) since the read keep it current between reads."""

    def __init__(self, queued: Iterable[QueueEntry]) -> None:
        grouped: dict[Route, dict[FlowKey, list[QueueEntry]]] = {}
        for e in queued:
            grouped.setdefault(e.route, {}).setdefault((e.tenant, e.priority), []).append(e)
        # Per route, per flow, in the order the flow's jobs are taken: the cost spent before each job
        # (from 0, then the flow's whole cost), the tokens of its first k jobs, and how many of its
        # first jobs were taken since.
        self._flows: dict[Route, dict[FlowKey, _FlowSums]] = {}
        for route, flows in grouped.items():
            mine = self._flows[route] = {}
            for key, jobs in flows.items():
                jobs.sort(key=_order)
                mine[key] = _FlowSums(
                    list(accumulate((e.cost for e in jobs), initial=0.0)),
                    list(accumulate((e.tokens_in for e in jobs), initial=0)),
                    list(accumulate((e.tokens_out for e in jobs), initial=0)),
                )

    def add(self, entry: QueueEntry) -> None:
        """A job queued since the read, at the end of its flow (where a job without a deadline goes)."""
        flows = self._flows.setdefault(entry.route, {})
        flow = flows.get((entry.tenant, entry.priority))
        if flow is None:
            flow = flows[(entry.tenant, entry.priority)] = _FlowSums([0.0], [0], [0])
        flow.spent.append(flow.spent[-1] + entry.cost)
        flow.tokens_in.append(flow.tokens_in[-1] + entry.tokens_in)
        flow.tokens_out.append(flow.tokens_out[-1] + entry.tokens_out)

    def remove(self, entry: QueueEntry) -> None:
        """A job taken since the read: its flow's first (a flow's jobs are taken in order)."""
        flow = self._flows.get(entry.route, {}).get((entry.tenant, entry.priority))
        if flow is not None and flow.taken < len(flow.spent) - 1:
            flow.taken += 1

    def place(self, newcomer: QueueEntry, policy: QueuePolicy) -> Place:
        flows = self._flows.get(newcomer.route, {})
        own = flows.get((newcomer.tenant, newcomer.priority))
        mine = policy.weight(newcomer.tenant, newcomer.priority)
        my_tag = 0.0 if own is None else (own.spent[-1] - own.spent[own.taken]) / mine
        ahead, tokens_in, tokens_out = 0, 0, 0
        for (tenant, priority), flow in flows.items():
            first, last = flow.taken, len(flow.spent) - 1
            if flow is own:
                k = last  # every job of its own flow is taken first
            else:  # the jobs whose start tag (the cost spent before them / the flow's weight) <= my_tag
                base, weight = flow.spent[first], policy.weight(tenant, priority)
                key = partial(_tag, base=base, weight=weight)
                k = bisect.bisect_right(flow.spent, my_tag, lo=first, hi=last, key=key)
            ahead += k - first
            tokens_in += flow.tokens_in[k] - flow.tokens_in[first]
            tokens_out += flow.tokens_out[k] - flow.tokens_out[first]
        return Place(ahead, tokens_in, tokens_out)


@dataclass(slots=True)
class _FlowSums:
    spent: list[float]
    tokens_in: list[int]
    tokens_out: list[int]
    taken: int = 0


def _tag(spent: float, base: float, weight: float) -> float:
    return (spent - base) / weight


def _key(deadline: float | None) -> float:
    return math.inf if deadline is None else deadline


def _order(entry: QueueEntry) -> tuple[float, int]:
    return _key(entry.deadline), entry.seq


def _memo(fn: Callable[[Route], bool]) -> Callable[[Route], bool]:
    seen: dict[Route, bool] = {}

    def cached(key: Route) -> bool:
        if key not in seen:
            seen[key] = fn(key)
        return seen[key]

    return cached
