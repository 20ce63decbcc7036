"""deploy/k8s renders and fits together (issue 17 item 6). No cluster runs here: `kubectl kustomize`
renders the base and the example overlay offline, kubernetes-validate checks every object against the
Kubernetes API's JSON schemas (strict: an unknown field fails), and the tests check what no schema
can: the Service and the PodDisruptionBudget select the orchestratord pods, the probes, the
termination grace against the drain orchestratord runs on SIGTERM, the ConfigMap's configuration
loaded through orchestratord.settings as `orchestratord serve` loads it, the ServiceMonitor (a CRD
the validator has no schema for: its fields are checked here), and the autoscaler against the
prometheus-adapter rule it reads."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from orchestratord.cli import build_parser, uvicorn_config
from orchestratord.settings import CatalogConfig, Settings, load_settings
from orchestratord.shutdown import CANCEL_WAIT_S
from tests.fakes.servers import REPO
from tests.observability.exposition import load_lint
from tests.observability.promql import labels_used, metrics_used

K8S = REPO / "deploy" / "k8s"
RENDERS = ("base", "example")
NAMESPACE = "orchestratord"  # the example overlay's
# The oldest Kubernetes the manifests are for (PodDisruptionBudget's unhealthyPodEvictionPolicy is GA
# in 1.31) and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.31", kubernetes_validate.latest_version())
# Labels Prometheus Operator gives every series it scrapes through a ServiceMonitor.
TARGET_LABELS = {"namespace", "service", "pod", "container", "endpoint", "job", "instance"}
# ServiceMonitor fields (monitoring.coreos.com/v1) these manifests may use; anything else is a typo
# until it is added here after a look at the CRD.
SERVICE_MONITOR_SPEC = {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels"}
SERVICE_MONITOR_ENDPOINT = {"port", "path", "scheme", "interval", "scrapeTimeout", "authorization"}
Obj = dict[str, Any]


# ---- rendering ----------------------------------------------------------------------------------------


def kubectl() -> str:
    """kubectl from PATH, else the one ci/setup.sh installs into the venv when PATH has none."""
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    assert found, "kubectl is missing: ci/setup.sh installs it (bash ci/setup.sh test)"
    return found


def render(directory: str) -> list[Obj]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(K8S / directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {name: render(name) for name in RENDERS}


def only(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    (found,) = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return found


def deployment(objs: list[Obj]) -> Obj:
    return only(objs, "Deployment", "orchestratord")


def container(objs: list[Obj]) -> Obj:
    (found,) = deployment(objs)["spec"]["template"]["spec"]["containers"]
    return found


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def pod_templates(objs: list[Obj]) -> dict[str, dict[str, str]]:
    """Workload name -> the labels of its pods."""
    return {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in objs
        if o["kind"] in ("Deployment", "StatefulSet")
    }


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


# ---- the configuration, as `orchestratord serve` in the image loads it ----------------------------------


def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def entrypoint() -> list[str]:
    (line,) = [ln for ln in dockerfile().splitlines() if ln.startswith("ENTRYPOINT ")]
    argv: list[str] = json.loads(line.removeprefix("ENTRYPOINT "))
    return argv


def image_env(name: str) -> str:
    match = re.search(rf"^ENV {name}=(\S+)$", dockerfile(), re.M)
    assert match, f"the Dockerfile sets no {name}"
    return match.group(1)


def mounted(objs: list[Obj], path: str) -> tuple[Obj, Obj]:
    """The volume mount of the container that `path` lies in, and its volume."""
    mounts = [m for m in container(objs)["volumeMounts"] if Path(path).is_relative_to(m["mountPath"])]
    assert mounts, f"{path} is on no volume of the orchestratord container"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volumes = deployment(objs)["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    return mount, volume


def config_text(objs: list[Obj], path: str) -> str:
    """The file at `path` in the container, from the ConfigMap mounted there."""
    mount, volume = mounted(objs, path)
    config_map = only(objs, "ConfigMap", volume["configMap"]["name"])
    text: str = config_map["data"][str(Path(path).relative_to(mount["mountPath"]))]
    return text


def check_keys_secret(objs: list[Obj], keys_file: str) -> None:
    """auth.keys_file is the file the keys Secret's item puts there."""
    mount, volume = mounted(objs, keys_file)
    items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
    assert items.get(str(Path(keys_file).relative_to(mount["mountPath"]))), (keys_file, volume)


