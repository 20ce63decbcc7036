"""The log lines of a real run: JSON, one event per fact of each job's life with the job's fields, the
client's correlation id from the request through the logs to the engine, and nothing per token."""

from __future__ import annotations

from typing import Any

from orchestratord.logs import JOB_EVENTS, JOB_FIELDS
from tests.fakes.engines.vllm import VERSION
from tests.observability.scenario import Job, Run


def events_of(run: Run, job: Job) -> list[dict[str, Any]]:
    return [line for line in run.log_lines if line.get("job_id") == job.job_id]


def lifecycle(run: Run, job: Job) -> list[str]:
    return [line["event"] for line in events_of(run, job) if line["event"] in JOB_EVENTS]


def one(run: Run, job: Job, event: str) -> dict[str, Any]:
    found = [line for line in events_of(run, job) if line["event"] == event]
    assert len(found) == 1, f"{job.name}: {len(found)} {event} events"
    return found[0]


def test_every_line_is_json_when_not_a_terminal(run: Run) -> None:
    lines = [line for line in run.log_text.splitlines() if line.strip()]
    assert len(run.log_lines) == len(lines) > 20  # log_lines parses each one as JSON
    assert all({"event", "level", "timestamp"} <= line.keys() for line in run.log_lines)


def test_each_ending_has_its_sequence_of_events(run: Run) -> None:
    j = run.jobs
    run_to_end = ["task_admitted", "placement_decided", "task_started", "task_first_token"]
    for name in ("A1", "A2", "A3", "V"):
        assert lifecycle(run, j[name]) == [*run_to_end, "task_completed"], name
    assert lifecycle(run, j["B"]) == [*run_to_end, "task_failed"]
    assert lifecycle(run, j["H"]) == ["task_admitted", "placement_decided", "task_started", "task_canceled"]
    assert lifecycle(run, j["D"]) == ["task_admitted", "task_failed"]
    assert lifecycle(run, j["Q"]) == ["task_admitted", "task_canceled"]
    assert lifecycle(run, j["S"]) == ["task_admitted", "placement_decided", "task_started", "task_failed"]
    rejected = [line for line in run.log_lines if line.get("correlation_id") == "obs-R"]
    assert [line["event"] for line in rejected] == ["task_rejected"]
    assert rejected[0]["reason"] == "ADMISSION_REJECT" and rejected[0]["policy"] == "reject"
    assert rejected[0]["engine"] == "mock" and rejected[0]["tenant"] == "default"


def test_every_job_event_carries_every_field(run: Run) -> None:
    job_events = [line for line in run.log_lines if line["event"] in JOB_EVENTS]
    assert len(job_events) > 30
    for line in job_events:
        assert set(JOB_FIELDS) <= line.keys(), (line["event"], set(JOB_FIELDS) - line.keys())
        for key in ("job_id", "tenant", "priority", "model_ref", "correlation_id"):
            assert line[key], (line["event"], key)


def test_field_values_agree_with_what_the_client_saw(run: Run) -> None:
    a1 = run.jobs["A1"]
    admitted = one(run, a1, "task_admitted")
    assert admitted["queue_position"] == a1.response.json()["queue_position"]
    assert admitted["predicted_start_ms"] == a1.response.json()["predicted_start_ms"]
    assert admitted["session_id"] == "sess-obs" and admitted["model_ref"] == "mock"
    assert admitted["pool_id"] == "default" and admitted["replica_id"] is None
    dispatched = next(e for e in a1.events if e.event == "metrics" and "pool_id" in e.data)
    done = one(run, a1, "task_completed")
    assert done["tokens_out"] == a1.tokens == a1.last("end").data["tokens_out"]
    assert done["decode_time_ms"] == a1.last("end").data["decode_time_ms"]
    assert done["queue_time_ms"] == dispatched.data["queue_time_ms"]
    assert done["tokens_in"] == 4  # the mock engine counts the prompt's words
    assert (done["engine"], done["engine_version"], done["pool_id"], done["replica_id"]) == (
        "mock", "mock-1", "default", "r0",
    )  # fmt: skip
    assert done["session_id"] == "sess-obs" and done["priority"] == "interactive"
    v = one(run, run.jobs["V"], "task_completed")
    assert (v["engine"], v["engine_version"], v["pool_id"], v["replica_id"]) == (
        "vllm",
        VERSION,
        "vpool",
        "v0",
    )
    assert v["tokens_in"] == run.engine.behaviour.prompt_tokens and v["tokens_out"] == 6
    failed = one(run, run.jobs["B"], "task_failed")
    assert failed["code"] == "WORKER_RESET" and failed["tokens_out"] == 2 and failed["pool_id"] == "default"
    canceled = one(run, run.jobs["H"], "task_canceled")
    assert canceled["reason"] == "client" and canceled["replica_id"] == "r0" and canceled["tokens_out"] == 0
    unread = one(run, run.jobs["Q"], "task_canceled")
    assert unread["reason"] == "no_reader" and unread["pool_id"] is None
    expired = one(run, run.jobs["D"], "task_failed")
    assert expired["code"] == "DEADLINE_UNMET" and expired["priority"] == "batch"
    stopped = one(run, run.jobs["S"], "task_failed")  # still running when the drain's grace ran out
    assert stopped["code"] == "WORKER_RESET" and stopped["pool_id"] == "default"
    assert stopped["engine_version"] == "mock-1" and stopped["correlation_id"] == "obs-S"


def test_the_placement_decision_is_logged_and_carried(run: Run) -> None:
    a1 = run.jobs["A1"]
    decided = one(run, a1, "placement_decided")
    assert decided["outcome"] == "assigned"
    placement = decided["placement"]
    assert "default/r0" in placement["candidates"] and placement["reason"]
    assert placement["pinned"] is False and placement["fallback"] is False
    assert any("vpool" in why for why in placement["filtered"])  # it does not serve `mock`
    assert one(run, a1, "task_completed")["placement"] == placement


def test_correlation_id_travels_client_logs_engine(run: Run) -> None:
    for job in run.jobs.values():
        if job.response.status_code != 202:
            continue
        if job.sent_correlation_id is not None:
            assert job.correlation_id == job.sent_correlation_id
        assert {line["correlation_id"] for line in events_of(run, job)} == {job.correlation_id}, job.name
        if job.name != "S":  # every stream but the one the shutdown ended was read
            assert job.events[0].event == "started"
            assert job.events[0].data["correlation_id"] == job.correlation_id, job.name
    generated = run.jobs["A2"]  # sent none: the server made one, and used it everywhere
    assert generated.sent_correlation_id is None and len(generated.correlation_id) >= 32
    completions = [r for r in run.engine.record.requests if r.method == "POST"]
    assert [r.headers.get("x-correlation-id") for r in completions] == ["obs-V1"]


def test_nothing_is_logged_per_token(run: Run) -> None:
    a3 = run.jobs["A3"]
    assert a3.tokens == 40
    assert len(events_of(run, a3)) <= 6
    assert not any("token" in line["event"] for line in run.log_lines if line["event"] != "task_first_token")
