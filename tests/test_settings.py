"""Configuration: strict validation, precedence (flags > environment > file), the shipped example."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestratord.settings import ConfigError, load_settings
from tests.fakes.servers import REPO


def test_the_commented_example_is_valid() -> None:
    settings = load_settings(REPO / "examples" / "pools.yaml")
    assert [p.id for p in settings.pools] == ["default"]
    assert settings.queue.tenant_capacity == 256


def test_environment_overrides_the_file_and_flags_override_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("port: 9000\nqueue: {capacity: 10}\n")
    assert load_settings(config).queue.capacity == 10
    monkeypatch.setenv("ORCHD_QUEUE__CAPACITY", "64")
    monkeypatch.setenv("ORCHD_PORT", "9100")
    settings = load_settings(config)
    assert (settings.queue.capacity, settings.port) == (64, 9100)
    assert load_settings(config, port=9200).port == 9200


@pytest.mark.parametrize(
    ("yaml_text", "fragment"),
    [
        ("colour: red\n", "colour: unknown key"),
        ("pools:\n  - {id: a, engine: mock, models: [m]}\n", "pools.0.replicas: field required"),
        ("pools:\n  - {id: a, engine: tgi, models: [m], replicas: [{id: r}]}\n", "need a url"),
        ("pools:\n  - {id: a, engine: warp, models: [m], replicas: [{id: r}]}\n", "pools.0.engine"),
        ("queue: {full_policy: yolo}\n", "queue.full_policy"),
        ("state_url: postgres://x\n", "state_url"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("pools: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_key_and_the_file(tmp_path: Path, yaml_text: str, fragment: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert str(config) in str(caught.value)
    assert fragment in str(caught.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("overrides", "on"),
    [
        ({}, True),  # loopback
        ({"host": "0.0.0.0", "auth": {"allow_unauthenticated": True}}, False),  # the network, no keys
        ({"host": "0.0.0.0", "auth": {"keys": [{"key": "k" * 32, "tenant": "t", "role": "admin"}]}}, True),
        ({"host": "0.0.0.0", "auth": {"allow_unauthenticated": True}, "ui": {"enabled": True}}, True),
        ({"ui": {"enabled": False}}, False),
    ],
)
def test_the_queue_page_is_off_on_the_network_without_keys(overrides: dict[str, object], on: bool) -> None:
    assert load_settings(None, **overrides).ui_enabled is on
