"""Pool state: readiness only after a passing probe, backoff, last_error, circuit breaker, leases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pool_manager.health import HealthProber
from pool_manager.registry import BreakerPolicy, PoolRegistry
from pool_manager.specs import PoolSpec, ReplicaSpec
from worker_adapters.base import (
    EngineUnavailable,
    SubmitRequest,
    TokenEvent,
    WorkerHealth,
    WorkerProps,
)


class ScriptedEngine:
    """An adapter whose health answers follow a script; it records when it was probed."""

    engine = "scripted"

    def __init__(self, answers: list[str], slots: int | None = None) -> None:
        self.answers = answers
        self.slots = slots
        self.probes: list[float] = []

    def streaming(self, within_s: float) -> bool:
        return False

    async def health(self) -> WorkerHealth:
        self.probes.append(asyncio.get_running_loop().time())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer == "down":
            raise EngineUnavailable("connection refused", engine=self.engine)
        return WorkerHealth(live=True, ready=answer == "ready", detail="" if answer == "ready" else "loading")

    async def props(self) -> WorkerProps:
        return WorkerProps(slots=self.slots, engine_version="v9")

    def submit(self, req: SubmitRequest) -> AsyncIterator[TokenEvent]:
        raise AssertionError("not used")

    async def cancel(self, task_id: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


def registry(slots: int = 4) -> PoolRegistry:
    spec = PoolSpec(id="p", engine="scripted", models=("m",), replicas=(ReplicaSpec("r0"),), slots=slots)
    return PoolRegistry([spec])


async def test_ready_only_after_a_passing_probe_and_capacity_from_the_engine() -> None:
    reg = registry(slots=4)
    engine = ScriptedEngine(["loading", "ready"], slots=2)
    prober = HealthProber(reg, {("p", "r0"): engine})
    assert not (await reg.pool_snapshot("p")).ready
    assert not await prober.probe("p", "r0")
    state = reg.pools["p"].replicas["r0"]
    assert not state.ready and state.last_error == "loading"
    assert await prober.probe("p", "r0")
    snap = await reg.pool_snapshot("p")
    assert snap.ready and snap.slots_total == 2  # the engine's own figure beats the config's 4
    assert reg.pools["p"].engine_version == "v9"


class RecordedSleep:
    """The prober's sleep: records each delay and returns at once; after `rounds` it blocks for good."""

    def __init__(self, rounds: int) -> None:
        self.delays: list[float] = []
        self.rounds = rounds
        self.done = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if len(self.delays) > self.rounds:
            self.done.set()
            await asyncio.Event().wait()
        await asyncio.sleep(0)


async def test_failures_back_off_and_keep_last_error() -> None:
    reg = registry()
    engine = ScriptedEngine(["down", "down", "down", "down", "down", "ready", "down"])
    sleep = RecordedSleep(rounds=8)
    prober = HealthProber(reg, {("p", "r0"): engine}, interval_s=0.01, max_backoff_s=0.08, sleep=sleep)
    prober.start()
    await asyncio.wait_for(sleep.done.wait(), 30)
    await prober.stop()
    # doubling from the interval while probes fail, capped; one success goes back to the interval
    assert sleep.delays == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08, 0.01, 0.02, 0.04]
    assert len(engine.probes) == 8
    assert reg.pools["p"].replicas["r0"].last_error == "POOL_UNAVAILABLE: connection refused"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_breaker_learns_from_requests_not_from_probes() -> None:
    """Three failed requests open it; a passing probe does not close it (the engine's /health can be
    fine while its generations fail); after the backoff it half-opens for exactly one trial; a failed
    trial opens it for twice as long, a good one closes it."""
    clock = Clock()
    spec = PoolSpec(id="p", engine="scripted", models=("m",), replicas=(ReplicaSpec("r0"),), slots=4)
    reg = PoolRegistry(
        [spec], breaker=BreakerPolicy(threshold=3, backoff_s=5, max_backoff_s=300), clock=clock
    )
    prober = HealthProber(reg, {("p", "r0"): ScriptedEngine(["ready"])})
    await prober.probe("p", "r0")
    for _ in range(2):
        reg.record_failure("p", "r0", "WORKER_RESET: out of memory")
    assert (await reg.pool_snapshot("p")).ready  # two in a row: still closed
    reg.record_failure("p", "r0", "WORKER_RESET: out of memory")
    snap = await reg.pool_snapshot("p")
    assert not snap.ready and snap.replicas[0].last_error == "WORKER_RESET: out of memory"
    await prober.probe("p", "r0")  # /health is fine: the breaker stays open
    assert not (await reg.pool_snapshot("p")).ready
    assert await reg.lease("j0", "p", "r0") is None
    assert reg.breaker("p", "r0")[1] == 5

    clock.now += 5  # half-open: one trial, and only one
    snap = await reg.pool_snapshot("p")
    assert snap.ready and snap.replicas[0].slots_free == 1
    assert await reg.lease("trial", "p", "r0") is not None
    assert await reg.lease("second", "p", "r0") is None
    assert not (await reg.pool_snapshot("p")).ready
    reg.record_failure("p", "r0", "DECODE_TIMEOUT: no first event")  # the trial failed: twice as long
    await reg.release("trial")
    breaker, wait = reg.breaker("p", "r0")
    assert (breaker.state, breaker.reason, wait) == ("open", "DECODE_TIMEOUT: no first event", 10)

    clock.now += 10
    assert await reg.lease("trial-2", "p", "r0") is not None
    reg.record_success("p", "r0")  # it generated: closed, every slot usable again
    await reg.release("trial-2")
    snap = await reg.pool_snapshot("p")
    assert snap.ready and snap.replicas[0].slots_free == 4 and reg.breaker("p", "r0")[0].state == "closed"


async def test_a_half_open_trial_that_ends_without_telling_lets_another_through() -> None:
    clock = Clock()
    spec = PoolSpec(id="p", engine="scripted", models=("m",), replicas=(ReplicaSpec("r0"),), slots=4)
    reg = PoolRegistry([spec], breaker=BreakerPolicy(threshold=1, backoff_s=1), clock=clock)
    await HealthProber(reg, {("p", "r0"): ScriptedEngine(["ready"])}).probe("p", "r0")
    reg.record_failure("p", "r0", "reset")
    clock.now += 1
    assert await reg.lease("canceled-trial", "p", "r0") is not None
    await reg.release("canceled-trial")  # canceled before a token: it says nothing of the engine
    assert await reg.lease("next-trial", "p", "r0") is not None


async def test_leases_never_exceed_slots_and_release_is_idempotent() -> None:
    reg = registry(slots=2)
    await HealthProber(reg, {("p", "r0"): ScriptedEngine(["ready"])}).probe("p", "r0")
    assert await reg.lease("j1", "p", "r0") is not None
    assert await reg.lease("j2", "p", "r0") is not None
    assert await reg.lease("j3", "p", "r0") is None
    assert (await reg.pool_snapshot("p")).slots_free == 0
    assert await reg.release("j1") is not None
    assert await reg.release("j1") is None
    assert (await reg.pool_snapshot("p")).slots_free == 1


@pytest.mark.parametrize("answers", [["down"], ["loading"]])
async def test_probe_start_up_round_reports_unready(answers: list[str]) -> None:
    reg = registry()
    await HealthProber(reg, {("p", "r0"): ScriptedEngine(answers)}).probe_all()
    assert not (await reg.pool_snapshot("p")).ready
