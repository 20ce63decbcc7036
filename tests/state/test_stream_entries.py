"""A Redis log's entries read back as events (`redis_tail.events_of`): a run's batch is one entry under
its last event's id, so a reader resuming after an id inside a batch gets only the events past it."""

from __future__ import annotations

from orchestratord.core.tasks import RS, US, EventRun, LogEvent
from orchestratord.state.redis_tail import events_of, runs_of


def batch(*ids: str) -> tuple[str, dict[str, str]]:
    records = RS.join(f'{i}{US}token{US}{{"t":"{i}"}}' for i in ids)
    return ids[-1], {"e": records}


ENTRIES = [
    ("5-0", {"n": "started", "d": "{}"}),
    batch("6-0", "6-1", "7-0"),
    batch("7-1", "8-0"),
    ("9-0", {"n": "end", "d": "{}"}),
]


def ids(events: list[LogEvent]) -> list[str]:
    return [e.id for e in events]


def test_every_event_in_order_without_a_mark() -> None:
    assert ids(events_of(ENTRIES)) == ["5-0", "6-0", "6-1", "7-0", "7-1", "8-0", "9-0"]


def test_a_mark_inside_a_batch_gives_the_events_past_it_only() -> None:
    assert ids(events_of(ENTRIES, "6-0")) == ["6-1", "7-0", "7-1", "8-0", "9-0"]
    assert ids(events_of(ENTRIES, "6-1")) == ["7-0", "7-1", "8-0", "9-0"]


def test_a_mark_before_a_batch_or_at_its_end_skips_no_event_of_the_rest() -> None:
    assert ids(events_of(ENTRIES, "5-0")) == ["6-0", "6-1", "7-0", "7-1", "8-0", "9-0"]
    assert ids(events_of(ENTRIES, "7-0")) == ["7-1", "8-0", "9-0"]
    assert ids(events_of(ENTRIES, "9-0")) == []


def test_events_read_back_whole() -> None:
    (event,) = events_of([batch("3-4")], "3-3")
    assert event == LogEvent("3-4", "token", '{"t":"3-4"}')


def test_a_batch_wholly_past_the_mark_is_one_run_as_stored() -> None:
    """`runs_of` (the read of a reader that relays the log as stored) gives such a batch whole."""
    got = runs_of(ENTRIES, "5-0")
    assert got[0] == EventRun("7-0", ENTRIES[1][1]["e"])
    assert got[1] == EventRun("8-0", ENTRIES[2][1]["e"])
    assert got[2] == LogEvent("9-0", "end", "{}")
    assert [e for run in got[:2] for e in run.events()] == events_of(ENTRIES, "5-0")[:5]


def test_a_batch_the_mark_falls_inside_is_split_to_the_events_past_it() -> None:
    got = runs_of(ENTRIES, "6-0")
    assert ids([e for e in got[:2] if isinstance(e, LogEvent)]) == ["6-1", "7-0"]
    assert got[2] == EventRun("8-0", ENTRIES[2][1]["e"])
    assert ids(runs_of(ENTRIES, "7-0")[:1]) == ["8-0"] and isinstance(runs_of(ENTRIES, "7-0")[0], EventRun)
