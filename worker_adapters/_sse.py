"""Incremental server-sent-events decoder: bytes in, events out, by the WHATWG rules.

Pure (no I/O): an adapter feeds it each chunk from ``response.aiter_bytes()``. It holds only the current
incomplete line and the event being built, never the whole response.

Rules kept (WHATWG HTML §9.2, and engine-wire-formats.md §7-8):

- UTF-8, decoded incrementally (a character may be split across chunks); a leading BOM is dropped once;
  invalid bytes become U+FFFD.
- Lines end at CRLF, LF or a lone CR, and at nothing else (not U+2028, U+0085, VT, FF: engines send those
  raw inside JSON strings). A CR ending one chunk and an LF starting the next are one line break.
- ``field:value`` with at most one space stripped after the colon; a line starting with ``:`` is a comment
  (keep-alive) and is ignored; a blank line dispatches the event; an event with no data is dropped.
- Divergence: llama.cpp builds through 2025 wrote in-stream errors as a non-standard ``error:`` field with
  no ``data:``, which a compliant parser drops silently. This decoder surfaces such an event as
  ``SSEEvent(type="error", data=<the error field>)``, the same shape as a standard ``event: error``.
- A partial event at end of stream is never dispatched: callers just stop feeding.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

DEFAULT_MAX_EVENT_CHARS = 16 * 1024 * 1024
_EOL = re.compile(r"\r\n?|\n")


class SSEFrameTooLarge(ValueError):
    """One event (or one line) grew past the decoder's bound without ending."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    type: str
    data: str
    last_id: str = ""


class SSEDecoder:
    """Feed bytes with `feed()`; get back the events that completed. See the module docstring."""

    def __init__(self, *, max_event_chars: int = DEFAULT_MAX_EVENT_CHARS) -> None:
        # "utf-8-sig" drops one leading BOM, even one split across chunks.
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")("replace")
        self._max = max_event_chars
        self._partial: list[str] = []  # pieces of the current line, which has not ended yet
        self._partial_len = 0
        self._skip_lf = False  # the last chunk ended in CR: an LF starting the next one is the same break
        self._data: list[str] = []
        self._data_len = 0
        self._error: list[str] = []
        self._type = ""
        self.last_id = ""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        events: list[SSEEvent] = []
        start = 0
        for match in _EOL.finditer(text):
            line = text[start : match.start()]
            if self._partial:
                line = "".join(self._partial) + line
                self._partial.clear()
                self._partial_len = 0
            event = self._line(line)
            if event is not None:
                events.append(event)
            start = match.end()
        self._skip_lf = text.endswith("\r")
        if start < len(text):
            rest = text[start:]
            self._partial.append(rest)
            self._partial_len += len(rest)
            self._check_size()
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._data_len += len(value) + 1
            self._check_size()
        elif name == "event":
            self._type = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "error":
            self._error.append(value)
            self._data_len += len(value) + 1
            self._check_size()
        return None  # "retry" and unknown fields are ignored

    def _dispatch(self) -> SSEEvent | None:
        data, error, kind = self._data, self._error, self._type
        self._data, self._error, self._type, self._data_len = [], [], "", 0
        if error:
            return SSEEvent("error", "\n".join(error), self.last_id)
        if not data:
            return None
        return SSEEvent(kind or "message", "\n".join(data), self.last_id)

    def _check_size(self) -> None:
        if self._partial_len + self._data_len > self._max:
            raise SSEFrameTooLarge(f"an SSE event exceeds {self._max} characters without ending")
