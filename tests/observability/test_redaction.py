"""The redactor's shortcuts (a cheap pre-check before the token pattern, short strings skipped, key
names classified once) redact exactly what the full patterns redact, and the JSON renderer never loses
a line. The end-to-end guarantees (no key, no prompt in any line of a real server) are in
test_secrets.py."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestratord.auth import Principal
from orchestratord.logs import REDACTED, redactor, render_json

# The patterns as they were before the shortcuts, applied to every string: the reference.
TOKEN_LIKE = re.compile(
    r"(?i:\b(bearer|basic)\s+)[A-Za-z0-9._~+/=-]{6,}"
    r"|\b(?:sk|pk|rk|ok|key|api|tok|hf|ghp|gho|ghs|xox[abprs])[-_][A-Za-z0-9._-]{8,}"
    r"|\beyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*"
    r"|\bAKIA[0-9A-Z]{16}\b"
)
RANDOM_KEY = re.compile(r"\b(?=[\w-]*[A-Z])(?=[\w-]*[a-z])(?=[\w-]*\d)[\w-]{32,}", re.ASCII)


def reference(text: str, *, an_id: bool = False) -> str:
    text = TOKEN_LIKE.sub(lambda m: (m.group(1) + " " if m.group(1) else "") + REDACTED, text)
    return text if an_id else RANDOM_KEY.sub(REDACTED, text)


LONG_S_BASIC = "ba\u017fic"  # U+017F (long s) matches "s" when the pattern ignores case
FRAGMENTS = st.sampled_from(
    [
        "sk", "pk", "rk", "ok", "key", "api", "tok", "hf", "ghp", "gho", "ghs", "xoxb", "xoxz", "-", "_",
        ".", " ", "\t", "Bearer", "bearer", "BASIC", LONG_S_BASIC, "eyJ", "AKIA", "12345678", "abcdEFGH",
        "Zq7Xw2Lr9Tb4Nc8Vy1Hs6Kd3Mf5Pg0Aj", "ä", "日本", "x", "/", "=", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIx",
        ".dozjgNryP4J3jVmNHl0w5N", "AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPL",
    ]
)  # fmt: skip
TEXTS = st.lists(FRAGMENTS | st.text(max_size=12), max_size=14).map("".join)


def redacted(key: str, value: str) -> object:
    return redactor(log_prompts=False)(None, "info", {"event": "x", key: value})[key]


@settings(max_examples=2000, deadline=None)
@given(TEXTS)
def test_strings_are_redacted_as_the_full_patterns_redact_them(text: str) -> None:
    assert redacted("detail", text) == reference(text)
    assert redacted("session_id", text) == reference(text, an_id=True)


@pytest.mark.parametrize(
    "token",
    [
        "Bearer abcdefghijklmnop", "basic dXNlcjpwYXNzd29yZA==", "sk-proj-0123456789abcdefXYZ",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "AKIAIOSFODNN7EXAMPLE", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345", "xoxp-1234567890-abc",
        "ghs_0123456789", "tok_abcdefgh", "key-12345678", "api_abcdefgh",
    ],
)  # fmt: skip
@pytest.mark.parametrize("context", ["{}", "saw {} here", "(x={}, y=2)", "a-b {}\n"])
def test_each_kind_of_token_is_redacted_in_any_context(token: str, context: str) -> None:
    text = context.format(token)
    assert token not in reference(text)  # the reference redacts it ...
    assert redacted("detail", text) == reference(text)  # ... and so do the shortcuts
    assert redacted("correlation_id", text) == reference(text, an_id=True)


def test_the_shortest_key_the_pattern_knows_is_redacted() -> None:
    """Strings shorter than 11 characters skip the pattern: this one is exactly 11."""
    assert redacted("detail", "sk-12345678") == REDACTED
    assert redacted("detail", "sk-1234567") == "sk-1234567"


def test_case_folding_beyond_ascii_still_redacts_a_basic_credential() -> None:
    assert redacted("detail", f"{LONG_S_BASIC} dXNlcjpwYXNzd29yZA==") == f"{LONG_S_BASIC} {REDACTED}"


def test_nested_values_and_secret_keys_of_any_case() -> None:
    event = redactor(log_prompts=False)(
        None,
        "info",
        {
            "event": "x",
            "API_KEY": "k",
            "request": {"Cookie": "c", 7: "sk-proj-0123456789abcdef", "rows": [("Bearer abcdefghij",)]},
        },
    )
    assert event["API_KEY"] == REDACTED
    assert event["request"] == {"Cookie": REDACTED, 7: REDACTED, "rows": [[f"Bearer {REDACTED}"]]}


def test_a_line_json_cannot_encode_quickly_is_still_a_json_line() -> None:
    line = render_json(None, "info", {"event": "x", "big": 2**70, "odd": "\ud800", "obj": object()})
    parsed = json.loads(line)
    assert parsed["big"] == 2**70 and parsed["odd"] == "\ud800" and parsed["obj"].startswith("<object")


def test_values_render_as_before() -> None:
    """Dataclasses and other unknown values are rendered by their repr, as `json` with structlog's
    fallback did; non-string keys become strings."""
    parsed = json.loads(render_json(None, "info", {"event": "x", "who": Principal("acme", "client"), 1: 2}))
    assert parsed == {"event": "x", "who": repr(Principal("acme", "client")), "1": 2}
