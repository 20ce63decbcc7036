"""The event-stream decoder: lines of `text/event-stream` in, whole frames out.

It follows the HTML standard's interpretation rules rather than the shape orchestratord happens to
send today, so a proxy that re-chunks the stream, a multi-line `data`, a missing `event:` or a
keep-alive comment never confuses it. It holds no socket: the clients feed it the lines they read.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Frame:
    """One dispatched event: its name (`message` when the stream named none), its data and the
    stream's last event id at that point (the standard carries an id over to the events after it)."""

    event: str
    data: str
    id: str | None


class SSEDecoder:
    """Decodes one connection's lines. A frame is dispatched only at its blank line, so the partial
    frame of a connection cut mid-event is never seen: a fresh decoder per connection drops it."""

    def __init__(self, last_event_id: str | None = None) -> None:
        self._event = ""
        self._data: list[str] = []
        self._last_id = last_event_id

    def feed(self, line: str) -> Frame | None:
        """Take one line (without its line break); the frame it completes, if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # a comment: orchestratord's keep-alive
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:  # the standard ignores an id holding NUL
            self._last_id = value
        return None  # `retry` and unknown fields are ignored, as the standard says

    def _dispatch(self) -> Frame | None:
        frame = None
        if self._data:
            frame = Frame(self._event or "message", "\n".join(self._data), self._last_id)
        self._event = ""
        self._data = []
        return frame
