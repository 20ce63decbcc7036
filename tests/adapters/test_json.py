"""Streamed JSON is read with orjson, but must be accepted and refused exactly as the stdlib reads it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker_adapters._wire import checked_step, load_object
from worker_adapters.base import EngineInternal


def stdlib_object(text: str) -> Any:
    """What `load_object` did with `json.loads`: the value, or the EngineInternal message."""
    try:
        value = json.loads(text)
    except ValueError:
        return ("invalid", f"e sent invalid JSON: {text[:500] + ('…' if len(text) > 500 else '')!r}")
    if not isinstance(value, dict):
        return ("invalid", f"e sent a JSON {type(value).__name__}, not an object")
    return value


def outcome(text: str) -> Any:
    try:
        return load_object(text, "e")
    except EngineInternal as exc:
        return ("invalid", exc.message)


@pytest.mark.parametrize(
    "text",
    [
        '{"logprob":-Infinity,"p":NaN,"q":Infinity}',  # llama-cpp-python writes these with json.dumps
        '{"content":"\\ud83d"}',  # a lone surrogate escape
        '{"x":1e400}',  # beyond the float range: inf
        '{"content":"a\tb"}',  # a raw tab in a string: refused by both
        '\ufeff{"a":1}',  # a BOM: refused by both
        '{"a":1}{"b":2}',
        "[1,2]",
        '"text"',
        "",
    ],
)
def test_what_only_the_stdlib_reads_is_still_read(text: str) -> None:
    assert repr(outcome(text)) == repr(stdlib_object(text))


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # beyond 64 bits orjson reads a float (the module docstring)
    | st.floats()
    | st.text()
)
_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner)
)
# Numbers start with a space, so that no two run together into one past 64 bits.
_pieces = st.sampled_from(
    ["{", "}", "[", "]", '"a"', ":", ",", " 1", "-", " 0.5", "e5", "NaN", "Infinity", "true", "null", "\t",
     '"\\ud800"', '"\\u00e9"', " 18446744073709551615", " -9223372036854775808", " 1e400", '"\t"', "\ufeff",
     "\u2028", "\\"]
)  # fmt: skip


@given(st.dictionaries(st.text(), _values), st.booleans())
def test_any_object_reads_as_the_stdlib_reads_it(value: dict[str, Any], ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert repr(outcome(text)) == repr(stdlib_object(text))


@given(st.lists(_pieces, max_size=12).map("".join))
def test_any_near_json_is_accepted_or_refused_as_by_the_stdlib(text: str) -> None:
    assert repr(outcome(text)) == repr(stdlib_object(text))


def test_an_in_stream_error_is_raised_from_a_step() -> None:
    with pytest.raises(EngineInternal, match="the engine failed"):
        checked_step('{"error":"the engine failed"}', "e")
    assert checked_step('{"error":null,"content":"a"}', "e") == {"error": None, "content": "a"}
