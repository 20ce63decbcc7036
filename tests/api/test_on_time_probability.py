"""`on_time_probability` in the `metrics` events of a queued job with a deadline: how likely it starts
in time, from how the last measured starts compared with their predictions."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest

from orchestratord.outlook import MIN_SAMPLES, Outlook
from orchestratord.runs import Runs
from pool_manager.registry import PoolRegistry
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events


def test_the_probability_follows_the_measured_errors() -> None:
    outlook = Outlook(PoolRegistry([]), Runs())
    assert outlook.on_time(500, 10.0) is None  # nothing measured yet
    for i in range(MIN_SAMPLES * 2):  # half the jobs started when predicted, half twice as late
        outlook.promised(f"j{i}", 1000)
        outlook.started(f"j{i}", 1.0 if i % 2 else 2.0)
    assert outlook.on_time(1000, 1.5) == pytest.approx(0.5)
    assert outlook.on_time(1000, 2.0) == pytest.approx(1.0)
    assert outlook.on_time(1000, 0.9) == pytest.approx(0.0)
    assert outlook.on_time(0, 0.1) == 1.0 and outlook.on_time(1000, -1) == 0.0
    outlook.promised("gone", 1000)
    outlook.keep_promises(set())  # canceled in the queue: no measurement
    outlook.started("gone", 5.0)
    assert outlook.on_time(1000, 1.5) == pytest.approx(0.5)


def test_a_short_prediction_carries_over_its_lateness_not_its_ratio() -> None:
    outlook = Outlook(PoolRegistry([]), Runs())
    for i in range(MIN_SAMPLES):  # predicted in 2 ms, started in 60 ms: 30 times late, 58 ms late
        outlook.promised(f"j{i}", 2)
        outlook.started(f"j{i}", 0.06)
    assert outlook.on_time(2000, 10.0) == 1.0  # 2 s and 58 ms, not 60 s
    assert outlook.on_time(2000, 2.05) == 0.0  # yet 58 ms late still misses a deadline 50 ms out
    for i in range(MIN_SAMPLES):  # as many predicted in 1 s that started in 3 s: they scale
        outlook.promised(f"k{i}", 1000)
        outlook.started(f"k{i}", 3.0)
    assert outlook.on_time(2000, 10.0) == 1.0
    assert outlook.on_time(2000, 5.0) == pytest.approx(0.5)


def test_a_wait_is_stretched_by_the_latest_measured_lateness() -> None:
    outlook = Outlook(PoolRegistry([]), Runs())
    assert outlook.assured(1000) == 1000  # nothing measured yet
    for i in range(MIN_SAMPLES):  # every start came when predicted
        outlook.promised(f"j{i}", 1000)
        outlook.started(f"j{i}", 1.0)
    assert outlook.assured(1000) == 1000
    assert outlook.assured(2000) == 2000  # asked again, with nothing new measured
    for i in range(MIN_SAMPLES * 10):  # then most came twice as late: the next admission sees it
        outlook.promised(f"k{i}", 1000)
        outlook.started(f"k{i}", 2.0)
    assert outlook.assured(1000) == 2000


def test_a_job_that_outwaited_the_queue_stretches_the_next_waits_as_much_as_a_late_start() -> None:
    outlook = Outlook(PoolRegistry([]), Runs())
    for i in range(MIN_SAMPLES):  # every start came when predicted
        outlook.promised(f"j{i}", 1000)
        outlook.started(f"j{i}", 1.0)
    for i in range(MIN_SAMPLES * 10):  # then most never started: each failed after waiting 4 s
        outlook.promised(f"k{i}", 1000)
        outlook.missed(f"k{i}", 4.0)
    assert outlook.assured(1000) == 4000  # missed by 3 s, as a start 3 s late would have been
    assert outlook.most_ahead(2000) is None  # no pace measured: the shared queue's check is off
    outlook.missed("never promised here", 60.0)  # admitted by another replica: not this one's error
    assert outlook.assured(1000) == 4000


def test_a_queued_job_with_a_deadline_is_told_its_chances(make_server: Callable[..., LoopbackServer]) -> None:
    pool = {"id": "p", "engine": "mock", "models": ["m"], "replicas": [{"id": "r0"}], "slots": 1,
            "options": {"ttft_ms": 0, "tokens_per_s": 400}}  # fmt: skip
    server = make_server(pools=[pool])
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        # jobs that queue behind one another: each is predicted, then starts, a measured error each
        warm = [client.post("/v1/tasks", json={"model_ref": "m", "prompt": "hi", "max_tokens": 4}).json()
                for _ in range(MIN_SAMPLES + 4)]  # fmt: skip
        threads = [threading.Thread(target=read_events, args=(client, j["sse_url"])) for j in warm]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        holder = client.post(
            "/v1/tasks", json={"model_ref": "m", "prompt": "[[mock hang]] hold", "max_tokens": 2}
        )
        read_events(client, holder.json()["sse_url"], stop_after=1)
        timed = client.post(
            "/v1/tasks", json={"model_ref": "m", "prompt": "hi", "max_tokens": 4, "deadline_ms": 60_000}
        ).json()
        events = read_events(client, timed["sse_url"], stop_after=2)  # started, then its first metrics
        assert events[-1].event == "metrics", events
        probability = events[-1].data["on_time_probability"]
        assert probability == 1.0  # a minute is far more than any start it measured
        untimed = client.post("/v1/tasks", json={"model_ref": "m", "prompt": "hi", "max_tokens": 4}).json()
        plain = read_events(client, untimed["sse_url"], stop_after=2)
        assert plain[-1].event == "metrics" and "on_time_probability" not in plain[-1].data
        client.post(f"/v1/tasks/{holder.json()['job_id']}/cancel")
