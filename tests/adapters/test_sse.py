"""The SSE decoder against the WHATWG rules and the engines' quirks, whole and split at every byte."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker_adapters._sse import SSEDecoder, SSEEvent, SSEFrameTooLarge


def decode(*chunks: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def datas(*chunks: bytes) -> list[str]:
    return [event.data for event in decode(*chunks)]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def test_one_event() -> None:
    assert decode(b'data: {"a":1}\n\n') == [SSEEvent("message", '{"a":1}')]


def test_data_without_space_and_with_two_spaces() -> None:
    assert datas(b"data:{}\n\ndata:  x\n\n") == ["{}", " x"]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(eol: bytes) -> None:
    assert datas(b"data: a" + eol + eol + b"data: b" + eol + eol) == ["a", "b"]


def test_crlf_split_between_cr_and_lf_is_one_break() -> None:
    # If the LF starting the second chunk were a second line break, "a" would be dispatched early
    # and "b" would follow as a separate event.
    assert datas(b"data: a\r", b"\ndata: b\r\n\r\n") == ["a\nb"]


def test_lone_cr_at_chunk_end_then_data() -> None:
    assert datas(b"data: a\r", b"\r", b"data: b\r\r") == ["a", "b"]


def test_several_data_lines_join_with_newline() -> None:
    assert datas(b"data: one\ndata: two\ndata:\n\n") == ["one\ntwo\n"]


def test_comments_and_pings_are_not_events() -> None:
    stream = b":\n\n: ping - 2026-08-04 08:52:19.123456+00:00\r\n\r\n: OPENROUTER PROCESSING\n\ndata: x\n\n"
    assert datas(stream) == ["x"]


def test_event_field_and_event_without_data() -> None:
    events = decode(b"event: ping\n\nevent: error\ndata: {}\n\ndata: after\n\n")
    assert events == [SSEEvent("error", "{}"), SSEEvent("message", "after")]


def test_id_is_kept_unless_it_holds_nul() -> None:
    events = decode(b"id: 7\ndata: a\n\nid: x\0y\ndata: b\n\n")
    assert [e.last_id for e in events] == ["7", "7"]


def test_unknown_fields_retry_and_fieldname_only_lines_are_ignored() -> None:
    assert datas(b"retry: 10\nfoo: bar\ndata\n\n") == [""]


def test_llamacpp_legacy_error_field_is_surfaced() -> None:
    events = decode(
        b'error: {"code":400,"message":"too long","type":"invalid_request_error"}\n\ndata: [DONE]\n\n'
    )
    assert events[0] == SSEEvent("error", '{"code":400,"message":"too long","type":"invalid_request_error"}')
    assert events[1].data == "[DONE]"


def test_unterminated_event_at_eof_is_not_dispatched() -> None:
    assert datas(b"data: a\n\ndata: b\n") == ["a"]


def test_unicode_line_separators_are_not_line_breaks() -> None:
    payload = '{"content":"a\u2028b\u2029c\x85d\x0be\x0cf\x1cg"}'
    assert datas(b"data: " + payload.encode() + b"\n\n") == [payload]


def test_multibyte_characters_split_across_chunks() -> None:
    assert datas(*bytewise("data: ä日本🙂\n\n".encode())) == ["ä日本🙂"]


def test_bom_dropped_once_even_when_split() -> None:
    stream = "\ufeffdata: a\n\ndata: \ufeffb\n\n".encode()
    assert datas(*bytewise(stream)) == ["a", "\ufeffb"]


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert datas(b"data: a\xffb\n\n") == ["a\ufffdb"]


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"event: e\n", b"id: 7\n", b"data: x\n\n"], [SSEEvent("e", "x", "7")]),  # fields set before
        ([b"data: a", b"data: b\n\n"], [SSEEvent("message", "adata: b")]),  # the line held goes on
        ([b"data: a\n", b"data: b\n\n"], [SSEEvent("message", "a\nb")]),  # the event held goes on
        ([b"error: e\n", b"data: b\n\n"], [SSEEvent("error", "e")]),
        ([b"data: a\rdata: b\n\n"], [SSEEvent("message", "a\nb")]),  # a lone CR is a line break
        ([b"data:x\n\n", b"data:  y\n\n", b"data:\n\n"], [SSEEvent("message", v) for v in ("x", " y", "")]),
    ],
)
def test_chunks_that_are_one_whole_event(chunks: list[bytes], expected: list[SSEEvent]) -> None:
    # Such a chunk (an engine writing one event per token) takes the decoder's single-event path; what
    # earlier chunks left (a field, a line, an event not yet dispatched) must still count.
    assert decode(*chunks) == expected


def test_a_whole_event_past_the_bound_in_one_chunk() -> None:
    with pytest.raises(SSEFrameTooLarge):
        SSEDecoder(max_event_chars=10).feed(b"data: 0123456789\n\n")


def test_a_line_that_never_ends_is_bounded() -> None:
    decoder = SSEDecoder(max_event_chars=100)
    decoder.feed(b"data: " + b"x" * 50)
    with pytest.raises(SSEFrameTooLarge):
        decoder.feed(b"x" * 60)


def test_an_event_that_never_ends_is_bounded() -> None:
    decoder = SSEDecoder(max_event_chars=100)
    with pytest.raises(SSEFrameTooLarge):
        decoder.feed(b"data: 0123456789\n" * 10)


def test_only_the_incomplete_line_is_held() -> None:
    decoder = SSEDecoder(max_event_chars=100)
    for _ in range(1000):  # 16 KB of complete events through a 100-character bound
        assert decoder.feed(b"data: 0123456789\n\n") == [SSEEvent("message", "0123456789")]


# Text that may hold anything but the two line-break characters.
_values = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=30)


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[str], list[int]]:
    eol = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    events = draw(st.lists(st.lists(_values, min_size=1, max_size=3), max_size=6))
    parts = []
    for lines in events:
        if draw(st.booleans()):
            parts.append(":" + draw(_values) + eol + eol)
        for value in lines:
            space = draw(st.booleans()) or value.startswith(" ")
            parts.append(("data: " if space else "data:") + value + eol)
        parts.append(eol)
    stream = "".join(parts).encode()
    cuts = draw(st.lists(st.integers(0, max(0, len(stream))), max_size=12))
    return stream, ["\n".join(lines) for lines in events], cuts


@given(sse_streams())
def test_any_split_of_any_stream_decodes_the_same(case: tuple[bytes, list[str], list[int]]) -> None:
    stream, expected, cuts = case
    points = sorted(set(cuts))
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert datas(*chunks) == expected
    assert datas(*bytewise(stream)) == expected


def reference(stream: bytes) -> list[SSEEvent]:
    """The WHATWG rules read literally, on the whole stream at once (plus the ``error:`` field): what the
    incremental decoder must produce however the stream is cut."""
    text = stream.decode("utf-8", "replace").removeprefix("\ufeff")
    *lines, _unterminated = re.split(r"\r\n|\r|\n", text)
    events: list[SSEEvent] = []
    data: list[str] = []
    error: list[str] = []
    kind = last_id = ""
    for line in lines:
        if not line:
            if error:
                events.append(SSEEvent("error", "\n".join(error), last_id))
            elif data:
                events.append(SSEEvent(kind or "message", "\n".join(data), last_id))
            data, error, kind = [], [], ""
            continue
        name, colon, value = line.partition(":")
        value = value[1:] if colon and value.startswith(" ") else value
        if not name:
            continue
        if name == "data":
            data.append(value)
        elif name == "error":
            error.append(value)
        elif name == "event":
            kind = value
        elif name == "id" and "\0" not in value:
            last_id = value
    return events


_names = st.sampled_from(["data"] * 8 + ["event"] * 3 + ["id"] * 2 + ["error", "retry", "", "x"])
_eols = st.sampled_from(["\n"] * 5 + ["\r\n", "\r"])
_wild_values = st.one_of(st.sampled_from(["x", "", " y", "data: z", "ä日🙂\u2028"]), _values)


@st.composite
def wild_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """Fields of every kind, each line with its own ending (so CR, LF and CRLF mix, and a CR line
    before an LF line makes one break), BOMs, invalid bytes; cut anywhere, and often between lines,
    so that many chunks are one whole event (the decoder's single-event path) or one line of one."""
    parts: list[bytes] = [b"\xef\xbb\xbf"] if draw(st.booleans()) else []
    cuts: list[int] = []
    for _ in range(draw(st.integers(0, 8))):
        for _ in range(draw(st.integers(0, 3))):
            line = draw(_names) + draw(st.sampled_from([": ", ": ", ":", "", ":  "])) + draw(_wild_values)
            raw = line.encode() + (b"\xff" if draw(st.integers(0, 19)) == 0 else b"")
            parts.append(raw + draw(_eols).encode())
            if draw(st.booleans()):
                cuts.append(len(b"".join(parts)))
        parts.append(draw(_eols).encode())
        if draw(st.booleans()):
            cuts.append(len(b"".join(parts)))
    stream = b"".join(parts)
    cuts += draw(st.lists(st.integers(0, len(stream)), max_size=6))
    points = sorted(set(cuts))
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    return stream, chunks


@given(wild_streams())
def test_any_stream_cut_anywhere_decodes_as_the_whole_stream_does(case: tuple[bytes, list[bytes]]) -> None:
    stream, chunks = case
    assert decode(*chunks) == reference(stream)
    assert decode(*bytewise(stream)) == reference(stream)
