"""The NDJSON line splitter: whole, split at every byte, bounded."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker_adapters._ndjson import NDJSONDecoder, NDJSONLineTooLarge


def lines(*chunks: bytes) -> list[str]:
    decoder = NDJSONDecoder()
    return [line for chunk in chunks for line in decoder.feed(chunk)]


def test_lines_and_a_partial_tail() -> None:
    assert lines(b'{"a":1}\n{"b":', b"2}\n{") == ['{"a":1}', '{"b":2}']


def test_crlf_and_blank_lines() -> None:
    assert lines(b'{"a":1}\r\n\n  \n{"b":2}\n') == ['{"a":1}', '{"b":2}']


def test_multibyte_split_and_unicode_separators_stay_inside_a_line() -> None:
    line = json.dumps({"response": "ä日本🙂\u2028\x85"}, ensure_ascii=False).encode()
    chunks = [line[i : i + 1] for i in range(len(line))] + [b"\n"]
    assert lines(*chunks) == [line.decode()]


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert lines(b"a\xffb\n") == ["a\ufffdb"]


def test_a_line_that_never_ends_is_bounded() -> None:
    decoder = NDJSONDecoder(max_line_bytes=100)
    decoder.feed(b"x" * 60)
    with pytest.raises(NDJSONLineTooLarge):
        decoder.feed(b"x" * 60)


def test_only_the_incomplete_line_is_held() -> None:
    decoder = NDJSONDecoder(max_line_bytes=100)
    for _ in range(1000):
        assert decoder.feed(b'{"response":"0123456789"}\n') == ['{"response":"0123456789"}']


_objects = st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3)


@given(st.lists(_objects, max_size=8), st.lists(st.integers(0, 2000), max_size=12))
def test_any_split_decodes_the_same(objects: list[dict[str, str]], cuts: list[int]) -> None:
    encoded = [json.dumps(o, separators=(",", ":"), ensure_ascii=False) for o in objects]
    stream = "".join(line + "\n" for line in encoded).encode()
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert lines(*chunks) == encoded
