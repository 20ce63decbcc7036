"""The model catalog: CRUD for admins, persisted across restarts, verify by hash, and the lifecycle's
effect on jobs (UNTRUSTED_ARTIFACT, MODEL_DEPRECATED unless override, Retired → POOL_UNAVAILABLE)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from orchestratord.app import create_app
from orchestratord.settings import load_settings
from tests.control.helpers import ADMIN_KEY, KEYS, admitted, assert_envelope, client, task
from tests.fakes.servers import LoopbackServer, serve_in_thread
from tests.fakes.sse import read_events

ServerFactory = Callable[..., LoopbackServer]


def _artifact(tmp_path: Path, content: bytes = b"GGUF weights, version 1") -> tuple[Path, str]:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def _register(c: httpx.Client, **entry: Any) -> dict[str, Any]:
    body = {"id": "mock", "digest": "a" * 64, "source": "/srv/models/mock.gguf", **entry}
    response = c.post("/v1/catalog/models", json=body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def test_create_list_get_state_delete(make_server: ServerFactory) -> None:
    server = make_server()
    with client(server) as c:
        created = _register(c, id="llama-3-8b-q4", digest="AB" * 32, tags=["chat", "q4"])
        assert created["digest"] == "ab" * 32 and created["state"] == "Active"
        assert created["trust"] == "unverified" and created["observed_digest"] is None
        assert c.get("/v1/catalog/models/llama-3-8b-q4").json() == created
        assert [m["id"] for m in c.get("/v1/catalog/models").json()["models"]] == ["llama-3-8b-q4"]
        assert_envelope(
            c.post("/v1/catalog/models", json={**created, "id": "x", "trust": "trusted"}),
            400,
            "INVALID_PARAMS",
        )
        duplicate = {"id": "llama-3-8b-q4", "digest": "0" * 64, "source": "/x"}
        assert_envelope(c.post("/v1/catalog/models", json=duplicate), 409, "CONFLICT")
        bad_digest = {"id": "m2", "digest": "not-a-digest", "source": "/x"}
        assert (
            "digest"
            in assert_envelope(c.post("/v1/catalog/models", json=bad_digest), 400, "INVALID_PARAMS")[
                "message"
            ]
        )
        moved = c.post("/v1/catalog/models/llama-3-8b-q4/state", json={"state": "Deprecated"})
        assert moved.status_code == 200 and moved.json()["state"] == "Deprecated"
        assert_envelope(
            c.post("/v1/catalog/models/llama-3-8b-q4/state", json={"state": "Gone"}), 400, "INVALID_PARAMS"
        )
        assert c.delete("/v1/catalog/models/llama-3-8b-q4").status_code == 204
        for response in (
            c.get("/v1/catalog/models/llama-3-8b-q4"),
            c.delete("/v1/catalog/models/llama-3-8b-q4"),
            c.post("/v1/catalog/models/llama-3-8b-q4/verify"),
            c.post("/v1/catalog/models/llama-3-8b-q4/state", json={"state": "Active"}),
        ):
            assert_envelope(response, 404, "NOT_FOUND")
        assert c.get("/v1/catalog/models").json() == {"models": []}


def test_the_catalog_survives_a_restart(tmp_path: Path) -> None:
    settings = load_settings(auth={"keys": KEYS}, catalog={"dir": str(tmp_path / "state")})
    with serve_in_thread(create_app(settings)) as first, client(first, ADMIN_KEY) as c:
        _register(c, id="kept", tags=["a"])
        _register(c, id="dropped")
        c.post("/v1/catalog/models/kept/state", json={"state": "Retired"})
        c.delete("/v1/catalog/models/dropped")
        before = c.get("/v1/catalog/models").json()
    assert (tmp_path / "state" / "catalog.sqlite3").is_file()
    with serve_in_thread(create_app(settings)) as second, client(second, ADMIN_KEY) as c:
        after = c.get("/v1/catalog/models").json()
        assert after == before
        assert [(m["id"], m["state"], m["tags"]) for m in after["models"]] == [("kept", "Retired", ["a"])]


def test_verify_hashes_the_artifact_and_a_mismatch_is_untrusted(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    path, digest = _artifact(tmp_path)
    server = make_server(catalog={"dir": str(tmp_path / "state"), "artifacts_dir": str(tmp_path)})
    with client(server) as c:
        _register(c, digest=digest, source=path.as_uri())
        verified = c.post("/v1/catalog/models/mock/verify").json()
        assert (verified["trust"], verified["observed_digest"]) == ("trusted", digest)
        assert verified["verified_at"] is not None
        read_events(c, admitted(c)["sse_url"])

        path.write_bytes(b"GGUF weights, tampered")
        tampered = c.post("/v1/catalog/models/mock/verify").json()
        assert tampered["trust"] == "untrusted"
        assert tampered["observed_digest"] == hashlib.sha256(b"GGUF weights, tampered").hexdigest()
        body = assert_envelope(task(c), 400, "UNTRUSTED_ARTIFACT")
        assert digest in body["message"] and tampered["observed_digest"] in body["message"]
        assert_envelope(task(c, session_id="s", override=True), 400, "UNTRUSTED_ARTIFACT")

        path.write_bytes(b"GGUF weights, version 1")
        assert c.post("/v1/catalog/models/mock/verify").json()["trust"] == "trusted"
        read_events(c, admitted(c)["sse_url"])


def test_verify_needs_a_readable_local_file_and_changes_nothing_otherwise(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """A source that is no local path is the request's fault (400); a file the server does not have,
    or has outside the artifacts directory (directly or through a symlink), is the server's state
    (409). Nothing outside `catalog.artifacts_dir` is ever read."""
    root = tmp_path / "models"
    root.mkdir()
    outside, _ = _artifact(tmp_path)
    (root / "link.gguf").symlink_to(outside)
    server = make_server(catalog={"dir": str(tmp_path / "state"), "artifacts_dir": str(root)})
    with client(server) as c:
        _register(c, id="remote", source="hf://org/model/model.gguf")
        _register(c, id="missing", source=str(root / "nope.gguf"))
        _register(c, id="outside", source=str(outside))
        _register(c, id="linked", source=str(root / "link.gguf"))
        _register(c, id="dotdot", source=str(root / ".." / "model.gguf"))
        verify = lambda model: c.post(f"/v1/catalog/models/{model}/verify")  # noqa: E731
        assert "not a local file" in assert_envelope(verify("remote"), 400, "INVALID_PARAMS")["message"]
        assert "cannot read" in assert_envelope(verify("missing"), 409, "CONFLICT")["message"]
        for model in ("outside", "linked", "dotdot"):
            assert (
                "outside catalog.artifacts_dir" in assert_envelope(verify(model), 409, "CONFLICT")["message"]
            )
        assert {m["trust"] for m in c.get("/v1/catalog/models").json()["models"]} == {"unverified"}


def test_without_an_artifacts_dir_verify_reads_nothing(make_server: ServerFactory, tmp_path: Path) -> None:
    path, digest = _artifact(tmp_path)
    server = make_server()
    with client(server) as c:
        _register(c, digest=digest, source=str(path))
        refused = assert_envelope(c.post("/v1/catalog/models/mock/verify"), 409, "CONFLICT")
        assert "catalog.artifacts_dir, which is not configured" in refused["message"]


def test_deprecated_needs_override_for_new_sessions_and_retired_is_unavailable(
    make_server: ServerFactory,
) -> None:
    server = make_server()
    with client(server) as c:
        _register(c)
        read_events(c, admitted(c, session_id="ongoing", max_tokens=2)["sse_url"])
        c.post("/v1/catalog/models/mock/state", json={"state": "Deprecated"})

        for body in ({}, {"session_id": "new"}):
            message = assert_envelope(task(c, **body), 400, "MODEL_DEPRECATED")["message"]
            assert "override" in message
        read_events(c, admitted(c, session_id="ongoing", max_tokens=2)["sse_url"])  # sessions continue
        read_events(c, admitted(c, session_id="new", override=True, max_tokens=2)["sse_url"])
        read_events(c, admitted(c, override=True, max_tokens=2)["sse_url"])

        c.post("/v1/catalog/models/mock/state", json={"state": "Retired"})
        for body in ({}, {"session_id": "ongoing"}, {"override": True}):
            refused = task(c, **body)
            assert assert_envelope(refused, 503, "POOL_UNAVAILABLE")["retriable"] is False
            assert "retired" in refused.json()["message"]

        c.post("/v1/catalog/models/mock/state", json={"state": "Active"})
        read_events(c, admitted(c, max_tokens=2)["sse_url"])
