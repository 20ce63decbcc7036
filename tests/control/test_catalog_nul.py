"""A catalog source with a NUL character: refused at registration (400 naming the field), and an entry
that holds one anyway (registered before the check existed) gets a 400 from verify, never a 500."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from orchestratord.catalog import Catalog
from orchestratord.errors import InvalidParams
from tests.control.helpers import assert_envelope, client
from tests.fakes.servers import LoopbackServer

ServerFactory = Callable[..., LoopbackServer]


def test_a_source_with_nul_is_refused_at_registration(make_server: ServerFactory) -> None:
    server = make_server()
    with client(server) as c:
        body = {"id": "mock", "digest": "a" * 64, "source": "/srv/models/mo\x00ck.gguf"}
        message = assert_envelope(c.post("/v1/catalog/models", json=body), 400, "INVALID_PARAMS")["message"]
        assert "source" in message and "NUL" in message
        assert c.get("/v1/catalog/models").json() == {"models": []}


@pytest.mark.parametrize("source", ["/srv/models/mo\x00ck.gguf", "file:///srv/mo%00ck.gguf"])
async def test_verify_of_an_unnameable_path_is_invalid_params(tmp_path: Path, source: str) -> None:
    catalog = Catalog(tmp_path)
    await catalog.open()
    try:
        await catalog.add("mock", "a" * 64, source, (), "Active")
        with pytest.raises(InvalidParams, match="not a valid path"):
            await catalog.verify("mock")
        assert catalog.get("mock").trust == "unverified"
    finally:
        await catalog.aclose()
