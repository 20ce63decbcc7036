"""GET /v1/capabilities: the contract's version, and pools and engines as the live registry knows them."""

from __future__ import annotations

from collections.abc import Callable

import yaml

from orchestratord.api.openapi import CONTRACT_DIR
from tests.control.helpers import ACME_KEY, KEYS, assert_envelope, client
from tests.fakes.servers import LoopbackServer
from worker_adapters.mock import ENGINE_VERSION

POOLS = [
    {
        "id": "small", "engine": "mock", "models": ["mock"], "replicas": [{"id": "a"}, {"id": "b"}],
        "slots": 2, "ctx_max": 2048, "max_tokens_out": 512, "api": "completion",
    },
    {
        "id": "chatty", "engine": "mock", "models": ["mock", "mock-chat"], "replicas": [{"id": "r0"}],
        "slots": 3, "engine_version": "custom-7",
    },
]  # fmt: skip


def test_capabilities_come_from_the_contract_and_the_live_registry(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(
        pools=POOLS,
        auth={"keys": KEYS},
        tenants=[{"id": "acme", "rps": 5, "max_concurrent": 3}],
        queue={"capacity": 64, "tenant_capacity": 16},
        sessions={"ttl_s": 90, "max_turns": 4},
    )
    version = yaml.safe_load((CONTRACT_DIR / "data.yaml").read_text())["info"]["version"]
    with client(server, ACME_KEY) as acme, client(server) as anonymous:
        assert_envelope(anonymous.get("/v1/capabilities"), 401, "UNAUTHORIZED")
        caps = acme.get("/v1/capabilities").json()
        assert caps["api_version"] == version
        small, chatty = caps["pools"][1], caps["pools"][0]
        assert (chatty["pool_id"], small["pool_id"]) == ("chatty", "small")
        assert small == {
            "pool_id": "small", "engine": "mock", "engine_version": ENGINE_VERSION, "models": ["mock"],
            "ctx_max": 2048, "max_tokens_out": 512, "slots": 4, "replicas": 2, "ready": True,
            "sources": {"ctx_max": "config", "max_tokens_out": "config", "slots": "config",
                        "engine_version": "engine"},
            "draining": False, "workloads": ["completion"],
            "features": {"streaming": True, "cancel": True, "seed": True, "chat": False},
        }  # fmt: skip
        assert chatty["engine_version"] == "custom-7" and chatty["models"] == ["mock", "mock-chat"]
        assert chatty["sources"]["engine_version"] == "config"
        assert (chatty["slots"], chatty["ctx_max"], chatty["workloads"]) == (3, 4096, ["completion", "chat"])
        assert chatty["features"]["chat"] is True
        assert caps["engines"] == [
            {
                "engine": "mock",
                "engine_versions": sorted([ENGINE_VERSION, "custom-7"]),
                "pools": ["chatty", "small"],
            }
        ]
        assert caps["rate_limits"] == {
            "requests_per_s": 5.0, "burst": 5, "max_concurrent": 3, "queue_capacity": 64,
            "tenant_queue_capacity": 16, "max_tokens": 8192, "max_body_bytes": 1024 * 1024,
        }  # fmt: skip
        assert caps["sessions"] == {"ttl_ms": 90_000, "max_turns": 4}

        # Change the registry underneath: the next answer follows it.
        registry = server.app.state.services.registry

        async def change() -> None:
            registry.set_models("small", ("mock", "mock-2"))
            registry.drain("chatty", deadline=0.0)

        server.call(change())
        again = {p["pool_id"]: p for p in acme.get("/v1/capabilities").json()["pools"]}
        assert again["small"]["models"] == ["mock", "mock-2"]
        assert (again["chatty"]["draining"], again["chatty"]["ready"]) == (True, False)
