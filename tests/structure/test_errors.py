"""One error hierarchy, one mapping per wire, one way to fail a job: checked on the source itself, so a
change that hand-builds an error payload or ends a job around `Endings` fails here."""

from __future__ import annotations

import ast
import gc
import inspect
from pathlib import Path

import jsonschema
import pytest
import yaml

from orchestratord import errors
from orchestratord.errors import OrchestratorError, error_event

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "orchestratord"
# The state backends own the terminal step itself (`finish`); `endings` is the one caller that fails
# or cancels a job with it, `relay` the one that ends a job well.
BACKENDS = {PACKAGE / "state"}


def sources() -> dict[Path, ast.Module]:
    """Every module's AST. The garbage collector stays off while parsing: here, after the Redis tests,
    CPython 3.11.7's AST builder raised "AST constructor recursion depth mismatch" (a SystemError),
    as it does when Python code (a collected object's finalizer) runs inside it."""
    gc.collect()
    gc.disable()
    try:
        return {path: ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}
    finally:
        gc.enable()


def error_classes() -> list[type[OrchestratorError]]:
    return [
        c for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, OrchestratorError) and c is not OrchestratorError
    ]  # fmt: skip


def test_every_error_class_is_used_where_a_job_or_request_goes_wrong() -> None:
    used = {
        node.id
        for path, tree in sources().items()
        if path.name != "errors.py" or path.parent != PACKAGE
        for node in ast.walk(tree)
        if isinstance(node, ast.Name)
    }
    unused = sorted(c.__name__ for c in error_classes() if c.__name__ not in used)
    assert unused == [], f"error classes nothing raises: {unused}"


def test_every_error_class_is_in_the_tree_the_module_docstring_draws() -> None:
    tree = errors.__doc__ or ""
    missing = [c.__name__ for c in error_classes() if c.__name__ not in tree]
    assert missing == []


def test_no_error_payload_is_built_by_hand() -> None:
    """A dict with a "code" key is an error payload: only the two wire mappings build one."""
    allowed = {PACKAGE / "api" / "errors.py", PACKAGE / "errors.py"}
    builders = []
    for path, tree in sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict) and any(
                isinstance(k, ast.Constant) and k.value == "code" for k in node.keys
            ):
                builders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    outside = [b for b in builders if not any(b.startswith(str(a.relative_to(ROOT))) for a in allowed)]
    assert outside == []


def test_only_endings_fails_or_cancels_a_job() -> None:
    """Every `finish(..., JobState.FAILED | CANCELED, ...)` outside the backends is in endings.py."""
    callers = []
    for path, tree in sources().items():
        if any(path.is_relative_to(b) for b in BACKENDS):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "finish":
                states = [a.attr for a in node.args if isinstance(a, ast.Attribute)]
                if {"FAILED", "CANCELED"} & set(states):
                    callers.append(path.relative_to(ROOT).as_posix())
    assert sorted(set(callers)) == ["orchestratord/endings.py"]


def contract_schema(name: str) -> dict[str, object]:
    document = yaml.safe_load((ROOT / "contracts" / "openapi" / "data.yaml").read_text())
    schema: dict[str, object] = {"$ref": f"#/components/schemas/{name}", **document}
    return schema


@pytest.mark.parametrize("cls", error_classes(), ids=lambda c: c.__name__)
def test_every_error_renders_as_the_contracts_error_event(cls: type[OrchestratorError]) -> None:
    plain = error_event(cls("what happened; what to do"))
    assert plain == {
        "code": cls.kind.value,
        "message": "what happened; what to do",
        "retriable": cls.retriable,
    }
    full = error_event(cls("m", retry_after_ms=250, engine="vllm", pool_id="p", retriable=True))
    assert full == {
        "code": cls.kind.value, "message": "m", "retriable": True, "retry_after_ms": 250,
        "engine": "vllm", "pool_id": "p",
    }  # fmt: skip
    jsonschema.validate(plain, contract_schema("ErrorEvent"))
    jsonschema.validate(full, contract_schema("ErrorEvent"))
