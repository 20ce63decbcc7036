"""A run's batch read whole from the Redis log (`EventRun`) is framed for SSE in one piece: its bytes are
exactly the frames of its events one by one (`encode`), whatever the events' names and data, and a run
whose data is JSON text (as every event a run writes is) is framed without a step per event."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestratord.api import stream
from orchestratord.api.stream import encode, encode_run
from orchestratord.core.tasks import RS, US, EventRun, LogEvent

characters = st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters=RS + US)
texts = st.text(characters, max_size=30)
json_data = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
).map(lambda v: orjson.dumps({"v": v}).decode())
raw_data = texts  # line breaks and CRs too: then encode's data lines
names = st.sampled_from(("token", "metrics", "tool_call")) | st.from_regex(r"[a-z_]{1,12}", fullmatch=True)
ids = st.tuples(st.integers(0, 2**44), st.integers(0, 9999)).map(lambda p: f"{p[0]}-{p[1]}")


def run_of(events: list[LogEvent]) -> EventRun:
    return EventRun(events[-1].id, RS.join(f"{e.id}{US}{e.name}{US}{e.data}" for e in events))


@given(st.lists(st.builds(LogEvent, ids, names, json_data | raw_data), min_size=1, max_size=40))
def test_a_run_is_framed_exactly_as_its_events_one_by_one(events: list[LogEvent]) -> None:
    run = run_of(events)
    assert run.events() == events
    assert encode_run(run) == b"".join(encode(e) for e in events)


@given(st.lists(st.builds(LogEvent, ids, names, json_data), min_size=1, max_size=40))
def test_a_run_of_json_events_is_framed_without_a_step_per_event(events: list[LogEvent]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stream, "encode", _no_step)
        framed = encode_run(run_of(events))
    assert framed == b"".join(encode(e) for e in events)


def _no_step(event: LogEvent) -> bytes:
    raise AssertionError(f"framed one by one: {event}")
