"""The 429 contract over HTTP: bounded queue, retry hints from the measured drain rate, rate limits,
per-tenant capacity and concurrency; a tenant named by the client is never trusted."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.api.helpers import wait_for
from tests.conftest import mock_pool
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events

SLOW = {"ttft_ms": 1500, "tokens_per_s": 1000}  # one job holds the slot for about 1.5 s


def post(client: httpx.Client, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    payload = {"model_ref": "mock", "prompt": "hello", "max_tokens": 2, "cancel_on_disconnect": False}
    return client.post("/v1/tasks", json={**payload, **body}, headers=headers or {})


def assert_429_contract(response: httpx.Response, policy: str) -> int:
    """The headers and envelope every 429 carries; returns the hint in milliseconds."""
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["code"] == "ADMISSION_REJECT"
    assert body["policy_label"] == policy
    assert body["retriable"] is True
    backoff = int(response.headers["X-Backoff-Ms"])
    retry_after = int(response.headers["Retry-After"])
    assert backoff >= 1 and retry_after >= 1
    assert body["retry_after_ms"] == backoff
    assert retry_after == max(1, math.ceil(backoff / 1000))
    assert str(backoff) in body["message"] or policy == "rate-limit"
    return backoff


def fill(client: httpx.Client) -> list[str]:
    """Submit until the queue refuses; returns the admitted job ids."""
    admitted = []
    while (response := post(client)).status_code == 202:
        admitted.append(response.json()["job_id"])
        assert len(admitted) < 50, "the queue never filled"
    return admitted


def warm_up(client: httpx.Client) -> None:
    """One job run to the end, so the pool's service time is measured."""
    read_events(client, post(client).json()["sse_url"])


