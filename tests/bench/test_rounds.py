"""The redis scenario's rounds (bench/scenarios/redis.py): every setup measured in turn, in an order
that rotates, and each ratio to the one process taken round by round before its median."""

from __future__ import annotations

from typing import Any

from bench.load import JobResult
from bench.scenarios import redis as scenario


async def test_every_setup_is_measured_each_round_in_a_rotating_order() -> None:
    seen: list[tuple[str, int]] = []

    async def measure(name: str, r: int) -> int:
        seen.append((name, r))
        return len(seen)

    rounds = await scenario.in_rounds(["a", "b", "c"], 3, measure)
    assert [name for name, _ in seen] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert [r for _, r in seen] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert rounds["a"] == [1, 6, 8]


def test_a_ratio_is_the_median_of_the_same_rounds_ratios_not_of_the_medians() -> None:
    # The machine slowed in round two for everyone: the one process's round and the replica's round
    # keep their ratio, which the setups' medians compared across rounds would not.
    one = [{"cpu_ms_per_job": 4.0}, {"cpu_ms_per_job": 8.0}, {"cpu_ms_per_job": 4.2}]
    replica = [{"cpu_ms_per_job": 5.0}, {"cpu_ms_per_job": 10.0}, {"cpu_ms_per_job": 5.5}]
    relay = [{"cpu_us_per_token": 10.0, "tokens_per_s": 100.0}] * 3
    compared = scenario.compare(
        {scenario.ONE_PROCESS: one, "replica": replica}, {scenario.ONE_PROCESS: relay, "replica": relay}
    )
    jobs = compared["replica"]["jobs"]
    assert jobs["cpu_vs_one_process_rounds"] == [1.25, 1.25, 1.31]
    assert jobs["cpu_vs_one_process"] == 1.25  # the medians' ratio would be 5.5 / 4.2 = 1.31
    assert jobs["cpu_ms_per_job"] == 5.5 and jobs["cpu_ms_per_job_rounds"] == [5.0, 10.0, 5.5]
    assert compared[scenario.ONE_PROCESS]["jobs"]["cpu_vs_one_process"] == 1.0
    assert compared["replica"]["relay"]["cpu_per_token_vs_one_process"] == 1.0


def test_sharing_a_core_is_three_replicas_over_one_alone_at_their_share_round_by_round() -> None:
    one = [{"cpu_ms_per_job": 4.0}, {"cpu_ms_per_job": 8.0}]
    alone = [{"cpu_ms_per_job": 5.0}, {"cpu_ms_per_job": 10.0}]
    three = [{"cpu_ms_per_job": 6.0}, {"cpu_ms_per_job": 13.0}]
    rounds = {scenario.ONE_PROCESS: one, scenario.AT_A_SHARE: alone, scenario.THREE: three}
    got = scenario.sharing_a_core(rounds, 11)
    assert got["three_replicas_cpu_vs_it_rounds"] == [1.2, 1.3]
    assert got["three_replicas_cpu_vs_it"] == 1.25
    assert got["jobs"]["cpu_vs_one_process_rounds"] == [1.25, 1.25]
    assert got["concurrency"] == 11 and got["jobs"]["cpu_ms_per_job"] == 5.0


def test_the_open_loop_cpu_is_compared_rate_by_rate() -> None:
    def rates(*cpu: float, held: float | None = None) -> dict[str, Any]:
        rows = zip((25.0, 50.0), cpu, strict=True)
        streams = {"held_open": None if held is None else {"cpu_us_per_token": held}}
        return {"ttft": [{"offered_per_s": r, "cpu_ms_per_job": c} for r, c in rows], "streams": streams}

    setups = {
        scenario.ONE_PROCESS: rates(10.0, 8.0, held=250.0),
        "replica": rates(12.0, 10.0, held=350.0),
        "too short to hold": rates(12.0, 10.0),
    }
    scenario.open_loop_ratios(setups)
    assert [t["cpu_vs_one_process"] for t in setups["replica"]["ttft"]] == [1.2, 1.25]
    assert [t["cpu_vs_one_process"] for t in setups[scenario.ONE_PROCESS]["ttft"]] == [1.0, 1.0]
    assert setups["replica"]["streams"]["held_open"]["cpu_vs_one_process"] == 1.4
    assert setups["too short to hold"]["streams"]["held_open"] is None


def test_the_tokens_held_open_streams_relay_are_counted_within_the_window_only() -> None:
    streams = [
        JobResult(0.0, 202, first_token_at=1.0, ended_at=30.0),  # open through the window: 10 tokens
        JobResult(0.0, 202, first_token_at=15.0, ended_at=30.0),  # started late in it: 5
        JobResult(0.0, 202, first_token_at=12.0, ended_at=14.0),  # ended in it: 2
        JobResult(0.0, 202, first_token_at=11.0),  # never ended: open to the window's end, 9
        JobResult(0.0, 429),  # refused: none
        JobResult(0.0, 202, first_token_at=25.0, ended_at=30.0),  # after it: none
    ]
    assert scenario.tokens_within(streams, 10.0, 20.0, 1.0) == 26.0
    assert scenario.tokens_within(streams, 10.0, 20.0, 0.5) == 52.0
    held = scenario.held_open(streams, scenario.Held(10.0, 20.0, cpu_s=0.013))
    assert held == {"window_s": 10.0, "streams_open_mean": 2.6, "tokens": 26, "cpu_us_per_token": 500.0}
    assert scenario.held_open(streams, None) is None
