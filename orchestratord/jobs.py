"""Job control: reading a job's status, canceling it (race-free), and the operators' job list.

A tenant reads and cancels its own jobs only; an admin (`owner=None`) any tenant's."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from orchestratord.core.tasks import JobState, issued_at
from orchestratord.endings import Endings
from orchestratord.errors import InvalidParams, NotFound, StateLost
from orchestratord.outlook import Outlook
from orchestratord.state.base import JobQueue, JobRecord, JobRegistry, Readers

MAX_PAGE = 1000


class JobStore(JobRegistry, JobQueue, Readers, Protocol):
    """The roles job control uses."""


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs a listing shows: every field set must match (`states` empty: every state)."""

    states: frozenset[JobState] = frozenset()
    tenant: str | None = None
    pool_id: str | None = None
    model_ref: str | None = None

    def matches(self, record: JobRecord) -> bool:
        return (
            (self.tenant is None or record.tenant == self.tenant)
            and (self.pool_id is None or record.pool_id == self.pool_id)
            and (self.model_ref is None or record.model_ref == self.model_ref)
        )


@dataclass(frozen=True, slots=True)
class ListedJob:
    record: JobRecord
    queue_position: int | None  # jobs ahead of it, while queued
    predicted_start_ms: int | None  # while queued, when there is a prediction


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[ListedJob]
    next_cursor: str | None  # pass it back for the next page; None on the last


class JobControl:
    def __init__(self, store: JobStore, endings: Endings, outlook: Outlook) -> None:
        self._store = store
        self._endings = endings
        self._outlook = outlook

    async def get(self, job_id: str, owner: str | None) -> JobRecord:
        """The job, if it exists and `owner` may see it; NotFound otherwise (ids leak nothing)."""
        record = await self._store.get(job_id)
        if record is None:
            await self._gone(job_id)
        if record is None or (owner is not None and record.tenant != owner):
            raise _not_found(job_id)
        return record

    async def open(self, job_id: str, owner: str | None) -> JobRecord:
        """As `get`, for a reader opening the job's stream, with the reader counted in
        (`Presence.detach` counts it out); its record comes without the text."""
        record = await self._store.open(job_id, owner)
        if record is None:
            await self._gone(job_id)
            raise _not_found(job_id)
        return record

    async def _gone(self, job_id: str) -> None:
        """StateLost for a job issued before the state backend lost its data (it existed; it is gone)."""
        lost, issued = await self._store.lost_since(), issued_at(job_id)
        if lost is not None and issued is not None and issued < lost:
            when = datetime.fromtimestamp(lost, UTC).isoformat(timespec="seconds")
            raise StateLost(
                f"job {job_id!r} is gone: the state backend (Redis) lost its data at {when}, after this "
                "job was submitted (restarted empty or flushed); submit it again"
            )

    async def cancel(self, job_id: str, owner: str | None, reason: str = "client") -> bool:
        """End the job as canceled (`Endings.cancel`). Idempotent: False when it had already ended.

        The terminal `end` event is written in the same step as the state change, so after this
        returns no `token` can follow; the run sees the refused append and closes the engine request.
        """
        record = await self.get(job_id, owner)
        if record.state.terminal:
            return False
        return await self._endings.cancel(job_id, reason, record)

    async def delete(self, job_id: str, owner: str | None) -> None:
        """Cancel the job if it is still live, then forget it at once (its record, text and log), on
        every replica: it is then unknown (NotFound), as one past its retention is."""
        await self.cancel(job_id, owner)
        await self._store.forget(job_id)

    async def listing(self, where: JobFilter, *, limit: int, cursor: str | None = None) -> JobPage:
        """One page of the jobs that match, newest first (by creation, then id), across every
        orchestrator replica sharing the state. Queued jobs come with their position and predicted
        start. `cursor` is the previous page's `next_cursor`."""
        after = _decode(cursor) if cursor is not None else None
        states = where.states or frozenset(JobState)
        found = sorted(
            (r for r in await self._store.jobs(states) if where.matches(r)),
            key=lambda r: (-r.created_at, r.job_id),
        )
        if after is not None:
            found = [r for r in found if (-r.created_at, r.job_id) > after]
        page, more = found[:limit], len(found) > limit
        listed = await self._outlooks(page)
        last = page[-1] if more else None
        return JobPage(listed, None if last is None else _encode(last.created_at, last.job_id))

    async def _outlooks(self, records: Collection[JobRecord]) -> list[ListedJob]:
        queued = [r.job_id for r in records if r.state is JobState.QUEUED]
        if not queued:
            return [ListedJob(r, None, None) for r in records]
        routes = {e.job_id: e.route for e in await self._store.queued()}
        places = await self._store.places()
        out: list[ListedJob] = []
        for record in records:
            place = places.get(record.job_id)
            route = routes.get(record.job_id)
            predicted = None if place is None or route is None else self._outlook.predict(route, place)
            out.append(ListedJob(record, None if place is None else place.ahead, predicted))
        return out


def _encode(created_at: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r} {job_id}".encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[float, str]:
    try:
        created, job_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split(" ")
        return -float(created), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidParams(
            f"cursor {cursor!r} is not one this list gave; pass a page's next_cursor unchanged"
        ) from None


def _not_found(job_id: str) -> NotFound:
    """What a caller who may not see the job, or asks for one that is gone, is told (ids leak nothing)."""
    return NotFound(f"no job {job_id!r}: it never existed, belongs to someone else, or has expired")
