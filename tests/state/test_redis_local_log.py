"""The local log of a job a replica runs (orchestratord/state/redis_local.py), without Redis."""

from __future__ import annotations

import asyncio

from orchestratord.core.tasks import LogEvent
from orchestratord.state.redis_local import LocalLog


async def test_a_reader_that_read_ahead_in_redis_gets_nothing_twice_from_the_local_log() -> None:
    """A reader that read events from Redis before the batch's reply reached this instance (so they
    are not visible here yet) and then reads here, after the last of them, gets each event once."""
    events = [LogEvent(f"100-{i}", "token", f'{{"i":{i}}}') for i in range(5)]
    log = LocalLog("j1", events[:2], 100, 4, 5, 0.0, visible=2)
    for event in events[2:]:
        log.push(event, show=False)  # sent to Redis; its reply has not come back yet
    got: list[str] = []

    async def read() -> None:
        async for event in log.read(after="100-3"):  # Redis gave it the events up to 100-3
            got.append(event.id)
            if event.id == "100-4":
                return

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.01)
    assert got == []
    log.show(5)  # the reply: every event is visible here now
    await asyncio.wait_for(reader, 1)
    assert got == ["100-4"]
