"""The client's tests run against the package in clients/python, installed or not."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestratord.app import create_app
from orchestratord.settings import load_settings
from tests.fakes.servers import LoopbackServer, serve_in_thread

# `pip install -e clients/python` makes this a no-op; without it, the source tree is used directly.
if importlib.util.find_spec("orchestratord_client") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackServer]:
    """One orchestratord with the default settings (a mock pool), shared by the tests that need
    nothing else: each of them works on its own jobs and sessions, and a server costs about 0.3 s
    to start and drain. Tests that configure the server use `make_server`."""
    settings = load_settings(
        None, catalog={"dir": str(tmp_path_factory.mktemp("catalog"))}, shutdown_grace_s=0.2
    )
    with serve_in_thread(create_app(settings)) as loopback:
        yield loopback
