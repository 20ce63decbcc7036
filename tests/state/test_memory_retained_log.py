"""A finished job's log is kept compact for replay, and replays exactly as it was written: the same
events, ids and text, from the start or from any Last-Event-ID, including to a reader that was
waiting when the job ended."""

from __future__ import annotations

import asyncio

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestratord.core.queue import QueueEntry, QueuePolicy
from orchestratord.core.route import Route
from orchestratord.core.tasks import JobState, LogEvent
from orchestratord.state.base import JobRecord
from orchestratord.state.memory import READ_BATCH, MemoryStore

tokens = st.lists(st.text(min_size=0, max_size=8), max_size=40)


async def _store_with_job() -> MemoryStore:
    store = MemoryStore(QueuePolicy(capacity=4))
    record = JobRecord("job", "t", "mock", "interactive", JobState.QUEUED, 0.0, "{}")
    await store.create(record, QueueEntry("job", "t", "interactive", Route("mock")))
    return store


async def _all(store: MemoryStore, after: str | None = None) -> list[LogEvent]:
    return [event async for event in store.read("job", after)]


async def _written(texts: list[str]) -> tuple[MemoryStore, list[LogEvent]]:
    store = await _store_with_job()
    written = [await store.append("job", "started", {"pool_id": "p", "engine": "mock"})]
    for i, text in enumerate(texts):
        assert await store.append_token("job", text)
        expected = orjson.dumps({"t": text, "i": i}).decode()
        written.append(LogEvent(str(len(written) + 1), "token", expected))  # ids are 1-based positions
    written.append(await store.append("job", "metrics", {"tokens_out": len(texts)}))
    written.append(await store.finish("job", JobState.SUCCEEDED, "end", {"stop_reason": "eos"}))
    return store, [event for event in written if event is not None]


@settings(max_examples=60, deadline=None)
@given(texts=tokens, data=st.data())
def test_a_finished_log_replays_the_events_written_from_any_resume_point(
    texts: list[str], data: st.DataObject
) -> None:
    async def check() -> None:
        store, written = await _written(texts)
        assert len(written) == len(texts) + 3
        assert await _all(store) == written
        cut = data.draw(st.integers(min_value=0, max_value=len(written)))
        assert await _all(store, str(cut) if cut else None) == written[cut:]
        record = await store.get("job")
        assert record is not None and record.text == "".join(texts)
        assert record.tokens_out == len(texts)

    asyncio.run(check())


async def test_a_reader_waiting_when_the_job_ends_reads_through_to_the_end() -> None:
    store = await _store_with_job()
    await store.append_token("job", "a")
    seen: list[LogEvent] = []

    async def read() -> None:
        async for event in store.read("job"):
            seen.append(event)

    reader = asyncio.create_task(read())
    await asyncio.sleep(0)  # the reader has taken the first token and waits for more
    await store.append_token("job", "é")
    end = await store.finish("job", JobState.FAILED, "error", {"code": "WORKER_RESET", "message": "x"})
    await asyncio.wait_for(reader, 5)
    assert [event.name for event in seen] == ["token", "token", "error"]
    assert seen[-1] == end
    assert seen[1].data == '{"t":"é","i":1}'


def test_a_long_finished_log_is_given_a_bounded_batch_at_a_time() -> None:
    """A relaying reader (`read_batches`) of a compacted log gets its events built a batch at a time,
    never the whole log's event objects at once."""

    async def check() -> None:
        store, written = await _written(["w"] * 2500)
        batches = [list(batch) async for batch in store.read_batches("job")]
        assert [len(batch) for batch in batches] == [READ_BATCH, READ_BATCH, 2503 - 2 * READ_BATCH]
        assert [event for batch in batches for event in batch] == written
        resumed = [event async for batch in store.read_batches("job", "2500") for event in batch]
        assert resumed == written[2500:]

    asyncio.run(check())
