"""The Lua scripts as Redis gets them: each carries the parts of common.lua it uses and no others.

Redis runs a script's whole text at every call, so a part a script does not use costs every call;
a part it uses and lacks fails only when the script reaches it, as a global Redis refuses. The check
here reads each assembled script for names it uses and does not define: it does not rely on the
assembly's own reading of the scripts."""

from __future__ import annotations

import re

import pytest

from orchestratord.state.redis_client import SCRIPTS, _assembled, _parts, _source

KEYWORDS = {
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in", "local",
    "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
}  # fmt: skip
GLOBALS = {  # what Redis gives every script
    "ARGV", "KEYS", "redis", "cjson", "cmsgpack", "bit", "struct", "string", "table", "math", "tonumber",
    "tostring", "type", "pairs", "ipairs", "unpack", "next", "select", "pcall", "error", "assert",
}  # fmt: skip
# a comment or a string, whichever starts first (a comment may hold a quote, a string "--")
COMMENT_OR_STRING = re.compile(r"--[^\n]*|'(?:\\.|[^'\\\n])*'|\"(?:\\.|[^\"\\\n])*\"")
USED = re.compile(r"(?<![.:\w])([A-Za-z_]\w*)")
TABLE_KEY = re.compile(r"[{,]\s*([A-Za-z_]\w*)\s*=(?!=)")
DECLARED = (
    re.compile(r"\blocal\s+function\s+(\w+)"),
    re.compile(r"\blocal\s+(\w+(?:\s*,\s*\w+)*)"),
    re.compile(r"\bfor\s+(\w+(?:\s*,\s*\w+)*)\s+in\b"),
    re.compile(r"\bfor\s+(\w+)\s*="),
    re.compile(r"\bfunction\b[^(]*\(([^)]*)\)"),
)


def code_of(source: str) -> str:
    return COMMENT_OR_STRING.sub(lambda m: "" if m[0].startswith("--") else "''", source)


def undefined(source: str) -> set[str]:
    """The names `source` uses as variables that it never declares and Redis does not give it."""
    code = code_of(source)
    declared = {
        name.strip() for pattern in DECLARED for found in pattern.findall(code) for name in found.split(",")
    }
    keys = set(TABLE_KEY.findall(code))
    used = set(USED.findall(code)) - keys
    return used - declared - KEYWORDS - GLOBALS - {""}


def test_the_reading_finds_a_function_a_script_lacks() -> None:
    assert undefined("local function f(a) return g(a) + h.x end return f(ARGV[1])") == {"g", "h"}
    assert undefined("local t = {n = 1, [k] = 2} for i, v in ipairs(t) do end return t") == {"k"}
    assert undefined("local s = 'not_a_name(x)' -- it's comment_name(y)\nreturn s .. '--' .. u") == {"u"}


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_defines_what_it_uses(name: str) -> None:
    assert undefined(_assembled(_parts(_source("common")), _source(name))) == set()


def test_a_script_carries_only_the_parts_it_uses() -> None:
    common = _parts(_source("common"))
    opened = _assembled(common, _source("open"))
    assert "local function count_in" in opened and "local function now_ms" in opened
    assert "place_of" not in opened and "finish_job" not in opened
    # a part used only through another part comes with it, and before it
    created = _assembled(common, _source("create"))
    assert created.index("local function lane_count") < created.index("local function enqueue")
