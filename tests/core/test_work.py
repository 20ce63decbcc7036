"""Predictions from a model of the work (core.work): what is running and queued ahead, in tokens, at
rates measured per pool."""

from __future__ import annotations

import pytest

from orchestratord.core.capacity import capacity_for
from orchestratord.core.prediction import ServiceTimes, predict_start_ms
from orchestratord.core.route import Route
from orchestratord.core.work import Progress, Work, WorkRates
from tests.core.test_prediction import pool

PER_TOKEN = 0.01  # 10 ms a token
FIRST = (0.05, 0.001)  # first token after 50 ms plus 1 ms per prompt token


def measured(pool_id: str = "a") -> WorkRates:
    rates = WorkRates()
    for prompt, tokens in ((10, 20), (200, 150), (50, 10), (400, 80), (100, 40)):
        first = FIRST[0] + FIRST[1] * prompt
        rates.observe(
            pool_id,
            prompt_tokens=prompt,
            first_token_s=first,
            tokens=tokens,
            decode_s=(tokens - 1) * PER_TOKEN,
        )
    return rates


def test_the_first_token_time_grows_with_the_prompt_and_tokens_cost_their_measured_time() -> None:
    rates = measured()
    assert rates.service("a", Work(0, 1, 1)) == pytest.approx(0.05)
    assert rates.service("a", Work(1000, 1, 1)) == pytest.approx(1.05)
    assert rates.service("a", Work(100, 101, 200)) == pytest.approx(0.15 + 100 * PER_TOKEN)
    assert rates.service("b", Work(100, 10, 10)) is None, "nothing measured on pool b"


def test_a_running_job_has_left_what_it_has_not_generated_yet() -> None:
    rates = measured()
    long, short = Work(10, 150, 200), Work(10, 10, 200)
    assert rates.remaining("a", Progress(long, 1.0, 100)) == pytest.approx(50 * PER_TOKEN)
    assert rates.remaining("a", Progress(short, 0.1, 5)) == pytest.approx(5 * PER_TOKEN)
    # not started yet: its first token's time still to come, then its tokens
    assert rates.remaining("a", Progress(short, 0.02, 0)) == pytest.approx(0.06 - 0.02 + 9 * PER_TOKEN)
    # the first token is overdue: half its age again, not 0
    assert rates.remaining("a", Progress(short, 2.0, 0)) == pytest.approx(1.0 + 9 * PER_TOKEN)
    # it outran its expected length: half again what it generated, up to max_tokens
    assert rates.remaining("a", Progress(short, 1.0, 40)) == pytest.approx(20 * PER_TOKEN)
    assert rates.remaining("a", Progress(short, 1.0, 190)) == pytest.approx(10 * PER_TOKEN)


def test_two_slots_short_and_long_jobs_the_wait_is_the_shorter_ones_rest() -> None:
    """The case one average got wrong: a 10-token and a 150-token job hold the two slots; the job
    queued next starts when the short one ends, not after the mean holding time."""
    rates, times = measured(), ServiceTimes()
    times.observe("a", 0.8)  # the mean holding time of the old model
    running = {"a": [Progress(Work(10, 10, 200), 0.1, 2), Progress(Work(10, 150, 200), 0.1, 2)]}
    cap = capacity_for(Route("m"), [pool("a", 2, 0)], times, {}, progress=running, rates=rates)
    assert cap.releases_s == pytest.approx((8 * PER_TOKEN, 148 * PER_TOKEN))
    assert predict_start_ms(0, cap) == pytest.approx(80, abs=1)
    # the job ahead takes the short one's slot at 80 ms and holds it a mean service (0.8 s here), so
    # the second starts at 880 ms, before the long job frees its slot at 1,480 ms
    assert predict_start_ms(1, cap) == pytest.approx(880, abs=1)


def test_the_jobs_behind_the_first_round_wait_for_the_queued_work_ahead() -> None:
    rates = measured()
    running = {"a": [Progress(Work(10, 10, 200), 0.1, 2)]}
    cap = capacity_for(
        Route("m"), [pool("a", 1, 0)], ServiceTimes(), {}, progress=running, rates=rates, queued_s=2.0
    )
    assert predict_start_ms(0, cap) == pytest.approx(80, abs=1)
    assert predict_start_ms(2, cap) == pytest.approx(80 + 2 * 2000, abs=1)


def test_the_expected_length_is_the_clients_else_learned_else_max_tokens() -> None:
    rates = WorkRates()
    assert rates.expected_tokens("m", "t", 500) == 500
    for _ in range(30):
        rates.observe_length("m", "t", 40)
    assert rates.expected_tokens("m", "t", 500) == 40
    assert rates.expected_tokens("m", "t", 30) == 30, "never more than max_tokens"
    assert rates.expected_tokens("m", "other", 500) == 40, "a new tenant gets the model's length"
    assert rates.expected_tokens("m", "t", 500, expected=120) == 120


def test_replicas_share_their_measurements_as_if_one_had_seen_every_run() -> None:
    one, a, b = WorkRates(), WorkRates(), WorkRates()
    for i, (prompt, tokens) in enumerate(((10, 20), (300, 150), (50, 10), (600, 80))):
        first, decode = 0.05 + 0.002 * prompt, (tokens - 1) * (0.01 + 0.001 * i)
        for rates in (one, a if i % 2 else b):
            rates.observe("p", prompt_tokens=prompt, first_token_s=first, tokens=tokens, decode_s=decode)
    shared = WorkRates.merged([a.export(), b.export()])
    work = Work(250, 60, 100)
    # the decay orders each replica's own runs; merged sums weigh them as one replica's, within that
    assert shared.service("p", work) == pytest.approx(one.service("p", work), rel=0.05)
    assert shared.service("p", work) is not None and WorkRates.merged([]).service("p", work) is None


def test_snapshot_pools_without_rates_fall_back_to_holding_times() -> None:
    times = ServiceTimes()
    times.observe("a", 2.0)
    cap = capacity_for(
        Route("m"), [pool("a", 1, 0)], times, {}, progress={"a": [Progress(None, 0.5, 0)]}, rates=WorkRates()
    )
    assert cap.releases_s == (1.5,)
