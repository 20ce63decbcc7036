"""/healthz and /readyz as load balancers and Kubernetes probes use them (docs/operations.md)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.conftest import mock_pool
from tests.fakes.servers import LoopbackServer
from tests.observability.exposition import value


def test_ready_with_a_ready_pool(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server()
    with httpx.Client(base_url=server.base_url, timeout=10) as c:
        assert c.get("/healthz").json() == {"status": "ok", "checks": {"process": True}}
        ready = c.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"pool_ready": True, "state_backend": True, "accepting": True}
        assert value(c.get("/metrics").text, "pool_ready", pool_id="default") == 1


def test_alive_but_not_ready_when_no_engine_is(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(pools=[mock_pool(options={"ready": False})])
    with httpx.Client(base_url=server.base_url, timeout=10) as c:
        assert c.get("/healthz").status_code == 200  # liveness: the process is fine, do not restart it
        ready = c.get("/readyz")
        assert ready.status_code == 503  # readiness: send it no traffic
        assert ready.json()["status"] == "unready"
        assert ready.json()["checks"] == {"pool_ready": False, "state_backend": True, "accepting": True}
        assert value(c.get("/metrics").text, "pool_ready", pool_id="default") == 0
