"""The local log of a job a replica runs (orchestratord/state/redis_local.py), without Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import RedisError

from orchestratord.core.tasks import RS, US, LogEvent
from orchestratord.state.redis_local import LocalLog, LocalLogs


def local_logs(scripts: object, **options: Any) -> LocalLogs:
    """Local logs over a stand-in for the Redis scripts (its `run`), claims that never lapse."""
    return LocalLogs(
        scripts,  # type: ignore[arg-type]
        "me",
        claim_ttl_s=60.0,
        renewed=lambda: 0.0,
        lost=lambda job, event_id: LogEvent(event_id, "error", "{}"),
        **options,
    )


async def test_a_reader_that_read_ahead_in_redis_gets_nothing_twice_from_the_local_log() -> None:
    """A reader that read events from Redis before the batch's reply reached this instance (so they
    are not visible here yet) and then reads here, after the last of them, gets each event once."""
    events = [LogEvent(f"100-{i}", "token", f'{{"i":{i}}}') for i in range(5)]
    log = LocalLog("j1", events[:2], 100, 4, 5, 0.0, visible=2)
    for event in events[2:]:
        log.push(event, show=False)  # sent to Redis; its reply has not come back yet
    got: list[str] = []

    async def read() -> None:
        async for batch in log.read(after="100-3"):  # Redis gave it the events up to 100-3
            got.extend(event.id for event in batch)
            if "100-4" in got:
                return

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.01)
    assert got == []
    log.show(5)  # the reply: every event is visible here now
    await asyncio.wait_for(reader, 1)
    assert got == ["100-4"]


async def test_a_batch_redis_did_not_take_is_sent_again_as_it_was_and_what_came_meanwhile_after_it() -> None:
    """Redis away: the batch is held and sent again unchanged (its reply may have been lost after
    Redis wrote it, and `append_events` recognizes it by its last id); events added meanwhile go in
    the next batch, never merged into the held one."""
    calls: list[tuple[object, ...]] = []
    gate = asyncio.Event()

    class Scripts:
        async def run(self, name: str, *args: object) -> list[int]:
            calls.append(args)
            if len(calls) == 1:
                await gate.wait()
                raise RedisError("connection lost")
            return [1]

    logs = local_logs(Scripts(), wall=lambda: 200.0)
    logs.open("j1", [LogEvent("100-0", "started", "{}")])
    logs.token("j1", '"a"', "a", "")
    logs.token("j1", '"b"', "b", "")
    await asyncio.sleep(0)  # the first batch is on its way
    logs.token("j1", '"c"', "c", "")
    gate.set()
    await logs.settle("j1")
    first, again, after = ([arg for arg in call[1:]] for call in calls)
    assert len(calls) == 3 and again == first
    assert first[:3] == ["j1", 2, "200000-1"] and first[4] == "ab"
    assert [record.split(US)[0] for record in first[3].split(RS)] == ["200000-0", "200000-1"]
    assert after[:3] == ["j1", 3, "200000-2"] and after[3].split(US)[:2] == ["200000-2", "token"]
    local = logs.get("j1")
    assert local is not None and local.written == "200000-2" and local.sent == 4


async def test_a_token_says_when_redis_is_behind_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_PENDING events waiting for Redis, the run is told to wait for its batch; a job this
    instance does not run takes no token."""
    monkeypatch.setattr("orchestratord.state.redis_local.MAX_PENDING", 2)
    gate = asyncio.Event()

    class Scripts:
        async def run(self, name: str, *args: object) -> list[int]:
            await gate.wait()  # Redis is slow
            return [1]

    logs = local_logs(Scripts())
    logs.open("j1", [LogEvent("100-0", "started", "{}")])
    assert logs.token("j1", '"a"', "a", "") is False
    await asyncio.sleep(0)  # "a" is on its way; the next ones wait for it
    assert logs.token("j1", '"b"', "b", "") is False
    assert logs.token("j1", '"c"', "c", "") is True, "two events wait behind the batch on its way"
    assert logs.token("nobody", '"x"', "x", "") is None
    gate.set()
    await logs.settle("j1")
    assert logs.token("j1", '"d"', "d", "") is False
    gate.set()
    await logs.settle("j1")
