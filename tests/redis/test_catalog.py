"""The model catalog is the deployment's with Redis: an entry registered, changed or deleted through
one replica is what every replica lists and enforces at admission within a second; a `catalog.sqlite3`
kept from before seeds a deployment that never had a catalog."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestratord.catalog import CatalogEntry
from tests.redis.conftest import Deployment, RedisServer, start_deployment

pytestmark = pytest.mark.redis
DIGEST = "ab" * 32
ENTRY = {"id": "mock", "digest": DIGEST, "source": "/models/mock.gguf", "tags": ["t"]}
JOB = {"model_ref": "mock", "prompt": "x", "max_tokens": 1}


@pytest.fixture
def pair(redis_server: RedisServer, tmp_path: Path) -> Iterator[Deployment]:
    with start_deployment(
        redis_server, tmp_path, 2, catalog={"dir": str(tmp_path / "catalog")}
    ) as deployment:
        yield deployment


def within(seconds: float, check: Callable[[], bool], what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.02)
    return time.monotonic() - start


def entry_on(client: httpx.Client, model_id: str = "mock") -> dict[str, Any] | None:
    answer = client.get(f"/v1/catalog/models/{model_id}")
    return answer.json() if answer.status_code == 200 else None


def admits(client: httpx.Client) -> bool:
    return client.post("/v1/tasks", json=JOB).status_code == 202


def test_catalog_changes_through_one_replica_are_every_replicas_within_a_second(pair: Deployment) -> None:
    with (
        httpx.Client(base_url=pair[0].base_url, timeout=10) as a,
        httpx.Client(base_url=pair[1].base_url, timeout=10) as b,
    ):
        assert admits(b)
        created = a.post("/v1/catalog/models", json={**ENTRY, "state": "Retired"})
        assert created.status_code == 201, created.text
        seen = [within(1.0, lambda: entry_on(b) is not None, "B lists the new entry")]
        assert entry_on(b) == created.json()
        refused = b.post("/v1/tasks", json=JOB)
        assert refused.status_code == 503 and "retired" in refused.json()["message"], refused.text
        assert b.post("/v1/catalog/models", json=ENTRY).status_code == 409, (
            "one entry per id, deployment-wide"
        )

        assert a.post("/v1/catalog/models/mock/state", json={"state": "Active"}).status_code == 200
        seen.append(within(1.0, lambda: admits(b), "B admits the model again"))
        assert (entry_on(b) or {}).get("state") == "Active"

        assert b.post("/v1/catalog/models/mock/state", json={"state": "Retired"}).status_code == 200
        seen.append(within(1.0, lambda: not admits(a), "A refuses the model retired through B"))
        assert a.delete("/v1/catalog/models/mock").status_code == 204
        seen.append(within(1.0, lambda: entry_on(b) is None and admits(b), "B forgets the deleted entry"))
        assert b.delete("/v1/catalog/models/mock").status_code == 404
    print("seen by the other replica after " + ", ".join(f"{s * 1000:.0f} ms" for s in seen))


def test_a_catalog_kept_in_sqlite_seeds_a_deployment_without_one(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    directory = tmp_path / "catalog"
    directory.mkdir()
    kept = CatalogEntry("mock", DIGEST, "/models/mock.gguf", state="Retired", created_at=1.0, updated_at=1.0)
    with sqlite3.connect(directory / "catalog.sqlite3") as db:
        db.execute("CREATE TABLE models (id TEXT PRIMARY KEY, entry TEXT NOT NULL)")
        db.execute("INSERT INTO models VALUES (?, ?)", (kept.id, kept.to_json()))
    with start_deployment(redis_server, tmp_path, 1, catalog={"dir": str(directory)}) as deployment:
        with httpx.Client(base_url=deployment[0].base_url, timeout=10) as a:
            assert (entry_on(a) or {}).get("state") == "Retired"
            assert not admits(a)
            assert a.delete("/v1/catalog/models/mock").status_code == 204
        deployment[0].proc.terminate()
        deployment[0].proc.wait(timeout=30)
        key_prefix = deployment.key_prefix
    with (
        start_deployment(
            redis_server, tmp_path, 1, catalog={"dir": str(directory)}, key_prefix=key_prefix
        ) as again,
        httpx.Client(base_url=again[0].base_url, timeout=10) as a,
    ):
        assert entry_on(a) is None, "the file seeds only a deployment that never had a catalog"
        assert admits(a)
