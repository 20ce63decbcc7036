"""A long backlog on free slots: the dispatcher starts jobs for a tick at a time and runs housekeeping
between (deadlines, queue timeouts, positions, cancel-on-disconnect must not wait for the backlog to
clear), and measures its pace, which predictions then count."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import httpx

from tests.api.helpers import engine_started, post
from tests.conftest import mock_pool
from tests.fakes.servers import LoopbackServer

JOBS = 800


def test_housekeeping_runs_while_a_backlog_is_dispatched_and_the_pace_is_measured(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(pools=[mock_pool(slots=JOBS)], queue={"capacity": JOBS})
    services = server.app.state.services
    dispatcher = services.dispatcher
    dispatcher._config = dataclasses.replace(dispatcher._config, tick_s=0.01)  # the backlog outlasts ticks
    seen: list[int] = []  # how many jobs were queued at each housekeeping pass
    run_once = dispatcher._housekeeper.run_once

    async def counted() -> None:
        seen.append(len(await services.store.queued()))
        await run_once()

    dispatcher._housekeeper.run_once = counted
    round_lock = dispatcher._placer.exclusive()
    server.call(round_lock.acquire())  # the dispatch rounds wait here while the backlog builds
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for _ in range(JOBS):
            assert post(client, max_tokens=1).status_code == 202

        async def release() -> None:
            seen.clear()  # the passes from here on: the backlog is dispatched
            round_lock.release()

        server.call(release())
        until = time.monotonic() + 60
        while engine_started(server) < JOBS and time.monotonic() < until:
            time.sleep(0.05)
    assert engine_started(server) == JOBS
    during = [n for n in seen if 0 < n < JOBS]
    assert during, f"no housekeeping pass while the backlog was dispatched: {seen}"
    pace = services.outlook.dispatch_per_s()
    assert pace is not None and pace > 0
