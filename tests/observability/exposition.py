"""Read a Prometheus text exposition and check it against the contract in ci/metrics.lint.json."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

LINT_PATH = Path(__file__).resolve().parents[2] / "ci" / "metrics.lint.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load_lint() -> dict[str, Any]:
    lint: dict[str, Any] = json.loads(LINT_PATH.read_text(encoding="utf-8"))
    return lint


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def declared_types(text: str) -> dict[str, str]:
    """Name → type, from the `# TYPE` lines: the names exactly as a scraper sees them."""
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind.strip()
    return types


def samples(text: str) -> list[Sample]:
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append(Sample(s.name, dict(s.labels), float(s.value)))
    return out


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0 when there are none)."""
    return sum(s.value for s in samples(text) if s.name == name and labels.items() <= s.labels.items())


def series(text: str, name: str) -> list[Sample]:
    return [s for s in samples(text) if s.name == name]


def contract_problems(text: str, lint: dict[str, Any]) -> list[str]:
    """Every way `text` departs from the contract: missing or unknown metrics, wrong types, label sets
    that drifted, bounded labels outside their values, histogram buckets that differ."""
    contract = {m["name"]: m for m in lint["metrics"]}
    declared = declared_types(text)
    problems = [f"missing metric {name}" for name in contract if name not in declared]
    problems += [f"unknown metric {name}" for name in declared if name not in contract]
    problems += [
        f"{name} is a {kind}, the contract says {contract[name]['type']}"
        for name, kind in declared.items()
        if name in contract and kind != contract[name]["type"]
    ]
    for sample in samples(text):
        problems += _sample_problems(sample, contract, lint["bounded_labels"])
    problems += _bucket_problems(text, contract)
    return problems


def _metric_of(sample_name: str, contract: dict[str, Any]) -> dict[str, Any] | None:
    if sample_name in contract and contract[sample_name]["type"] != "histogram":
        return contract[sample_name]
    for suffix in HISTOGRAM_SUFFIXES:
        base = sample_name.removesuffix(suffix)
        if base != sample_name and contract.get(base, {}).get("type") == "histogram":
            return contract[base]
    return None


def _sample_problems(sample: Sample, contract: dict[str, Any], bounded: dict[str, list[str]]) -> list[str]:
    metric = _metric_of(sample.name, contract)
    if metric is None:
        return [f"unknown series {sample.name}{sample.labels}"]
    labels = {k: v for k, v in sample.labels.items() if not (k == "le" and sample.name.endswith("_bucket"))}
    problems = []
    if set(labels) != set(metric["labels"]):
        problems.append(
            f"{sample.name} has labels {sorted(labels)}, the contract says {sorted(metric['labels'])}"
        )
    allowed = {**bounded, **metric.get("label_values", {})}
    for label, got in labels.items():
        if label in allowed and got not in allowed[label]:
            problems.append(f"{sample.name}: {label}={got!r} is outside {allowed[label]}")
    return problems


def _bucket_problems(text: str, contract: dict[str, Any]) -> Iterator[str]:
    for name, metric in contract.items():
        if metric["type"] != "histogram":
            continue
        expected = [float(b) for b in metric["buckets"]] + [math.inf]
        by_series: dict[tuple[tuple[str, str], ...], list[float]] = {}
        for s in series(text, name + "_bucket"):
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            by_series.setdefault(key, []).append(float(s.labels["le"]))
        for key, bounds in by_series.items():
            if sorted(bounds) != expected:
                yield f"{name}{dict(key)} has buckets {sorted(bounds)}, the contract says {expected}"
