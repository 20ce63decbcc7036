"""The served OpenAPI document is the contract itself: contracts/openapi/{data,control,openai}.yaml
merged."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml

CONTRACT_DIR = Path(__file__).resolve().parents[2] / "contracts" / "openapi"


@cache
def _load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CONTRACT_DIR / name).read_text(encoding="utf-8"))
    return loaded


def contract(name: str) -> dict[str, Any]:
    return copy.deepcopy(_load(name))


def contract_document() -> dict[str, Any]:
    """data.yaml, with the paths and components of control.yaml and openai.yaml merged in."""
    doc = contract("data.yaml")
    for name in ("control.yaml", "openai.yaml"):
        other = contract(name)
        for path, operations in other.get("paths", {}).items():
            doc["paths"].setdefault(path, {}).update(operations)  # e.g. GET /v1/tasks beside POST
        for section, items in other.get("components", {}).items():
            target = doc.setdefault("components", {}).setdefault(section, {})
            for key, item in items.items():
                # data.yaml's definitions win: the others refer to them (e.g. ErrorEnvelope).
                target.setdefault(key, item)
    return doc


def generated_document(app: Any) -> dict[str, Any]:
    """The document FastAPI derives from the routes, for the drift test.

    FastAPI declares a 422 on every route with parameters; our error mapping answers validation
    failures with 400 INVALID_PARAMS instead, so those 422 entries are dropped here.
    """
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    return doc
