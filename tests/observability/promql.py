"""Just enough PromQL reading to list the metric and label names an expression uses."""

from __future__ import annotations

import re

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN"})
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$pool": ".*"}


def substitute(expr: str) -> str:
    """Grafana's variables replaced by values Prometheus accepts."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
    return expr


def labels_used(expr: str) -> set[str]:
    """Label names in matchers (`{pool_id="x"}`) and groupings (`by (pool_id)`)."""
    text = _STRING.sub('""', expr)
    names = set()
    for block in _MATCHERS.findall(text):
        names |= {m.group(0) for m in re.finditer(r"[A-Za-z_][A-Za-z0-9_]*(?=\s*(=~|!~|!=|=))", block)}
    for _, group in _GROUPING.findall(text):
        names |= {n.strip() for n in group.split(",") if n.strip()}
    return names


def metrics_used(expr: str) -> set[str]:
    """Identifiers that name series: not functions or aggregations (followed by `(`), not keywords,
    not inside label matchers, groupings, strings or durations."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group(0) in _KEYWORDS:
            continue
        if re.fullmatch(r"\d", text[match.start() - 1 : match.start()] or " "):
            continue  # the exponent or unit of a number (1e-9, 5m)
        names.add(match.group(0))
    return names
