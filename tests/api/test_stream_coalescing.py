"""Coalescing loses, duplicates and reorders nothing: whatever the pace of the log and of the reader,
and however small the read-ahead bound, the bytes written are exactly the events' frames, in order.

`coalesced` joins the frames of the events already in the log into one write; the writer and the
log's reader run as two tasks. Hypothesis drives both paces (how often each yields to the loop) and
the bound on what is read ahead, and parses the bytes back as an SSE client would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestratord.api.stream import coalesced
from orchestratord.core.tasks import LogEvent

# Any text but CR, which SSE cannot carry (a client reads it as a line break).
characters = st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\r")
texts = st.text(characters, max_size=40)
payloads = st.one_of(
    texts.map(lambda t: orjson.dumps({"t": t}).decode()),  # one line, as the log's JSON is
    st.lists(texts, min_size=2, max_size=3).map("\n".join),  # line breaks: several data lines
)
events = st.lists(st.tuples(st.sampled_from(("token", "metrics")), payloads), max_size=120)
paces = st.lists(st.integers(0, 3), min_size=1, max_size=16)  # yields to the loop between steps


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


@settings(max_examples=300, deadline=None)
@given(
    log=events,
    log_pace=paces,
    reader_pace=paces,
    bound=st.sampled_from((1, 50, 400, 64 * 1024)),
)
def test_every_event_is_written_once_and_in_order(
    log: list[tuple[str, str]], log_pace: list[int], reader_pace: list[int], bound: int
) -> None:
    written = [LogEvent(f"{1000 + i}-{i % 7}", name, data) for i, (name, data) in enumerate(log)]
    written.append(LogEvent(f"{2000 + len(log)}-0", "end", '{"tokens_out":0}'))

    async def tail() -> AsyncIterator[LogEvent]:
        for i, event in enumerate(written):
            yield event
            await pause(log_pace[i % len(log_pace)])

    async def read() -> tuple[bytes, int]:
        chunks = []
        async for chunk in coalesced(tail(), max_pending_bytes=bound):
            chunks.append(chunk)
            await pause(reader_pace[len(chunks) % len(reader_pace)])
        return b"".join(chunks), len(chunks)

    stream, writes = asyncio.run(read())
    assert parse(stream) == [(e.id, e.name, e.data) for e in written]
    assert writes <= len(written)  # never more writes than events: bursts are joined, not split


def test_a_burst_already_in_the_log_leaves_in_one_write() -> None:
    """The property above would hold without any coalescing; this shows the coalescing happens."""
    burst = [LogEvent(str(i), "token", '{"t":"x"}') for i in range(50)]

    async def tail() -> AsyncIterator[LogEvent]:
        for event in burst:
            yield event  # no pause: all 50 are in the log before the writer runs

    async def read() -> list[bytes]:
        return [chunk async for chunk in coalesced(tail())]

    chunks = asyncio.run(read())
    assert len(chunks) == 1 and parse(chunks[0]) == [(e.id, e.name, e.data) for e in burst]
