"""docker-compose.yml is consistent: no container engine runs here, so the test reads the file the way
compose would (variables interpolated, YAML merge keys) and checks that the services fit together
and that every config file it mounts exists and validates."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from orchestratord.settings import LimitsConfig, load_settings
from tests.fakes.servers import REPO

REPLICAS = ("orchestratord-1", "orchestratord-2")
ENV = {"ORCHD_API_KEY": "k" * 64, "LLAMA_MODEL": "qwen.gguf", "LLAMA_MODELS_DIR": "/srv/models"}
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`."""

    def value(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env and env[name] != "":
            return env[name]
        if op and op.endswith("?"):
            raise AssertionError(f"compose would stop: {arg}")
        return arg if op else ""

    return _VARIABLE.sub(value, text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(interpolate((REPO / "docker-compose.yml").read_text(), ENV))
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (named volumes left out)."""
    found = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        if host.startswith((".", "/")):
            found[container] = (REPO / host).resolve() if host.startswith(".") else Path(host)
    return found


def command_flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_the_deployment_has_every_part(compose: dict[str, Any]) -> None:
    parts = services(compose)
    assert set(parts) == {*REPLICAS, "redis", "lb", "llama-1", "llama-2", "prometheus", "grafana"}
    for name, service in parts.items():
        assert service.get("image"), f"{name} names its image"
    for name in REPLICAS:
        assert parts[name]["build"] == "." and parts[name]["image"] == "orchestratord:local"
    assert parts["redis"]["image"].startswith("redis:") and parts["lb"]["image"].startswith("nginx:")
    assert "llama.cpp" in parts["llama-1"]["image"] and parts["llama-2"]["image"] == parts["llama-1"]["image"]


def test_the_replicas_share_redis_and_one_valid_configuration(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = services(compose)
    first = parts[REPLICAS[0]]
    for name in REPLICAS:
        assert (
            parts[name]["environment"] == first["environment"] and parts[name]["volumes"] == first["volumes"]
        )
        assert parts[name]["depends_on"]["redis"] == {"condition": "service_healthy"}
    env = first["environment"]
    state = urlsplit(env["ORCHD_STATE_URL"])
    assert state.scheme == "redis" and state.hostname == "redis" and (state.port or 6379) == 6379
    config_path = command_flag(first["command"], "--config")
    host_config = mounts(first)[config_path]
    assert host_config.is_file()
    for key in [k for k in os.environ if k.startswith("ORCHD_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    settings = load_settings(host_config)
    assert settings.state_url == env["ORCHD_STATE_URL"] and settings.host == "0.0.0.0"
    assert settings.auth.keys and settings.redis.heartbeat_s * 2 <= settings.redis.lease_ttl_s
    engines = {pool.engine for pool in settings.pools}
    assert engines == {"mock", "llamacpp"}, "a mock engine pool and a llama.cpp server pool"
    llama_pool = next(pool for pool in settings.pools if pool.engine == "llamacpp")
    for replica in llama_pool.replicas:
        url = urlsplit(replica.url)
        engine = parts[str(url.hostname)]
        assert (
            str(url.port) == command_flag(engine["command"], "--port") and str(url.port) in engine["expose"]
        )


def test_the_llama_servers_read_their_model_from_a_volume(compose: dict[str, Any]) -> None:
    for name in ("llama-1", "llama-2"):
        service = services(compose)[name]
        model = command_flag(service["command"], "-m")
        assert model == "/models/qwen.gguf"
        assert service["volumes"] == ["/srv/models:/models:ro"]


def test_the_load_balancer_spreads_over_every_replica_without_buffering_streams(
    compose: dict[str, Any],
) -> None:
    lb = services(compose)["lb"]
    conf_path = mounts(lb)["/etc/nginx/conf.d/default.conf"]
    conf = conf_path.read_text()
    upstream = re.search(r"upstream orchestratord \{(.*?)\}", conf, re.S)
    assert upstream is not None
    assert sorted(re.findall(r"server ([\w.-]+):(\d+)", upstream.group(1))) == [(r, "8080") for r in REPLICAS]
    idle = re.search(r"keepalive_timeout (\d+)s;", upstream.group(1))
    assert idle is not None and int(idle.group(1)) < LimitsConfig().keep_alive_s, (
        "nginx drops an idle connection before the replica closes it (else a reused one meets the close)"
    )
    listen = re.search(r"listen (\d+);", conf)
    assert listen is not None and lb["ports"] == [f"8080:{listen.group(1)}"]
    assert "proxy_buffering off;" in conf and "proxy_pass http://orchestratord;" in conf
    timeout = re.search(r"proxy_read_timeout (\d+)(s|m|h);", conf)
    assert timeout is not None and timeout.group(2) in ("m", "h"), (
        "idle streams outlive the keep-alive interval"
    )
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "EXPOSE 8080" in dockerfile and '"--port", "8080"' in dockerfile


def test_prometheus_scrapes_every_replica_and_loads_the_rules(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    prometheus = services(compose)["prometheus"]
    files = mounts(prometheus)
    config = yaml.safe_load(files["/etc/prometheus/prometheus.yml"].read_text())
    targets = [t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert sorted(targets) == [f"{r}:8080" for r in REPLICAS]
    root = tmp_path / "etc" / "prometheus"  # the container's layout, to check the config as it sees it
    root.mkdir(parents=True)
    for container, host in files.items():
        assert host.is_file(), host
        shutil.copy(host, tmp_path / container.lstrip("/"))
    promtool = shutil.which("promtool")
    assert promtool is not None, (
        "promtool is missing: install Debian's `prometheus` package (ci/setup.sh does)"
    )
    checked = subprocess.run(
        [promtool, "check", "config", str(root / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(compose: dict[str, Any]) -> None:
    grafana = services(compose)["grafana"]
    files = mounts(grafana)
    datasources = files["/etc/grafana/provisioning/datasources"]
    source = yaml.safe_load((datasources / "prometheus.yml").read_text())["datasources"][0]
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus" and services(compose)["prometheus"]["ports"] == [f"{url.port}:9090"]
    providers = yaml.safe_load(
        (files["/etc/grafana/provisioning/dashboards"] / "orchestratord.yml").read_text()
    )
    dashboards_path = providers["providers"][0]["options"]["path"]
    dashboard = json.loads((files[dashboards_path] / "orchestratord.json").read_text())
    assert dashboard["uid"] == "orchestratord" and dashboard["panels"]


def test_missing_api_key_stops_compose() -> None:
    with pytest.raises(AssertionError, match="ORCHD_API_KEY"):
        interpolate((REPO / "docker-compose.yml").read_text(), {})
