"""Fixtures for the adapter tests: fake engines on loopback, and adapters closed after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx2
import pytest

from tests.fakes.engines.asgi import FakeEngine
from tests.fakes.engines.server import AppSwitch, serve
from worker_adapters._http import HttpAdapter
from worker_adapters.base import AdapterConfig

MakeAdapter = Callable[..., Any]


@pytest.fixture(scope="session")
def loopback() -> Iterator[tuple[AppSwitch, str]]:
    """One uvicorn server for the session; each test mounts its own fake engine on it."""
    switch = AppSwitch()
    with serve(switch) as url:
        yield switch, url


@pytest.fixture
def serve_fake(loopback: tuple[AppSwitch, str]) -> Iterator[Callable[[FakeEngine], str]]:
    """`serve_fake(engine)` mounts the fake on the loopback server and returns its base URL."""
    switch, url = loopback

    def mount(engine: FakeEngine) -> str:
        switch.app = engine
        return url

    yield mount
    switch.app = None


@pytest.fixture
async def make_adapter() -> AsyncIterator[MakeAdapter]:
    """`make_adapter(cls, base_url, model=…, api=…, read_timeout_s=…, first_token_timeout_s=…, client=…,
    **options)`."""
    made: list[HttpAdapter] = []

    def make(
        cls: type[HttpAdapter],
        base_url: str,
        *,
        model: str = "m",
        api: str = "auto",
        read_timeout_s: float = 10.0,
        first_token_timeout_s: float = 10.0,
        ctx_max: int | None = None,
        client: httpx2.AsyncClient | None = None,
        **options: object,
    ) -> Any:
        config = AdapterConfig(
            engine=cls.engine,
            base_url=base_url,
            model=model,
            api=api,  # type: ignore[arg-type]
            read_timeout_s=read_timeout_s,
            first_token_timeout_s=first_token_timeout_s,
            ctx_max=ctx_max,
            options=options,
        )
        adapter = cls(config, client=client)
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        await adapter.aclose()
