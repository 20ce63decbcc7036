"""Keys, clients and small helpers shared by the control-plane tests."""

from __future__ import annotations

from typing import Any

import httpx

from orchestratord.auth import hash_key
from tests.fakes.servers import LoopbackServer

ACME_KEY = "acme-client-0123456789abcdef0123"
GLOBEX_KEY = "globex-client-0123456789abcdef01"
ADMIN_KEY = "ops-admin-0123456789abcdef012345"

# Plain keys for two client tenants (hashed when the settings are read) and a pre-hashed admin key.
KEYS: list[dict[str, str]] = [
    {"key": ACME_KEY, "tenant": "acme", "role": "client"},
    {"key": GLOBEX_KEY, "tenant": "globex", "role": "client"},
    {"key_sha256": hash_key(ADMIN_KEY), "tenant": "ops", "role": "admin"},
]


def client(server: LoopbackServer, key: str | None = None) -> httpx.Client:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=30)


def task(c: httpx.Client, **body: Any) -> httpx.Response:
    return c.post("/v1/tasks", json={"model_ref": "mock", "prompt": "hi", "max_tokens": 5, **body})


def admitted(c: httpx.Client, **body: Any) -> dict[str, Any]:
    response = task(c, **body)
    assert response.status_code == 202, response.text
    data: dict[str, Any] = response.json()
    return data


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert set(body) >= {"code", "message", "retriable"} and body["message"]
    return body
