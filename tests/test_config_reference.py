"""docs/configuration.md promises that every key is in the commented example examples/pools.yaml:
walk the Settings model and check that each field, at every depth, is written there as a key."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from orchestratord.settings import Settings
from tests.fakes.servers import REPO

EXAMPLE = REPO / "examples" / "pools.yaml"


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def _keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, key) of every field of `model`, its nested models, and those in lists or maps."""
    for name, info in model.model_fields.items():
        yield f"{prefix}{name}", name
        for nested in _models_in(info.annotation):
            yield from _keys(nested, f"{prefix}{name}.")


def test_the_walk_sees_nested_keys() -> None:
    paths = {path for path, _ in _keys(Settings)}
    nested = {"stream.send_timeout_s", "pools.replicas.options", "auth.keys.role", "budgets.tenants.cost"}
    assert nested <= paths


def test_every_settings_key_is_in_the_example() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    missing = [path for path, key in _keys(Settings) if not re.search(rf"(?<![\w.]){re.escape(key)}:", text)]
    assert missing == [], f"keys of Settings not written in {EXAMPLE.name}: {missing}"
