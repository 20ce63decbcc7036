"""A Redis log's entries read back as events (`redis_tail.events_of`): a run's batch is one entry under
its last event's id, so a reader resuming after an id inside a batch gets only the events past it."""

from __future__ import annotations

from orchestratord.core.tasks import LogEvent
from orchestratord.state.redis_tail import RS, US, events_of


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
