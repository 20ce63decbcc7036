"""Read an SSE stream as a client would: over a real socket, frame by frame."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Event:
    id: str | None
    event: str
    data: dict[str, Any]
    raw: str


def parse_frames(lines: Iterator[str]) -> Iterator[Event | str]:
    """Yield events, and comment lines (keep-alives) as plain strings."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                yield Event(
                    fields.get("id"),
                    fields.get("event", "message"),
                    json.loads(fields["data"]),
                    fields["data"],
                )
            fields = {}
            continue
        if line.startswith(":"):
            yield line
            continue
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value


def read_events(
    client: httpx.Client,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
    keepalives: list[str] | None = None,
) -> list[Event]:
    """Read until the terminal event (or `stop_after` events, then disconnect)."""
    events: list[Event] = []
    with client.stream("GET", url, headers=headers or {}) as response:
        response.raise_for_status()
        for item in parse_frames(response.iter_lines()):
            if isinstance(item, str):
                if keepalives is not None:
                    keepalives.append(item)
                continue
            events.append(item)
            if item.event in ("end", "error") or (stop_after is not None and len(events) >= stop_after):
                break
    return events
