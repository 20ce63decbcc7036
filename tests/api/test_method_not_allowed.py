"""A method a path does not serve gets 405 with `Allow` naming every method the contract declares for
that path (Starlette alone names the first route's only), in the error shape of the path's surface."""

from __future__ import annotations

import re

import httpx

from orchestratord.api.openapi import contract_document
from tests.fakes.servers import LoopbackServer

SAMPLE = "3f6c1e2a-0000-4000-8000-000000000000"


def test_every_405_allows_every_declared_method(server: LoopbackServer) -> None:
    paths = contract_document()["paths"]
    checked = 0
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        for path, item in paths.items():
            declared = {m.upper() for m in item if m in {"get", "post", "put", "patch", "delete"}}
            url = re.sub(r"\{[^}]+\}", SAMPLE, path)
            for method in {"PUT", "PATCH", "OPTIONS"} - declared:
                response = client.request(method, url)
                assert response.status_code == 405, (method, path, response.status_code)
                assert set(response.headers["allow"].split(", ")) == declared, (method, path)
                checked += 1
    assert checked > 40