def load_pod_settings(objs: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the pod's `orchestratord serve` builds them: the image's entrypoint with the
    container's args, the ConfigMap's file, the container's ORCHD_* environment; the keys Secret (made
    by the operator, so not in the manifests) holds one digest, as docs/kubernetes.md makes it."""
    args = build_parser().parse_args([*entrypoint()[1:], *container(objs).get("args", [])])
    data = yaml.safe_load(config_text(objs, args.config))
    check_keys_secret(objs, data["auth"]["keys_file"])
    keys = tmp_path / "keys"
    keys.write_text(f"{hashlib.sha256(b'k' * 32).hexdigest()} default admin\n")
    (tmp_path / "orchestratord.yaml").write_text(
        yaml.safe_dump({**data, "auth": {**data["auth"], "keys_file": str(keys)}})
    )
    for name in [n for n in os.environ if n.startswith("ORCHD_")]:
        monkeypatch.delenv(name)
    for env in container(objs).get("env", []):
        monkeypatch.setenv(env["name"], env["value"])
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # the image's /var/lib is not writable here
    return load_settings(tmp_path / "orchestratord.yaml", host=args.host, port=args.port)


@pytest.fixture(params=RENDERS)
def objs(request: pytest.FixtureRequest, rendered: dict[str, list[Obj]]) -> list[Obj]:
    return rendered[request.param]


@pytest.fixture
def settings(objs: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return load_pod_settings(objs, tmp_path, monkeypatch)


@pytest.fixture
def example(rendered: dict[str, list[Obj]]) -> list[Obj]:
    return rendered["example"]


# ---- schemas ------------------------------------------------------------------------------------------


def test_each_directory_renders_the_objects_it_should(rendered: dict[str, list[Obj]]) -> None:
    base = {"ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget"}
    assert {o["kind"] for o in rendered["base"]} == base
    assert all("namespace" not in o["metadata"] for o in rendered["base"]), "the base names no namespace"
    extra = {"Namespace", "StatefulSet", "HorizontalPodAutoscaler", "ServiceMonitor"}
    assert {o["kind"] for o in rendered["example"]} == base | extra
    for o in rendered["example"]:
        assert o["metadata"].get("namespace", NAMESPACE) == NAMESPACE or o["kind"] == "Namespace", o


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_kubernetes(objs: list[Obj], version: str) -> None:
    for obj in objs:
        if obj["kind"] == "ServiceMonitor":
            continue  # a CRD: test_the_service_monitor_scrapes_every_pod_without_a_key
        kubernetes_validate.validate(obj, version, strict=True)


# ---- the Deployment, its Service and its budget -------------------------------------------------------


def test_the_service_and_the_budget_select_the_orchestratord_pods_and_no_other(objs: list[Obj]) -> None:
    pods = pod_templates(objs)
    spec = deployment(objs)["spec"]
    assert selects(spec["selector"]["matchLabels"], pods["orchestratord"])
    service = only(objs, "Service", "orchestratord")["spec"]
    budget = only(objs, "PodDisruptionBudget")["spec"]
    spread = [
        c["labelSelector"]["matchLabels"] for c in spec["template"]["spec"]["topologySpreadConstraints"]
    ]
    for selector in [service["selector"], budget["selector"]["matchLabels"], *spread]:
        assert {name for name, labels in pods.items() if selects(selector, labels)} == {"orchestratord"}
    ports = {p["name"]: p["containerPort"] for p in container(objs)["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= ports.keys()
    assert budget.get("maxUnavailable") == 1 and "minAvailable" not in budget


def test_three_replicas_by_default_and_the_autoscaler_owns_them_when_present(objs: list[Obj]) -> None:
    hpas = [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"]
    replicas = deployment(objs)["spec"].get("replicas")
    if hpas:
        assert replicas is None, "with an autoscaler, `kubectl apply` must not reset the replica count"
        assert hpas[0]["spec"]["minReplicas"] == 3
    else:
        assert replicas == 3


def test_probes_readiness_on_readyz_liveness_on_healthz(objs: list[Obj], settings: Settings) -> None:
    main = container(objs)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    probes = {kind: main[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert ports[probe["port"]] == settings.port
        assert probe["path"] in settings.auth.open_paths, "the kubelet sends no API key"


def test_termination_grace_outlasts_the_drain(objs: list[Obj], settings: Settings) -> None:
    """preStop sleep, then SIGTERM: running jobs get shutdown_grace_s, the rest CANCEL_WAIT_S to end,
    then uvicorn may wait for connections up to its graceful-shutdown timeout (orchestratord/cli.py)."""
    pod = deployment(objs)["spec"]["template"]["spec"]
    sleep, pause = container(objs)["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep"
    close = uvicorn_config(None, settings).timeout_graceful_shutdown  # type: ignore[arg-type]
    assert close is not None
    drain = int(pause) + settings.shutdown_grace_s + CANCEL_WAIT_S + close
    assert pod["terminationGracePeriodSeconds"] > drain
    assert pod["terminationGracePeriodSeconds"] > Settings.model_fields["shutdown_grace_s"].default


def test_the_image_is_the_dockerfiles_with_its_entrypoint(objs: list[Obj]) -> None:
    main = container(objs)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    name, _, tag = main["image"].rpartition(":")
    assert name.rsplit("/", 1)[-1] == "orchestratord" and tag == version
    assert "command" not in main, "the image's entrypoint (orchestratord serve) stays"
    (exposed,) = re.findall(r"^EXPOSE (\d+)$", dockerfile(), re.M)
    assert [p["containerPort"] for p in main["ports"]] == [int(exposed)]


def test_every_pod_runs_restricted_and_orchestratord_writes_only_to_its_volumes(objs: list[Obj]) -> None:
    uid = re.search(r"--uid (\d+)", dockerfile())
    assert uid
    pod = deployment(objs)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid.group(1))
    for workload in [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]:
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for box in spec["containers"]:
            context = box["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "resources" in box and box["resources"]["limits"]["memory"]


def test_the_catalog_directory_is_a_writable_volume(objs: list[Obj], monkeypatch: pytest.MonkeyPatch) -> None:
    """The model catalog (SQLite) is all orchestratord writes; in the image it lives under
    $XDG_STATE_HOME."""
    monkeypatch.setenv("XDG_STATE_HOME", image_env("XDG_STATE_HOME"))
    mount, volume = mounted(objs, CatalogConfig().dir)
    assert "emptyDir" in volume and not mount.get("readOnly", False)


# ---- the configuration --------------------------------------------------------------------------------


def test_the_config_map_holds_a_valid_configuration_on_redis(objs: list[Obj], settings: Settings) -> None:
    state = urlsplit(settings.state_url)
    assert state.scheme == "redis", "several replicas share their state only through Redis"
    assert settings.host == "0.0.0.0" and settings.auth.keys, "off loopback, behind API keys"
    assert settings.redis.heartbeat_s * 2 <= settings.redis.lease_ttl_s
    assert any(pool.engine == "mock" for pool in settings.pools)


def test_the_state_url_names_the_example_redis(example: list[Obj], settings: Settings) -> None:
    state = urlsplit(settings.state_url)
    service = only(example, "Service", state.hostname)
    assert (state.port or 6379) in [p["port"] for p in service["spec"]["ports"]]
    pods = pod_templates(example)
    assert {name for name, labels in pods.items() if selects(service["spec"]["selector"], labels)} == {
        "redis"
    }


def test_the_example_redis_persists_and_never_evicts(example: list[Obj]) -> None:
    redis = only(example, "StatefulSet", "redis")
    (box,) = redis["spec"]["template"]["spec"]["containers"]
    args = box["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    major, minor = (int(n) for n in re.findall(r"redis:(\d+)\.(\d+)", box["image"])[0])
    assert (major, minor) >= (6, 2), "the Lua scripts need Redis 6.2"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] in [m["name"] for m in box["volumeMounts"] if m["mountPath"] == "/data"]


# ---- monitoring and autoscaling -----------------------------------------------------------------------


def test_the_service_monitor_scrapes_every_pod_without_a_key(example: list[Obj], settings: Settings) -> None:
    monitor = only(example, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= SERVICE_MONITOR_SPEC, set(spec) - SERVICE_MONITOR_SPEC
    services = [o for o in example if o["kind"] == "Service"]
    chosen = [
        s for s in services if selects(spec["selector"]["matchLabels"], s["metadata"].get("labels", {}))
    ]
    assert [s["metadata"]["name"] for s in chosen] == ["orchestratord"]
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= SERVICE_MONITOR_ENDPOINT, set(endpoint) - SERVICE_MONITOR_ENDPOINT
    assert endpoint["port"] in [p["name"] for p in chosen[0]["spec"]["ports"]]
    assert endpoint["path"] == "/metrics" and "/metrics" in settings.auth.open_paths
    assert seconds(endpoint["scrapeTimeout"]) <= seconds(endpoint["interval"])


def adapter_rule() -> Obj:
    values = yaml.safe_load((K8S / "autoscaling" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["external"]
    return dict(rule)


def test_the_autoscaler_scales_the_deployment_on_the_adapters_metric(example: list[Obj]) -> None:
    hpa = only(example, "HorizontalPodAutoscaler")["spec"]
    target = deployment(example)
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": target["metadata"]["name"],
    }
    (external,) = [m["external"] for m in hpa["metrics"] if m["type"] == "External"]
    assert external["metric"]["name"] == adapter_rule()["name"]["as"]
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"], "one replica left by the budget keeps serving"


def adapter_query() -> str:
    """The rule's query as the adapter sends it for the HPA in the example's namespace."""
    query: str = adapter_rule()["metricsQuery"]
    for name, value in {
        "Series": "queue_depth",
        "LabelMatchers": f'namespace="{NAMESPACE}"',
        "GroupBy": "namespace",
    }.items():
        query = query.replace(f"<<.{name}>>", value)
    assert "<<" not in query, query
    return query


def test_the_adapter_rule_reads_the_contracts_queue_depth(example: list[Obj], tmp_path: Path) -> None:
    rule = adapter_rule()
    (metric,) = [m for m in load_lint()["metrics"] if m["name"] == "queue_depth"]
    for expr in (rule["seriesQuery"], adapter_query()):
        assert metrics_used(expr) == {"queue_depth"}, expr
        assert labels_used(expr) <= set(metric["labels"]) | TARGET_LABELS, expr
    assert f'container="{container(example)["name"]}"' in rule["seriesQuery"]
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: install Debian's `prometheus` package (ci/setup.sh does)"
    rules = {
        "groups": [{"name": "adapter", "rules": [{"record": "adapter:queue_depth", "expr": adapter_query()}]}]
    }
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    checked = subprocess.run(
        [promtool, "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_docs_show_how_to_apply_it() -> None:
    doc = (REPO / "docs" / "kubernetes.md").read_text()
    assert "kubectl apply -k deploy/k8s/example" in doc
    for directory in ("base", "redis", "monitoring", "autoscaling", "example"):
        assert (K8S / directory / "kustomization.yaml").is_file()
        assert f"deploy/k8s/{directory}" in doc, directory
