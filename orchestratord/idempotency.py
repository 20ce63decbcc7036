"""Idempotency-Key: a retried `POST /v1/tasks` never creates a second job.

The first request with a key claims it in the state store (atomically, so two concurrent retries cannot
both win) before admission, naming the job it is about to create. A later request with the same key
and the same body gets that job back (202, same `job_id`); with a different body, 409 CONFLICT. If the
first request's admission is refused, the claim is dropped so a retry can try again. Keys belong to a
tenant and live for the window (at most as long as finished jobs are kept, so a key never outlives
the job it names).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson

from orchestratord.admission import Admission, AdmissionResult
from orchestratord.core.queue import Place
from orchestratord.core.tasks import TaskSpec
from orchestratord.errors import Conflict, IdempotencyInProgress
from orchestratord.logs import get_logger
from orchestratord.outlook import Outlook
from orchestratord.state.base import IdempotencyKeys, IdempotencyRecord, JobQueue, JobRegistry

log = get_logger(__name__)
IN_PROGRESS_RETRY_MS = 200


def fingerprint(body: Mapping[str, Any]) -> str:
    """A digest of the request body that ignores key order and whitespace."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class _Store(IdempotencyKeys, JobRegistry, JobQueue, Protocol):
    """The roles idempotency uses."""


class Idempotency:
    def __init__(self, store: _Store, admission: Admission, outlook: Outlook, *, window_s: float) -> None:
        self._store = store
        self._admission = admission
        self._outlook = outlook
        self._window = window_s

    async def admit(self, spec: TaskSpec, key: str | None, body: Callable[[], str]) -> AdmissionResult:
        """Admit `spec`, or, for a key seen before, answer with the job the key already created.
        `body()` is the request's fingerprint, computed only when there is a key to compare it with."""
        # A request refused from a full queue may hold the place its Retry-After points at, named
        # by its Idempotency-Key (a client that retries sends the same one; the OpenAI SDKs do).
        ticket = None if key is None else (lambda: f"{spec.tenant}\x1f{key}")
        if key is None or self._window <= 0:
            return await self._admission.admit(spec, ticket)
        body_fingerprint = body()
        first = await self._store.remember_idempotency(
            key, spec.tenant, body_fingerprint, spec.job_id, self._window
        )
        if first is not None:
            return await self._replay(key, first, body_fingerprint)
        try:
            return await self._admission.admit(spec, ticket)
        except BaseException:
            if await self._store.get(spec.job_id) is None:
                await self._store.forget_idempotency(key, spec.tenant, spec.job_id)
            raise

    async def release(self, key: str, tenant: str, job_id: str) -> None:
        """Drop `key`'s claim on `job_id` (a job taken back after its admission: the request failed as
        a whole), so that a retry with the key admits anew."""
        await self._store.forget_idempotency(key, tenant, job_id)

    async def _replay(self, key: str, first: IdempotencyRecord, body_fingerprint: str) -> AdmissionResult:
        if first.fingerprint != body_fingerprint:
            raise Conflict(
                f"Idempotency-Key {key!r} was already used with a different request body "
                f"(job {first.job_id}); send a new key for a new request"
            )
        record = await self._store.get(first.job_id)
        if record is None:
            raise IdempotencyInProgress(
                f"the first request with Idempotency-Key {key!r} is still being admitted; retry",
                retry_after_ms=IN_PROGRESS_RETRY_MS,
            )
        log.info("task_replayed", job_id=first.job_id, state=record.state.value)
        return await self._current(first.job_id)

    async def _current(self, job_id: str) -> AdmissionResult:
        """The admission answer as it stands now: the job's place in the queue, or 0 once it left it."""
        for entry in await self._store.queued():
            if entry.job_id == job_id:
                place = await self._store.place(job_id) or Place(0)
                predicted = self._outlook.predict(entry.route, place)
                backoff = self._outlook.backoff(entry.route, predicted, entry.tokens_in)
                return AdmissionResult(job_id, place.ahead, predicted, backoff)
        return AdmissionResult(job_id, 0, 0, 0)
