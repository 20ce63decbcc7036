"""Incremental NDJSON line splitter: bytes in, complete lines out (Ollama's native stream).

Pure (no I/O). Only ``\\n`` ends a line (a ``\\r`` before it is dropped); blank lines are skipped. The
split happens on bytes, before decoding: the byte 0x0A never occurs inside a multi-byte UTF-8 sequence,
so a character split across chunks stays whole, and each complete line is decoded once (invalid bytes
become U+FFFD). Only the current incomplete line is held. JSON decoding is the caller's job.
"""

from __future__ import annotations

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024


class NDJSONLineTooLarge(ValueError):
    """One line grew past the decoder's bound without ending."""


class NDJSONDecoder:
    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._max = max_line_bytes
        self._partial: list[bytes] = []
        self._partial_len = 0

    def feed(self, chunk: bytes) -> list[str]:
        """Return the lines completed by `chunk`, decoded, without their line ending."""
        if b"\n" not in chunk:
            self._keep(chunk)
            return []
        pieces = chunk.split(b"\n")
        if self._partial:
            pieces[0] = b"".join(self._partial) + pieces[0]
            self._partial.clear()
            self._partial_len = 0
        self._keep(pieces.pop())
        lines = []
        for raw in pieces:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if line.strip():
                lines.append(line.decode("utf-8", "replace"))
        return lines

    def _keep(self, rest: bytes) -> None:
        if not rest:
            return
        self._partial.append(rest)
        self._partial_len += len(rest)
        if self._partial_len > self._max:
            raise NDJSONLineTooLarge(f"an NDJSON line exceeds {self._max} bytes without ending")
