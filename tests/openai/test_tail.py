"""The OpenAI surfaces' reader of a job's log (`streaming.tail`): a batch a look, a run's batch split
into its events, counted in while it reads, and a log that cannot be read to its end ends with a
`StateUnavailable` in place of the terminal event (the surfaces answer it; none waits forever)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import Any

from orchestratord.api.openai.streaming import MOST_A_BATCH, tail
from orchestratord.core.tasks import RS, US, EventRun, LogEvent
from orchestratord.errors import StateUnavailable

TOKENS = [LogEvent(f"1-{i}", "token", f'{{"t":"{i}","i":{i}}}') for i in range(1, 4)]
RUN = EventRun("1-3", RS.join(US.join(event) for event in TOKENS))
END = LogEvent("1-4", "end", "{}")


class _Presence:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def attach(self, job_id: str) -> None:
        self.calls.append("attach")

    async def detach(self, job_id: str) -> None:
        self.calls.append("detach")


class _Store:
    def __init__(self, batches: list[Sequence[LogEvent | EventRun]]) -> None:
        self.batches = batches

    async def read_batches(self, job_id: str) -> AsyncIterator[Sequence[LogEvent | EventRun]]:
        for batch in self.batches:
            yield batch


async def _read(batches: list[Sequence[LogEvent | EventRun]]) -> tuple[list[list[Any]], list[str]]:
    services: Any = SimpleNamespace(store=_Store(batches), presence=_Presence())
    async with tail(services, "j1") as log:
        read = [batch async for batch in log]
    return read, services.presence.calls


def test_a_runs_batch_is_given_as_its_events_and_the_log_ends_at_its_terminal_event() -> None:
    started = LogEvent("1-0", "started", "{}")
    read, presence = asyncio.run(_read([[started], [RUN, END]]))
    assert read == [[started], [*TOKENS, END]]
    assert presence == ["attach", "detach"]


def test_a_log_that_ends_without_its_terminal_event_ends_with_state_unavailable() -> None:
    read, presence = asyncio.run(_read([[TOKENS[0]]]))
    assert read[0] == [TOKENS[0]]
    assert len(read) == 2 and len(read[1]) == 1 and isinstance(read[1][0], StateUnavailable)
    assert presence == ["attach", "detach"]


def test_a_long_batch_is_given_a_bounded_part_at_a_time() -> None:
    """A reader that catches up on a long log (a replay, or a client that took nothing for a while)
    renders at most `MOST_A_BATCH` events into one write."""
    many = [LogEvent(f"2-{i}", "token", f'{{"t":"x","i":{i}}}') for i in range(600)]
    read, _ = asyncio.run(_read([[*many, END]]))
    assert [len(batch) for batch in read] == [MOST_A_BATCH, MOST_A_BATCH, 601 - 2 * MOST_A_BATCH]
    assert [event for batch in read for event in batch] == [*many, END]
