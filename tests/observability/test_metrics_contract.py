"""GET /metrics against the contract (ci/metrics.lint.json), after real jobs: names, types, label sets,
bounded label values, buckets; and every series counts exactly the jobs the scenario ran."""

from __future__ import annotations

from typing import Any

import pytest

from orchestratord.errors import ErrorKind
from orchestratord.metrics import Metrics
from tests.fakes.engines.vllm import KV_USAGE, VERSION
from tests.observability.exposition import contract_problems, load_lint, series, value
from tests.observability.scenario import Job, Run

MOCK = {"engine": "mock", "engine_version": "mock-1", "pool_id": "default"}
VLLM = {"engine": "vllm", "engine_version": VERSION, "pool_id": "vpool"}
# Error kinds that never end or refuse a job (they are answered before admission): not reasons.
# Refusals of a request that never became a job (REQUEST_TIMEOUT: its body did not arrive in time).
# STATE_LOST: a job Redis lost has no record left to end; its runner logs `task_state_lost`.
NOT_JOB_OUTCOMES = {"NOT_FOUND", "UNAUTHORIZED", "FORBIDDEN", "METHOD_NOT_ALLOWED", "CONFLICT",
                    "PAYLOAD_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE", "REQUEST_TIMEOUT",
                    "STATE_LOST"}  # fmt: skip


@pytest.fixture(scope="module")
def lint() -> dict[str, Any]:
    return load_lint()


def test_scrapes_match_the_contract(run: Run, lint: dict[str, Any]) -> None:
    for scrape in (run.busy_scrape, run.final_scrape):
        assert contract_problems(scrape, lint) == []


def test_a_fresh_registry_declares_every_contract_metric(lint: dict[str, Any]) -> None:
    metrics = Metrics()
    metrics.watch_pools(list)  # no pools yet: the families are still declared
    text = metrics.exposition().decode()
    assert contract_problems(text, lint) == []


def test_the_checker_catches_drift(run: Run, lint: dict[str, Any]) -> None:
    """The contract check is not vacuous: each kind of drift is reported."""
    drifted = run.final_scrape.replace("tasks_started_total", "tasks_begun_total")
    assert "missing metric tasks_started_total" in contract_problems(drifted, lint)
    assert "unknown metric tasks_begun_total" in contract_problems(drifted, lint)
    relabeled = run.final_scrape.replace('reason="no_reader"', 'reason="no_reader",extra="x"')
    assert any("has labels" in p for p in contract_problems(relabeled, lint))
    out_of_bound = run.final_scrape.replace('priority="batch"', 'priority="bulk"')
    assert any("'bulk' is outside" in p for p in contract_problems(out_of_bound, lint))
    rebucketed = run.final_scrape.replace('le="750.0"', 'le="700.0"')
    assert any("buckets" in p for p in contract_problems(rebucketed, lint))


def test_every_label_is_bounded_or_explained(lint: dict[str, Any]) -> None:
    for metric in lint["metrics"]:
        for label in metric["labels"]:
            known = label in lint["bounded_labels"] or label in metric.get("label_values", {})
            assert known or label in lint["unbounded_labels"], (metric["name"], label)


def test_rejection_reasons_cover_every_job_outcome(lint: dict[str, Any]) -> None:
    reasons = {m["name"]: m for m in lint["metrics"]}["tasks_rejected_total"]["label_values"]["reason"]
    kinds = {k.value for k in ErrorKind}
    assert set(reasons) <= kinds
    assert set(reasons) | NOT_JOB_OUTCOMES == kinds, "a new ErrorKind needs a place in ci/metrics.lint.json"


def test_pool_labels_name_configured_pools(run: Run) -> None:
    for sample in series(run.final_scrape, "tasks_started_total") + series(
        run.final_scrape, "tokens_out_total"
    ):
        assert sample.labels["replica_id"] in run.pools[sample.labels["pool_id"]]
    for sample in series(run.final_scrape, "pool_ready"):
        assert sample.labels["pool_id"] in run.pools