def test_full_queue_answers_429_with_headers_and_envelope(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(queue={"capacity": 2}, pools=[mock_pool(slots=1, options=SLOW)])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        warm_up(client)
        admitted = fill(client)
        assert len(admitted) == 3  # one running on the only slot, two queued
        refused = post(client)
        hint = assert_429_contract(refused, "reject")
        # From the measured service time (~1.5 s): the running job frees its slot within one service
        # time, plus a tenth of one as margin.
        assert hint <= 1.5 * 1.1 * 1000 + 500
        assert "full" in refused.json()["message"]


def test_retry_hint_follows_the_measured_speed(make_server: Callable[..., LoopbackServer]) -> None:
    hints = {}
    for name, ttft in (("fast", 300), ("slow", 2500)):
        server = make_server(
            queue={"capacity": 1}, pools=[mock_pool(id=name, slots=1, options={"ttft_ms": ttft})]
        )
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            warm_up(client)
            fill(client)
            hints[name] = assert_429_contract(post(client), "reject")
    # Not a constant: the slow engine's hint is several times the fast one's, each within its service
    # time plus margin.
    assert hints["fast"] <= 300 * 1.1 + 500
    assert hints["slow"] > 2 * hints["fast"]
    assert hints["slow"] <= 2500 * 1.1 + 500


def test_a_client_that_waits_the_hint_is_admitted_under_steady_load(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(queue={"capacity": 2}, pools=[mock_pool(slots=1, options=SLOW)])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        warm_up(client)
        fill(client)
        for _ in range(3):  # the queue stays full: each admitted retry takes the place that freed
            hint = assert_429_contract(post(client), "reject")
            # What is left of the running job's measured 1.5 s service, plus a 150 ms margin.
            assert 150 <= hint <= 1650 + 500, hint
            time.sleep(hint / 1000)
            retried = post(client)
            assert retried.status_code == 202, f"waited the hinted {hint} ms and was refused again"
            assert post(client).status_code == 429  # full again


def test_rate_limit_is_a_429_with_its_own_label(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(tenants=[{"id": "default", "rps": 2, "burst": 2}])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        assert post(client).status_code == 202
        assert post(client).status_code == 202
        refused = post(client)
        hint = assert_429_contract(refused, "rate-limit")
        assert hint <= 500 + 50  # a token every 500 ms
        assert "rate" in refused.json()["message"]
        time.sleep(hint / 1000)
        assert post(client).status_code == 202


def test_a_tenant_named_by_the_client_is_not_trusted(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(tenants=[{"id": "default", "rps": 0.1, "burst": 1}])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        first = post(client, headers={"X-Tenant": "vip"})
        assert first.status_code == 202
        # Still the default tenant's bucket, whatever the header says.
        assert_429_contract(post(client, headers={"X-Tenant": "someone-else"}), "rate-limit")
        # And the job belongs to the default tenant: readable without the header.
        assert client.get(first.json()["status_url"]).status_code == 200


def test_the_tenant_comes_from_the_api_key_not_a_header(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(
        auth={
            "keys": [
                {"key": "alpha-secret-key-0123456789", "tenant": "alpha"},
                {"key": "beta-secret-key-0123456789", "tenant": "beta"},
            ]
        },
        tenants=[{"id": "alpha", "rps": 0.1, "burst": 1}],
    )
    alpha = {"Authorization": "Bearer alpha-secret-key-0123456789"}
    beta = {"Authorization": "Bearer beta-secret-key-0123456789"}
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        assert post(client, headers=alpha).status_code == 202
        assert_429_contract(post(client, headers={**alpha, "X-Tenant": "beta"}), "rate-limit")
        assert post(client, headers={**beta, "X-Tenant": "alpha"}).status_code == 202


def test_per_tenant_capacity(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(
        auth={
            "keys": [
                {"key": "alpha-secret-key-0123456789", "tenant": "alpha"},
                {"key": "beta-secret-key-0123456789", "tenant": "beta"},
            ]
        },
        queue={"capacity": 10, "tenant_capacity": 1},
        pools=[mock_pool(slots=1, options=SLOW)],
    )
    alpha = {"Authorization": "Bearer alpha-secret-key-0123456789"}
    beta = {"Authorization": "Bearer beta-secret-key-0123456789"}
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        running = post(client, headers=alpha).json()["job_id"]
        wait_for(lambda: client.get(f"/v1/tasks/{running}", headers=alpha).json()["state"] == "running")
        assert post(client, headers=alpha).status_code == 202  # alpha's one queued place
        refused = post(client, headers=alpha)
        assert_429_contract(refused, "reject")
        assert "alpha" in refused.json()["message"]
        assert post(client, headers=beta).status_code == 202  # beta has its own share


def test_tenant_max_concurrent(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(
        auth={
            "keys": [
                {"key": "alpha-secret-key-0123456789", "tenant": "alpha"},
                {"key": "beta-secret-key-0123456789", "tenant": "beta"},
            ]
        },
        tenants=[{"id": "alpha", "max_concurrent": 1}],
        pools=[mock_pool(slots=4, options={"ttft_ms": 1000})],
    )
    alpha = {"Authorization": "Bearer alpha-secret-key-0123456789"}
    beta = {"Authorization": "Bearer beta-secret-key-0123456789"}
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        a1, a2 = (post(client, headers=alpha).json()["job_id"] for _ in range(2))
        b1 = post(client, headers=beta).json()["job_id"]

        def states() -> dict[str, str]:
            return {
                "a1": state_of_as(client, a1, alpha),
                "a2": state_of_as(client, a2, alpha),
                "b1": state_of_as(client, b1, beta),
            }

        wait_for(lambda: states()["b1"] != "queued" and states()["a1"] != "queued")
        seen = states()
        assert seen["a2"] == "queued", f"alpha may run one job at a time although slots are free: {seen}"
        wait_for(lambda: states()["a2"] != "queued")
        assert states()["a1"] == "succeeded"
        wait_for(lambda: states()["a2"] == "succeeded")


def state_of_as(client: httpx.Client, job_id: str, headers: dict[str, str]) -> str:
    state: str = client.get(f"/v1/tasks/{job_id}", headers=headers).json()["state"]
    return state


def test_a_refused_client_that_obeys_the_hint_gets_the_place_it_was_promised(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """Refused from a full queue, a request is promised the place its hint points at: new arrivals
    are refused while it is held, its retry (same Idempotency-Key) takes it, and a second refused
    request is told to come after the first's place, not at the same time."""
    server = make_server(queue={"capacity": 1}, pools=[mock_pool(slots=1, options=SLOW)])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        warm_up(client)
        running = post(client).json()["job_id"]
        wait_for(lambda: client.get(f"/v1/tasks/{running}").json()["state"] == "running")
        queued = post(client).json()["job_id"]  # one on the slot, one queued: the queue is full
        first = post(client, {"Idempotency-Key": "first"}, prompt="one")
        first_hint = assert_429_contract(first, "reject")
        assert "a place is held for this request" in first.json()["message"]
        second_hint = assert_429_contract(post(client, {"Idempotency-Key": "second"}, prompt="two"), "reject")
        assert second_hint >= first_hint + 1000, (first_hint, second_hint)  # one more ~1.5 s job ahead
        wait_for(lambda: client.get(f"/v1/tasks/{queued}").json()["state"] == "running", timeout=10)
        # the place `first` was promised is free now: a newcomer is refused, `first` gets it
        assert_429_contract(post(client, {"Idempotency-Key": "newcomer"}, prompt="new"), "reject")
        again = post(client, {"Idempotency-Key": "first"}, prompt="one")
        assert again.status_code == 202, again.text
        # `second` is early: refused, told the time left until its own place
        early = post(client, {"Idempotency-Key": "second"}, prompt="two")
        assert 0 < assert_429_contract(early, "reject") <= second_hint
        for job in (running, queued, again.json()["job_id"]):
            client.delete(f"/v1/tasks/{job}")


def test_with_no_places_held_the_hint_is_plain(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(queue={"capacity": 1, "retry_hold_s": 0}, pools=[mock_pool(slots=1, options=SLOW)])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        warm_up(client)
        fill(client)
        one = assert_429_contract(post(client, {"Idempotency-Key": "a"}, prompt="one"), "reject")
        two = assert_429_contract(post(client, {"Idempotency-Key": "b"}, prompt="two"), "reject")
        assert abs(one - two) < 500, (one, two)  # both told the same next release
        assert "held" not in post(client, prompt="three").json()["message"]


def test_held_places_are_a_gauge(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(queue={"capacity": 1}, pools=[mock_pool(slots=1, options=SLOW)])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:

        def held() -> float:
            lines = client.get("/metrics").text.splitlines()
            return float(next(x for x in lines if x.startswith("queue_places_held ")).split()[1])

        warm_up(client)
        running = post(client).json()["job_id"]
        wait_for(lambda: client.get(f"/v1/tasks/{running}").json()["state"] == "running")
        queued = post(client).json()["job_id"]
        assert held() == 0
        assert_429_contract(post(client, {"Idempotency-Key": "k1"}, prompt="one"), "reject")
        wait_for(lambda: held() == 1)
        for job in (running, queued):
            client.delete(f"/v1/tasks/{job}")


def test_a_loop_running_behind_refuses_new_jobs_and_the_admitted_ones_end(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """Overload is answered with 429 (policy `overload`), not with silence: while the server's event
    loop runs past `limits.max_loop_lag_ms` behind, new jobs are refused with a hint; those admitted
    before it end; once the loop keeps up again, jobs are admitted."""
    server = make_server(limits={"max_loop_lag_ms": 150})
    blocking = threading.Event()

    async def hog() -> None:  # the loop busy for 300 ms at a time, as a saturated replica's is
        while blocking.is_set():
            time.sleep(0.3)  # noqa: ASYNC251 (blocking the loop is the point)
            await asyncio.sleep(0)

    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        before = post(client, max_tokens=8)
        assert before.status_code == 202
        blocking.set()
        hogging = asyncio.run_coroutine_threadsafe(hog(), server.loop)
        try:
            refused = None
            for _ in range(40):
                response = post(client)
                if response.status_code == 429:
                    refused = response
                    break
                assert response.status_code == 202, response.text
            assert refused is not None, "a loop 300 ms behind never refused a job"
            hint = assert_429_contract(refused, "overload")
            assert hint >= 1000
            assert "limits.max_loop_lag_ms" in refused.json()["message"]
            lag = scrape(client, "event_loop_lag_seconds")
            assert lag > 0.15
        finally:
            blocking.clear()
            hogging.result(10)
        wait_for(lambda: post(client).status_code == 202, timeout=10)
        events = read_events(client, before.json()["sse_url"])
        assert events[-1].event == "end"
        refusals = scrape(client, 'admission_backpressure_events_total{engine="mock",policy="overload"}')
        assert refusals >= 1


def scrape(client: httpx.Client, series: str) -> float:
    """The value of one series (its name and labels as exposed) on /metrics."""
    for line in client.get("/metrics").text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    raise AssertionError(f"{series} is not in /metrics")
