"""Admission asks for a route's capacity with every request, and working it out walks every job running
in the deployment: the release times of the busy slots are reused for a tick, taken down by the time
since, while the slots free are always those of the last refresh. With shared state they are reused for
the tick whatever happened meanwhile; the embedded backend, which knows every run, reuses them only while
no run started, moved or ended and nothing was measured (`releases_exact`)."""

from __future__ import annotations

import pytest

from orchestratord.core.queue import Place
from orchestratord.core.route import Route
from orchestratord.core.work import Progress
from orchestratord.outlook import Outlook
from orchestratord.runs import Running, Runs
from pool_manager.registry import PoolRegistry
from pool_manager.snapshot import PoolSnapshot, ReplicaSnapshot

ROUTE = Route("m")


def pools(free: int, total: int = 4) -> list[PoolSnapshot]:
    replica = ReplicaSnapshot("r0", True, total, free)
    return [PoolSnapshot("p", "mock", "mock-1", ("m",), 4096, 4096, False, (replica,))]


def run(job_id: str, started: float) -> Running:
    return Running(job_id, "t1", "p", "r0", started)


def outlook_at(now: list[float], runs: Runs, age_s: float, exact: bool = False) -> Outlook:
    outlook = Outlook(
        PoolRegistry([]), runs, clock=lambda: now[0], wall=lambda: 100.0, releases_age_s=age_s,
        releases_exact=exact,
    )  # fmt: skip
    for _ in range(3):  # jobs on this pool hold their slot 10 s
        outlook.served("p", 10.0, prompt_tokens=1, first_token_s=None, tokens=0, decode_s=0.0)
    return outlook


def test_the_release_times_are_reused_for_their_age_less_the_time_since() -> None:
    now, runs = [100.0], Runs()
    runs.add(run("a", 98.0))
    runs.add(run("b", 99.0))
    outlook = outlook_at(now, runs, 0.25)
    outlook._snapshots = pools(free=2)
    first = outlook.capacity(ROUTE)
    assert first.releases_s == pytest.approx((8.0, 9.0)) and first.slots_free == 2
    runs.add(run("c", 100.1))  # started since: not seen until the releases are worked out again
    now[0] = 100.2
    outlook._snapshots = pools(free=1)  # a refresh: the slots are always the latest
    reused = outlook.capacity(ROUTE)
    assert reused.releases_s == pytest.approx((7.8, 8.8)) and reused.slots_free == 1
    now[0] = 100.5  # older than a tick: worked out again, every run counted
    again = outlook.capacity(ROUTE)
    assert again.releases_s == pytest.approx((7.5, 8.5, 9.6))
    outlook._snapshots = pools(free=3, total=6)  # the pools changed (a reload): worked out again
    runs.add(run("d", 100.5))
    assert len(outlook.capacity(ROUTE).releases_s) == 4


def test_without_an_age_every_call_works_them_out() -> None:
    """An outlook built without an age works them out at every call."""
    now, runs = [100.0], Runs()
    runs.add(run("a", 98.0))
    outlook = outlook_at(now, runs, 0.0)
    outlook._snapshots = pools(free=3)
    assert outlook.capacity(ROUTE).releases_s == pytest.approx((8.0,))
    runs.add(run("b", 100.0))
    assert outlook.capacity(ROUTE).releases_s == pytest.approx((8.0, 10.0))


def test_the_embedded_backend_reuses_them_while_its_runs_and_measures_stay_the_same() -> None:
    now, runs, a, c = [100.0], Runs(), run("a", 98.0), run("c", 100.1)
    runs.add(a)
    runs.add(run("b", 99.0))
    outlook = outlook_at(now, runs, 0.25, exact=True)
    outlook._snapshots = pools(free=2)
    assert outlook.capacity(ROUTE).releases_s == pytest.approx((8.0, 9.0))
    a.tokens = 5  # progress within a run: reused, less the time since
    now[0] = 100.1
    assert outlook.capacity(ROUTE).releases_s == pytest.approx((7.9, 8.9))
    runs.add(c)  # a run started: worked out again at once
    assert outlook.capacity(ROUTE).releases_s == pytest.approx((7.9, 8.9, 10.0))
    now[0] = 100.15
    runs.attempt(c, "p", "r1", 100.15)  # it starts again on another slot (a failover)
    assert outlook.capacity(ROUTE).releases_s == pytest.approx((7.85, 8.85, 10.0))
    runs.drop("a")  # a run ended
    assert outlook.capacity(ROUTE).releases_s == pytest.approx((8.85, 10.0))
    outlook.served("p", 1.0, prompt_tokens=1, first_token_s=None, tokens=0, decode_s=0.0)  # measured
    assert outlook.capacity(ROUTE).releases_s != pytest.approx((8.85, 10.0))


def test_the_embedded_backend_reuses_nothing_before_a_measure() -> None:
    """Before any job has ended, the oldest run's age stands in for the mean service: it grows with time."""
    now, runs = [100.0], Runs()
    runs.add(run("a", 98.0))
    outlook = Outlook(PoolRegistry([]), runs, clock=lambda: now[0], releases_age_s=0.25, releases_exact=True)
    outlook._snapshots = pools(free=3)
    assert outlook.capacity(ROUTE).mean_service_s == pytest.approx(2.0)
    now[0] = 100.2
    assert outlook.capacity(ROUTE).mean_service_s == pytest.approx(2.2)


class CountedRuns(Runs):
    """Runs that count the walks of every running job (`progress`)."""

    walks = 0

    def progress(self, now: float) -> dict[str, list[Progress]]:
        self.walks += 1
        return super().progress(now)


def test_a_job_a_free_slot_takes_is_predicted_without_walking_the_running_jobs() -> None:
    """While streams open, a run starts between one admission and the next, so that no release time
    worked out for one can serve the next: a job that a free slot takes needs none (its slots' part is
    0); a job that waits for a release does."""
    now, runs = [100.0], CountedRuns()
    outlook = outlook_at(now, runs, 0.25, exact=True)
    outlook._snapshots = pools(free=2)
    for i in range(3):
        runs.add(run(f"j{i}", 99.0 + i / 10))  # a start before each admission
        assert outlook.predict(ROUTE, Place(ahead=0)) == 0
        assert outlook.predict(ROUTE, Place(ahead=1)) == 0
    assert runs.walks == 0
    outlook._snapshots = pools(free=0, total=3)
    assert outlook.predict(ROUTE, Place(ahead=0)) == 9_000  # j0, 1 s into its 10, frees the first slot
    assert runs.walks == 1
