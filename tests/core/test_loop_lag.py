"""orchestratord/loop_lag.py: the loop's lateness and the backend's round trips, each two in a row
past the limit before admission refuses; one late tick refuses nothing; an unreachable backend is not
an overloaded one."""

from __future__ import annotations

import asyncio

from orchestratord.loop_lag import LoopLag


def test_two_late_ticks_in_a_row_and_not_one() -> None:
    lag = LoopLag(0.5)
    lag.tick(0.9)
    assert not lag.overloaded and lag.behind_s == 0.9
    lag.tick(0.7)
    assert lag.overloaded
    lag.tick(0.0)
    assert not lag.overloaded
    assert not LoopLag(None).overloaded


def test_late_round_trips_to_the_backend_refuse_too() -> None:
    lag = LoopLag(0.5)
    lag.round_trip(0.8)
    lag.round_trip(0.6)
    assert lag.overloaded and lag.behind_s == 0.6
    lag.round_trip(0.01)
    assert not lag.overloaded


async def test_the_probe_times_the_backend_and_a_silent_one_counts_as_unreachable() -> None:
    answers = [True, True, False, False]
    clock = [0.0]

    async def probe() -> bool:
        clock[0] += 0.7  # every round trip takes 700 ms of this clock
        return answers.pop(0) if answers else False

    lag = LoopLag(0.5, interval_s=0.001, clock=lambda: clock[0])
    probing = asyncio.create_task(lag._probing(probe))  # the backend's half alone: the loop's has its own
    try:
        for _ in range(200):
            if lag.overloaded:
                break
            await asyncio.sleep(0.002)
        assert lag.overloaded  # two answers, each 700 ms late
        for _ in range(200):
            if not answers and not lag.overloaded:
                break
            await asyncio.sleep(0.002)
        assert not lag.overloaded  # no answer: unreachable (503 elsewhere), not overloaded
    finally:
        probing.cancel()
        await asyncio.gather(probing, return_exceptions=True)
