"""API keys against a real server: 401 without or with a wrong key, 403 for the wrong role, open probes,
and a tenant that sees only its own jobs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.api.helpers import wait_for
from tests.control.helpers import (
    ACME_KEY,
    ADMIN_KEY,
    GLOBEX_KEY,
    KEYS,
    admitted,
    assert_envelope,
    client,
    task,
)
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events

ServerFactory = Callable[..., LoopbackServer]


@pytest.fixture
def keyed(make_server: ServerFactory) -> LoopbackServer:
    return make_server(auth={"keys": KEYS})


@pytest.mark.parametrize(
    ("authorization", "fragment"),
    [
        (None, "missing API key"),
        ("Bearer not-a-key-anyone-was-given", "invalid API key"),
        (f"Bearer {ACME_KEY}x", "invalid API key"),
        (f"Basic {ACME_KEY}", "malformed Authorization header"),
        ("Bearer", "malformed Authorization header"),
    ],
)
def test_missing_or_wrong_key_gets_401_with_the_envelope(
    keyed: LoopbackServer, authorization: str | None, fragment: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with client(keyed) as c:
        for method, path in [
            ("POST", "/v1/tasks"),
            ("GET", "/v1/tasks/00000000-0000-0000-0000-000000000000"),
            ("GET", "/v1/capabilities"),
            ("GET", "/v1/catalog/models"),
            ("GET", "/v1/pools"),
        ]:
            response = c.request(method, path, headers=headers, json={"model_ref": "mock", "max_tokens": 1})
            body = assert_envelope(response, 401, "UNAUTHORIZED")
            assert fragment in body["message"]
            assert body["retriable"] is False
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert ACME_KEY not in response.text


def test_client_key_on_the_control_plane_gets_403_and_admin_gets_in(keyed: LoopbackServer) -> None:
    with client(keyed, ACME_KEY) as acme, client(keyed, ADMIN_KEY) as admin:
        for method, path in [("GET", "/v1/catalog/models"), ("GET", "/v1/pools")]:
            body = assert_envelope(acme.request(method, path), 403, "FORBIDDEN")
            assert "'admin'" in body["message"]
            assert admin.request(method, path).status_code == 200
        create = {"id": "m", "digest": "0" * 64, "source": "/nowhere"}
        assert_envelope(acme.post("/v1/catalog/models", json=create), 403, "FORBIDDEN")
        assert acme.get("/v1/catalog/models/m").status_code == 403
        # The data plane: client keys and admin keys alike.
        assert acme.get("/v1/capabilities").status_code == 200
        job = admitted(admin)
        assert admin.get(job["status_url"]).status_code == 200


def test_probes_and_metrics_are_open_by_default(keyed: LoopbackServer) -> None:
    with client(keyed) as anonymous:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert anonymous.get(path).status_code == 200, path


def test_probes_can_be_restricted_to_admin_keys(make_server: ServerFactory) -> None:
    server = make_server(auth={"keys": KEYS, "open_paths": ["/healthz"]})
    with client(server) as anonymous, client(server, ACME_KEY) as acme, client(server, ADMIN_KEY) as admin:
        assert anonymous.get("/healthz").status_code == 200
        for path in ("/readyz", "/metrics"):
            assert_envelope(anonymous.get(path), 401, "UNAUTHORIZED")
            assert_envelope(acme.get(path), 403, "FORBIDDEN")
            assert admin.get(path).status_code == 200


def test_a_tenant_reads_and_cancels_only_its_own_jobs(make_server: ServerFactory) -> None:
    pools = [{"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}]}]
    pools[0]["options"] = {"tokens_per_s": 20}
    server = make_server(auth={"keys": KEYS}, pools=pools)
    with client(server, ACME_KEY) as acme, client(server, GLOBEX_KEY) as globex:
        job = admitted(acme, max_tokens=400)
        job_id = job["job_id"]
        # The tenant comes from the key: naming another tenant in a header changes nothing.
        spoof = {"X-Tenant": "acme"}
        for response in (
            globex.get(job["status_url"], headers=spoof),
            globex.post(f"/v1/tasks/{job_id}/cancel", headers=spoof),
            globex.get(job["sse_url"], headers=spoof),
        ):
            body = assert_envelope(response, 404, "NOT_FOUND")
            assert "acme" not in body["message"]
        # Same answer as for an id that never existed: ids leak nothing.
        never = globex.get("/v1/tasks/00000000-0000-0000-0000-000000000000")
        assert (
            never.status_code == 404
            and never.json()["message"].replace("00000000-0000-0000-0000-000000000000", job_id)
            == globex.get(job["status_url"]).json()["message"]
        )
        status = acme.get(job["status_url"]).json()
        assert status["state"] in ("queued", "running"), "the other tenant's cancel must not touch it"
        assert acme.post(f"/v1/tasks/{job_id}/cancel").status_code == 204
        wait_for(lambda: acme.get(job["status_url"]).json()["state"] == "canceled")
        events = read_events(acme, job["sse_url"])
        assert events[-1].event == "end" and events[-1].data["stop_reason"] == "canceled"


def test_without_keys_on_loopback_everyone_is_the_default_tenant(make_server: ServerFactory) -> None:
    server = make_server()
    with client(server) as c, client(server, "any-key-at-all-is-ignored-here") as other:
        job = admitted(c)
        assert other.get(job["status_url"]).status_code == 200
        assert task(c, model_ref="nope").status_code == 400
