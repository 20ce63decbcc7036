"""The decisions after a failed attempt and a failed placement, as plain functions over data."""

from __future__ import annotations

import pytest

from orchestratord.core.attempts import (
    Fail,
    Failover,
    after_failure,
    counts_against_replica,
    engine_error,
    placement_error,
)
from orchestratord.core.placement import DecisionLog, NoCapacity
from orchestratord.errors import (
    DecodeTimeout,
    Internal,
    InvalidParams,
    PoolUnavailable,
    PoolUnready,
    ReplicaExhausted,
    WorkerReset,
)
from worker_adapters.base import (
    AdapterError,
    EngineInternal,
    EngineRejected,
    EngineReset,
    EngineTimeout,
    EngineUnavailable,
)


def down() -> AdapterError:
    return EngineUnavailable("connection refused", engine="vllm")


def test_a_transient_failure_before_the_first_token_fails_over() -> None:
    assert after_failure(down(), tokens=0, attempt=0, max_attempts=3, pool_id="p") == Failover()
    assert after_failure(down(), tokens=0, attempt=1, max_attempts=3, pool_id="p") == Failover()


def test_the_last_attempt_ends_the_job_with_the_engines_error() -> None:
    step = after_failure(down(), tokens=0, attempt=2, max_attempts=3, pool_id="p")
    assert isinstance(step, Fail) and isinstance(step.error, PoolUnavailable)
    assert step.error.retriable and step.error.engine == "vllm" and step.error.pool_id == "p"
    assert step.error.message == "vllm: connection refused"


def test_after_the_first_token_there_is_no_failover_and_the_stream_break_is_a_worker_reset() -> None:
    step = after_failure(down(), tokens=4, attempt=0, max_attempts=3, pool_id="p")
    assert isinstance(step, Fail) and isinstance(step.error, WorkerReset) and step.error.retriable


def test_a_refused_request_never_fails_over_and_is_not_retriable() -> None:
    refused = EngineRejected("prompt too long", engine="llamacpp")
    step = after_failure(refused, tokens=0, attempt=0, max_attempts=3, pool_id="p")
    assert isinstance(step, Fail) and isinstance(step.error, InvalidParams)
    assert step.error.retriable is False


@pytest.mark.parametrize(
    ("failure", "before", "after"),
    [
        (EngineUnavailable("x", engine="e"), PoolUnavailable, WorkerReset),
        (EngineInternal("x", engine="e"), Internal, WorkerReset),
        (EngineTimeout("x", engine="e"), DecodeTimeout, DecodeTimeout),
        (EngineReset("x", engine="e"), WorkerReset, WorkerReset),
        (EngineRejected("x", engine="e"), InvalidParams, InvalidParams),
    ],
)
def test_engine_errors_map_to_domain_errors(failure: AdapterError, before: type, after: type) -> None:
    assert type(engine_error(failure, after_first_token=False, pool_id="p")) is before
    assert type(engine_error(failure, after_first_token=True, pool_id="p")) is after


def test_an_internal_engine_error_before_the_first_token_is_not_retriable_after_it_is() -> None:
    failure = EngineInternal("out of memory", engine="e")
    assert engine_error(failure, after_first_token=False, pool_id="p").retriable is False
    assert engine_error(failure, after_first_token=True, pool_id="p").retriable is True


def test_only_the_replicas_own_faults_count_against_it() -> None:
    assert counts_against_replica(down())
    assert counts_against_replica(EngineTimeout("slow", engine="e"))
    assert counts_against_replica(EngineReset("gone", engine="e"))
    assert counts_against_replica(EngineInternal("oom", engine="e"))
    assert not counts_against_replica(EngineRejected("bad request", engine="e"))


@pytest.mark.parametrize(
    ("kind", "error", "retriable"),
    [("invalid", InvalidParams, False), ("unready", PoolUnready, True), ("busy", ReplicaExhausted, True)],
)
def test_placement_failures_map_to_domain_errors(kind: str, error: type, retriable: bool) -> None:
    decision = NoCapacity(kind, "why", DecisionLog((), (), "", pinned=False, fallback=False))
    mapped = placement_error(decision)
    assert type(mapped) is error and mapped.retriable is retriable and mapped.message == "why"
