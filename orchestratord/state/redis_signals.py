"""Notifications between orchestrator replicas over Redis pub/sub: cancel requests (a job id, for
whichever replica runs it), wake-ups (work may be taken: a job was queued, or a slot or a tenant's
concurrency came free, which is marked FREED), operators' pool changes (drain, undrain, reload), and,
on each instance's own channel, word that a job it admitted to run itself was taken or ended elsewhere
(take.lua, common.lua `finish_job`). One subscription per instance; it reconnects by itself after
Redis returns, and then wakes the dispatcher, reads the recorded pool changes and lets go of every
reader waiting for a local run (`elsewhere(None)`), in case something was missed while it was gone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from redis.exceptions import RedisError

from orchestratord.logs import get_logger
from orchestratord.state.redis_client import UNREACHABLE, Client, stop, stopping, subscriber

log = get_logger(__name__)
_POLL_S = 1.0
FREED = "freed:"  # a wake-up that only says a slot or a tenant's turn came free (lua/common.lua)
_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)


class Signals:
    def __init__(
        self, client: Client, prefix: str, owner: str, elsewhere: Callable[[str | None], None]
    ) -> None:
        self._client = client
        self.cancel_channel = f"{prefix}cancel"
        self.wake_channel = f"{prefix}wake"
        self.pools_channel = f"{prefix}pools"
        self.elsewhere_channel = f"{prefix}elsewhere:{owner}"  # lua/common.lua `elsewhere`
        self._elsewhere = elsewhere
        self._listened = False  # subscribed before (a subscription now is a return)
        self._cancels: asyncio.Queue[str] = asyncio.Queue()
        # a pool change as published, or None: (re)subscribed, read the recorded state again
        self._pool_changes: asyncio.Queue[str | None] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._work = False  # a wake-up since the last yield said more than FREED
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen())

    async def cancels(self) -> AsyncIterator[str]:
        self.start()
        while True:
            yield await self._cancels.get()

    async def pool_changes(self) -> AsyncIterator[str | None]:
        self.start()
        while True:
            yield await self._pool_changes.get()

    async def wakes(self) -> AsyncIterator[bool]:
        """One item for the wake-ups since the last: True if any may bring work (a job queued or queued
        again, a reconnect), False if each only said that a slot or a tenant's turn came free."""
        self.start()
        while True:
            await self._wake.wait()
            self._wake.clear()
            work, self._work = self._work, False
            yield work

    async def _listen(self) -> None:
        failures = 0
        while not stopping():
            pubsub: Any = None
            try:
                pubsub = await subscriber(self._client)
                await pubsub.subscribe(
                    self.cancel_channel, self.wake_channel, self.pools_channel, self.elsewhere_channel
                )
                if failures:
                    log.info("state_backend_reconnected", channel="signals")
                failures = 0
                self._work = True
                self._wake.set()
                self._pool_changes.put_nowait(None)
                if self._listened:  # again: words for this instance may have been lost meanwhile
                    self._elsewhere(None)
                self._listened = True
                await self._relay(pubsub)
            except (*UNREACHABLE, RedisError) as exc:  # task root: resubscribe, never stop listening
                if stopping():
                    return
                if failures == 0:
                    log.warning("state_backend_unreachable", channel="signals", error=type(exc).__name__)
                await asyncio.sleep(_BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)])
                failures += 1
            finally:
                if pubsub is not None:
                    with contextlib.suppress(*UNREACHABLE):
                        await pubsub.aclose()

    async def _relay(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL_S)
            if message is None:
                continue
            if message["channel"] == self.cancel_channel:
                self._cancels.put_nowait(str(message["data"]))
            elif message["channel"] == self.pools_channel:
                self._pool_changes.put_nowait(str(message["data"]))
            elif message["channel"] == self.elsewhere_channel:
                self._elsewhere(str(message["data"]))
            else:
                if not str(message["data"]).startswith(FREED):
                    self._work = True
                self._wake.set()

    async def aclose(self) -> None:
        if self._task is not None:
            await stop(self._task)
            self._task = None
