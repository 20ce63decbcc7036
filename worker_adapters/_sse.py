"""Incremental server-sent-events decoder: bytes in, events out, by the WHATWG rules.

Pure (no I/O): an adapter feeds it each chunk of the response body as read. It holds only the current
incomplete line (and at most three bytes of an incomplete character) and the event being built, never
the whole response.

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

This runs once per streamed token, so `feed` is written for speed: every chunk is split at LF with
``str.split`` (only a chunk that holds a CR takes the second split in `_split_cr`), and ``data:`` lines,
nearly all of an engine's lines, are handled in the loop itself rather than by `_field`.
"""

from __future__ import annotations

from codecs import utf_8_decode
from typing import NamedTuple

DEFAULT_MAX_EVENT_CHARS = 16 * 1024 * 1024


class SSEFrameTooLarge(ValueError):
    """One event (or one line) grew past the decoder's bound without ending."""


class SSEEvent(NamedTuple):
    """One dispatched event. A named tuple: built once per token, at half a frozen dataclass's cost."""

    type: str
    data: str
    last_id: str = ""


class SSEDecoder:
    """Feed bytes with `feed()`; get back the events that completed. See the module docstring."""

    def __init__(self, *, max_event_chars: int = DEFAULT_MAX_EVENT_CHARS) -> None:
        self._max = max_event_chars
        self._undecoded = b""  # the start of a character split across chunks (at most 3 bytes)
        self._at_start = True  # no character decoded yet: a BOM here is dropped
        self._partial: list[str] = []  # pieces of the current line, which has not ended yet
        self._partial_len = 0
        self._skip_lf = False  # the last chunk ended in CR: an LF starting the next one is the same break
        self._data: list[str] = []
        self._data_len = 0
        self._error: list[str] = []
        self._type = ""
        self.last_id = ""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        text = self._decode(chunk)
        if not text:
            return []
        if self._is_one_event(text):
            return [self._one_event(text)]
        lines = text.split("\n")
        if "\r" in text:
            self._skip_lf = text[-1] == "\r"
            lines = _split_cr(lines)
        rest = lines.pop()  # the line still open at the chunk's end ("" if the chunk ended a line)
        events = self._lines(lines) if lines else []
        if rest:
            self._partial.append(rest)
            self._partial_len += len(rest)
            self._check_size()
        return events

    def _lines(self, lines: list[str]) -> list[SSEEvent]:
        """The events that complete lines dispatch; the first line continues the one held, if any."""
        if self._partial:
            lines[0] = "".join(self._partial) + lines[0]
            self._partial.clear()
            self._partial_len = 0
        events: list[SSEEvent] = []
        for line in lines:
            if line.startswith("data:"):
                value = line[6:] if line[5:6] == " " else line[5:]
                self._data.append(value)
                self._data_len += len(value) + 1
                if self._data_len > self._max:  # `_check_size`, inlined: no partial line is held here
                    raise self._too_large()
            elif line:
                self._field(line)
            elif (event := self._dispatch()) is not None:
                events.append(event)
        return events

    def _is_one_event(self, text: str) -> bool:
        """Whether `text` is exactly one ``data:`` line and the blank line ending it, with nothing held
        from earlier chunks: an engine that writes one event per token, read as fast as it writes."""
        return (
            text.startswith("data:")
            and text.find("\n") == len(text) - 2
            and text[-1] == "\n"
            and "\r" not in text
            and not (self._partial or self._data or self._error)
        )

    def _one_event(self, text: str) -> SSEEvent:
        """`feed`'s outcome for a text `_is_one_event` accepted, without splitting it into lines."""
        value = text[6:-2] if text[5:6] == " " else text[5:-2]
        if len(value) + 1 > self._max:
            raise self._too_large()
        kind, self._type = self._type, ""
        return SSEEvent(kind or "message", value, self.last_id)

    def _decode(self, chunk: bytes) -> str:
        """`chunk` as text, keeping back the bytes of a character that the next chunk completes, without
        the stream's BOM and without the LF that completes a CRLF split across chunks."""
        if self._undecoded:
            chunk = self._undecoded + chunk
        text, used = utf_8_decode(chunk, "replace", False)
        self._undecoded = chunk[used:] if used < len(chunk) else b""
        if not text:
            return text
        if self._at_start:
            self._at_start = False
            if text[0] == "\ufeff":
                text = text[1:]
        if self._skip_lf and text:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        return text

    def _field(self, line: str) -> None:
        """Any line but ``data:`` and blank: a comment, ``event``, ``id``, ``error``, or ignored."""
        if line[0] == ":":
            return
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":  # "data" with no colon: an empty data line
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
        # "retry" and unknown fields are ignored

    def _dispatch(self) -> SSEEvent | None:
        kind, self._type, self._data_len = self._type, "", 0
        if self._error:
            error = "\n".join(self._error)
            self._error.clear()
            self._data.clear()
            return SSEEvent("error", error, self.last_id)
        if not self._data:
            return None
        data = "\n".join(self._data)
        self._data.clear()
        return SSEEvent(kind or "message", data, self.last_id)

    def _check_size(self) -> None:
        if self._partial_len + self._data_len > self._max:
            raise self._too_large()

    def _too_large(self) -> SSEFrameTooLarge:
        return SSEFrameTooLarge(f"an SSE event exceeds {self._max} characters without ending")


def _split_cr(pieces: list[str]) -> list[str]:
    """Lines split at LF (`pieces`, the last one still open) split again at CR: a CR just before the LF
    is part of that break (CRLF), any other CR is a break of its own. Twice as fast as replacing CRLF
    and CR with LF before the split (a two-character ``str.replace`` is slow)."""
    lines: list[str] = []
    last = pieces.pop()
    for piece in pieces:
        if "\r" in piece:
            if piece[-1] == "\r":
                piece = piece[:-1]
            if "\r" in piece:
                lines.extend(piece.split("\r"))
                continue
        lines.append(piece)
    lines.extend(last.split("\r"))
    return lines
