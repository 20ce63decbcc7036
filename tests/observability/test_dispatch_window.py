"""admission_share / deadlines_met_ratio are computed over a sliding window of dispatches; what the
window holds is bounded by its length whether or not anyone scrapes /metrics."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from orchestratord.metrics import DispatchWindow, Metrics, jain_index


class Clock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


def _values(window: DispatchWindow) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (sample.name, tuple(sample.labels.values())): sample.value
        for family in window.collect()
        for sample in family.samples
    }


def test_an_unscraped_window_stays_bounded() -> None:
    clock = Clock()
    window = DispatchWindow(60.0, clock)
    for _ in range(100_000):  # 100 dispatches a second for 1000 s, and no scrape
        window.add("acme", "interactive", None)
        clock.now += 0.01
    assert window.held() <= 62  # one-second buckets: the window's length, plus the partial edges


def test_shares_and_deadlines_cover_only_the_window() -> None:
    clock = Clock()
    metrics = Metrics(CollectorRegistry(), window_s=60.0, clock=clock)
    window = metrics.dispatches
    for _ in range(30):  # long ago: out of the window by the time of the scrape
        metrics.started("old", "batch", False)
    clock.now += 120
    for i in range(6):
        metrics.started("acme", "interactive", i < 3)
        metrics.started("globex", "batch" if i % 2 else "interactive", None)
        clock.now += 1
    metrics.deadline_missed("interactive")
    values = _values(window)
    assert values[("admission_share", ("acme", "interactive"))] == pytest.approx(6 / 12)
    assert values[("admission_share", ("globex", "interactive"))] == pytest.approx(3 / 12)
    assert values[("admission_share", ("globex", "batch"))] == pytest.approx(3 / 12)
    assert ("admission_share", ("old", "batch")) not in values
    assert values[("deadlines_met_ratio", ("interactive",))] == pytest.approx(3 / 7)
    assert ("deadlines_met_ratio", ("batch",)) not in values
    clock.now += 61
    assert _values(window) == {}


def test_jains_index_over_the_tenants_weighted_service() -> None:
    clock = Clock()
    metrics = Metrics(CollectorRegistry(), window_s=60.0, clock=clock, tenant_weights={"acme": 2.0})
    for _ in range(4):  # acme (weight 2) gets twice what globex gets: exactly its share
        metrics.started("acme", "interactive", None)
        metrics.started("acme", "batch", None)
        metrics.started("globex", "interactive", None)
    metrics.settled("acme", 100)
    metrics.settled("globex", 150)  # by tokens globex got 150 to acme's 100 / 2 = 50: unfair
    values = _values(metrics.dispatches)
    assert values[("fairness_jain_index", ("requests",))] == pytest.approx(1.0)
    x = [50, 150]
    assert values[("fairness_jain_index", ("tokens",))] == pytest.approx(
        sum(x) ** 2 / (2 * sum(v * v for v in x))
    )
    assert jain_index([1.0, 0.0, 0.0]) == pytest.approx(1 / 3)  # one of three got it all
    clock.now += 61
    assert _values(metrics.dispatches) == {}
