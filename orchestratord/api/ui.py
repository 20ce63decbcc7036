"""/ui: the live queue page, and /ui/events: the snapshots it draws, as Server-Sent Events.

Read-only. Each snapshot is built from what `GET /v1/pools` and `GET /v1/tasks` answer (this replica's
view of the pools; the jobs from the state every replica shares), plus each tenant's slot-time in the
last `ui.window_s` against its weight. One snapshot per `ui.interval_s` is built however many pages
are open. Served when `Settings.ui_enabled` (loopback, or behind API keys and then to admin keys: the
page loads without a key and asks for one; its data needs it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from importlib import resources
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from orchestratord.api.deps import get_services
from orchestratord.api.pools import pool_list
from orchestratord.api.responses import errors_for
from orchestratord.api.sse import EventStream, frame
from orchestratord.api.task_list import summary
from orchestratord.core.shares import Held, buckets, entitled
from orchestratord.core.tasks import JobState
from orchestratord.errors import NotFound, StateUnavailable
from orchestratord.jobs import MAX_PAGE, JobFilter
from orchestratord.services import Services

router = APIRouter(tags=["ui"])  # the data: admin keys when keys are on
page_router = APIRouter(tags=["ui"])  # the page itself holds no data: no key needed to load it
ServicesDep = Annotated[Services, Depends(get_services)]
BUCKETS = 10  # the fair-share chart's bars
LIVE = frozenset({JobState.QUEUED, JobState.RUNNING})
ENDED = frozenset(s for s in JobState if s.terminal)
OFF_BY_DEFAULT = (
    "the queue page is off: this server listens on a non-loopback address without API keys; "
    "configure auth.keys (the page is then for admin keys) or set ui.enabled: true"
)
OFF_BY_SETTING = "the queue page is off: ui.enabled is false in this server's configuration"


def _enabled(services: Services) -> None:
    if not services.settings.ui_enabled:
        raise NotFound(OFF_BY_SETTING if services.settings.ui.enabled is False else OFF_BY_DEFAULT)


@page_router.get(
    "/ui",
    response_class=Response,  # declared below: the page is HTML, its errors the JSON envelope
    responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}, **errors_for(404)},
    operation_id="queuePage",
)
async def queue_page(services: ServicesDep) -> HTMLResponse:
    _enabled(services)
    page = resources.files("orchestratord.ui").joinpath("index.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


@router.get(
    "/ui/events",
    response_class=EventStream,
    responses={200: {"content": {"text/event-stream": {}}}, **errors_for(404)},
    operation_id="queuePageEvents",
)
async def queue_page_events(request: Request, services: ServicesDep) -> EventStream:
    _enabled(services)
    feed: Feed | None = getattr(request.app.state, "ui_feed", None)
    if feed is None:
        feed = request.app.state.ui_feed = Feed(services)
    return EventStream(
        _frames(feed, services),
        keepalive_s=services.settings.stream.keepalive_s,
        send_timeout_s=services.settings.stream.send_timeout_s,
        streams=services.streams,
    )


async def _frames(feed: Feed, services: Services) -> AsyncIterator[bytes]:
    interval = services.settings.ui.interval_s
    while not services.shutdown.is_set():
        try:
            yield frame("snapshot", (await feed.frame()).decode())
        except StateUnavailable as exc:
            yield frame("unavailable", orjson.dumps({"message": exc.message}).decode())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(services.shutdown.wait(), interval)


class Feed:
    """The latest snapshot, rebuilt at most once per interval for all the pages that read it, and the
    slot-time of the jobs that ended within the window, read incrementally: each rebuild reads only
    the jobs that ended since the last one."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._lock = asyncio.Lock()
        self._built_at = float("-inf")
        self._frame = b""
        self._ended: deque[Held] = deque()  # in the order they were read
        self._read_until: float | None = None  # wall clock: ended jobs up to here are in `_ended`

    async def frame(self) -> bytes:
        async with self._lock:
            if time.monotonic() - self._built_at >= self._services.settings.ui.interval_s * 0.9:
                self._frame = orjson.dumps(await self._snapshot())
                self._built_at = time.monotonic()
            return self._frame

    async def _snapshot(self) -> dict[str, Any]:
        now = time.time()
        window = self._services.settings.ui.window_s
        since = now - window if self._read_until is None else max(self._read_until, now - window)
        ended = await self._services.store.jobs(ENDED, ended_after=since)
        self._ended.extend(Held(r.tenant, r.started_at, r.finished_at or now) for r in ended if r.started_at)
        self._read_until = max([since, *(r.finished_at or 0.0 for r in ended)])
        while self._ended and self._ended[0].end < now - window:
            self._ended.popleft()
        return await snapshot(self._services, now, self._ended)


async def snapshot(services: Services, now: float, ended: Iterable[Held]) -> dict[str, Any]:
    """What the page shows at `now`; `ended` is the slot-time of the jobs that ended in the window."""
    window = services.settings.ui.window_s
    pools = await pool_list(services)
    live = await services.jobs.listing(JobFilter(LIVE), limit=MAX_PAGE)
    queued, running = [], []
    for job in reversed(live.jobs):  # oldest first
        r = job.record
        item = summary(job).model_dump()
        if r.state is JobState.RUNNING and r.started_at is not None:
            took = max(now - r.started_at, 1e-3)
            running.append(
                {**item, "in_state_s": round(took, 1), "tokens_per_s": round(r.tokens_out / took, 1)}
            )
        else:
            queued.append({**item, "in_state_s": round(now - r.created_at, 1)})
    queued.sort(key=lambda q: (q["queue_position"] is None, q["queue_position"] or 0))
    held = [
        *ended,
        *(Held(j.record.tenant, j.record.started_at, now) for j in live.jobs if j.record.started_at),
    ]
    weights = {t.id: t.weight for t in services.settings.tenants}
    bars = buckets(held, now=now, window_s=window, count=BUCKETS)
    tenants = sorted({h.tenant for h in held} | {q["tenant"] for q in queued})
    fair = entitled(tenants, lambda t: weights.get(t, 1.0))
    served = {t: sum(b.slot_s.get(t, 0.0) for b in bars) for t in tenants}
    total = sum(served.values())
    return {
        "at": now,
        "interval_s": services.settings.ui.interval_s,
        "pools": pools.model_dump()["pools"],
        "queued": queued,
        "running": running,
        "more": live.next_cursor is not None,  # more than MAX_PAGE live jobs: the lists are the newest
        "shares": {
            "window_s": window,
            "tenants": [
                {
                    "tenant": t,
                    "weight": weights.get(t, 1.0),
                    "entitled": round(fair[t], 4),
                    "share": round(served[t] / total, 4) if total > 0 else 0.0,
                    "slot_s": round(served[t], 2),
                }
                for t in tenants
            ],
            "buckets": [
                {"start": b.start, "slot_s": {t: round(s, 2) for t, s in sorted(b.slot_s.items())}}
                for b in bars
            ],
        },
    }
