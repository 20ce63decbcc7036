"""Budgets per session and per tenant: refused before queueing with the remaining budget named, never a
truncated output, remaining budgets in the 202's and the stream's headers and in `metrics` events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.api.helpers import wait_for
from tests.control.helpers import ACME_KEY, GLOBEX_KEY, KEYS, admitted, assert_envelope, client, task
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.observability.exposition import contract_problems, load_lint, value

ServerFactory = Callable[..., LoopbackServer]
TOKENS = "X-Budget-Tokens-Remaining"
TIME = "X-Budget-Time-Remaining-Ms"
COST = "X-Budget-Cost-Remaining"


def _session(c: httpx.Client, session_id: str) -> dict[str, Any]:
    response = c.get(f"/v1/sessions/{session_id}")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def test_session_token_budget_refuses_up_front_and_never_truncates(make_server: ServerFactory) -> None:
    server = make_server(budgets={"session": {"tokens": 100}})
    with client(server) as c:
        # "hi" is one prompt token (estimate); the hold is 1 + max_tokens.
        first = task(c, session_id="s1", max_tokens=60)
        assert first.status_code == 202
        assert first.headers[TOKENS] == "39"
        assert TIME not in first.headers and COST not in first.headers

        refused = task(c, session_id="s1", max_tokens=60)
        body = assert_envelope(refused, 429, "BUDGET_EXCEEDED")
        assert "39 tokens remain" in body["message"] and "needs up to 61 tokens" in body["message"]
        assert body["policy_label"] == "quota" and body["retriable"] is False

        job = first.json()
        with c.stream("GET", job["sse_url"]) as stream:
            assert stream.headers[TOKENS] == "39"
        events = read_events(c, job["sse_url"])
        tokens = [e for e in events if e.event == "token"]
        assert len(tokens) == 60, "a budget never cuts a job short"
        assert events[-1].event == "end" and events[-1].data["stop_reason"] == "max_tokens"
        dispatch = next(e for e in events if e.event == "metrics" and "replica_id" in e.data)
        assert dispatch.data["budget_tokens_remaining"] == 39

        assert _session(c, "s1")["tokens_budget_remaining"] == 39
        exact = task(c, session_id="s1", max_tokens=38)
        assert exact.status_code == 202 and exact.headers[TOKENS] == "0"
        assert_envelope(task(c, session_id="s1", max_tokens=1), 429, "BUDGET_EXCEEDED")
        # Other sessions have their own budget.
        other = task(c, session_id="s2", max_tokens=60)
        assert other.headers[TOKENS] == "39"
        for done in (exact, other):
            assert read_events(c, done.json()["sse_url"])[-1].event == "end"
    # Both refusals are backpressure an operator sees, under the policy the 429 named.
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert value(metrics, "admission_backpressure_events_total", engine="mock", policy="quota") == 2
    assert value(metrics, "tasks_rejected_total", engine="mock", reason="BUDGET_EXCEEDED") == 2
    assert contract_problems(metrics, load_lint()) == []


def test_a_job_that_ends_early_is_charged_what_it_used(make_server: ServerFactory) -> None:
    server = make_server(budgets={"session": {"tokens": 100}})
    with client(server) as c:
        prompt = "[[mock eos_after=5]] hi"  # 23 bytes: a prompt estimate of 5 tokens
        job = admitted(c, session_id="s", prompt=prompt, max_tokens=50)
        events = read_events(c, job["sse_url"])
        assert events[-1].data["stop_reason"] == "eos" and events[-1].data["tokens_out"] == 5
        # The hold of 55 is replaced by the 5 + 5 tokens really used.
        wait_for(lambda: _session(c, "s")["tokens_budget_remaining"] == 90)


def test_a_job_refused_by_the_queue_gives_back_its_turn_and_budget(make_server: ServerFactory) -> None:
    pool = {"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}], "slots": 1}
    server = make_server(
        pools=[{**pool, "options": {"tokens_per_s": 40}}],
        queue={"capacity": 1},
        budgets={"session": {"tokens": 1000}},
    )
    with client(server) as c:
        first = admitted(c, session_id="kept", max_tokens=5)
        assert read_events(c, first["sse_url"])[-1].event == "end"
        wait_for(lambda: _session(c, "kept")["tokens_budget_remaining"] == 994)
        running = admitted(c, max_tokens=2000)
        wait_for(lambda: c.get(running["status_url"]).json()["state"] == "running")
        queued = admitted(c, max_tokens=5)
        for session_id in ("kept", "fresh"):
            assert_envelope(task(c, session_id=session_id, max_tokens=100), 429, "ADMISSION_REJECT")
        kept = _session(c, "kept")
        assert (kept["turns"], kept["tokens_budget_remaining"]) == (1, 994)
        assert_envelope(c.get("/v1/sessions/fresh"), 404, "NOT_FOUND")
        for job in (queued, running):
            assert c.post(f"/v1/tasks/{job['job_id']}/cancel").status_code == 204


def test_max_turns_is_a_budget_too(make_server: ServerFactory) -> None:
    server = make_server(sessions={"max_turns": 2})
    with client(server) as c:
        for _ in range(2):
            admitted(c, session_id="short", max_tokens=1)
        body = assert_envelope(task(c, session_id="short", max_tokens=1), 429, "BUDGET_EXCEEDED")
        assert "all 2 of its turns" in body["message"]
        assert _session(c, "short")["turns"] == 2
        admitted(c, session_id="another", max_tokens=1)


def test_time_budget_refuses_once_spent_and_never_stops_a_running_job(make_server: ServerFactory) -> None:
    server = make_server(budgets={"session": {"time_ms": 50}})
    with client(server) as c:
        first = task(c, session_id="t", max_tokens=40)  # 40 tokens at 200/s: at least 195 ms of decode
        assert first.status_code == 202 and first.headers[TIME] == "50"
        events = read_events(c, first.json()["sse_url"])
        assert sum(e.event == "token" for e in events) == 40 and events[-1].event == "end"
        wait_for(lambda: _session(c, "t")["time_budget_remaining_ms"] == 0)
        body = assert_envelope(task(c, session_id="t", max_tokens=1), 429, "BUDGET_EXCEEDED")
        assert "0 ms of decode time remain" in body["message"]


def test_tenant_cost_budget_from_per_model_prices(make_server: ServerFactory) -> None:
    server = make_server(
        auth={"keys": KEYS},
        prices={"mock": {"input_per_1k": 0.0, "output_per_1k": 1.0}},
        budgets={"tenants": {"acme": {"cost": 0.05}}, "window_s": 3600},
    )
    with client(server, ACME_KEY) as acme, client(server, GLOBEX_KEY) as globex:
        first = task(acme, max_tokens=30)
        assert first.status_code == 202 and first.headers[COST] == "0.02"
        refused = task(acme, max_tokens=30)
        body = assert_envelope(refused, 429, "BUDGET_EXCEEDED")
        assert "tenant 'acme'" in body["message"] and "0.02 remains" in body["message"]
        assert body["retriable"] is True and int(refused.headers["Retry-After"]) > 3000
        # Sessions see the tighter of their own and their tenant's budget.
        in_session = task(acme, session_id="c", max_tokens=10)
        assert in_session.status_code == 202 and in_session.headers[COST] == "0.01"
        assert _session(acme, "c")["cost_budget_remaining"] == 0.01
        # Another tenant has no budget: no refusal, no budget headers.
        other = task(globex, max_tokens=30)
        assert other.status_code == 202 and COST not in other.headers
        for c, done in ((acme, first), (acme, in_session), (globex, other)):
            assert read_events(c, done.json()["sse_url"])[-1].event == "end"
