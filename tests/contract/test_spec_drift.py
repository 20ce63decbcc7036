"""The running app and the contract files agree: paths, methods, statuses, schemas, headers."""

from __future__ import annotations

from typing import Any

import pytest

from orchestratord.api.openapi import contract, contract_document, generated_document
from orchestratord.app import create_app
from orchestratord.settings import load_settings
from tests.contract.shape import operation_shape, operations

# The correlation header is added to every response by middleware; the contract declares it on each
# response (checked below) and the generated document cannot.
IGNORED_HEADERS = {"X-Correlation-Id"}
OPENAI = set(contract("openai.yaml")["paths"])


@pytest.fixture(scope="module")
def documents() -> tuple[dict[str, Any], dict[str, Any]]:
    app = create_app(load_settings())
    return generated_document(app), contract_document()


def test_same_operations(documents: tuple[dict[str, Any], dict[str, Any]]) -> None:
    generated, declared = documents
    assert sorted(operations(generated)) == sorted(operations(declared))


def test_same_operation_shapes(documents: tuple[dict[str, Any], dict[str, Any]]) -> None:
    generated, declared = documents
    gen_ops, dec_ops = operations(generated), operations(declared)
    for key in sorted(dec_ops):
        got = operation_shape(generated, gen_ops[key], ignore_headers=IGNORED_HEADERS)
        want = operation_shape(declared, dec_ops[key], ignore_headers=IGNORED_HEADERS)
        assert got == want, f"drift in {key[1].upper()} {key[0]}"


def test_every_declared_response_carries_the_correlation_header() -> None:
    doc = contract_document()
    for (path, method), op in operations(doc).items():
        for status, response in op["responses"].items():
            if "$ref" in response:
                response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
            assert "X-Correlation-Id" in response.get("headers", {}), f"{method} {path} {status}"


def test_every_error_response_uses_the_envelope() -> None:
    doc = contract_document()
    for (path, method), op in operations(doc).items():
        for status, response in op["responses"].items():
            if int(status) >= 400 and path not in ("/readyz",):
                # The OpenAI-compatible surface answers with OpenAI's error object instead.
                wanted = (
                    ("/OpenAIError", "/OpenAIRetryableError")
                    if path in OPENAI
                    else ("/Error", "/RetryableError")
                )
                assert response.get("$ref", "").endswith(wanted), f"{method} {path} {status}"


def test_contract_is_openapi_3_1_with_the_error_kinds() -> None:
    data = contract("data.yaml")
    assert data["openapi"].startswith("3.1")
    kinds = set(data["components"]["schemas"]["ErrorKind"]["enum"])
    from orchestratord.errors import ErrorKind

    assert kinds == {k.value for k in ErrorKind}


def test_the_drift_check_notices_a_changed_schema(documents: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """The comparison is not vacuous: removing a field from the contract is seen as drift."""
    generated, declared = documents
    import copy

    tampered = copy.deepcopy(declared)
    del tampered["components"]["schemas"]["TaskRequest"]["properties"]["seed"]
    key = ("/v1/tasks", "post")
    got = operation_shape(generated, operations(generated)[key], ignore_headers=IGNORED_HEADERS)
    want = operation_shape(tampered, operations(tampered)[key], ignore_headers=IGNORED_HEADERS)
    assert got != want
