"""Every Prometheus metric, defined once on a registry the app owns. Names and labels are a contract
(ci/metrics.lint.json). Pool gauges are collected at scrape time from pool snapshots."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pool_manager.snapshot import PoolSnapshot

TTFT_BUCKETS = (50, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000)
DECODE_BUCKETS = (250, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 12000)
ADMISSION_BUCKETS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000)
ENGINE = ("engine", "engine_version", "pool_id", "replica_id")
QUEUE = ("engine", "engine_version", "pool_id", "priority")


class Metrics:
    """The metric families, bound to one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tasks_enqueued = Counter("tasks_enqueued", "Jobs admitted to the queue.", QUEUE, registry=r)
        self.tasks_started = Counter("tasks_started", "Jobs dispatched.", (*ENGINE, "priority"), registry=r)
        self.tasks_canceled = Counter("tasks_canceled", "Jobs canceled.", (*ENGINE, "reason"), registry=r)
        self.tasks_rejected = Counter(
            "tasks_rejected", "Jobs refused or failed.", ("engine", "reason"), registry=r
        )
        self.tokens_in = Counter("tokens_in", "Prompt tokens sent to engines.", ENGINE, registry=r)
        self.tokens_out = Counter("tokens_out", "Tokens streamed from engines.", ENGINE, registry=r)
        self.backpressure = Counter(
            "admission_backpressure_events", "Admissions refused or evicted by a full queue or a limit.",
            ("engine", "policy"), registry=r,
        )  # fmt: skip
        self.placement = Counter(
            "placement_decisions", "Placement outcomes.", ("outcome", "pinned", "fallback"), registry=r
        )
        self.queue_depth = Gauge("queue_depth", "Jobs waiting in the queue.", QUEUE, registry=r)
        self.kv_cache = Gauge(
            "kv_cache_usage_ratio", "KV cache use reported by the engine.", ENGINE, registry=r
        )
        self.admission_share = Gauge(
            "admission_share",
            "Share of recent dispatches per tenant and class.",
            ("tenant", "priority"),
            registry=r,
        )
        self.deadlines_met = Gauge(
            "deadlines_met_ratio",
            "Share of jobs with a deadline that started in time.",
            ("priority",),
            registry=r,
        )
        self.ttft = Histogram(
            "latency_first_token_ms", "Admission to first token, ms.", QUEUE, buckets=TTFT_BUCKETS, registry=r
        )
        self.decode = Histogram(
            "latency_decode_ms", "First token to end, ms.", QUEUE, buckets=DECODE_BUCKETS, registry=r
        )
        self.admission_latency = Histogram(
            "admission_latency_ms",
            "Time to answer POST /v1/tasks, ms.",
            buckets=ADMISSION_BUCKETS,
            registry=r,
        )

    def watch_pools(self, snapshots: Callable[[], Sequence[PoolSnapshot]]) -> None:
        self.registry.register(_PoolCollector(snapshots))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _PoolCollector(Collector):
    """pool_ready / pool_slots_total / pool_slots_free and kv usage, read from snapshots at scrape."""

    def __init__(self, snapshots: Callable[[], Sequence[PoolSnapshot]]) -> None:
        self._snapshots = snapshots

    def collect(self) -> Iterable[Metric]:
        ready = GaugeMetricFamily("pool_ready", "1 when the pool has a ready replica.", labels=["pool_id"])
        total = GaugeMetricFamily("pool_slots_total", "Slots on ready replicas.", labels=["pool_id"])
        free = GaugeMetricFamily("pool_slots_free", "Free slots on ready replicas.", labels=["pool_id"])
        for snap in self._snapshots():
            ready.add_metric([snap.pool_id], 1.0 if snap.ready else 0.0)
            total.add_metric([snap.pool_id], snap.slots_total)
            free.add_metric([snap.pool_id], snap.slots_free)
        return [ready, total, free]

    def describe(self) -> Iterable[Metric]:
        return []
