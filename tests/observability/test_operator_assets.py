"""The operators' assets: alert rules and the Prometheus config pass `promtool`, the alert unit tests
pass, and every query of the rules and of the Grafana dashboard uses only metric names (and their
labels) from the contract, ci/metrics.lint.json."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.exposition import HISTOGRAM_SUFFIXES, load_lint
from tests.observability.promql import labels_used, metrics_used, substitute

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "orchestratord.json"
ALERTS = {
    "OrchestratordQueueSaturated",
    "OrchestratordQueueFull",
    "OrchestratordHighRejectionRate",
    "OrchestratordTTFTP95OverSLO",
    "OrchestratordPoolNotReady",
    "OrchestratordHighErrorRate",
}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe is not None, "promtool is missing: install Debian's `prometheus` package (ci/setup.sh does)"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def series_names(lint: dict[str, Any]) -> dict[str, set[str]]:
    """Every name a query may select, with the labels it carries."""
    names: dict[str, set[str]] = {}
    for metric in lint["metrics"]:
        labels = set(metric["labels"])
        names[metric["name"]] = labels
        if metric["type"] == "histogram":
            names.update({metric["name"] + s: labels for s in HISTOGRAM_SUFFIXES})
            names[metric["name"] + "_bucket"] = labels | {"le"}
    return names


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            inner = variable["query"]["query"]  # label_values(metric, label)
            metric, label = inner.removeprefix("label_values(").removesuffix(")").split(",")
            queries.append(f"count by ({label.strip()}) ({metric.strip()})")
    return queries


def rule_queries() -> list[str]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rules_and_the_config() -> None:
    checked = promtool("check", "rules", "rules.yml", cwd=RULES.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = promtool("check", "config", "prometheus.yml", cwd=RULES.parent)
    assert config.returncode == 0, config.stdout + config.stderr


def test_each_alert_fires_on_its_incident() -> None:
    result = promtool("test", "rules", "rules.test.yml", cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_required_alerts_exist() -> None:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    assert {rule["alert"] for group in groups for rule in group["rules"]} == ALERTS


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_queries_use_only_contract_names_and_labels(source: str) -> None:
    allowed = series_names(load_lint())
    queries = rule_queries() if source == "rules" else dashboard_queries()
    assert len(queries) >= 6
    for expr in queries:
        used = metrics_used(substitute(expr))
        assert used, f"no metric in {expr!r}"
        assert used <= allowed.keys(), f"{sorted(used - allowed.keys())} are not contract metrics: {expr!r}"
        known_labels = set().union(*(allowed[name] for name in used))
        assert labels_used(substitute(expr)) <= known_labels, f"a label no metric of {expr!r} has"


def test_the_dashboard_shows_every_metric() -> None:
    lint = load_lint()
    shown = set().union(*(metrics_used(substitute(q)) for q in dashboard_queries()))
    bases = {name.removesuffix(s) for name in shown for s in ("", *HISTOGRAM_SUFFIXES) if name.endswith(s)}
    assert {m["name"] for m in lint["metrics"]} <= bases


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query, wrapped as a recording rule."""
    rules = [
        {"record": f"dashboard:query{i}", "expr": substitute(q)} for i, q in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_checks_are_not_vacuous() -> None:
    assert metrics_used('sum by (pool_id) (rate(tasks_begun_total{reason="x"}[5m])) > 1e-9') == {
        "tasks_begun_total"
    }
    assert labels_used('sum by (pool) (queue_depth{zone=~"a"})') == {"pool", "zone"}
    expr = "histogram_quantile(0.95, sum by (le) (rate(latency_first_token_ms_bucket[5m]))) / pool_ready"
    assert metrics_used(expr) == {"latency_first_token_ms_bucket", "pool_ready"}
