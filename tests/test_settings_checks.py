"""Configuration mistakes that used to pass or crash late: each stops start-up with a ConfigError (and
the CLI with exit code 2 and a message, no traceback) that names the key or variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestratord.settings import ConfigError, load_settings
from tests.fakes.servers import REPO

ACME = {"key": "acme-secret-key-0123456789", "tenant": "acme"}


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestratord", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [("ORCHD_POOLS", "not json"), ("ORCHD_QUEUE__CLASS_WEIGHTS", "{interactive: 8"), ("ORCHD_TENANTS", "[1")],
)
def test_an_environment_variable_that_is_not_json_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"{variable} is not valid JSON"):
        load_settings()


def test_the_cli_exits_2_with_one_message_for_a_bad_environment_variable(tmp_path: Path) -> None:
    result = _serve({"ORCHD_POOLS": "not json", "ORCHD_CATALOG__DIR": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.startswith("orchestratord: invalid configuration in the environment: ORCHD_POOLS")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["a-file/catalog", "nul\x00byte"])
def test_an_unwritable_catalog_dir_stops_start_up(tmp_path: Path, name: str) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    directory = str(tmp_path / name)
    with pytest.raises(ConfigError, match=r"catalog\.dir: cannot create or write") as caught:
        load_settings(catalog={"dir": directory})
    assert repr(directory) in str(caught.value)


def test_the_cli_exits_2_for_an_unwritable_catalog_dir(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    result = _serve({"ORCHD_CATALOG__DIR": str(tmp_path / "a-file" / "catalog")})
    assert result.returncode == 2
    assert "catalog.dir: cannot create or write" in result.stderr and "Traceback" not in result.stderr


def test_a_writable_catalog_dir_is_created(tmp_path: Path) -> None:
    settings = load_settings(catalog={"dir": str(tmp_path / "new" / "state")})
    assert Path(settings.catalog.dir).is_dir() and list(Path(settings.catalog.dir).iterdir()) == []


def test_a_tenant_listed_twice_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"repeated: \['acme'\]"):
        load_settings(tenants=[{"id": "acme", "weight": 2}, {"id": "globex"}, {"id": "acme", "rps": 5}])


def test_a_budget_for_an_unknown_tenant_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"budgets.tenants names tenants .*\['acm'\]"):
        load_settings(auth={"keys": [ACME]}, budgets={"tenants": {"acm": {"tokens": 10}}})
    with pytest.raises(ConfigError, match=r"\['acme'\]"):  # without keys every caller is `default`
        load_settings(budgets={"tenants": {"acme": {"tokens": 10}}})
    # a tenant an API key names, one `tenants` lists, and `default` without keys are all fine
    load_settings(auth={"keys": [ACME]}, budgets={"tenants": {"acme": {"tokens": 10}}})
    load_settings(tenants=[{"id": "acme"}], budgets={"tenants": {"acme": {"tokens": 10}}})
    load_settings(budgets={"tenants": {"default": {"tokens": 10}}})
