"""Hostile request content: every one gets a 4xx with the error envelope, never a 500, never a hang."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.api.helpers import submit
from tests.fakes.sse import read_events

ENVELOPE_KEYS = {"code", "message", "retriable", "retry_after_ms", "policy_label", "engine", "pool_id"}
JSON = {"content-type": "application/json"}
GOOD = b'"model_ref":"mock","max_tokens":2'


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-correlation-id"]
    body: dict[str, object] = response.json()
    assert set(body) == ENVELOPE_KEYS
    assert body["code"] == code and body["retriable"] is False
    return body


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(b'{"model_ref": ', "not valid JSON", id="truncated"),
        pytest.param(b"{" + GOOD + b',"prompt":"x"} trailing', "not valid JSON", id="trailing-garbage"),
        pytest.param(b"{'model_ref': 'mock'}", "not valid JSON", id="single-quotes"),
        pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply", id="deep-object"),
        pytest.param(b"[" * 200_000 + b"]" * 200_000, "nested too deeply", id="deep-array"),
        pytest.param(b"{" + GOOD + b',"stop":' + b"[" * 500 + b"]" * 500 + b"}", "stop", id="nested-field"),
        pytest.param(
            b"{" + GOOD + b',"prompt":"x","seed":' + b"9" * 5000 + b"}", "number too long", id="5000-digits"
        ),
        pytest.param(
            b'{"model_ref":"mock","prompt":"x","max_tokens":1' + b"0" * 30 + b"}", "max_tokens", id="1e30"
        ),
        pytest.param(b"{" + GOOD + b',"prompt":"x","seed":18446744073709551616}', "seed", id="seed-2**64"),
        pytest.param(b"{" + GOOD + b',"prompt":"x","temperature":1e999}', "temperature", id="infinity"),
        pytest.param(b"{" + GOOD + b',"prompt":"x","temperature":NaN}', "temperature", id="nan"),
        pytest.param(
            b"{" + GOOD + b',"prompt":"a\\u0000b"}', "prompt: Value error, must not contain a NUL", id="nul"
        ),
        pytest.param(
            b"{" + GOOD + b',"messages":[{"role":"user","content":"\\u0000"}]}',
            "messages.0.content",
            id="nul-msg",
        ),
        pytest.param(b"{" + GOOD + b',"prompt":"x","stop":["\\u0000"]}', "stop.0", id="nul-stop"),
        pytest.param(b"{" + GOOD + b',"prompt":"\xff\xfe\xc3"}', "not valid UTF-8", id="invalid-utf8"),
        pytest.param(
            b"{" + GOOD + b',"prompt":"\\ud800"}', "prompt: Value error, must be Unicode", id="surrogate"
        ),
        pytest.param(
            b"{" + GOOD + b',"prompt":"x","placement":{"mode":"pin","pin_pool_id":"\\udc00"}}',
            "placement.pin_pool_id",
            id="surrogate-pool",
        ),
        pytest.param(b"", "body: field required", id="empty"),
        pytest.param(b"null", "body", id="null"),
        pytest.param(b'"a string"', "body", id="string"),
    ],
)
def test_hostile_json_is_400_with_the_envelope(client: httpx.Client, content: bytes, fragment: str) -> None:
    body = assert_envelope(client.post("/v1/tasks", content=content, headers=JSON), 400, "INVALID_PARAMS")
    assert fragment in str(body["message"])
    assert len(str(body["message"])) < 2000  # a message a person can read, not an echo of the input


def test_the_server_is_still_healthy_after_the_hostile_bodies(client: httpx.Client) -> None:
    client.post("/v1/tasks", content=b"[" * 200_000, headers=JSON)
    assert client.get("/healthz").status_code == 200
    job = submit(client, max_tokens=3)
    assert read_events(client, job["sse_url"])[-1].event == "end"


def test_body_over_the_limit_is_413(client: httpx.Client) -> None:
    big = b"{" + GOOD + b',"prompt":"' + b"a" * (1024 * 1024) + b'"}'
    assert_envelope(client.post("/v1/tasks", content=big, headers=JSON), 413, "PAYLOAD_TOO_LARGE")


def test_chunked_body_with_no_length_over_the_limit_is_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"{" + GOOD + b',"prompt":"'
        for _ in range(64):  # 4 MiB, four times the limit, with no Content-Length
            yield b"a" * 65536
        yield b'"}'

    response = client.post("/v1/tasks", content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    body = assert_envelope(response, 413, "PAYLOAD_TOO_LARGE")
    assert "1048576" in str(body["message"])


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "json"],
)
def test_wrong_content_type_is_415(client: httpx.Client, content_type: str) -> None:
    response = client.post(
        "/v1/tasks", content=b"{" + GOOD + b',"prompt":"x"}', headers={"content-type": content_type}
    )
    body = assert_envelope(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert "application/json" in str(body["message"])


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/tasks", "POST"),
        ("DELETE", "/v1/tasks", "POST"),
        ("DELETE", f"/v1/tasks/{uuid.uuid4()}", "GET"),
        ("GET", f"/v1/tasks/{uuid.uuid4()}/cancel", "POST"),
        ("POST", f"/v1/tasks/{uuid.uuid4()}/stream", "GET"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(client: httpx.Client, method: str, path: str, allowed: str) -> None:
    response = client.request(method, path)
    assert_envelope(response, 405, "METHOD_NOT_ALLOWED")
    assert allowed in response.headers["allow"]


@pytest.mark.parametrize(
    "path", ["/v2/tasks", "/v1/tasks/a/b/c", "/%00", "/" + "x" * 8000, "/v1/tasks/../../etc"]
)
def test_unknown_paths_are_404(client: httpx.Client, path: str) -> None:
    assert_envelope(client.get(path), 404, "NOT_FOUND")


@pytest.mark.parametrize("job_id", ["not-a-uuid", "1", "%00", "' OR 1=1 --", "x" * 500])
@pytest.mark.parametrize(
    ("method", "template"),
    [("GET", "/v1/tasks/{}"), ("GET", "/v1/tasks/{}/stream"), ("POST", "/v1/tasks/{}/cancel")],
)
def test_a_job_id_that_is_not_a_uuid_is_400(
    client: httpx.Client, method: str, template: str, job_id: str
) -> None:
    body = assert_envelope(client.request(method, template.format(job_id)), 400, "INVALID_PARAMS")
    assert "job_id" in str(body["message"])


@pytest.mark.parametrize("last_event_id", ["../../etc", "-1", "1e3", "0x10", "\u0669", "1" * 40, "x" * 65])
def test_a_garbage_last_event_id_is_400(client: httpx.Client, last_event_id: str) -> None:
    job = submit(client, max_tokens=2)
    response = client.get(job["sse_url"], headers={"Last-Event-ID": last_event_id.encode()})
    body = assert_envelope(response, 400, "INVALID_PARAMS")
    assert "Last-Event-ID" in str(body["message"])


def test_a_last_event_id_beyond_the_end_of_a_finished_stream_ends_at_once(client: httpx.Client) -> None:
    """Nothing can follow: 204 at once (EventSource stops reconnecting), not a stream that waits."""
    job = submit(client, max_tokens=2)
    assert read_events(client, job["sse_url"])[-1].event == "end"
    response = client.get(job["sse_url"], headers={"Last-Event-ID": "999999"}, timeout=5)
    assert response.status_code == 204 and response.content == b""
