"""The tokens of the jobs this instance runs, written to Redis behind their runs, in batches.

A run hands over each token as the engine sends it and goes on reading the engine; the token waits
here while the previous batch of its job is on its way to Redis, and the next batch takes everything
that arrived meanwhile, in one script call (`append_tokens.lua`). When tokens come faster than a round
trip they share one; when they come slower, each goes on its own at once, as before.

What the run learns later: that the job no longer takes tokens (it was canceled or failed elsewhere,
or this instance lost its claim) comes with the next token after the batch that found it so; an
unreachable Redis comes the same way, as the `StateUnavailable` of that batch. Anything else written
to a job's log by this instance (`append`, `finish`) first waits until its tokens are written
(`settle`), so the log keeps the order in which the run produced its events.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from orchestratord.errors import StateUnavailable
from orchestratord.state.redis_client import Scripts

MAX_PENDING = 4096  # tokens of one job waiting for Redis; past that the run waits for its batch


@dataclass(slots=True)
class _Box:
    pending: list[str] = field(default_factory=list)  # (JSON text, text, logprobs JSON) per token
    flushing: asyncio.Task[None] | None = None
    closed: bool = False  # the job took no more tokens
    error: BaseException | None = None  # the last batch could not be written


class Outbox:
    def __init__(self, scripts: Scripts, owner: str) -> None:
        self._scripts = scripts
        self._owner = owner
        self._boxes: dict[str, _Box] = {}

    async def add(self, job_id: str, token_json: str, text: str, logprobs_json: str) -> bool:
        """Queue one token of `job_id`; False once the job is known to take no more (the box is then
        forgotten); raises the error of a batch that could not be written."""
        box = self._boxes.get(job_id)
        if box is None:
            box = self._boxes[job_id] = _Box()
        if box.error is not None:
            del self._boxes[job_id]
            raise box.error
        if box.closed:
            del self._boxes[job_id]
            return False
        box.pending += (token_json, text, logprobs_json)
        if box.flushing is None:
            box.flushing = asyncio.create_task(self._flush(job_id, box))
        elif len(box.pending) >= 3 * MAX_PENDING:
            await self.settle(job_id)
        return True

    async def _flush(self, job_id: str, box: _Box) -> None:
        """Write one batch: everything pending now; then hand what came meanwhile to the next task."""
        batch, box.pending = box.pending, []
        try:
            written = await self._scripts.run("append_tokens", job_id, self._owner, *batch)
        except (StateUnavailable, RedisError) as exc:  # handed to the run with its next token
            box.error = exc
            box.flushing = None
            return
        if int(written) == 0:
            box.closed = True
            box.pending.clear()
        box.flushing = asyncio.create_task(self._flush(job_id, box)) if box.pending else None

    async def settle(self, job_id: str) -> None:
        """Wait until the tokens of `job_id` handed over before this call are written (or refused):
        the batch on its way, then the one that takes what was pending (two batches at most, however
        fast the run goes on adding)."""
        box = self._boxes.get(job_id)
        for _ in range(2):
            flushing = None if box is None else box.flushing
            if flushing is None:
                return
            await asyncio.shield(flushing)

    def forget(self, job_id: str) -> None:
        self._boxes.pop(job_id, None)

    async def aclose(self) -> None:
        """Write what is still waiting (a stopping instance's last tokens)."""
        for job_id in list(self._boxes):
            await self.settle(job_id)
        self._boxes.clear()
