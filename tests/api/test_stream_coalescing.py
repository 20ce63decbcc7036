"""Joining loses, duplicates and reorders nothing: whatever the batches the log gives and the pace of
the log and of the reader, the bytes written are exactly the events' frames, in order.

`frames` reads the log in the response's own task: each batch the log gives (everything it holds
past the last look) leaves as one write, split only past `WRITE_BYTES`. Hypothesis drives how the log
batches its events, both paces and the write bound, and parses the bytes back as an SSE client would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestratord.api.stream import encode, frames, joined
from orchestratord.core.queue import QueueEntry, QueuePolicy
from orchestratord.core.route import Route
from orchestratord.core.tasks import JobState, LogEvent
from orchestratord.state.base import JobRecord
from orchestratord.state.memory import MemoryStore

# Any text but CR, which SSE cannot carry (a client reads it as a line break).
characters = st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\r")
texts = st.text(characters, max_size=40)
payloads = st.one_of(
    texts.map(lambda t: orjson.dumps({"t": t}).decode()),  # one line, as the log's JSON is
    st.lists(texts, min_size=2, max_size=3).map("\n".join),  # line breaks: several data lines
)
events = st.lists(st.tuples(st.sampled_from(("token", "metrics")), payloads), max_size=120)
paces = st.lists(st.integers(0, 3), min_size=1, max_size=16)  # yields to the loop between steps
cuts = st.lists(st.integers(1, 30), min_size=1, max_size=16)  # batch sizes, cycled


def parse(stream: bytes) -> list[tuple[str, str, str]]:
    """(id, event, data) of each SSE frame, the data lines joined with a line break."""
    out = []
    for frame in stream.decode("utf-8").split("\n\n")[:-1]:
        fields: dict[str, list[str]] = {}
        for line in frame.split("\n"):
            name, _, value = line.partition(": ")
            fields.setdefault(name, []).append(value)
        out.append((fields["id"][0], fields["event"][0], "\n".join(fields["data"])))
    return out


async def pause(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class _Presence:
    async def attach(self, job_id: str) -> None:
        pass

    async def detach(self, job_id: str) -> None:
        pass


class _Batches:
    """A log that gives `batches`, pausing between them as `pace` says."""

    def __init__(self, batches: list[list[LogEvent]], pace: list[int]) -> None:
        self.batches, self.pace = batches, pace

    async def read_batches(self, job_id: str, after: str | None) -> AsyncIterator[Sequence[LogEvent]]:
        for i, batch in enumerate(self.batches):
            yield batch
            await pause(self.pace[i % len(self.pace)])


def _in_batches(written: list[LogEvent], sizes: list[int]) -> list[list[LogEvent]]:
    batches, i = [], 0
    while i < len(written):
        size = sizes[len(batches) % len(sizes)]
        batches.append(written[i : i + size])
        i += size
    return batches


@settings(max_examples=300, deadline=None)
@given(log=events, sizes=cuts, log_pace=paces, reader_pace=paces)
def test_every_event_is_written_once_and_in_order_a_write_a_batch(
    log: list[tuple[str, str]], sizes: list[int], log_pace: list[int], reader_pace: list[int]
) -> None:
    written = [LogEvent(f"{1000 + i}-{i % 7}", name, data) for i, (name, data) in enumerate(log)]
    written.append(LogEvent(f"{2000 + len(log)}-0", "end", '{"tokens_out":0}'))
    batches = _in_batches(written, sizes)
    services: Any = SimpleNamespace(store=_Batches(batches, log_pace), presence=_Presence())

    async def read() -> list[bytes]:
        chunks = []
        async for chunk in frames(services, "j1", None):
            chunks.append(chunk)
            await pause(reader_pace[len(chunks) % len(reader_pace)])
        return chunks

    chunks = asyncio.run(read())
    assert parse(b"".join(chunks)) == [(e.id, e.name, e.data) for e in written]
    assert [parse(chunk) for chunk in chunks] == [[(e.id, e.name, e.data) for e in b] for b in batches]


@settings(max_examples=200, deadline=None)
@given(log=events, bound=st.sampled_from((1, 50, 400, 64 * 1024)))
def test_a_batch_is_split_into_writes_of_the_bound_and_no_more_than_a_frame_over(
    log: list[tuple[str, str]], bound: int
) -> None:
    batch = [LogEvent(str(i), name, data) for i, (name, data) in enumerate(log)]
    chunks = list(joined(batch, bound))
    assert b"".join(chunks) == b"".join(encode(event) for event in batch)
    longest = max((len(encode(event)) for event in batch), default=0)
    assert all(len(chunk) < bound + longest for chunk in chunks)
    assert all(len(chunk) >= bound for chunk in chunks[:-1])  # only the last write is short


async def _store() -> MemoryStore:
    store = MemoryStore(QueuePolicy(capacity=4))
    record = JobRecord("job", "t", "mock", "interactive", JobState.QUEUED, 0.0, "{}")
    await store.create(record, QueueEntry("job", "t", "interactive", Route("mock")))
    await store.append("job", "started", {"pool_id": "p", "engine": "mock"})
    return store


def test_a_burst_already_in_the_log_leaves_in_one_write() -> None:
    """The properties above would hold if the log gave one event at a time; this shows that the
    store's log gives a burst as one batch, to a reader from the start and to one waiting for more."""

    async def read() -> tuple[bytes, bytes, bytes]:
        store = await _store()
        services: Any = SimpleNamespace(store=store, presence=_Presence())
        for _ in range(50):
            assert await store.append_token("job", "x")
        stream = frames(services, "job", None)
        first = await anext(stream)  # `started` and the 50 tokens, all in the log before it looked
        waiting = asyncio.ensure_future(anext(stream))
        await pause(3)  # the reader now waits for more
        for _ in range(30):
            assert await store.append_token("job", "y")  # one engine read's tokens: no pause
        second = await waiting
        await store.finish("job", JobState.SUCCEEDED, "end", {"stop_reason": "eos"})
        third = await anext(stream)
        await stream.aclose()
        return first, second, third

    first, second, third = asyncio.run(read())
    assert [name for _, name, _ in parse(first)] == ["started"] + ["token"] * 50
    assert [name for _, name, _ in parse(second)] == ["token"] * 30
    assert [name for _, name, _ in parse(third)] == ["end"]
