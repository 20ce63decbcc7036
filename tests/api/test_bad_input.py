"""Bad input gets a 4xx with the envelope and a message naming the field; never a 500."""

from __future__ import annotations

import uuid

import httpx
import pytest

ENVELOPE_KEYS = {"code", "message", "retriable", "retry_after_ms", "policy_label", "engine", "pool_id"}


def _post(client: httpx.Client, body: object) -> httpx.Response:
    return client.post("/v1/tasks", json=body)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"prompt": "x", "max_tokens": 3}, "model_ref: field required"),
        ({"model_ref": "mock", "max_tokens": 3}, "exactly one of 'prompt', 'prompt_ids' and 'messages'"),
        (
            {
                "model_ref": "mock",
                "prompt": "x",
                "messages": [{"role": "user", "content": "y"}],
                "max_tokens": 3,
            },
            "exactly one of 'prompt', 'prompt_ids' and 'messages'",
        ),
        ({"model_ref": "mock", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model_ref": "mock", "prompt": "x", "max_tokens": 10**9}, "max_tokens"),
        ({"model_ref": "mock", "prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ({"model_ref": "mock", "prompt": 5, "max_tokens": 3}, "prompt"),
        ({"model_ref": "mock", "prompt": "x", "max_tokens": 3, "priority": "urgent"}, "priority"),
        ({"model_ref": "mock", "prompt": "x", "max_tokens": 3, "colour": "red"}, "colour: unknown field"),
        ({"model_ref": "mock", "prompt": "x", "max_tokens": 9000}, "max_tokens 9000 exceeds"),
        ([1, 2], "body"),
    ],
)
def test_invalid_bodies_name_the_field(client: httpx.Client, body: object, fragment: str) -> None:
    response = _post(client, body)
    assert response.status_code == 400, response.text
    envelope = response.json()
    assert set(envelope) == ENVELOPE_KEYS
    assert envelope["code"] == "INVALID_PARAMS"
    assert envelope["retriable"] is False
    assert fragment in envelope["message"]


def test_unknown_model_names_the_served_models(client: httpx.Client) -> None:
    response = _post(client, {"model_ref": "llama-70b", "prompt": "x", "max_tokens": 3})
    assert response.status_code == 400
    assert "llama-70b" in response.json()["message"] and "served models: mock" in response.json()["message"]


def test_malformed_json(client: httpx.Client) -> None:
    response = client.post(
        "/v1/tasks", content=b'{"model_ref": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["message"]


def test_body_over_one_mebibyte_is_413(client: httpx.Client) -> None:
    body = b'{"model_ref":"mock","max_tokens":1,"prompt":"' + b"a" * (1024 * 1024) + b'"}'
    response = client.post("/v1/tasks", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["code"] == "PAYLOAD_TOO_LARGE"


def test_chunked_body_over_the_limit_is_413(client: httpx.Client) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model_ref":"mock","max_tokens":1,"prompt":"'
        for _ in range(20):
            yield b"a" * 65536
        yield b'"}'

    response = client.post("/v1/tasks", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["code"] == "PAYLOAD_TOO_LARGE"


def test_wrong_content_type_is_415(client: httpx.Client) -> None:
    response = client.post("/v1/tasks", content=b"model_ref=mock", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["code"] == "UNSUPPORTED_MEDIA_TYPE"


def test_unknown_job_is_404_with_envelope(client: httpx.Client) -> None:
    for path in (f"/v1/tasks/{uuid.uuid4()}", f"/v1/tasks/{uuid.uuid4()}/stream"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["code"] == "NOT_FOUND"
    assert client.post(f"/v1/tasks/{uuid.uuid4()}/cancel").status_code == 404


def test_job_id_that_is_not_a_uuid_is_400(client: httpx.Client) -> None:
    response = client.get("/v1/tasks/not-a-uuid/stream")
    assert response.status_code == 400
    assert "job_id" in response.json()["message"]


def test_unknown_path_and_wrong_method(client: httpx.Client) -> None:
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    wrong = client.delete("/v1/tasks")
    assert wrong.status_code == 405 and wrong.json()["code"] == "METHOD_NOT_ALLOWED"
    assert wrong.headers["allow"] == "GET, POST"  # the operators' list and the submit


def test_garbage_last_event_id_is_400(client: httpx.Client) -> None:
    job = client.post("/v1/tasks", json={"model_ref": "mock", "prompt": "x", "max_tokens": 1}).json()
    response = client.get(job["sse_url"], headers={"Last-Event-ID": "../../etc"})
    assert response.status_code == 400
    assert "Last-Event-ID" in response.json()["message"]
