"""Reader presence: cancel a `cancel_on_disconnect` job nobody is reading, after a grace period.

A client that dies between POST and GET must not burn a GPU: a job no reader attaches to within
`attach_timeout_s` is canceled. When the last reader leaves, the job is canceled unless a reader comes
back within `grace_s` (so a reconnect with Last-Event-ID loses nothing).

Alone, the timers are this process's. With shared state (`shared`) they are the deployment's: the
store records when each such job became unread (admitted, or its last reader left, on any replica)
and every replica's housekeeping `sweep`s, canceling the jobs whose time ran out, so a job outlives
neither the replica that admitted it nor the one its readers read through (a dead replica's readers
are counted out once its heartbeat expires).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Protocol

from orchestratord.errors import NotFound, StateUnavailable
from orchestratord.jobs import JobControl
from orchestratord.logs import get_logger
from orchestratord.state.base import JobRegistry, Readers
from orchestratord.state.shared import SharedState

log = get_logger(__name__)


class _Store(Readers, JobRegistry, Protocol):
    """The roles presence uses: who reads a job, and its record."""


class Presence:
    def __init__(
        self,
        store: _Store,
        jobs: JobControl,
        *,
        attach_timeout_s: float,
        grace_s: float,
        shared: SharedState | None = None,
    ) -> None:
        self._store = store
        self._shared = shared
        self._jobs = jobs
        self._attach_timeout = attach_timeout_s
        self._grace = grace_s
        # One timer handle per pending check, a task only once it is due: a sleeping task per job
        # (a coroutine frame and a task, about 1 KB) would outlive most jobs by attach_timeout_s.
        self._timers: set[asyncio.TimerHandle] = set()
        self._checks: set[asyncio.Task[None]] = set()

    def admitted(self, job_id: str) -> None:
        # A shared store records an unread `cancel_on_disconnect` job with its creation (in the same
        # step), and any replica's housekeeping cancels it when due (`SharedState.abandoned`).
        if self._shared is None:
            self._later(self._attach_timeout, job_id, require_attached=True)

    async def attach(self, job_id: str) -> None:
        await self._store.attach(job_id)

    async def detach(self, job_id: str) -> None:
        """Count a reader out. Runs shielded after the reader is gone, so it never raises: with the
        state backend unreachable the reader stays counted and the job is not canceled for it."""
        try:
            if self._shared is not None:  # the shared store records the job as unread, if it now is
                await self._shared.leave(job_id, self._grace)
                return
            readers = await self._store.detach(job_id)
        except StateUnavailable:
            log.warning("presence_detach_lost", job_id=job_id, reason="state backend unreachable")
            return
        if readers == 0:
            self._later(self._grace, job_id, require_attached=False)

    def _later(self, delay: float, job_id: str, *, require_attached: bool) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def due() -> None:
            self._timers.discard(handle)
            if not self._timers:
                self._timers.clear()  # an empty set keeps the table a burst grew; clear() frees it
            self._spawn(self._check(job_id, require_attached))

        handle = loop.call_later(delay, due)
        self._timers.add(handle)

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def sweep(self) -> None:
        """With shared state, on every housekeeping tick of every replica: cancel the jobs nobody read
        for their time (each is handed to one replica), after counting out dead replicas' readers."""
        if self._shared is None:
            return
        for job in await self._shared.abandoned(self._grace):
            reason = "client_disconnect" if job.attached else "no_reader"
            log.info("task_abandoned", job_id=job.job_id, reason=reason)
            try:
                await self._jobs.cancel(job.job_id, None, reason=reason)
            except NotFound:  # purged meanwhile
                continue

    async def _check(self, job_id: str, require_attached: bool) -> None:
        try:
            record = await self._store.get(job_id)
        except StateUnavailable:
            log.warning("presence_check_skipped", job_id=job_id, reason="state backend unreachable")
            return
        if record is None or record.state.terminal or not record.cancel_on_disconnect:
            return
        if record.readers > 0 or (require_attached and record.attached):
            return
        reason = "no_reader" if require_attached else "client_disconnect"
        log.info("task_abandoned", job_id=job_id, reason=reason)
        await self._jobs.cancel(job_id, None, reason=reason)

    async def aclose(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for task in list(self._checks):
            task.cancel()
        await asyncio.gather(*self._checks, return_exceptions=True)
