"""The import contracts (pyproject.toml, checked by `lint-imports` in ci/check.sh) can fail: each test
copies the source tree, breaks one rule the way a careless change would, and runs the checker on the
copy. A contract that let these through would be decoration."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def checked(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for package in ("orchestratord", "pool_manager", "worker_adapters"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(tree: Path, module: str, line: str) -> None:
    path = tree / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_unchanged_tree_keeps_every_contract(tree: Path) -> None:
    result = checked(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("orchestratord.admission", "import fastapi", "Services know no web framework"),
        ("orchestratord.endings", "import starlette.responses", "Services know no web framework"),
        ("orchestratord.dispatch", "import orchestratord.api.errors", "Every module of orchestratord"),
        ("orchestratord.housekeeping", "import orchestratord.dispatch", "Every module of orchestratord"),
        ("orchestratord.core.queue", "import orchestratord.state.base", "Every module of orchestratord"),
        ("worker_adapters.openai_http", "import orchestratord.errors", "Worker adapters never import"),
    ],
)
def test_a_forbidden_import_breaks_the_build(tree: Path, module: str, line: str, contract: str) -> None:
    add_import(tree, module, line)
    result = checked(tree)
    assert result.returncode != 0
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(row.startswith(contract) for row in broken), result.stdout


def test_a_new_module_without_a_layer_breaks_the_build(tree: Path) -> None:
    (tree / "orchestratord" / "newcomer.py").write_text('"""A module nobody placed in a layer."""\n')
    result = checked(tree)
    assert result.returncode != 0
    assert "newcomer" in result.stdout
