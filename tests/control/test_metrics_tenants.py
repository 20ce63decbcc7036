"""Tenant names on /metrics: an open /metrics beside keyed tenants shows their hashes, never their
names; a /metrics that needs a key (like the rest of the API) shows the names."""

from __future__ import annotations

from collections.abc import Callable

from orchestratord.metrics import hashed_tenant
from tests.control.helpers import ACME_KEY, ADMIN_KEY, KEYS, client, task
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.observability.exposition import series

ServerFactory = Callable[..., LoopbackServer]


def shares(server: LoopbackServer, key: str | None = None) -> set[str]:
    with client(server, ACME_KEY) as acme:
        read_events(acme, task(acme).json()["sse_url"])
    with client(server, key) as reader:
        text = reader.get("/metrics").text
    return {s.labels["tenant"] for s in series(text, "admission_share")}


def test_an_open_metrics_endpoint_shows_hashed_tenants(make_server: ServerFactory) -> None:
    server = make_server(auth={"keys": KEYS})  # /metrics open by default
    tenants = shares(server)
    assert tenants == {hashed_tenant("acme")} and hashed_tenant("acme").startswith("t-")
    assert "acme" not in tenants


def test_a_protected_metrics_endpoint_shows_tenant_names(make_server: ServerFactory) -> None:
    server = make_server(auth={"keys": KEYS, "open_paths": ["/healthz", "/readyz"]})
    assert shares(server, ADMIN_KEY) == {"acme"}
