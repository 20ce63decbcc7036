"""GET /v1/tasks: operators list every tenant's jobs (filters, paging, queue outlook); admins read and
cancel any tenant's job; clients see only their own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.api.helpers import HANG, admit, state_of, wait_for
from tests.fakes.servers import LoopbackServer

KEYS = {"acme": "acme-key-0123456789", "beta": "beta-key-0123456789", "ops": "ops-key-01234567890"}


@pytest.fixture
def served(make_server: Callable[..., LoopbackServer]) -> LoopbackServer:
    return make_server(
        auth={"keys": [
            {"key": KEYS["acme"], "tenant": "acme"},
            {"key": KEYS["beta"], "tenant": "beta"},
            {"key": KEYS["ops"], "tenant": "ops", "role": "admin"},
        ]},
        pools=[
            {"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}], "slots": 1},
            {"id": "fast", "engine": "mock", "models": ["quick"], "replicas": [{"id": "r0"}], "slots": 4},
        ],
    )  # fmt: skip


@pytest.fixture
def http(served: LoopbackServer) -> Iterator[Callable[[str], httpx.Client]]:
    made: list[httpx.Client] = []

    def make(who: str) -> httpx.Client:
        made.append(
            httpx.Client(
                base_url=served.base_url, headers={"Authorization": f"Bearer {KEYS[who]}"}, timeout=30
            )
        )
        return made[-1]

    yield make
    for c in made:
        c.close()


def listing(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/tasks", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def test_admins_see_every_tenants_jobs_with_their_queue_outlook(http: Callable[[str], httpx.Client]) -> None:
    acme, beta, ops = http("acme"), http("beta"), http("ops")
    hang = admit(acme, prompt=HANG, max_tokens=4000)
    wait_for(lambda: state_of(acme, hang) == "running")
    waiting = [admit(beta, max_tokens=3), admit(acme, max_tokens=3), admit(beta, max_tokens=3)]
    done = admit(acme, model_ref="quick", max_tokens=2)
    wait_for(lambda: state_of(acme, done) == "succeeded")

    everything = {t["job_id"]: t for t in listing(ops)["tasks"]}
    assert set(everything) == {hang, done, *waiting}
    assert everything[hang]["state"] == "running" and everything[hang]["tenant"] == "acme"
    assert everything[hang]["pool_id"] == "default" and everything[hang]["queue_position"] is None
    assert everything[done]["state"] == "succeeded" and everything[done]["tokens_out"] == 2
    assert [everything[j]["tenant"] for j in waiting] == ["beta", "acme", "beta"]

    queued = listing(ops, state="queued")["tasks"]
    assert {t["job_id"] for t in queued} == set(waiting)
    assert sorted(t["queue_position"] for t in queued) == [0, 1, 2]  # fair-queue positions, all distinct
    assert all(t["predicted_start_ms"] is None or t["predicted_start_ms"] >= 0 for t in queued)
    created = [t["created_at"] for t in listing(ops)["tasks"]]
    assert created == sorted(created, reverse=True), "newest first"

    assert {t["job_id"] for t in listing(ops, tenant="beta")["tasks"]} == {waiting[0], waiting[2]}
    assert [t["job_id"] for t in listing(ops, model_ref="quick")["tasks"]] == [done]
    assert [t["job_id"] for t in listing(ops, pool_id="default", state="running")["tasks"]] == [hang]
    both = ops.get("/v1/tasks", params=[("state", "running"), ("state", "succeeded")]).json()["tasks"]
    assert {t["job_id"] for t in both} == {hang, done}

    # an admin stops another tenant's runaway job; the tenant sees it canceled
    assert ops.get(f"/v1/tasks/{hang}").json()["state"] == "running"
    assert ops.post(f"/v1/tasks/{hang}/cancel").status_code == 204
    assert state_of(acme, hang) == "canceled"
    for job in waiting:
        ops.post(f"/v1/tasks/{job}/cancel")


def test_clients_see_only_their_own(http: Callable[[str], httpx.Client]) -> None:
    acme, beta = http("acme"), http("beta")
    job = admit(acme, prompt=HANG, max_tokens=4000)
    refused = acme.get("/v1/tasks")
    assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN", refused.text
    for response in (
        beta.get(f"/v1/tasks/{job}"),
        beta.post(f"/v1/tasks/{job}/cancel"),
        beta.get(f"/v1/tasks/{job}/stream"),
    ):
        assert response.status_code == 404 and response.json()["code"] == "NOT_FOUND"
    assert state_of(acme, job) != "canceled"
    acme.post(f"/v1/tasks/{job}/cancel")


def test_an_admin_streams_any_tenants_job(http: Callable[[str], httpx.Client]) -> None:
    acme, ops = http("acme"), http("ops")
    job = admit(acme, model_ref="quick", max_tokens=3)
    with ops.stream("GET", f"/v1/tasks/{job}/stream") as stream:
        assert stream.status_code == 200
        body = "".join(stream.iter_text())
    assert body.count("event: token") == 3 and "event: end" in body


def test_pages_cover_every_job_once(http: Callable[[str], httpx.Client]) -> None:
    acme, ops = http("acme"), http("ops")
    jobs = {admit(acme, model_ref="quick", max_tokens=1) for _ in range(7)}
    wait_for(lambda: all(state_of(acme, j) == "succeeded" for j in jobs))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = listing(ops, limit=3, **({"cursor": cursor} if cursor else {}))
        seen += [t["job_id"] for t in page["tasks"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 7 and set(seen) == jobs


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"state": "done"}, "state"),
    ],
)
def test_bad_queries_are_refused_with_the_envelope(
    http: Callable[[str], httpx.Client], params: dict[str, Any], names: str
) -> None:
    response = http("ops").get("/v1/tasks", params=params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "INVALID_PARAMS" and names in body["message"], body
