"""The decisions after a job's attempt on a replica failed, or after placement found no slot for it.

Pure functions over data: what the adapter reported, how far the job got, how many attempts it had.
They say whether the job fails over to another replica or ends, with which domain error, and whether
the failure counts against the replica's circuit breaker. The dispatcher acts on them.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestratord.core.placement import NoCapacity
from orchestratord.errors import (
    DecodeTimeout,
    ErrorKind,
    Internal,
    InvalidParams,
    OrchestratorError,
    PoolUnavailable,
    PoolUnready,
    ReplicaExhausted,
    WorkerReset,
)
from worker_adapters.base import AdapterError

_BY_CODE: dict[str, type[OrchestratorError]] = {
    ErrorKind.POOL_UNAVAILABLE: PoolUnavailable,
    ErrorKind.INVALID_PARAMS: InvalidParams,
    ErrorKind.DECODE_TIMEOUT: DecodeTimeout,
    ErrorKind.WORKER_RESET: WorkerReset,
    ErrorKind.INTERNAL: Internal,
}
# Engine failures that say something about the replica's health and count toward its circuit breaker;
# the others (INVALID_PARAMS: the request itself was refused) are the client's.
_REPLICA_FAULTS = frozenset(
    {ErrorKind.POOL_UNAVAILABLE, ErrorKind.WORKER_RESET, ErrorKind.DECODE_TIMEOUT, ErrorKind.INTERNAL}
)


@dataclass(frozen=True, slots=True)
class Failover:
    """Try the job on another replica: nothing reached the client yet and the failure is transient."""


@dataclass(frozen=True, slots=True)
class Fail:
    """End the job with `error`."""

    error: OrchestratorError


def after_failure(
    failure: AdapterError, *, tokens: int, attempt: int, max_attempts: int, pool_id: str
) -> Failover | Fail:
    """What follows a failed attempt (`attempt` counts from 0). After the first token, or for a failure
    another replica would not change, or once the attempts are spent, the job ends."""
    if tokens == 0 and failure.retriable and attempt + 1 < max_attempts:
        return Failover()
    return Fail(engine_error(failure, after_first_token=tokens > 0, pool_id=pool_id))


def engine_error(failure: AdapterError, *, after_first_token: bool, pool_id: str) -> OrchestratorError:
    """The job's error for an engine failure. After the first token a broken stream (the engine went
    away, or failed inside) is a WORKER_RESET: the client has part of an answer and should retry it."""
    kind = _BY_CODE.get(failure.code, Internal)
    if after_first_token and kind in (PoolUnavailable, Internal):
        kind = WorkerReset
    return kind(
        f"{failure.engine}: {failure.message}",
        engine=failure.engine,
        pool_id=pool_id,
        retriable=failure.retriable or kind is WorkerReset,
    )


def counts_against_replica(failure: AdapterError) -> bool:
    return failure.code in _REPLICA_FAULTS


def placement_error(decision: NoCapacity) -> OrchestratorError:
    """A job taken from the queue that placement cannot place: a pool not ready, constraints no pool
    meets (not retriable), or every replica busy."""
    if decision.kind == "invalid":
        return InvalidParams(decision.message)
    if decision.kind == "unready":
        return PoolUnready(decision.message)
    return ReplicaExhausted(decision.message)
