"""Every Prometheus metric, defined once on a registry the app owns.

Names, types and label sets are a contract, listed in `ci/metrics.lint.json` and checked against a
live scrape by `tests/observability/test_metrics_contract.py`. Pool gauges (readiness, slots, KV cache)
are read from pool snapshots at scrape time; `admission_share`, `deadlines_met_ratio` and
`fairness_jain_index` are computed at scrape time over a sliding window of recent dispatches.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pool_manager.snapshot import PoolSnapshot

TTFT_BUCKETS = (50, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000)
DECODE_BUCKETS = (250, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 12000)
ADMISSION_BUCKETS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000)
REPLICA = ("engine", "engine_version", "pool_id", "replica_id")
POOL_CLASS = ("engine", "engine_version", "pool_id", "priority")
NONE = "none"  # the label value for "no pool / replica / engine was ever chosen for this job"
WINDOW_S = 300.0


class Metrics:
    """The metric families, bound to one registry. Counters are declared with their exposed name."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        tenant_label: Callable[[str], str] = str,
        tenant_weights: Mapping[str, float] | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._tenant_label = tenant_label  # what a tenant's name becomes in a label (`hashed_tenant`)
        weights = {tenant_label(t): w for t, w in (tenant_weights or {}).items()}
        r = self.registry
        self.tasks_enqueued = Counter(
            "tasks_enqueued_total", "Jobs admitted to the queue.", (*REPLICA, "priority"), registry=r
        )
        self.tasks_started = Counter(
            "tasks_started_total", "Jobs dispatched onto a slot.", (*REPLICA, "priority"), registry=r
        )
        self.tasks_canceled = Counter(
            "tasks_canceled_total", "Jobs canceled.", (*REPLICA, "reason"), registry=r
        )
        self.tasks_rejected = Counter(
            "tasks_rejected_total",
            "Jobs refused at admission or ended by an error; reason is the error code.",
            ("engine", "reason"),
            registry=r,
        )
        self.tokens_in = Counter("tokens_in_total", "Prompt tokens sent to engines.", REPLICA, registry=r)
        self.tokens_out = Counter("tokens_out_total", "Tokens streamed from engines.", REPLICA, registry=r)
        self.backpressure = Counter(
            "admission_backpressure_events_total",
            "Admissions refused or evicted by a full queue (policy = queue.full_policy), a limit "
            "(rate-limit, quota: a spent budget), an event loop running behind (overload) or a predicted "
            "wait past the class's queue.max_wait_s (max-wait).",
            ("engine", "policy"),
            registry=r,
        )
        self.placement = Counter(
            "placement_decisions_total", "Placement outcomes.", ("outcome", "pinned", "fallback"), registry=r
        )
        self.queue_depth = Gauge("queue_depth", "Jobs waiting in the queue.", POOL_CLASS, registry=r)
        self.places_held = Gauge(
            "queue_places_held",
            "Places promised to clients refused from a full queue, held for their retries.",
            registry=r,
        )
        self.ttft = Histogram(
            "latency_first_token_ms",
            "Admission to first token, ms.",
            POOL_CLASS,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.decode = Histogram(
            "latency_decode_ms", "First token to end, ms.", POOL_CLASS, buckets=DECODE_BUCKETS, registry=r
        )
        self.admission_latency = Histogram(
            "admission_latency_ms",
            "Time to answer POST /v1/tasks, ms.",
            buckets=ADMISSION_BUCKETS,
            registry=r,
        )
        self.loop_lag = Gauge(
            "event_loop_lag_seconds",
            "How late this process's event loop ran its last 100 ms timer, or (Redis mode) how long the last "
            "PING to Redis took, whichever is more: the wait every reply and token sees.",
            registry=r,
        )
        self.sockets_open = Gauge(
            "responses_sockets_open",
            "The Responses API's WebSockets open on this process (OpenAI's WebSocket mode: each carries a "
            "client's responses, one after another or in lanes).",
            registry=r,
        )
        self.dispatches = DispatchWindow(window_s, clock, weights)
        r.register(self.dispatches)

    def started(self, tenant: str, priority: str, deadline_met: bool | None) -> None:
        """A job got its first slot; `deadline_met` is None for a job without a deadline."""
        self.dispatches.add(self._tenant_label(tenant), priority, deadline_met)

    def settled(self, tenant: str, tokens_out: int) -> None:
        """A run ended having generated `tokens_out` tokens for `tenant` (fairness by tokens)."""
        self.dispatches.add_tokens(self._tenant_label(tenant), tokens_out)

    def deadline_missed(self, priority: str) -> None:
        """A job's deadline passed while it waited in the queue."""
        self.dispatches.add(None, priority, False)

    def watch_pools(self, snapshots: Callable[[], Sequence[PoolSnapshot]]) -> None:
        self.registry.register(_PoolCollector(snapshots))

    def exposition(self) -> bytes:
        return generate_latest(_WithoutCreated(self.registry))


def hashed_tenant(tenant: str) -> str:
    """A tenant's label where anyone may read /metrics: `t-` and the first 12 hex digits of the name's
    SHA-256, stable across restarts and replicas, so an operator who knows the names can map them."""
    return "t-" + hashlib.sha256(tenant.encode()).hexdigest()[:12]


class DispatchWindow(Collector):
    """Dispatches, tokens and deadline outcomes of the last `window_s` seconds, exposed as
    `admission_share{tenant, priority}` (each flow's share of the dispatches),
    `deadlines_met_ratio{priority}` (jobs with a deadline that started in time / all that ended waiting)
    and `fairness_jain_index{unit}`: Jain's index over the tenants served in the window,
    `(Σx)² / (n·Σx²)` with `x` a tenant's dispatches (unit `requests`) or generated tokens (`tokens`)
    divided by its weight. 1 when every tenant got service in proportion to its weight; 1/n when one
    tenant got it all.

    Events are counted in one-second buckets and buckets older than the window are dropped on every
    `add` as well as on every scrape: memory is bounded by the window's length and the number of flows,
    whether or not anyone scrapes."""

    def __init__(
        self, window_s: float, clock: Callable[[], float], weights: Mapping[str, float] | None = None
    ) -> None:
        self._window = window_s
        self._clock = clock
        self._weights = dict(weights or {})  # tenant label -> weight (default 1)
        self._buckets: deque[_Bucket] = deque()

    def add(self, tenant: str | None, priority: str, deadline_met: bool | None) -> None:
        self._bucket().count(tenant, priority, deadline_met)

    def add_tokens(self, tenant: str, tokens: int) -> None:
        bucket = self._bucket()
        bucket.tokens[tenant] = bucket.tokens.get(tenant, 0) + tokens

    def _bucket(self) -> _Bucket:
        now = self._clock()
        self._trim(now)
        second = int(now)
        if not self._buckets or self._buckets[-1].second != second:
            self._buckets.append(_Bucket(second))
        return self._buckets[-1]

    def collect(self) -> Iterable[Metric]:
        self._trim(self._clock())
        return [self._shares(), self._deadlines(), self._jain()]

    def held(self) -> int:
        """How many one-second buckets the window holds now."""
        return len(self._buckets)

    def _trim(self, now: float) -> None:
        # a bucket is kept while any part of its second is inside the window
        horizon = now - self._window
        while self._buckets and self._buckets[0].second + 1 <= horizon:
            self._buckets.popleft()

    def describe(self) -> Iterable[Metric]:
        return [self._family(n) for n in ("admission_share", "deadlines_met_ratio", "fairness_jain_index")]

    def _jain(self) -> GaugeMetricFamily:
        family = self._family("fairness_jain_index")
        requests: dict[str, float] = {}
        tokens: dict[str, float] = {}
        for bucket in self._buckets:
            for (tenant, _), n in bucket.dispatches.items():
                requests[tenant] = requests.get(tenant, 0) + n
            for tenant, n in bucket.tokens.items():
                tokens[tenant] = tokens.get(tenant, 0) + n
        for unit, served in (("requests", requests), ("tokens", tokens)):
            index = jain_index([n / self._weights.get(tenant, 1.0) for tenant, n in served.items()])
            if index is not None:
                family.add_metric([unit], index)
        return family

    def _shares(self) -> GaugeMetricFamily:
        family = self._family("admission_share")
        flows: dict[tuple[str, str], int] = {}
        for bucket in self._buckets:
            for flow, n in bucket.dispatches.items():
                flows[flow] = flows.get(flow, 0) + n
        total = sum(flows.values())
        for (tenant, priority), n in sorted(flows.items()):
            family.add_metric([tenant, priority], n / total)
        return family

    def _deadlines(self) -> GaugeMetricFamily:
        family = self._family("deadlines_met_ratio")
        outcomes: dict[str, tuple[int, int]] = {}
        for bucket in self._buckets:
            for priority, (met, seen) in bucket.deadlines.items():
                was_met, was_seen = outcomes.get(priority, (0, 0))
                outcomes[priority] = (was_met + met, was_seen + seen)
        for priority, (met, seen) in sorted(outcomes.items()):
            family.add_metric([priority], met / seen)
        return family

    def _family(self, name: str) -> GaugeMetricFamily:
        if name == "fairness_jain_index":
            return GaugeMetricFamily(
                name,
                f"Jain's fairness index over the tenants' weighted service of the last {self._window:g} s.",
                labels=["unit"],
            )
        if name == "admission_share":
            return GaugeMetricFamily(
                name,
                f"Share of the dispatches of the last {self._window:g} s per tenant and class.",
                labels=["tenant", "priority"],
            )
        return GaugeMetricFamily(
            name,
            f"Share of the jobs with a deadline of the last {self._window:g} s that started in time.",
            labels=["priority"],
        )


def jain_index(amounts: Sequence[float]) -> float | None:
    """Jain's fairness index of `amounts` (each tenant's service over its weight); None for none."""
    squares = sum(x * x for x in amounts)
    if not amounts or squares == 0:
        return None
    return sum(amounts) ** 2 / (len(amounts) * squares)


class _Bucket:
    """The dispatches per (tenant, priority), the tokens per tenant and the deadline outcomes per
    priority of one second."""

    __slots__ = ("deadlines", "dispatches", "second", "tokens")

    def __init__(self, second: int) -> None:
        self.second = second
        self.dispatches: dict[tuple[str, str], int] = {}
        self.tokens: dict[str, int] = {}
        self.deadlines: dict[str, tuple[int, int]] = {}

    def count(self, tenant: str | None, priority: str, deadline_met: bool | None) -> None:
        if tenant is not None:
            self.dispatches[(tenant, priority)] = self.dispatches.get((tenant, priority), 0) + 1
        if deadline_met is not None:
            met, seen = self.deadlines.get(priority, (0, 0))
            self.deadlines[priority] = (met + int(deadline_met), seen + 1)


class _PoolCollector(Collector):
    """pool_ready / pool_slots_total / pool_slots_free per pool, and the KV-cache use each replica's
    engine reports (replicas whose engine does not report it have no series)."""

    def __init__(self, snapshots: Callable[[], Sequence[PoolSnapshot]]) -> None:
        self._snapshots = snapshots

    def collect(self) -> Iterable[Metric]:
        ready = GaugeMetricFamily("pool_ready", "1 when the pool has a ready replica.", labels=["pool_id"])
        total = GaugeMetricFamily("pool_slots_total", "Slots on ready replicas.", labels=["pool_id"])
        free = GaugeMetricFamily("pool_slots_free", "Free slots on ready replicas.", labels=["pool_id"])
        kv = GaugeMetricFamily(
            "kv_cache_usage_ratio", "KV-cache use (0..1) reported by the engine.", labels=list(REPLICA)
        )
        for snap in self._snapshots():
            ready.add_metric([snap.pool_id], 1.0 if snap.ready else 0.0)
            total.add_metric([snap.pool_id], snap.slots_total)
            free.add_metric([snap.pool_id], snap.slots_free)
            for replica in snap.replicas:
                if replica.kv_cache_usage_ratio is not None:
                    labels = [snap.engine, snap.engine_version, snap.pool_id, replica.replica_id]
                    kv.add_metric(labels, replica.kv_cache_usage_ratio)
        return [ready, total, free, kv]

    def describe(self) -> Iterable[Metric]:
        return []


class _WithoutCreated(Collector):
    """The registry without the `*_created` series prometheus_client adds to counters and histograms:
    they are not part of the contract, and dropping them here needs no process-wide switch."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for metric in self._registry.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric
