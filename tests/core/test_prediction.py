"""Predictions from measured service times: the model of docs/admission.md, number by number."""

from __future__ import annotations

import heapq

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestratord.core.capacity import capacity_for
from orchestratord.core.prediction import (
    Capacity,
    ServiceTimes,
    predict_start_ms,
    predict_start_s,
    retry_hint_ms,
)
from orchestratord.core.route import Route
from pool_manager.snapshot import PoolSnapshot, ReplicaSnapshot


def pool(pool_id: str, slots: int, free: int, model: str = "m", ready: bool = True) -> PoolSnapshot:
    replica = ReplicaSnapshot("r0", ready, slots, free)
    return PoolSnapshot(pool_id, "mock", "mock-1", (model,), 4096, 4096, False, (replica,))


@given(
    free=st.integers(0, 3),
    releases=st.lists(st.floats(0.0, 20.0), min_size=1, max_size=6),
    mean=st.floats(0.05, 3.0),
    position=st.integers(0, 700),
)
def test_the_start_is_the_slots_freeing_one_by_one(
    free: int, releases: list[float], mean: float, position: int
) -> None:
    """Read off the slots' round (no simulation past the first rounds, no averaging past 256 jobs),
    the start equals placing every job ahead on the slot that frees first, one by one (a slot that
    frees more than 256 services after the others is still averaged over)."""
    releases = sorted(r * mean for r in releases)  # within 20 services: 256 placements reach the round
    cap = Capacity(len(releases) + free, free, mean, tuple(releases))
    heap = sorted([0.0] * free + releases)
    for _ in range(position):
        heapq.heapreplace(heap, heap[0] + mean)
    expected = 0.0 if position < free else heap[0]
    assert predict_start_s(position, cap) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_zero_when_a_slot_is_free() -> None:
    cap = Capacity(slots_total=4, slots_free=2, mean_service_s=None)
    assert predict_start_ms(0, cap) == 0
    assert predict_start_ms(1, cap) == 0


def test_unknown_without_any_measurement() -> None:
    assert predict_start_ms(0, Capacity(slots_total=2, slots_free=0, mean_service_s=None)) is None
    assert predict_start_ms(0, Capacity(slots_total=0, slots_free=0, mean_service_s=1.0)) is None


def test_releases_from_the_running_jobs_then_whole_rounds() -> None:
    # Two busy slots that free in 0.3 s and 0.8 s; each job then holds a slot for the 1 s mean.
    cap = Capacity(slots_total=2, slots_free=0, mean_service_s=1.0, releases_s=(0.3, 0.8))
    assert [predict_start_ms(p, cap) for p in range(5)] == [300, 800, 1300, 1800, 2300]


def test_free_slots_release_after_a_full_service_of_the_jobs_ahead() -> None:
    cap = Capacity(slots_total=2, slots_free=1, mean_service_s=1.0, releases_s=(0.2,))
    assert [predict_start_ms(p, cap) for p in range(5)] == [0, 200, 1000, 1200, 2000]


def test_busy_slots_of_unknown_age_free_at_half_the_mean() -> None:
    cap = Capacity(slots_total=2, slots_free=0, mean_service_s=1.0, releases_s=(0.1,))
    assert [predict_start_ms(p, cap) for p in range(3)] == [100, 500, 1100]


def test_an_overdue_job_is_expected_any_moment_but_the_wait_is_not_zero() -> None:
    cap = Capacity(slots_total=1, slots_free=0, mean_service_s=1.0, releases_s=(0.0,))
    assert predict_start_ms(0, cap) == 1
    assert predict_start_ms(1, cap) == 1000


def test_ewma_follows_recent_service_times() -> None:
    times = ServiceTimes(alpha=0.5)
    times.observe("p", 1.0)
    assert times.mean("p") == 1.0
    times.observe("p", 3.0)
    assert times.mean("p") == 2.0
    times.observe("q", 10.0)
    assert times.combined({"p": 3, "q": 1}) == (2.0 * 3 + 10.0) / 4
    assert times.combined({"unmeasured": 4}) is None
    assert times.count("p") == 2


def test_capacity_from_pools_measurements_and_running_ages() -> None:
    times = ServiceTimes()
    times.observe("a", 2.0)
    pools = [pool("a", 2, 0), pool("b", 1, 1), pool("c", 4, 4, model="other")]
    cap = capacity_for(Route("m"), pools, times, {"a": [0.5, 1.5], "c": [9.0]})
    assert (cap.slots_total, cap.slots_free) == (3, 1)
    assert cap.mean_service_s == 2.0  # pool b has no measurement yet
    assert cap.releases_s == (0.5, 1.5)  # 2.0 - 1.5 and 2.0 - 0.5
    assert predict_start_ms(0, cap) == 0
    assert predict_start_ms(1, cap) == 500


def test_before_any_measurement_the_oldest_running_job_stands_in() -> None:
    cap = capacity_for(Route("m"), [pool("a", 2, 0)], ServiceTimes(), {"a": [0.4, 1.0]})
    assert cap.mean_service_s == 1.0 and not cap.measured
    assert cap.releases_s == (0.5, 0.6)  # the oldest: half its age, not 0; the other: 1.0 - 0.4


def test_unready_replicas_offer_no_slots() -> None:
    cap = capacity_for(Route("m"), [pool("a", 2, 2, ready=False)], ServiceTimes(), {})
    assert (cap.slots_total, cap.slots_free) == (0, 0)
    assert predict_start_ms(0, cap) is None


def test_retry_hint_adds_a_tenth_of_a_service_time() -> None:
    cap = Capacity(slots_total=1, slots_free=0, mean_service_s=2.0, releases_s=(0.5,))
    assert retry_hint_ms(500, cap) == 700
    assert retry_hint_ms(0, Capacity(slots_total=1, slots_free=0, mean_service_s=None)) is None
    unmeasured = capacity_for(Route("m"), [pool("a", 1, 0)], ServiceTimes(), {"a": [0.2]})
    assert not unmeasured.measured and retry_hint_ms(1, unmeasured) is None


def test_behind_a_long_first_job_the_prediction_grows_as_it_waits() -> None:
    """Nothing measured yet and one job running for ever: the job behind it is told half the running
    job's age, not 1 ms for as long as it waits."""
    for age in (0.2, 10.0, 60.0):
        cap = capacity_for(Route("m"), [pool("a", 1, 0)], ServiceTimes(), {"a": [age]})
        assert predict_start_ms(0, cap) == round(age / 2 * 1000)


def test_a_job_past_the_mean_is_still_expected_to_take_time() -> None:
    """A running job older than the mean holding time is not about to end (the old model said 0 s, so a
    job queued behind it was told 1 ms for as long as it waited): its remaining time is read from the
    recent holding times longer than its age."""
    times = ServiceTimes()
    for seconds in (1.0, 1.0, 1.0, 5.0):  # mostly short, sometimes long
        times.observe("a", seconds)
    assert times.remaining("a", 0.5, 2.0) == pytest.approx((0.5 * 3 + 4.5) / 4)
    assert times.remaining("a", 2.0, 2.0) == pytest.approx(3.0)  # only the long ones are left: 5 - 2
    assert times.remaining("a", 8.0, 2.0) == pytest.approx(4.0)  # longer than all seen: half its age
    cap = capacity_for(Route("m"), [pool("a", 1, 0)], times, {"a": [2.0]})
    assert predict_start_ms(0, cap) == 3000


def test_places_held_beyond_the_queue_take_the_typical_service() -> None:
    """A retry hint counts the queued jobs at their own expected service, then the jobs of clients
    promised a place at the pools' typical one (their work is not known yet)."""
    cap = Capacity(slots_total=1, slots_free=0, mean_service_s=1.0, releases_s=(0.5,), typical_s=0.2)
    assert predict_start_s(3, cap) == pytest.approx(0.5 + 3 * 1.0)
    assert predict_start_s(3, cap, known=1) == pytest.approx(0.5 + 1.0 + 2 * 0.2)
    assert predict_start_s(300, cap, known=1) == pytest.approx(0.5 + 1.0 + 299 * 0.2)
    assert predict_start_s(300, cap, known=280) == pytest.approx(0.5 + 280 * 1.0 + 20 * 0.2)


def test_the_typical_service_is_the_mean_of_the_recent_holding_times() -> None:
    times = ServiceTimes(keep=4)
    for seconds in (9.0, 1.0, 1.0, 3.0, 3.0):
        times.observe("a", seconds)
    assert times.typical({"a": 1}) == pytest.approx(2.0)  # the last four
    assert times.typical({"b": 1}) is None
