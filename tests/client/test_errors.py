"""From an error answer to the typed error: the envelope's verdict first, then the headers, then
what the status means (a proxy's answer has no envelope). Pure mapping, no server needed."""

from __future__ import annotations

import httpx
import pytest
from orchestratord_client import (
    BudgetExceeded,
    Conflict,
    InvalidRequest,
    OrchestratordError,
    QueueFull,
    RateLimited,
    ServerError,
    Unavailable,
)
from orchestratord_client._protocol import task_body
from orchestratord_client.errors import from_response


def answer(status: int, body: object = None, text: str = "", **headers: str) -> httpx.Response:
    request = httpx.Request("POST", "http://orchd.test/v1/tasks")
    if body is not None:
        return httpx.Response(status, json=body, headers=headers, request=request)
    return httpx.Response(status, text=text, headers=headers, request=request)


def envelope(code: str, retriable: bool, **extra: object) -> dict[str, object]:
    return {"code": code, "message": f"{code} happened", "retriable": retriable, **extra}


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, envelope("INVALID_PARAMS", False), InvalidRequest),
        (413, envelope("PAYLOAD_TOO_LARGE", False), InvalidRequest),
        (409, envelope("CONFLICT", True), Conflict),
        (429, envelope("ADMISSION_REJECT", True, policy_label="drop-lru"), QueueFull),
        (429, envelope("ADMISSION_REJECT", True, policy_label="rate-limit"), RateLimited),
        (429, envelope("BUDGET_EXCEEDED", False, policy_label="quota"), BudgetExceeded),
        (503, envelope("POOL_UNREADY", True), Unavailable),
        (500, envelope("INTERNAL", False), ServerError),
        (405, envelope("METHOD_NOT_ALLOWED", False), OrchestratordError),
    ],
)
def test_envelope_picks_the_class(
    status: int, body: dict[str, object], kind: type[OrchestratordError]
) -> None:
    error = from_response(answer(status, body, **{"X-Correlation-Id": "c-1"}))
    assert type(error) is kind
    assert (error.status, error.code, error.retriable) == (status, body["code"], body["retriable"])
    assert error.correlation_id == "c-1" and str(error) == f"{status} {body['code']}: {body['code']} happened"


def test_retry_hint_prefers_milliseconds_then_seconds_then_the_envelope() -> None:
    rejected = envelope("ADMISSION_REJECT", True, retry_after_ms=900)
    exact = from_response(answer(429, rejected, **{"Retry-After": "1", "retry-after-ms": "250"}))
    assert exact.retry_after_s == 0.25
    assert from_response(answer(429, rejected, **{"Retry-After": "3"})).retry_after_s == 3
    assert from_response(answer(429, rejected)).retry_after_s == 0.9
    dated = answer(
        503,
        text="busy",
        **{"Retry-After": "Wed, 21 Oct 2015 07:28:05 GMT", "Date": "Wed, 21 Oct 2015 07:28:00 GMT"},
    )
    assert from_response(dated).retry_after_s == 5
    assert from_response(answer(503, text="busy", **{"Retry-After": "soon"})).retry_after_s is None


def test_without_an_envelope_the_headers_then_the_status_decide() -> None:
    proxy = from_response(answer(502, text="<html>bad gateway</html>"))
    assert type(proxy) is ServerError and proxy.code == "HTTP_502" and proxy.retriable
    assert "bad gateway" in proxy.message
    assert not from_response(answer(429, text="slow down", **{"x-should-retry": "false"})).retriable
    assert not from_response(answer(500, text="oops")).retriable
    # the envelope's verdict wins over a status that usually means "later"
    assert not from_response(answer(503, envelope("POOL_UNAVAILABLE", False))).retriable


def test_task_body_needs_exactly_one_of_prompt_and_messages() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        task_body("m", "p", [{"role": "user", "content": "c"}], 4, {})
    with pytest.raises(ValueError, match="exactly one"):
        task_body("m", None, None, 4, {})
    with pytest.raises(ValueError, match="exactly one"):
        task_body("m", "p", None, 4, {"prompt_ids": [1, 2]})
    # a prompt of token ids, among the fields, is the one input
    assert task_body("m", None, None, 4, {"prompt_ids": [1, 2]}) == {
        "model_ref": "m",
        "max_tokens": 4,
        "prompt_ids": [1, 2],
    }
    with pytest.raises(TypeError, match="model"):
        task_body("m", "p", None, 4, {"model_ref": "other"})
    assert task_body("m", "p", None, 4, {"seed": 1}) == {
        "model_ref": "m",
        "max_tokens": 4,
        "seed": 1,
        "prompt": "p",
    }
