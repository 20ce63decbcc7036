"""One scenario run shared by the metrics and log tests of this package."""

from __future__ import annotations

import pytest

from tests.observability import scenario


@pytest.fixture(scope="package")
def run(tmp_path_factory: pytest.TempPathFactory) -> scenario.Run:
    return scenario.run(tmp_path_factory.mktemp("observability"))