def _prompt_tokens(job: Job) -> int:
    """What the runner counts as prompt tokens: the engine's count when it finished (the mock engine
    counts words), otherwise the estimate (four bytes a token)."""
    prompt = str(job.body["prompt"])
    if job.events[-1].event == "end" and job.events[-1].data["stop_reason"] != "canceled":
        return max(1, len(prompt.split()))
    return max(1, len(prompt.encode()) // 4)


def test_job_counters_match_the_jobs_run(run: Run) -> None:
    m, j = run.final_scrape, run.jobs
    interactive, batch = {"priority": "interactive"}, {"priority": "batch"}
    assert value(m, "tasks_enqueued_total", **MOCK, replica_id="none", **interactive) == 4  # A1 B H Q
    assert value(m, "tasks_enqueued_total", **MOCK, replica_id="none", **batch) == 3  # A2 A3 D
    assert value(m, "tasks_enqueued_total", **VLLM, replica_id="none", **interactive) == 1
    assert value(m, "tasks_started_total", **MOCK, replica_id="r0", **interactive) == 3  # A1 B H
    assert value(m, "tasks_started_total", **MOCK, replica_id="r0", **batch) == 2  # A2 A3
    assert value(m, "tasks_started_total", **VLLM, replica_id="v0", **interactive) == 1
    assert value(m, "tasks_started_total") == 6
    assert value(m, "tasks_canceled_total", **MOCK, replica_id="r0", reason="client") == 1  # H
    never_placed = {"engine": "none", "engine_version": "none", "pool_id": "none", "replica_id": "none"}
    assert value(m, "tasks_canceled_total", **never_placed, reason="no_reader") == 1  # Q
    assert value(m, "tasks_canceled_total") == 2
    assert value(m, "tasks_rejected_total", engine="mock", reason="ADMISSION_REJECT") == 1  # R
    assert value(m, "tasks_rejected_total", engine="mock", reason="WORKER_RESET") == 1  # B
    assert value(m, "tasks_rejected_total", engine="mock", reason="DEADLINE_UNMET") == 1  # D
    assert value(m, "tasks_rejected_total") == 3
    assert value(m, "admission_backpressure_events_total", engine="mock", policy="reject") == 1
    assert value(m, "admission_backpressure_events_total") == 1
    assert value(m, "placement_decisions_total", outcome="assigned", pinned="false", fallback="false") == 6
    assert value(m, "placement_decisions_total") == 6
    assert j["B"].last("error").data["code"] == "WORKER_RESET"
    assert j["D"].last("error").data["code"] == "DEADLINE_UNMET"


def test_token_counters_match_the_streams(run: Run) -> None:
    m, j = run.final_scrape, run.jobs
    mock_jobs = [j[n] for n in ("A1", "A2", "A3", "B", "H")]
    assert value(m, "tokens_out_total", **MOCK, replica_id="r0") == sum(job.tokens for job in mock_jobs)
    assert value(m, "tokens_out_total", **VLLM, replica_id="v0") == j["V"].tokens == 6
    assert value(m, "tokens_in_total", **MOCK, replica_id="r0") == sum(
        _prompt_tokens(job) for job in mock_jobs
    )
    assert value(m, "tokens_in_total", **VLLM, replica_id="v0") == run.engine.behaviour.prompt_tokens
    assert j["B"].tokens == 2 and j["H"].tokens == 0


def test_latency_histograms_count_each_job_once(run: Run) -> None:
    m = run.final_scrape
    # first token: A1 and B (interactive), A2 and A3 (batch), V; decode: the jobs that completed
    assert value(m, "latency_first_token_ms_count", **MOCK, priority="interactive") == 2
    assert value(m, "latency_first_token_ms_count", **MOCK, priority="batch") == 2
    assert value(m, "latency_first_token_ms_count", **VLLM, priority="interactive") == 1
    assert value(m, "latency_decode_ms_count", **MOCK, priority="interactive") == 1
    assert value(m, "latency_decode_ms_count", **MOCK, priority="batch") == 2
    assert value(m, "latency_decode_ms_count", **VLLM, priority="interactive") == 1
    assert value(m, "latency_first_token_ms_sum") > 0
    scraped = [name for name in run.jobs if name != "S"]  # S was submitted after the final scrape
    assert value(m, "admission_latency_ms_count") == len(scraped)  # every POST, the 429 too
    inf = value(m, "latency_first_token_ms_bucket", **MOCK, priority="batch", le="+Inf")
    assert inf == value(m, "latency_first_token_ms_count", **MOCK, priority="batch")


def test_gauges_follow_the_pools_and_the_queue(run: Run) -> None:
    busy, final = run.busy_scrape, run.final_scrape
    assert value(busy, "queue_depth", **MOCK, priority="interactive") == 1
    assert value(busy, "pool_slots_free", pool_id="default") == 0
    assert value(final, "queue_depth", **MOCK, priority="interactive") == 0
    assert value(final, "pool_slots_free", pool_id="default") == 1
    assert value(final, "pool_slots_total", pool_id="default") == 1
    assert value(final, "pool_slots_total", pool_id="vpool") == 2
    assert value(final, "pool_ready", pool_id="default") == value(final, "pool_ready", pool_id="vpool") == 1
    kv = series(final, "kv_cache_usage_ratio")
    assert [s.labels for s in kv] == [{**VLLM, "replica_id": "v0"}]  # the mock engine reports none
    assert kv[0].value == pytest.approx(sum(KV_USAGE) / len(KV_USAGE))


def test_shares_and_deadlines_follow_the_dispatches(run: Run) -> None:
    m = run.final_scrape
    # dispatched: A1 B H V (interactive), A2 A3 (batch), all tenant "default"
    assert value(m, "admission_share", tenant="default", priority="interactive") == pytest.approx(4 / 6)
    assert value(m, "admission_share", tenant="default", priority="batch") == pytest.approx(2 / 6)
    # A1 (interactive) started within its deadline; D (batch) expired in the queue
    assert value(m, "deadlines_met_ratio", priority="interactive") == 1.0
    assert value(m, "deadlines_met_ratio", priority="batch") == 0.0
