"""With shared state, admission asks for a route's capacity with every request, and working it out walks
every job running in the deployment: the release times of the busy slots are reused for a tick, taken
down by the time since, while the slots free are always those of the last refresh."""

from __future__ import annotations

import pytest

from orchestratord.core.route import Route
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


def outlook_at(now: list[float], runs: Runs, age_s: float) -> Outlook:
    outlook = Outlook(PoolRegistry([]), runs, clock=lambda: now[0], wall=lambda: 100.0, releases_age_s=age_s)
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
    """The embedded store: its slots are read at every admission, and so are the releases."""
    now, runs = [100.0], Runs()
    runs.add(run("a", 98.0))
    outlook = outlook_at(now, runs, 0.0)
    outlook._snapshots = pools(free=3)
    assert outlook.capacity(ROUTE).releases_s == pytest.approx((8.0,))
    runs.add(run("b", 100.0))
    assert outlook.capacity(ROUTE).releases_s == pytest.approx((8.0, 10.0))
