"""Factory fixtures: settings, a loopback orchestratord server, an HTTP client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import hypothesis.internal.conjecture.optimiser  # noqa: F401  (see below)
import pytest

from orchestratord.app import create_app
from orchestratord.logs import configure
from orchestratord.settings import Settings, load_settings
from tests.fakes.servers import LoopbackServer, serve_in_thread

configure("warning", "json")
# Hypothesis imports its optimiser only when a test first reaches that phase, and pytest's assertion
# rewriter then parses it mid-test. On CPython 3.11.7 that parse raised "AST constructor recursion depth
# mismatch" (a SystemError) after the Redis tests, as it does when a collected object's finalizer runs
# inside the AST builder; imported here, before any test, it is parsed while nothing else runs.


def mock_pool(**overrides: Any) -> dict[str, Any]:
    pool: dict[str, Any] = {"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}]}
    pool.update(overrides)
    return pool


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        return load_settings(None, **overrides)

    return build


@pytest.fixture
def make_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LoopbackServer]]:
    """`make_server(**settings_overrides)` starts orchestratord on a free loopback port. Its model
    catalog lives in a fresh temporary directory unless the test names one."""
    with ExitStack() as stack:

        def start(**overrides: Any) -> LoopbackServer:
            overrides.setdefault("catalog", {"dir": str(tmp_path_factory.mktemp("catalog"))})
            overrides.setdefault("shutdown_grace_s", 0.2)  # a test's leftover jobs end at once on teardown
            settings = load_settings(None, **overrides)
            return stack.enter_context(serve_in_thread(create_app(settings)))

        yield start


@pytest.fixture
def server(make_server: Callable[..., LoopbackServer]) -> LoopbackServer:
    return make_server()


@pytest.fixture
def client(server: LoopbackServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        yield c
